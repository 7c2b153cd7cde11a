using HySparse.Graph;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Recognition;

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
