using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>A KV cache update <c>present = Concat(past, new, axis = 2)</c> with <c>past</c> a graph input.</summary>
/// <param name="Node">The Concat node.</param>
/// <param name="Past">Past cache graph input.</param>
/// <param name="New">This call's keys or values (BNSH).</param>
/// <param name="Present">The Concat output.</param>
internal sealed record CacheConcat(NodeProto Node, string Past, string New, string Present)
{
    /// <summary>
    /// Matches the Concat producing <paramref name="tensor"/>, or returns null when no Concat produces
    /// it (an export without KV cache: the tensor is this call's keys or values themselves).
    /// </summary>
    public static CacheConcat? MatchOrNone(GraphIndex graph, string tensor, NodeProto user)
    {
        var node = graph.Producer(tensor);
        if (node is not { OpType: "Concat", Domain: "" })
        {
            // Keys or values computed from a cache-shaped input in some other way would lose that cache.
            if (Upstream.GraphInputs(graph, tensor).FirstOrDefault(i => graph.GraphInput(i)?.Type?.TensorType?.Shape?.Dim.Count == 4) is { } cache)
                throw new PatternMismatch(user, $"'{tensor}' is computed from the 4-D input '{cache}' but not by Concat(past, new) on axis 2");
            return null;
        }
        var axis = Attr.GetInt(node, "axis", long.MinValue);
        if (node.Input.Count != 2 || axis is not (2 or -2))
            throw new PatternMismatch(node, $"cache Concat must join two tensors on axis 2 (has {node.Input.Count} inputs, axis {axis})");
        if (!graph.IsGraphInput(node.Input[0]))
            throw new PatternMismatch(node, $"cache Concat's first input '{node.Input[0]}' is not a graph input (a past cache)");
        return new CacheConcat(node, node.Input[0], node.Input[1], node.Output[0]);
    }

    /// <summary>N of a cache named like <c>past_key_values.N.key</c>, or null.</summary>
    public int? LayerNumber() => CacheNames.LayerNumber(Past);
}
