using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// A per-head view of a projection: <c>Reshape(x, [.., .., H, D])</c> ([B,S,H,D]), optionally
/// followed by <c>Transpose(0,2,1,3)</c> ([B,H,S,D]), with element-wise steps (RoPE, scaling) or a
/// <c>com.microsoft.RotaryEmbedding</c> after either. H and D must be constants of the Reshape's shape.
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
        for (var depth = 0; depth < 12 && graph.Producer(tensor) is { Domain: "" or "com.microsoft" } node; depth++)
        {
            if (node.Domain == "com.microsoft")
            {
                // The converter's fused RoPE (RotaryFusionRewrite) rotates the heads in place.
                if (node.OpType != "RotaryEmbedding") return null;
                tensor = node.Input[0];
                continue;
            }
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
