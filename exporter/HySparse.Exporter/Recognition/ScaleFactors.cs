using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

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
