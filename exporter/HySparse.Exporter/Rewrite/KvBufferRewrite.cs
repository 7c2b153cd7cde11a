using HySparse.Exporter.Recognition;
using HySparse.Graph;
using HySparse.Onnx;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Rewrite;

/// <summary>
/// <c>--kv-buffer</c>: turns layers whose caches are concatenated (<c>present = Concat(past, new)</c>)
/// into shared-buffer layers (docs/ops.md, "Shared KV buffer"), so that a decode step writes its new
/// tokens into a fixed-capacity buffer instead of copying the whole cache. <c>seqlens_k</c> and
/// <c>total_sequence_length</c> are computed once from <c>attention_mask</c> [B, T]:
/// <c>total_b = Σ_j mask[b, j]</c>, <c>seqlens_k = total_b − 1</c>, <c>total_sequence_length = max_b total_b</c>.
/// That is exact for every row whose padding is only on the right of the first prompt (its real
/// tokens then sit at [0, total_b) of the buffer); left padding has no shared-buffer equivalent.
/// </summary>
internal static class KvBufferRewrite
{
    /// <summary>The symbolic length (capacity) of every converted cache input and output.</summary>
    public const string CapacityDim = "max_sequence_length";

    /// <summary>
    /// Checks that <paramref name="layers"/> can use buffers (throwing a
    /// <see cref="ConversionException"/> otherwise, the model untouched) and returns them with their
    /// <see cref="AttentionLayer.Buffer"/> set; layers that already have one (GroupQueryAttention) stay as they are.
    /// Nothing in the model changes until <see cref="Apply"/>.
    /// </summary>
    public static IReadOnlyList<AttentionLayer> Plan(ModelProto model, IReadOnlyList<AttentionLayer> layers, HybridParameters parameters,
        out SharedKvBuffer buffer)
    {
        if (parameters.Mode == HybridMode.KvSharing)
            throw new ConversionException(ConversionError.UnconvertibleLayers,
                $"--kv-buffer cannot be combined with --kv-sharing: {layers.Count} layer(s) would keep their cache in a shared fixed-capacity buffer, first: {layers[0].AnchorNode}",
                layers.Select(l => new UnconvertibleLayer(l.AnchorNode,
                    "--kv-buffer with --kv-sharing: the HySparse ops have no window cache in shared-buffer mode, so a sparse layer would keep its whole buffer and save nothing; " +
                    "drop --kv-sharing (retrofit) or --kv-buffer")).ToList());
        var combined = layers.Where(l => l.Combined is not null).ToList();
        if (combined.Count > 0)
            throw new ConversionException(ConversionError.UnconvertibleLayers,
                $"--kv-buffer: {combined.Count} layer(s) keep keys and values in one combined cache, first: {combined[0].AnchorNode}",
                combined.Select(l => new UnconvertibleLayer(l.AnchorNode,
                    $"--kv-buffer: the layer's combined past/present cache '{l.Combined!.Past}' [2, B, H, T, D] is rebuilt from the op's key and value caches by a Concat every call, " +
                    "so it cannot be a buffer the ops update in place; convert without --kv-buffer")).ToList());
        var uncached = layers.Where(l => l.PastKey is null || l.PastValue is null || l.PresentKey is null || l.PresentValue is null).ToList();
        if (uncached.Count > 0)
            throw new ConversionException(ConversionError.UnconvertibleLayers,
                $"--kv-buffer: {uncached.Count} layer(s) have no KV cache to keep in a buffer, first: {uncached[0].AnchorNode}",
                uncached.Select(l => new UnconvertibleLayer(l.AnchorNode,
                    "--kv-buffer: the layer has no past/present KV cache (an export without cache); there is no cache to update in place, convert without --kv-buffer")).ToList());
        var mask = model.Graph.Input.FirstOrDefault(i => i.Name == DecomposedAttentionPattern.AttentionMaskInput);
        var concatenated = layers.Where(l => l.Buffer is null).ToList();
        if (concatenated.Count > 0 && mask is null)
            throw new ConversionException(ConversionError.UnconvertibleLayers,
                $"--kv-buffer: the model has no '{DecomposedAttentionPattern.AttentionMaskInput}' input to derive each row's length from",
                concatenated.Select(l => new UnconvertibleLayer(l.AnchorNode,
                    $"--kv-buffer: seqlens_k is computed from the '{DecomposedAttentionPattern.AttentionMaskInput}' graph input, which this model does not have")).ToList());
        var leftReaders = PastReadersLeft(model.Graph, layers, concatenated,
            "--kv-buffer turns it into a buffer of fixed capacity; the node would see the capacity instead of the past length");
        if (leftReaders.Count > 0)
            throw new ConversionException(ConversionError.UnconvertibleLayers,
                $"--kv-buffer: {leftReaders.Count} node(s) outside the attention layers read a past cache, whose length would become the buffer's capacity, first: {leftReaders[0]}",
                leftReaders);

        var used = new HashSet<string>(model.Graph.Node.SelectMany(n => n.Output).Concat(model.Graph.Input.Select(i => i.Name))
            .Concat(model.Graph.Initializer.Select(i => i.Name)), StringComparer.Ordinal);
        buffer = new SharedKvBuffer(Unique(used, "hysparse.kv_buffer.seqlens_k"), Unique(used, "hysparse.kv_buffer.total_sequence_length"));
        var shared = buffer;
        return layers.Select(l => l.Buffer is null ? l with { Buffer = shared, AttentionMask = null } : l).ToList();
    }

