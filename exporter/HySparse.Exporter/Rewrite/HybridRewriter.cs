using System.Globalization;
using HySparse.Exporter.Layout;
using HySparse.Exporter.Recognition;
using HySparse.Graph;
using HySparse.Onnx;
using Onnx;

namespace HySparse.Exporter.Rewrite;

/// <summary>
/// Replaces recognised attention layers by <c>HySparseFullAttn</c> / <c>HySparseSparseAttn</c> nodes
/// in place. Only graph structure changes: the op nodes take the place of each layer's matched
/// nodes, producing the layer's attention output and present caches under their original names;
/// nodes and initializers that only fed the replaced subgraphs (the additive mask, scale constants)
/// are dropped; what a fused operator did to its inputs itself (projecting and splitting packed QKV,
/// RoPE, taking a combined key/value cache apart and stacking it again) is added around the op as
/// separate nodes (<see cref="FusedInputRewrite"/>), as is the BNSH transpose
/// of a key the source transposed straight to Kᵀ (<see cref="AttentionLayer.KeyIsBsnh"/>); nothing else is touched,
/// except the declared length of some caches: with KV sharing the sparse layers' cache inputs and
/// outputs become window caches, and shared-buffer presents are declared as long as their buffer.
/// </summary>
internal static class HybridRewriter
{
    /// <summary>What the rewrite produced.</summary>
    /// <param name="Ops">The op node created for each layer, in layer order.</param>
    /// <param name="WindowCaches">Graph inputs then outputs that became window caches (KV sharing), in layer order.</param>
    public sealed record Result(IReadOnlyList<NodeProto> Ops, IReadOnlyList<string> WindowCaches);

