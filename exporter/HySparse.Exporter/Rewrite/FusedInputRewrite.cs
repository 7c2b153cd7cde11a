using HySparse.Exporter.Recognition;
using HySparse.Graph;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Rewrite;

/// <summary>
/// Builds what a fused operator did to its inputs before attending, as separate nodes in front of the
/// HySparse op: the QKV projection (<c>MatMul</c>), <c>Split</c> of packed QKV,
/// <c>com.microsoft.RotaryEmbedding</c> on Q and K, and the projection bias (one <c>Add</c> on packed
/// QKV, or a <c>Split</c> of the bias and one <c>Add</c> each on Q, K and V); and, for combined
/// key/value caches, the halves of the past and the stacked present (<see cref="SplitCombinedPast"/>,
/// <see cref="StackCombinedPresent"/>). The
/// rotation's positions are derived from <c>seqlens_k</c> as GroupQueryAttention derives them
/// (docs/ops.md, "Shared KV buffer"): row b's new token s sits at <c>p_b + s</c> with
/// <c>p_b = max(0, seqlens_k[b] + 1 − S)</c>; they are built once per <c>seqlens_k</c> tensor and
/// shared by every layer.
/// </summary>
internal sealed class FusedInputRewrite(Func<string, string> uniqueTensor, Func<string, string> uniqueNode, long defaultOpset)
{
    private readonly NodeFactory _factory = new(uniqueTensor, uniqueNode);
    private const string MicrosoftDomain = "com.microsoft";
    private readonly Dictionary<string, string> _positions = new(StringComparer.Ordinal);

    /// <summary>True once a node of the <c>com.microsoft</c> domain has been emitted.</summary>
    public bool UsesMicrosoftDomain { get; private set; }

    /// <summary>
    /// The query, key and value the HySparse op of <paramref name="layer"/> reads, adding to
    /// <paramref name="nodes"/> whatever computes them.
    /// </summary>
    public (string Query, string Key, string Value) Prepare(AttentionLayer layer, string scope, List<NodeProto> nodes)
    {
        if (layer.Inputs is not { } inputs) return (layer.Query, layer.Key, layer.Value);
        var (query, key, value) = (layer.Query, layer.Key, layer.Value);
        if (inputs.QkvWeights is { } weights)
            query = NewNode("MatMul", "", $"{scope}/hysparse_qkv_projection", [query, weights], 1, nodes).Output[0];
        // Packed, the bias is one Add before the split; split, it is split to match.
        if (inputs.PackedQkv && inputs.QkvBias is { } packedBias)
            query = NewNode("Add", "", $"{scope}/hysparse_qkv_bias", [query, packedBias], 1, nodes).Output[0];
        if (inputs.PackedQkv) (query, key, value) = SplitLastAxis(query, layer, $"{scope}/hysparse_split_qkv", nodes);
        if (!inputs.PackedQkv && inputs.QkvBias is { } bias)
        {
            var (queryBias, keyBias, valueBias) = SplitLastAxis(bias, layer, $"{scope}/hysparse_split_bias", nodes);
            query = NewNode("Add", "", $"{scope}/hysparse_query_bias", [query, queryBias], 1, nodes).Output[0];
            key = NewNode("Add", "", $"{scope}/hysparse_key_bias", [key, keyBias], 1, nodes).Output[0];
            value = NewNode("Add", "", $"{scope}/hysparse_value_bias", [value, valueBias], 1, nodes).Output[0];
        }
        if (inputs.Rotary is { } rotary)
        {
            var positions = Positions(rotary.SeqlensK, query, scope, nodes);
            query = Rotate(query, layer.NumHeads, positions, rotary, $"{scope}/hysparse_rotary_query", nodes);
            key = Rotate(key, layer.KvNumHeads, positions, rotary, $"{scope}/hysparse_rotary_key", nodes);
        }
        return (query, key, value);
    }

    /// <summary>Splits <paramref name="tensor"/>'s last axis into the Q, K and V widths H_q·D, H_kv·D, H_kv·D.</summary>
    private (string, string, string) SplitLastAxis(string tensor, AttentionLayer layer, string name, List<NodeProto> nodes)
    {
        long queryWidth = (long)layer.NumHeads * layer.HeadSize, kvWidth = (long)layer.KvNumHeads * layer.HeadSize;
        // Split takes its sizes as an input from opset 13 on, as an attribute before.
        var sizesAsInput = defaultOpset >= 13;
        string[] inputs = sizesAsInput ? [tensor, Constant(Tensors.Int64("split", [3], [queryWidth, kvWidth, kvWidth]), $"{name}_sizes", nodes)] : [tensor];
        var split = NewNode("Split", "", name, inputs, 3, nodes);
        split.Attribute.Add(Attr.Int("axis", -1));
        if (!sizesAsInput) split.Attribute.Add(Attr.Ints("split", queryWidth, kvWidth, kvWidth));
        return (split.Output[0], split.Output[1], split.Output[2]);
    }

