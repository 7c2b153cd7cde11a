using HySparse.Exporter.Recognition;
using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Rewrite;

/// <summary>
/// Replaces the decomposed RoPE in front of the converted layers' Q and K (<see cref="DecomposedRotary"/>:
/// Slice, Slice, Neg, Concat, Mul, Mul, Add per tensor, seven passes over it) by one
/// <c>com.microsoft.RotaryEmbedding</c> each. The op reads [B,H,S,D] heads, int64 positions [B,S] and
/// [positions, D/2] caches; the caches are the first halves of the model's own cos/sin tables
/// ([B or 1, S, D], so the same angles the export computed) flattened to [rows·S, D/2], and token s of
/// batch row b reads row <c>min(b, rows − 1)·S + s</c>. Those are built once per table pair and shared by
/// every layer. The result is the same rotation up to float rounding, in one pass.
/// </summary>
internal static class RotaryFusionRewrite
{
    private const string MicrosoftDomain = "com.microsoft";
    // Range (11) and Min on int64 (12).
    private const long MinimumOpset = 12;

    /// <summary>What the fusion did.</summary>
    /// <param name="Fused">Rotations replaced by <c>RotaryEmbedding</c>.</param>
    /// <param name="LeftDecomposed">For each Q or K of a decomposed-attention layer that kept its rotation: where and why.</param>
    public sealed record Result(int Fused, IReadOnlyList<string> LeftDecomposed);

    /// <summary>Fuses the rotations feeding <paramref name="layers"/>' queries and keys in <paramref name="model"/>.</summary>
    public static Result Apply(ModelProto model, IReadOnlyList<AttentionLayer> layers)
    {
        var decomposed = layers.Where(l => l.Style == AttentionStyle.Decomposed).ToList();
        if (decomposed.Count == 0) return new Result(0, []);
        var opset = model.OpsetImport.FirstOrDefault(o => o.Domain is "" or "ai.onnx")?.Version ?? 0;
        if (opset < MinimumOpset) return new Result(0, [$"opset {opset}: the fused positions need opset {MinimumOpset} or later"]);

        var graph = new GraphIndex(model.Graph, model);
        var matches = new List<(DecomposedRotary Rotary, int Heads)>();
        var left = new List<string>();
        foreach (var layer in decomposed)
        {
            if (layer.KeyIsBsnh)
            {
                left.Add($"{layer.AnchorNode}: keys rotated on the [B,S,H,D] head split are not fused");
                continue;
            }
            foreach (var (tensor, heads, what) in new[] { (layer.Query, layer.NumHeads, "query"), (layer.Key, layer.KvNumHeads, "key") })
            {
                try
                {
                    var rotary = DecomposedRotary.Match(graph, tensor, layer.HeadSize);
                    if (matches.All(m => !ReferenceEquals(m.Rotary.Add, rotary.Add))) matches.Add((rotary, heads));
                }
                catch (PatternMismatch mismatch)
                {
                    left.Add($"{layer.AnchorNode} ({what}): {mismatch.Message}");
                }
            }
        }
        if (matches.Count == 0) return new Result(0, left);

        var usedNames = new HashSet<string>(model.Graph.Node.SelectMany(n => n.Output).Concat(model.Graph.Input.Select(i => i.Name))
            .Concat(model.Graph.Initializer.Select(i => i.Name)), StringComparer.Ordinal);
        var usedNodeNames = new HashSet<string>(model.Graph.Node.Select(n => n.Name), StringComparer.Ordinal);
        var factory = new NodeFactory(stem => HybridRewriter.Unique(usedNames, stem), stem => HybridRewriter.Unique(usedNodeNames, stem));

        // The nodes that take each matched Add's place: the shared caches and positions before the first
        // rotation of their tables, then the RotaryEmbedding, which keeps the Add's output name.
        var replacementAt = new Dictionary<NodeProto, List<NodeProto>>(ReferenceEqualityComparer.Instance);
        foreach (var group in matches.GroupBy(m => (m.Rotary.CosTable, m.Rotary.SinTable, m.Rotary.Half)))
        {
            var ordered = group.OrderBy(m => graph.PositionOf(m.Rotary.Add)).ToList();
            var first = ordered[0].Rotary;
            var nodes = new List<NodeProto>();
            var (positions, cosCache, sinCache) = Caches(factory, first, nodes);
            foreach (var (rotary, heads) in ordered)
            {
                var target = ReferenceEquals(rotary, first) ? nodes : new List<NodeProto>();
                var node = factory.Node("RotaryEmbedding", MicrosoftDomain, $"{HybridRewriter.ScopeOf(rotary.Add.Name)}/hysparse_rotary",
                    [rotary.Input, positions, cosCache, sinCache], 0, target);
                node.Output.Add(rotary.Output);
                node.Attribute.Add(Attr.Int("interleaved", 0));
                node.Attribute.Add(Attr.Int("num_heads", heads));
                replacementAt[rotary.Add] = target;
            }
        }

        var removed = new HashSet<NodeProto>(replacementAt.Keys, ReferenceEqualityComparer.Instance);
        var rebuilt = new List<NodeProto>(model.Graph.Node.Count);
        foreach (var node in model.Graph.Node)
        {
            if (replacementAt.TryGetValue(node, out var replacement)) rebuilt.AddRange(replacement);
            else rebuilt.Add(node);
        }
        var dropped = HybridRewriter.DropOrphans(model.Graph, rebuilt, removed);
        model.Graph.Node.Clear();
        model.Graph.Node.AddRange(rebuilt);
        HybridRewriter.PruneValueInfoAndInitializers(model.Graph, dropped);
        if (!model.OpsetImport.Any(o => o.Domain == MicrosoftDomain))
            model.OpsetImport.Add(new OperatorSetIdProto { Domain = MicrosoftDomain, Version = 1 });
        return new Result(matches.Count, left);
    }

    /// <summary>Positions [B,S] and the [rows·S, D/2] caches of <paramref name="rotary"/>'s tables.</summary>
    private static (string Positions, string CosCache, string SinCache) Caches(NodeFactory factory, DecomposedRotary rotary, List<NodeProto> nodes)
    {
        var stem = $"{HybridRewriter.ScopeOf(rotary.Add.Name)}/hysparse_rotary_cache";
        string Op(string opType, params string[] inputs) => factory.Node(opType, "", $"{stem}/{opType}", inputs, 1, nodes).Output[0];
        string Int64(long[] dims, params long[] values) => factory.Int64(dims, values, $"{stem}/Constant", nodes);

        var tableShape = Op("Shape", rotary.CosTable);
        var rows = Op("Gather", tableShape, Int64([], 0));
        var length = Op("Gather", tableShape, Int64([], 1));
        var batch = Op("Gather", Op("Shape", rotary.Input), Int64([], 0));
        // Row b of the heads reads table row b, or row 0 when the table has one row for every batch row.
        var tableRow = Op("Min", Op("Range", Int64([], 0), batch, Int64([], 1)), Op("Sub", rows, Int64([], 1)));
        var firstPosition = Op("Reshape", Op("Mul", tableRow, length), Int64([2], -1, 1));
        var positions = Op("Add", firstPosition, Op("Range", Int64([], 0), length, Int64([], 1)));

        string Cache(string table) =>
            Op("Reshape", Op("Slice", table, Int64([1], 0), Int64([1], rotary.Half), Int64([1], -1)), Int64([2], -1, rotary.Half));
        return (positions, Cache(rotary.CosTable), Cache(rotary.SinTable));
    }
}
