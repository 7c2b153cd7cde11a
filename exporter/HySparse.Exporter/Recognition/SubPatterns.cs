using System.Globalization;
using System.Text.RegularExpressions;
using HySparse.Graph;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

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
    private static readonly Regex CombinedCacheName = new(@"^past[._](\d+)$", RegexOptions.CultureInvariant);

    /// <summary>N of a cache named like <c>past_key_values.N.key</c>, or null.</summary>
    public static int? LayerNumber(string past) => Number(CacheName, past);

    /// <summary>N of a combined key/value cache named like <c>past_N</c> (onnxruntime-genai's and ONNX Runtime's GPT-2 naming), or null.</summary>
    public static int? CombinedLayerNumber(string past) => Number(CombinedCacheName, past);

    private static int? Number(Regex pattern, string name)
    {
        var match = pattern.Match(name);
        return match.Success ? int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture) : null;
    }
}

/// <summary>
/// A per-head view of a projection: <c>Reshape(x, [.., .., H, D])</c> ([B,S,H,D]), optionally
/// followed by <c>Transpose(0,2,1,3)</c> ([B,H,S,D]), with element-wise steps (RoPE, scaling) after
/// either. H and D must be constants of the Reshape's shape.
/// </summary>
/// <param name="Heads">H.</param>
/// <param name="HeadSize">D.</param>
/// <param name="Bnsh">True when the heads were transposed to [B,H,S,D].</param>
internal sealed record HeadSplit(int Heads, int HeadSize, bool Bnsh)
{
    /// <summary>The head split <paramref name="tensor"/> comes from, or null when it is not one.</summary>
    public static HeadSplit? Find(GraphIndex graph, string tensor)
    {
        var bnsh = false;
        for (var depth = 0; depth < 12 && graph.Producer(tensor) is { Domain: "" } node; depth++)
        {
            switch (node.OpType)
            {
                case "Reshape":
                    return graph.PartialIntVector(node.Input[1]) is [_, _, { } heads and > 0, { } size and > 0]
                        ? new HeadSplit(checked((int)heads), checked((int)size), bnsh)
                        : null;
                case "Transpose" when !bnsh && Attr.GetInts(node, "perm") is [0, 2, 1, 3]:
                    bnsh = true;
                    tensor = node.Input[0];
                    break;
                case "Add" or "Sub" or "Mul" or "Div" or "Cast":
                    // RoPE is x·cos + rotate_half(x)·sin: the first operands lead back to x.
                    tensor = node.Input.Count > 1 && graph.Constant(node.Input[0]) is not null ? node.Input[1] : node.Input[0];
                    break;
                default:
                    return null;
            }
        }
        return null;
    }

    /// <summary>
    /// D of a Q, K or V tensor with <paramref name="heads"/> heads in either layout: from its head split,
    /// or its last dimension over the heads when it is [B,S,H·D]; null when neither is stated.
    /// </summary>
    public static int? HeadSizeOf(GraphIndex graph, string tensor, int heads) =>
        Find(graph, tensor)?.HeadSize
        ?? (heads > 0 && LastDimension(graph, tensor) is { } width && width % heads == 0 ? (int)(width / heads) : null);

    /// <summary>
    /// The last dimension of <paramref name="tensor"/> when it is stated: a declared shape, a Reshape's
    /// constant last entry, or the weight of the MatMul (through a bias Add) that produces it.
    /// </summary>
    public static long? LastDimension(GraphIndex graph, string tensor)
    {
        var declared = graph.GraphInput(tensor) ?? graph.Graph.ValueInfo.FirstOrDefault(v => v.Name == tensor);
        if (declared?.Type?.TensorType?.Shape?.Dim is { Count: > 0 } dims && dims[^1].DimValue > 0) return dims[^1].DimValue;
        for (var depth = 0; depth < 4 && graph.Producer(tensor) is { Domain: "" } node; depth++)
        {
            switch (node.OpType)
            {
                case "Reshape":
                    return graph.PartialIntVector(node.Input[1]) is { Length: > 0 } shape && shape[^1] is > 0 ? shape[^1] : null;
                case "MatMul":
                    return graph.Constant(node.Input[1]) is { Dims.Count: >= 2 } weight ? weight.Dims[^1] : null;
                case "Add":
                    tensor = graph.Constant(node.Input[0]) is not null ? node.Input[1] : node.Input[0];
                    break;
                default:
                    return null;
            }
        }
        return null;
    }
}

/// <summary>What a tensor is computed from.</summary>
internal static class Upstream
{
    /// <summary>
    /// The graph inputs whose values <paramref name="tensor"/> is computed from. Paths through
    /// <c>Shape</c> / <c>Size</c> do not count: they read an input's dimensions, not its values (a
    /// causal mask sized from <c>input_ids</c> does not depend on the ids).
    /// </summary>
    public static IReadOnlySet<string> GraphInputs(GraphIndex graph, string tensor)
    {
        var found = new HashSet<string>(StringComparer.Ordinal);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<string>([tensor]);
        while (pending.Count > 0)
        {
            var current = pending.Pop();
            if (!seen.Add(current)) continue;
            if (graph.IsGraphInput(current)) found.Add(current);
            if (graph.Producer(current) is not { } node || node is { OpType: "Shape" or "Size", Domain: "" }) continue;
            foreach (var input in node.Input.Where(n => n.Length > 0)) pending.Push(input);
        }
        return found;
    }

    /// <summary>
    /// The float element type of the weights <paramref name="tensor"/> is computed from: the first
    /// floating-point initializer of rank 2 or more (a projection matrix) found walking up, or a
    /// floating-point graph input; null when there is none.
    /// </summary>
    public static DataType? FloatType(GraphIndex graph, string tensor)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Queue<string>([tensor]);
        while (pending.Count > 0 && seen.Count < 256)
        {
            var current = pending.Dequeue();
            if (!seen.Add(current)) continue;
            if (graph.Constant(current) is { Dims.Count: >= 2 } weight && IsFloat((DataType)weight.DataType)) return (DataType)weight.DataType;
            if (graph.GraphInput(current)?.Type?.TensorType is { } declared && IsFloat((DataType)declared.ElemType)) return (DataType)declared.ElemType;
            foreach (var input in graph.Producer(current)?.Input.Where(n => n.Length > 0) ?? []) pending.Enqueue(input);
        }
        return null;
    }

    private static bool IsFloat(DataType type) => type is DataType.Float or DataType.Float16 or DataType.Bfloat16;
}
