using System.Globalization;
using System.Text.RegularExpressions;
using HySparse.Exporter.Graph;
using HySparse.Models.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>A KV cache update <c>present = Concat(past, new, axis = 2)</c> with <c>past</c> a graph input.</summary>
/// <param name="Node">The Concat node.</param>
/// <param name="Past">Past cache graph input.</param>
/// <param name="New">This call's keys or values (BNSH).</param>
/// <param name="Present">The Concat output.</param>
internal sealed record CacheConcat(NodeProto Node, string Past, string New, string Present)
{
    /// <summary>Matches the Concat producing <paramref name="tensor"/>.</summary>
    public static CacheConcat Match(GraphIndex graph, string tensor, NodeProto user)
    {
        var node = graph.Producer(tensor);
        if (node is not { OpType: "Concat", Domain: "" })
            throw new PatternMismatch(user, $"'{tensor}' is not produced by Concat(past, new): attention without a KV cache input is not supported yet");
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

/// <summary>
/// Hugging Face's repeat_kv after the cache concat: Unsqueeze(axis 2) → Expand → Reshape, turning
/// [B,H_kv,T,D] into [B,H_kv·n,T,D]. Absent when every query head has its own KV head.
/// </summary>
/// <param name="Source">The unexpanded cache tensor.</param>
/// <param name="GroupSize">
/// n, the query heads per KV head: 1 when no expansion was found, null when the expansion's shape
/// is computed at run time (torch exports build it from Shape) and n must come from elsewhere.
/// </param>
/// <param name="Nodes">The expansion nodes (empty when absent).</param>
internal sealed record KvExpansion(string Source, int? GroupSize, IReadOnlyList<NodeProto> Nodes)
{
    /// <summary>Matches an expansion producing <paramref name="tensor"/>, or reports none.</summary>
    public static KvExpansion Match(GraphIndex graph, string tensor)
    {
        if (graph.Producer(tensor) is not { OpType: "Reshape", Domain: "" } reshape
            || graph.Producer(reshape.Input[0]) is not { OpType: "Expand", Domain: "" } expand
            || graph.Producer(expand.Input[0]) is not { OpType: "Unsqueeze", Domain: "" } unsqueeze)
            return new KvExpansion(tensor, 1, []);

        var axes = unsqueeze.Input.Count > 1 ? graph.IntConstant(unsqueeze.Input[1]) : Attr.GetInts(unsqueeze, "axes");
        if (axes is not [2])
            throw new PatternMismatch(unsqueeze, $"GQA expansion must unsqueeze axis 2 (found [{string.Join(", ", axes ?? [])}])");
        // Expand broadcasts, so the group size is the shape's axis 2 whichever other entries it has.
        var shape = graph.IntConstant(expand.Input[1]);
        int? groupSize = shape is { Length: 5 } && shape[2] >= 1 ? checked((int)shape[2]) : null;
        return new KvExpansion(unsqueeze.Input[0], groupSize, [unsqueeze, expand, reshape]);
    }
}

/// <summary>Constant scalar factors (Mul by c, Div by c) applied on a path; folded into one scale.</summary>
internal static class ScaleFactors
{
    /// <summary>
    /// Walks up from <paramref name="tensor"/> through Mul/Div by constant scalars, returning the
    /// first tensor that is not such a product and the accumulated factor.
    /// </summary>
    public static (string Tensor, double Factor) Strip(GraphIndex graph, string tensor, List<NodeProto> visited)
    {
        double factor = 1;
        while (graph.Producer(tensor) is { OpType: "Mul" or "Div", Domain: "" } node && node.Input.Count == 2)
        {
            if (graph.ScalarConstant(node.Input[1]) is { } right)
            {
                factor = node.OpType == "Mul" ? factor * right : factor / right;
                tensor = node.Input[0];
            }
            else if (node.OpType == "Mul" && graph.ScalarConstant(node.Input[0]) is { } left)
            {
                factor *= left;
                tensor = node.Input[1];
            }
            else
            {
                break;
            }
            visited.Add(node);
        }
        return (tensor, factor);
    }
}

/// <summary>The layer number exporters put in cache names.</summary>
internal static class CacheNames
{
    private static readonly Regex CacheName = new(@"(?:^|[._/])(\d+)[._/](?:key|value)$", RegexOptions.CultureInvariant);

    /// <summary>N of a cache named like <c>past_key_values.N.key</c>, or null.</summary>
    public static int? LayerNumber(string past)
    {
        var match = CacheName.Match(past);
        return match.Success ? int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture) : null;
    }
}