    /// <summary>
    /// Adds the nodes computing <paramref name="buffer"/>'s tensors from <c>attention_mask</c> (first in
    /// the graph: they read only a graph input) and declares every converted cache input with the
    /// capacity dimension <see cref="CapacityDim"/>. Call before the layers are rewritten, so the
    /// presents take the pasts' declaration.
    /// </summary>
    public static void Apply(ModelProto model, IReadOnlyList<AttentionLayer> layers, SharedKvBuffer buffer)
    {
        var graph = model.Graph;
        var used = new HashSet<string>(graph.Node.SelectMany(n => n.Output).Concat(graph.Input.Select(i => i.Name))
            .Concat(graph.Initializer.Select(i => i.Name)), StringComparer.Ordinal);
        var usedNodes = new HashSet<string>(graph.Node.Select(n => n.Name), StringComparer.Ordinal);
        var opset = model.OpsetImport.FirstOrDefault(o => o.Domain is "" or "ai.onnx")?.Version ?? 0;
        var nodes = new List<NodeProto>();
        NodeProto Node(string opType, string output, params string[] inputs)
        {
            var node = new NodeProto { OpType = opType, Name = Unique(usedNodes, $"/hysparse/kv_buffer/{opType}") };
            node.Input.AddRange(inputs);
            node.Output.Add(output);
            nodes.Add(node);
            return node;
        }

        var mask32 = Unique(used, "hysparse.kv_buffer.attention_mask_int32");
        Node("Cast", mask32, DecomposedAttentionPattern.AttentionMaskInput).Attribute.Add(Attr.Int("to", (long)DataType.Int32));
        // int32 sums: a row of the mask never holds 2³¹ tokens.
        var totals = Unique(used, "hysparse.kv_buffer.total_per_row");
        if (opset >= 13)
        {
            var axes = Unique(used, "hysparse.kv_buffer.sequence_axis");
            graph.Initializer.Add(Tensors.Int64(axes, [1], [1L]));
            Node("ReduceSum", totals, mask32, axes).Attribute.Add(Attr.Int("keepdims", 0));
        }
        else
        {
            var sum = Node("ReduceSum", totals, mask32);
            sum.Attribute.Add(Attr.Ints("axes", 1));
            sum.Attribute.Add(Attr.Int("keepdims", 0));
        }
        var one = CheckedOne(graph, used, Node);
        Node("Sub", buffer.SeqlensK, totals, one);
        // No axes: the largest row total, as a scalar.
        Node("ReduceMax", buffer.TotalSequenceLength, totals).Attribute.Add(Attr.Int("keepdims", 0));

        for (var i = nodes.Count - 1; i >= 0; i--) graph.Node.Insert(0, nodes[i]);

        var pasts = layers.Where(l => ReferenceEquals(l.Buffer, buffer)).SelectMany(l => new[] { l.PastKey!, l.PastValue! }).ToHashSet(StringComparer.Ordinal);
        foreach (var input in graph.Input.Where(i => pasts.Contains(i.Name)))
            if (input.Type?.TensorType?.Shape?.Dim is { Count: 4 } shape) shape[2] = new TensorShapeProto.Types.Dimension { DimParam = CapacityDim };
    }

    /// <summary>Name of the node that refuses, at run time, a mask the buffers cannot honour; ONNX Runtime's error names it.</summary>
    public const string MaskCheckNode = "hysparse.kv_buffer: attention_mask must hold only 0 and 1 and start with 1 in every row, mark new tokens 1s then 0s, and after a past every new token 1 (--kv-buffer models take right-padded prompts only)";