    /// <summary>Rewrites <paramref name="model"/>; <paramref name="layers"/> are in graph order, one per layout entry.</summary>
    public static Result Apply(ModelProto model, IReadOnlyList<AttentionLayer> layers, LayerLayout layout, HybridParameters parameters)
    {
        if (layers.Count != layout.Count) throw new ArgumentException($"{layers.Count} layers but a layout for {layout.Count}");
        var graph = model.Graph;
        var usedNames = new HashSet<string>(graph.Node.SelectMany(n => n.Output).Concat(graph.Input.Select(i => i.Name))
            .Concat(graph.Initializer.Select(i => i.Name)), StringComparer.Ordinal);
        var usedNodeNames = new HashSet<string>(graph.Node.Select(n => n.Name), StringComparer.Ordinal);

        var selections = new string?[layers.Count];
        var ops = new NodeProto[layers.Count];
        var wiring = new OpWiring[layers.Count];
        var replacementAt = new Dictionary<NodeProto, List<NodeProto>>(ReferenceEqualityComparer.Instance);
        var removed = new HashSet<NodeProto>(ReferenceEqualityComparer.Instance);
        var position = new Dictionary<NodeProto, int>(ReferenceEqualityComparer.Instance);
        for (var i = 0; i < graph.Node.Count; i++) position[graph.Node[i]] = i;
        var fusedInputs = new FusedInputRewrite(stem => Unique(usedNames, stem), stem => Unique(usedNodeNames, stem), DefaultOpset(model));
        var masks = MasksAsInt64(graph, layers, usedNames, usedNodeNames, out var maskCasts);

        for (var i = 0; i < layers.Count; i++)
        {
            var layer = layers[i];
            var label = (layer.CacheIndex ?? i).ToString(CultureInfo.InvariantCulture);
            var scope = ScopeOf(layer.AnchorNode);
            var nodes = new List<NodeProto>();
            wiring[i] = Wire(layer, fusedInputs, label, scope, nodes, usedNames, usedNodeNames) with
            {
                AttentionMask = layer.AttentionMask is { } mask ? masks[mask] : null,
            };
            NodeProto op;
            if (layout.Kinds[i] == LayerKind.Full)
            {
                if (layout.FeedsSparseLayers(i)) selections[i] = Unique(usedNames, $"hysparse.layers.{label}.block_indices");
                op = FullNode(layer, wiring[i], selections[i], parameters);
            }
            else
            {
                var oracle = layout.OracleOf(i);
                op = SparseNode(layer, wiring[i], wiring[oracle], selections[oracle]!, parameters);
            }
            op.Name = Unique(usedNodeNames, $"{scope}/{op.OpType}");
            ops[i] = op;
            nodes.Add(op);
            if (layer.Combined is { } combined) fusedInputs.StackCombinedPresent(combined, wiring[i].PresentKey, wiring[i].PresentValue, scope, nodes);
            removed.UnionWith(layer.ReplacedNodes);
            // The op goes where the last replaced node was: every input of the layer exists by then.
            replacementAt[layer.ReplacedNodes.MaxBy(n => position[n])!] = nodes;
        }

        var rebuilt = new List<NodeProto>(graph.Node.Count);
        foreach (var node in graph.Node)
        {
            if (replacementAt.TryGetValue(node, out var replacement)) rebuilt.AddRange(replacement);
            else if (!removed.Contains(node)) rebuilt.Add(node);
        }
        rebuilt.InsertRange(0, maskCasts);
        var dropped = DropOrphans(graph, rebuilt, removed);
        graph.Node.Clear();
        graph.Node.AddRange(TopologicalOrder(graph, rebuilt));
        PruneValueInfoAndInitializers(graph, dropped);

        var windowCaches = new List<string>();
        if (parameters.Mode == HybridMode.KvSharing)
        {
            // A layer without cache inputs and outputs (an export without KV cache) changes no interface.
            var sparse = Enumerable.Range(0, layers.Count).Where(i => layout.Kinds[i] == LayerKind.Sparse && layers[i].HasKvCache)
                .Select(i => layers[i]).ToList();
            windowCaches.AddRange(sparse.SelectMany(l => new[] { l.PastKey, l.PastValue, l.Combined?.Past }).OfType<string>());
            windowCaches.AddRange(sparse.SelectMany(l => new[] { l.PresentKey, l.PresentValue, l.Combined?.Present }).OfType<string>());
            DeclareWindowCaches(graph, sparse);
        }

        DeclareBufferPresents(graph, layers.Where(l => l.Buffer is not null));
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = HySparseOps.Domain, Version = HySparseOps.DomainVersion });
        if (fusedInputs.UsesMicrosoftDomain && !model.OpsetImport.Any(o => o.Domain == MicrosoftDomain))
            model.OpsetImport.Add(new OperatorSetIdProto { Domain = MicrosoftDomain, Version = 1 });
        return new Result(ops, windowCaches);
    }

    /// <summary>
    /// Gives the sparse layers' cache inputs and outputs their window length along the length axis
    /// (2 of [B,H,T,D], 3 of a combined [2,B,H,T,D]) in every declaration (graph inputs, outputs, value
    /// infos): they no longer share the full layers' past/total length, and a declared length that
    /// disagrees with the real one would make ONNX Runtime reject the feeds or warn on every output.
    /// </summary>
    private static void DeclareWindowCaches(GraphProto graph, IEnumerable<AttentionLayer> sparseLayers)
    {
        var dims = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var layer in sparseLayers)
        {
            foreach (var past in new[] { layer.PastKey, layer.PastValue, layer.Combined?.Past }.OfType<string>()) dims[past] = HybridMetadata.PastWindowDim;
            foreach (var present in new[] { layer.PresentKey, layer.PresentValue, layer.Combined?.Present }.OfType<string>()) dims[present] = HybridMetadata.PresentWindowDim;
        }
        foreach (var info in graph.Input.Concat(graph.Output).Concat(graph.ValueInfo))
        {
            if (!dims.TryGetValue(info.Name, out var symbol)) continue;
            if (info.Type?.TensorType?.Shape?.Dim is { Count: 4 or 5 } shape) shape[^2] = new TensorShapeProto.Types.Dimension { DimParam = symbol };
        }
    }

    /// <summary>
    /// A shared buffer's present is the buffer itself, as long as the past (its capacity), not
    /// past + new as exporters declare it: declaring the past's length tells callers to bind one
    /// buffer to both, and keeps ONNX Runtime from comparing the output with a length it never has.
    /// </summary>
    private static void DeclareBufferPresents(GraphProto graph, IEnumerable<AttentionLayer> bufferLayers)
    {
        var pastOf = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var layer in bufferLayers)
        {
            if (layer.PresentKey is { } presentKey && layer.PastKey is { } pastKey) pastOf[presentKey] = pastKey;
            if (layer.PresentValue is { } presentValue && layer.PastValue is { } pastValue) pastOf[presentValue] = pastValue;
        }
        var inputs = graph.Input.ToDictionary(i => i.Name, StringComparer.Ordinal);
        foreach (var info in graph.Output.Concat(graph.ValueInfo))
        {
            if (!pastOf.TryGetValue(info.Name, out var past) || !inputs.TryGetValue(past, out var pastInfo)) continue;
            if (info.Type?.TensorType?.Shape?.Dim is { Count: 4 } shape && pastInfo.Type?.TensorType?.Shape?.Dim is { Count: 4 } pastShape)
                shape[2] = pastShape[2].Clone();
        }
    }

    private const string MicrosoftDomain = "com.microsoft";

    private static long DefaultOpset(ModelProto model) =>
        model.OpsetImport.FirstOrDefault(o => o.Domain is "" or "ai.onnx")?.Version ?? 0;

    /// <summary>The tensors an op node reads as its query, key, value, past caches and padding mask and writes as its present caches.</summary>
    private sealed record OpWiring(string Query, string Key, string Value, string? PastKey, string? PastValue, string PresentKey, string PresentValue)
    {
        /// <summary>The int64 padding mask the op reads, or null.</summary>
        public string? AttentionMask { get; init; }
    }

    /// <summary>
    /// The int64 tensor each layer's padding mask graph input becomes for the ops: itself when it is
    /// int64, else one <c>Cast</c> (in <paramref name="casts"/>, to go first in the graph) shared by every
    /// layer that reads it.
    /// </summary>
    private static Dictionary<string, string> MasksAsInt64(GraphProto graph, IEnumerable<AttentionLayer> layers, HashSet<string> usedNames,
        HashSet<string> usedNodeNames, out List<NodeProto> casts)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        casts = [];
        foreach (var mask in layers.Select(l => l.AttentionMask).OfType<string>().Distinct(StringComparer.Ordinal))
        {
            var type = graph.Input.FirstOrDefault(i => i.Name == mask)?.Type?.TensorType?.ElemType;
            if (type is null or (int)TensorProto.Types.DataType.Int64)
            {
                result[mask] = mask;
                continue;
            }
            var cast = new NodeProto { OpType = "Cast", Name = Unique(usedNodeNames, "/hysparse/attention_mask/Cast") };
            cast.Input.Add(mask);
            cast.Output.Add(result[mask] = Unique(usedNames, $"hysparse.{mask}_int64"));
            cast.Attribute.Add(Attr.Int("to", (long)TensorProto.Types.DataType.Int64));
            casts.Add(cast);
        }
        return result;
    }

    /// <summary>
    /// Names the op's inputs and present outputs, adding to <paramref name="nodes"/> (to go in before
    /// the op) what computes them: the query, key and value as <paramref name="fusedInputs"/> prepares
    /// them, a Transpose to BNSH of a [B,S,H,D] key, and the halves of a combined past. A layer without
    /// separate present caches gets fresh names for the op's required present outputs: nothing reads
    /// them (a sparse layer with KV sharing reads its full layer's), or they are stacked into the
    /// combined present after the op.
    /// </summary>
    private static OpWiring Wire(AttentionLayer layer, FusedInputRewrite fusedInputs, string label, string scope,
        List<NodeProto> nodes, HashSet<string> usedNames, HashSet<string> usedNodeNames)
    {
        var qkv = fusedInputs.Prepare(layer, scope, nodes);
        var (pastKey, pastValue) = layer.Combined is { } combined ? fusedInputs.SplitCombinedPast(combined, scope, nodes) : (layer.PastKey, layer.PastValue);
        var key = qkv.Key;
        if (layer.KeyIsBsnh)
        {
            key = Unique(usedNames, $"hysparse.layers.{label}.key_bnsh");
            var transpose = new NodeProto { OpType = "Transpose", Name = Unique(usedNodeNames, $"{scope}/hysparse_key_bnsh/Transpose") };
            transpose.Input.Add(qkv.Key);
            transpose.Output.Add(key);
            transpose.Attribute.Add(Attr.Ints("perm", 0, 2, 1, 3));
            nodes.Add(transpose);
        }
        return new OpWiring(qkv.Query, key, qkv.Value, pastKey, pastValue,
            layer.PresentKey ?? Unique(usedNames, $"hysparse.layers.{label}.present_key"),
            layer.PresentValue ?? Unique(usedNames, $"hysparse.layers.{label}.present_value"));
    }

    private static NodeProto FullNode(AttentionLayer layer, OpWiring wiring, string? selection, HybridParameters parameters)
    {
        var node = new NodeProto { OpType = HySparseOps.FullAttn, Domain = HySparseOps.Domain };
        node.Input.AddRange([wiring.Query, wiring.Key, wiring.Value, wiring.PastKey ?? "", wiring.PastValue ?? "", wiring.AttentionMask ?? "",
            layer.Buffer?.SeqlensK ?? "", layer.Buffer?.TotalSequenceLength ?? ""]);
        TrimOptionalInputs(node);
        node.Output.AddRange([layer.Output, wiring.PresentKey, wiring.PresentValue]);
        if (selection is not null) node.Output.Add(selection);
        node.Attribute.AddRange(CommonAttributes(layer, parameters));
        node.Attribute.Add(Attr.Int(HySparseOps.Attributes.TopK, parameters.TopK));
        return node;
    }

    private static NodeProto SparseNode(AttentionLayer layer, OpWiring wiring, OpWiring oracle, string selection, HybridParameters parameters)
    {
        var node = new NodeProto { OpType = HySparseOps.SparseAttn, Domain = HySparseOps.Domain };
        // Retrofit: no shared_key/shared_value (inputs 5, 6); the SA branch reads the layer's own
        // full-length cache. KV sharing: the SA branch reads the oracle's present cache (which also
        // tells the op T), and the layer's own cache only has to serve the window.
        var sharing = parameters.Mode == HybridMode.KvSharing;
        // Shared-buffer layers (GroupQueryAttention) pass seqlens_k and total_sequence_length on as
        // inputs 13 and 14; the inputs between (gate, sinks, selected KV) stay omitted.
        node.Input.AddRange([wiring.Query, wiring.Key, wiring.Value, wiring.PastKey ?? "", wiring.PastValue ?? "",
            sharing ? oracle.PresentKey : "", sharing ? oracle.PresentValue : "", selection, wiring.AttentionMask ?? "",
            "", "", "", "", layer.Buffer?.SeqlensK ?? "", layer.Buffer?.TotalSequenceLength ?? ""]);
        TrimOptionalInputs(node);
        node.Output.AddRange([layer.Output, wiring.PresentKey, wiring.PresentValue]);
        node.Attribute.AddRange(CommonAttributes(layer, parameters));
        node.Attribute.Add(Attr.Int(HySparseOps.Attributes.Window, parameters.Window));
        node.Attribute.Add(Attr.String(HySparseOps.Attributes.Combine, HySparseOps.CombineModes.Union));
        node.Attribute.Add(Attr.Int(HySparseOps.Attributes.WindowCache, sharing ? 1 : 0));
        return node;
    }

    private static IEnumerable<AttributeProto> CommonAttributes(AttentionLayer layer, HybridParameters parameters) =>
    [
        Attr.Int(HySparseOps.Attributes.NumHeads, layer.NumHeads),
        Attr.Int(HySparseOps.Attributes.KvNumHeads, layer.KvNumHeads),
        // Always explicit: the source's scale may differ from the op's 1/√D default (folded into Q, say).
        Attr.Float(HySparseOps.Attributes.Scale, layer.Scale),
        Attr.Int(HySparseOps.Attributes.BlockSize, parameters.BlockSize),
    ];

    /// <summary>ONNX marks omitted trailing optional inputs by leaving them out, not by empty names.</summary>
    private static void TrimOptionalInputs(NodeProto node)
    {
        while (node.Input.Count > 0 && node.Input[^1].Length == 0) node.Input.RemoveAt(node.Input.Count - 1);
    }

    /// <summary>
    /// Removes nodes whose outputs nothing reads any more because the replaced subgraphs were their
    /// only readers (the mask construction, scale constants), transitively. Nodes that were already
    /// dead in the source stay: the rewrite only cleans up after itself.
    /// </summary>
    internal static HashSet<NodeProto> DropOrphans(GraphProto graph, List<NodeProto> nodes, HashSet<NodeProto> removed)
    {
        var producers = new Dictionary<string, NodeProto>(StringComparer.Ordinal);
        foreach (var node in nodes)
            foreach (var output in node.Output.Where(o => o.Length > 0)) producers[output] = node;
        var readers = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var input in nodes.SelectMany(n => n.Input).Where(n => n.Length > 0)) readers[input] = readers.GetValueOrDefault(input) + 1;
        var graphOutputs = graph.Output.Select(o => o.Name).ToHashSet(StringComparer.Ordinal);

        var dropped = new HashSet<NodeProto>(removed, ReferenceEqualityComparer.Instance);
        var pending = new Stack<NodeProto>(removed.SelectMany(n => n.Input).Where(producers.ContainsKey).Select(n => producers[n]));
        while (pending.Count > 0)
        {
            var node = pending.Pop();
            if (dropped.Contains(node) || node.Output.Any(o => readers.GetValueOrDefault(o) > 0 || graphOutputs.Contains(o))) continue;
            dropped.Add(node);
            foreach (var input in node.Input.Where(n => n.Length > 0))
            {
                readers[input]--;
                if (producers.TryGetValue(input, out var producer)) pending.Push(producer);
            }
        }
        nodes.RemoveAll(dropped.Contains);
        return dropped;
    }

    internal static void PruneValueInfoAndInitializers(GraphProto graph, HashSet<NodeProto> dropped)
    {
        var produced = graph.Node.SelectMany(n => n.Output).ToHashSet(StringComparer.Ordinal);
        var read = graph.Node.SelectMany(n => n.Input).Concat(graph.Output.Select(o => o.Name)).ToHashSet(StringComparer.Ordinal);
        var gone = dropped.SelectMany(n => n.Output).Where(o => !produced.Contains(o)).ToHashSet(StringComparer.Ordinal);
        foreach (var info in graph.ValueInfo.Where(v => gone.Contains(v.Name)).ToList()) graph.ValueInfo.Remove(info);

        // An initializer that only the dropped nodes read goes too; one declared as a graph input stays
        // (removing it would change the model's interface).
        var inputs = graph.Input.Select(i => i.Name).ToHashSet(StringComparer.Ordinal);
        var orphaned = dropped.SelectMany(n => n.Input).Where(n => !read.Contains(n) && !inputs.Contains(n)).ToHashSet(StringComparer.Ordinal);
        foreach (var initializer in graph.Initializer.Where(i => orphaned.Contains(i.Name)).ToList()) graph.Initializer.Remove(initializer);
    }

    /// <summary>
    /// Kahn's algorithm taking ready nodes in their current order, so an already sorted list comes out
    /// unchanged.
    /// </summary>
    private static List<NodeProto> TopologicalOrder(GraphProto graph, List<NodeProto> nodes)
    {
        var producerIndex = new Dictionary<string, int>(StringComparer.Ordinal);
        for (var i = 0; i < nodes.Count; i++)
            foreach (var output in nodes[i].Output.Where(o => o.Length > 0)) producerIndex[output] = i;
        var waiting = new int[nodes.Count];
        var dependents = new List<int>[nodes.Count];
        for (var i = 0; i < nodes.Count; i++) dependents[i] = [];
        for (var i = 0; i < nodes.Count; i++)
        {
            foreach (var input in nodes[i].Input.Distinct())
            {
                if (input.Length == 0 || !producerIndex.TryGetValue(input, out var p) || p == i) continue;
                waiting[i]++;
                dependents[p].Add(i);
            }
        }
        var ready = new PriorityQueue<int, int>();
        for (var i = 0; i < nodes.Count; i++)
            if (waiting[i] == 0) ready.Enqueue(i, i);
        var order = new List<NodeProto>(nodes.Count);
        while (ready.TryDequeue(out var i, out _))
        {
            order.Add(nodes[i]);
            foreach (var d in dependents[i])
                if (--waiting[d] == 0) ready.Enqueue(d, d);
        }
        if (order.Count != nodes.Count) throw new InvalidOperationException($"graph '{graph.Name}' has a cycle after the rewrite");
        return order;
    }

    internal static string ScopeOf(string nodeName)
    {
        var slash = nodeName.LastIndexOf('/');
        return slash > 0 ? nodeName[..slash] : "/hysparse";
    }

    internal static string Unique(HashSet<string> used, string stem)
    {
        var name = stem;
        for (var n = 1; !used.Add(name); n++) name = $"{stem}_{n}";
        return name;
    }
}
