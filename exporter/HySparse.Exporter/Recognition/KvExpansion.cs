using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

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