    /// <summary>
    /// The constant 1 that turns row totals into <c>seqlens_k</c>, read through a check of
    /// <c>attention_mask</c>: <c>Gather([1], bad)</c>, where <c>bad</c> counts the failed rules (a value
    /// other than 0/1; a row starting with 0, i.e. left padding; among the new tokens a 0 followed by a
    /// 1, a hole; with a past, i.e. more mask columns than <c>input_ids</c> has tokens, a new token marked 0 — its
    /// row's length, the mask's sum, would not grow, and the token would be written over the row's last
    /// real one). Totals taken from such a mask would
    /// put tokens at the wrong buffer positions and give wrong logits silently; instead the Gather's
    /// index leaves its one-element data and ONNX Runtime fails the run with an error naming the node,
    /// whose name (<see cref="MaskCheckNode"/>) states the rule. The ops take no mask in shared-buffer
    /// mode (docs/ops.md), so the check lives in the graph.
    /// </summary>
    private static string CheckedOne(GraphProto graph, HashSet<string> used, Func<string, string, string[], NodeProto> node)
    {
        string Constant(string name, Func<string, TensorProto> make)
        {
            var unique = Unique(used, name);
            graph.Initializer.Add(make(unique));
            return unique;
        }
        string Op(string opType, string name, params string[] inputs) => node(opType, Unique(used, name), inputs).Output[0];
        var mask = DecomposedAttentionPattern.AttentionMaskInput;
        var zero64 = Constant("hysparse.kv_buffer.zero_int64", n => Tensors.Int64(n, [], [0L]));
        var one64 = Constant("hysparse.kv_buffer.one_int64", n => Tensors.Int64(n, [], [1L]));
        var oneData = Constant("hysparse.kv_buffer.one", n => Tensors.Int32(n, [1], [1]));

        var isBinary = Op("Or", "hysparse.kv_buffer.mask_is_binary", Op("Equal", "hysparse.kv_buffer.mask_is_zero", mask, zero64), Op("Equal", "hysparse.kv_buffer.mask_is_one", mask, one64));
        var notBinary = Op("Not", "hysparse.kv_buffer.mask_not_binary", isBinary);
        var first = node("Gather", Unique(used, "hysparse.kv_buffer.mask_first_column"), [mask, zero64]);
        first.Attribute.Add(Attr.Int("axis", 1));
        var leftPadded = Op("Equal", "hysparse.kv_buffer.mask_left_padded", first.Output[0], zero64);
        // Reduces a boolean tensor to an int32 scalar: ReduceMax (any) or ReduceSum (count; 0 for an empty slice).
        string Reduce(string reduceOp, string flags, string name)
        {
            var asInt = node("Cast", Unique(used, name + "_int32"), [flags]);
            asInt.Attribute.Add(Attr.Int("to", (long)DataType.Int32));
            var reduced = node(reduceOp, Unique(used, name), [asInt.Output[0]]);
            reduced.Attribute.Add(Attr.Int("keepdims", 0));
            return reduced.Output[0];
        }
        string Any(string flags, string name) => Reduce("ReduceMax", flags, name);
        string Count(string flags, string name) => Reduce("ReduceSum", flags, name);
        var index0 = Constant("hysparse.kv_buffer.index_0", n => Tensors.Int64(n, [1], [0L]));
        var index1 = Constant("hysparse.kv_buffer.index_1", n => Tensors.Int64(n, [1], [1L]));
        var indexMinus1 = Constant("hysparse.kv_buffer.index_minus_1", n => Tensors.Int64(n, [1], [-1L]));
        var indexMax = Constant("hysparse.kv_buffer.index_max", n => Tensors.Int64(n, [1], [long.MaxValue]));
        var bad = Op("Add", "hysparse.kv_buffer.mask_rules_broken", Any(notBinary, "hysparse.kv_buffer.mask_any_not_binary"), Any(leftPadded, "hysparse.kv_buffer.mask_any_left_padded"));
        // The rules on the new tokens need their count, input_ids' width. (Zeros in the past columns are
        // fine: a right-padded prompt followed by decode steps leaves them, and the buffers hold them.)
        if (graph.Input.Any(i => i.Name == DecoderNames.InputIds))
        {
            // S new tokens (input_ids' width) and T mask columns: with T > S there is a past.
            string Width(string tensor, string name)
            {
                var gather = node("Gather", Unique(used, name), [Op("Shape", name + "_shape", tensor), index1]);
                gather.Attribute.Add(Attr.Int("axis", 0));
                return gather.Output[0];
            }
            var newTokens = Width(DecoderNames.InputIds, "hysparse.kv_buffer.new_tokens");
            var columns = Width(mask, "hysparse.kv_buffer.mask_columns");
            var newColumns = Op("Slice", "hysparse.kv_buffer.mask_new_tokens", mask, Op("Neg", "hysparse.kv_buffer.minus_new_tokens", newTokens), indexMax, index1);
            var later = Op("Slice", "hysparse.kv_buffer.mask_new_from_second", newColumns, index1, indexMax, index1);
            var earlier = Op("Slice", "hysparse.kv_buffer.mask_new_to_last_but_one", newColumns, index0, indexMinus1, index1);
            var holes = Count(Op("Less", "hysparse.kv_buffer.mask_new_zero_then_one", earlier, later), "hysparse.kv_buffer.mask_new_holes");
            bad = Op("Add", "hysparse.kv_buffer.mask_rules_broken_or_holes", bad, holes);
            var newPadding = Count(Op("Equal", "hysparse.kv_buffer.mask_new_token_is_zero", newColumns, zero64), "hysparse.kv_buffer.mask_new_padding");
            var hasPast = node("Cast", Unique(used, "hysparse.kv_buffer.has_past_int32"), [Op("Greater", "hysparse.kv_buffer.has_past", columns, newTokens)]);
            hasPast.Attribute.Add(Attr.Int("to", (long)DataType.Int32));
            var paddingAfterPast = node("ReduceSum", Unique(used, "hysparse.kv_buffer.mask_padding_after_past"),
                [Op("Mul", "hysparse.kv_buffer.mask_padding_after_past_per_row", newPadding, hasPast.Output[0])]);
            paddingAfterPast.Attribute.Add(Attr.Int("keepdims", 0));
            bad = Op("Add", "hysparse.kv_buffer.mask_all_rules_broken", bad, paddingAfterPast.Output[0]);
        }
        var check = node("Gather", Unique(used, "hysparse.kv_buffer.one_checked"), [oneData, bad]);
        check.Name = MaskCheckNode;
        return check.Output[0];
    }