    /// <summary>
    /// The key and value halves [B,H,P,D] of the combined past [2,B,H,P,D] of <paramref name="cache"/>
    /// (one <c>Gather</c> each on axis 0), added to <paramref name="nodes"/>.
    /// </summary>
    public (string Key, string Value) SplitCombinedPast(CombinedKvCache cache, string scope, List<NodeProto> nodes)
    {
        string Half(long index, string part)
        {
            var gather = NewNode("Gather", "", $"{scope}/hysparse_past_{part}",
                [cache.Past, Constant(Tensors.Int64("index", [], [index]), $"{scope}/hysparse_past_{part}_index", nodes)], 1, nodes);
            gather.Attribute.Add(Attr.Int("axis", 0));
            return gather.Output[0];
        }
        return (Half(0, "key"), Half(1, "value"));
    }

    /// <summary>
    /// <paramref name="cache"/>'s combined present [2,B,H,T,D] stacked from the op's present key and
    /// value [B,H,T,D] (<c>Unsqueeze</c> on axis 0, then <c>Concat</c>), added to <paramref name="nodes"/>.
    /// </summary>
    public void StackCombinedPresent(CombinedKvCache cache, string presentKey, string presentValue, string scope, List<NodeProto> nodes)
    {
        // Unsqueeze takes its axes as an input from opset 13 on, as an attribute before.
        var axesAsInput = defaultOpset >= 13;
        string Lift(string tensor, string part)
        {
            var name = $"{scope}/hysparse_present_{part}";
            string[] inputs = axesAsInput ? [tensor, Constant(Tensors.Int64("axes", [1], [0L]), $"{name}_axes", nodes)] : [tensor];
            var unsqueeze = NewNode("Unsqueeze", "", name, inputs, 1, nodes);
            if (!axesAsInput) unsqueeze.Attribute.Add(Attr.Ints("axes", 0));
            return unsqueeze.Output[0];
        }
        var concat = new NodeProto { OpType = "Concat", Name = uniqueNode($"{scope}/hysparse_present") };
        concat.Input.AddRange([Lift(presentKey, "key"), Lift(presentValue, "value")]);
        concat.Output.Add(cache.Present);
        concat.Attribute.Add(Attr.Int("axis", 0));
        nodes.Add(concat);
    }

    /// <summary>int64 [B,S] positions of the new tokens from seqlens_k (int32 [B]) and S = query.shape[1].</summary>
    private string Positions(string seqlensK, string query, string scope, List<NodeProto> nodes)
    {
        if (_positions.TryGetValue(seqlensK, out var existing)) return existing;
        var stem = $"{scope}/hysparse_positions";
        string Op(string opType, params string[] inputs) => NewNode(opType, "", $"{stem}/{opType}", inputs, 1, nodes).Output[0];
        string Int64(long[] dims, params long[] values) => Constant(Tensors.Int64("value", dims, values), $"{stem}/Constant", nodes);

        var castNode = NewNode("Cast", "", $"{stem}/Cast", [seqlensK], 1, nodes);
        castNode.Attribute.Add(Attr.Int("to", (long)DataType.Int64));
        var total = Op("Add", castNode.Output[0], Int64([], 1));
        var newTokens = Op("Gather", Op("Shape", query), Int64([], 1));
        var first = Op("Max", Op("Sub", total, newTokens), Int64([], 0));
        var offsets = Op("Range", Int64([], 0), newTokens, Int64([], 1));
        var positions = Op("Add", Op("Reshape", first, Int64([2], -1, 1)), offsets);
        _positions[seqlensK] = positions;
        return positions;
    }

    private string Rotate(string x, int heads, string positions, InternalRotary rotary, string name, List<NodeProto> nodes)
    {
        UsesMicrosoftDomain = true;
        var node = NewNode("RotaryEmbedding", MicrosoftDomain, name, [x, positions, rotary.CosCache, rotary.SinCache], 1, nodes);
        node.Attribute.Add(Attr.Int("interleaved", rotary.Interleaved ? 1 : 0));
        // Explicit head count and rotary width: with 3-D input the op would otherwise assume the
        // whole head rotates and infer the head size from the cos cache.
        node.Attribute.Add(Attr.Int("num_heads", heads));
        node.Attribute.Add(Attr.Int("rotary_embedding_dim", rotary.RotaryDim));
        return node.Output[0];
    }

    private string Constant(TensorProto value, string name, List<NodeProto> nodes) => _factory.Constant(value, name, nodes);

    private NodeProto NewNode(string opType, string domain, string name, IEnumerable<string> inputs, int outputs, List<NodeProto> nodes) =>
        _factory.Node(opType, domain, name, inputs, outputs, nodes);
}