    /// <summary>
    /// Nodes that would stay in the graph after the rewrite and read a past cache of a
    /// <paramref name="converted"/> layer: with buffers they would see the capacity where they expect
    /// the past length (a position computed from the cache's shape, say), and the other way round. Only
    /// nodes some graph output or some layer input still depends on count; the mask construction the
    /// ops replace does not.
    /// </summary>
    /// <param name="graph">The graph before the rewrite.</param>
    /// <param name="layers">Every recognised layer (their replaced nodes do not count).</param>
    /// <param name="converted">The layers whose caches change convention.</param>
    /// <param name="why">What the conversion does to the cache and what the node would then see.</param>
    internal static List<UnconvertibleLayer> PastReadersLeft(GraphProto graph, IReadOnlyList<AttentionLayer> layers, IReadOnlyList<AttentionLayer> converted, string why)
    {
        var pasts = converted.SelectMany(l => new[] { l.PastKey!, l.PastValue! }).ToHashSet(StringComparer.Ordinal);
        var replaced = new HashSet<NodeProto>(layers.SelectMany(l => l.ReplacedNodes), ReferenceEqualityComparer.Instance);
        var producers = new Dictionary<string, NodeProto>(StringComparer.Ordinal);
        foreach (var node in graph.Node.Where(n => !replaced.Contains(n)))
            foreach (var output in node.Output.Where(o => o.Length > 0)) producers[output] = node;
        var pending = new Stack<string>(graph.Output.Select(o => o.Name)
            .Concat(layers.SelectMany(l => new[] { l.Query, l.Key, l.Value, l.Inputs?.Rotary?.CosCache, l.Inputs?.Rotary?.SinCache, l.Inputs?.Rotary?.SeqlensK, l.Inputs?.QkvBias }))
            .OfType<string>().Where(n => n.Length > 0));
        var live = new HashSet<NodeProto>(ReferenceEqualityComparer.Instance);
        while (pending.Count > 0)
        {
            if (!producers.TryGetValue(pending.Pop(), out var node) || !live.Add(node)) continue;
            foreach (var input in node.Input.Where(i => i.Length > 0)) pending.Push(input);
        }
        return graph.Node.Where(live.Contains).Where(n => n.Input.Any(pasts.Contains))
            .Select(n => new UnconvertibleLayer(AttentionMatch.NodeLabel(n),
                $"reads past cache '{n.Input.First(pasts.Contains)}': {why}")).ToList();
    }

    private static string Unique(HashSet<string> used, string stem)
    {
        var name = stem;
        for (var i = 1; !used.Add(name); i++) name = $"{stem}_{i}";
        return name;
    }
}
