using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// RoPE as torch.onnx.export writes Hugging Face's <c>apply_rotary_pos_emb</c> on [B,H,S,D] heads:
/// <code>
/// out = Add(Mul(x, cos), Mul(Concat(Neg(x₂), x₁, axis=-1), sin))   x₁, x₂ = the halves of x (two Slices, at
///                                                                   constants or at x.shape[-1] // 2, or a Split)
/// cos = Unsqueeze([Cast](Cos(e)), axes=[1])   sin = Unsqueeze([Cast](Sin(e)), axes=[1])   e = Concat(f, f, axis=-1)
/// </code>
/// The table <c>Cos(e)</c> is [B or 1, S, D] and its two halves hold the same angles f, so its first half,
/// flattened to [rows·S, D/2], is a cos cache that <c>com.microsoft.RotaryEmbedding</c> can index
/// (<see cref="Rewrite.RotaryFusionRewrite"/>). Operand order of Mul and Add does not matter.
/// </summary>
/// <param name="Input">x, the heads before rotation.</param>
/// <param name="Output">The rotated heads (the Add's output).</param>
/// <param name="CosTable">The [B or 1, S, D] cosine table before its Unsqueeze.</param>
/// <param name="SinTable">The matching sine table.</param>
/// <param name="Half">D/2.</param>
/// <param name="Add">The node that produces <paramref name="Output"/>.</param>
internal sealed record DecomposedRotary(string Input, string Output, string CosTable, string SinTable, int Half, NodeProto Add)
{
    /// <summary>
    /// Matches the rotation producing <paramref name="rotated"/> on heads of <paramref name="headSize"/>
    /// channels; throws <see cref="PatternMismatch"/> saying what differs.
    /// </summary>
    public static DecomposedRotary Match(GraphIndex graph, string rotated, int headSize)
    {
        if (graph.Producer(rotated) is not { OpType: "Add", Domain: "" } add)
            throw new PatternMismatch(graph.Producer(rotated) ?? new NodeProto { Name = rotated }, $"'{rotated}' is not produced by Add(x·cos, rotate_half(x)·sin)");
        if (graph.Producer(add.Input[0]) is not { OpType: "Mul", Domain: "" } left || graph.Producer(add.Input[1]) is not { OpType: "Mul", Domain: "" } right)
            throw new PatternMismatch(add, "the Add's operands are not two Muls");
        foreach (var (plain, turned) in new[] { (left, right), (right, left) })
        {
            foreach (var (rotatedHalves, sinTerm) in Operands(turned))
            {
                if (!TryRotateHalf(graph, rotatedHalves, headSize, out var x)) continue;
                var cosTerm = plain.Input[0] == x ? plain.Input[1] : plain.Input[1] == x ? plain.Input[0] : null;
                if (cosTerm is null) throw new PatternMismatch(plain, $"rotate_half reads '{x}' but the other product does not multiply it");
                var cos = Table(graph, cosTerm, "Cos", out var cosAngles);
                var sin = Table(graph, sinTerm, "Sin", out var sinAngles);
                if (cosAngles != sinAngles) throw new PatternMismatch(add, "cos and sin are taken of different angle tensors");
                if (graph.Producer(cosAngles) is not { OpType: "Concat", Domain: "" } doubled || doubled.Input.Count != 2
                    || doubled.Input[0] != doubled.Input[1] || Attr.GetInt(doubled, "axis", 0) is not (-1 or 2))
                    throw new PatternMismatch(graph.Producer(cosAngles) ?? add,
                        $"the rotation angles '{cosAngles}' are not Concat(f, f) on the last axis, so the table's halves may differ");
                return new DecomposedRotary(x, rotated, cos, sin, headSize / 2, add);
            }
        }
        throw new PatternMismatch(add, "neither product is rotate_half(x)·sin with rotate_half(x) = Concat(−x[..., D/2:], x[..., :D/2])");
    }

    private static IEnumerable<(string, string)> Operands(NodeProto mul) => [(mul.Input[0], mul.Input[1]), (mul.Input[1], mul.Input[0])];

    /// <summary>True when <paramref name="tensor"/> is Concat(Neg(x₂), x₁) of the halves of a [.., D] tensor x.</summary>
    private static bool TryRotateHalf(GraphIndex graph, string tensor, int headSize, out string x)
    {
        x = "";
        if (graph.Producer(tensor) is not { OpType: "Concat", Domain: "" } concat || concat.Input.Count != 2
            || Attr.GetInt(concat, "axis", 0) is not (-1 or 3))
            return false;
        if (graph.Producer(concat.Input[0]) is not { OpType: "Neg", Domain: "" } neg) return false;
        var (second, first) = (neg.Input[0], concat.Input[1]);
        var firstNode = graph.Producer(first);
        var secondNode = graph.Producer(second);
        if (firstNode is null || secondNode is null) return false;
        if (firstNode is { OpType: "Split", Domain: "" } && ReferenceEquals(firstNode, secondNode))
        {
            if (firstNode.Output.Count != 2 || firstNode.Output[0] != first || firstNode.Output[1] != second
                || Attr.GetInt(firstNode, "axis", 0) is not (-1 or 3))
                return false;
            var sizes = firstNode.Input.Count > 1 && firstNode.Input[1].Length > 0 ? graph.IntConstant(firstNode.Input[1]) : Attr.GetInts(firstNode, "split");
            if (sizes is not null && (sizes.Length != 2 || sizes[0] != headSize / 2 || sizes[1] != headSize / 2))
                throw new PatternMismatch(firstNode, $"rotate_half splits into [{string.Join(", ", sizes)}] but a head has {headSize} channels");
            x = firstNode.Input[0];
            return headSize % 2 == 0;
        }
        if (firstNode is not { OpType: "Slice", Domain: "" } || secondNode is not { OpType: "Slice", Domain: "" } || firstNode.Input[0] != secondNode.Input[0])
            return false;
        var half = headSize / 2;
        if (!SliceOfLastAxis(graph, firstNode, headSize, out var start1, out var end1) || !SliceOfLastAxis(graph, secondNode, headSize, out var start2, out var end2))
            return false;
        if (start1 != 0 || end1 != half || start2 != half || end2 < headSize || headSize % 2 != 0)
            throw new PatternMismatch(secondNode,
                $"rotate_half takes channels [{start1}, {end1}) and [{start2}, {end2}) of heads of {headSize}; only the two halves are fused");
        x = firstNode.Input[0];
        return true;
    }

    private static bool SliceOfLastAxis(GraphIndex graph, NodeProto slice, int headSize, out long start, out long end)
    {
        start = end = 0;
        if (slice.Input.Count < 3) return false;  // opset < 10 keeps starts/ends in attributes: not fused
        var axes = slice.Input.Count > 3 && slice.Input[3].Length > 0 ? graph.IntConstant(slice.Input[3]) : null;
        var steps = slice.Input.Count > 4 && slice.Input[4].Length > 0 ? graph.IntConstant(slice.Input[4]) : [1];
        if (Bound(graph, slice.Input[1], slice.Input[0], headSize) is not { } s || Bound(graph, slice.Input[2], slice.Input[0], headSize) is not { } e
            || axes is not ([-1] or [3]) || steps is not [1])
            return false;
        (start, end) = (s, e);
        return true;
    }

    /// <summary>
    /// A Slice bound: a one-element constant, or <c>x.shape[-1] // 2</c> computed in the graph as torch
    /// exports it (Shape → Gather(3) → Div(2) → Cast → Unsqueeze), which is D/2 for heads of D channels.
    /// </summary>
    private static long? Bound(GraphIndex graph, string tensor, string x, int headSize)
    {
        if (graph.IntConstant(tensor) is [var value]) return value;
        var node = graph.Producer(tensor);
        while (node is { OpType: "Unsqueeze" or "Cast" or "Reshape", Domain: "" }) node = graph.Producer(node.Input[0]);
        if (node is not { OpType: "Div", Domain: "" } div || graph.IntConstant(div.Input[1]) is not [2]) return null;
        node = graph.Producer(div.Input[0]);
        while (node is { OpType: "Cast", Domain: "" }) node = graph.Producer(node.Input[0]);
        if (node is not { OpType: "Gather", Domain: "" } gather || graph.IntConstant(gather.Input[1]) is not ([3] or [-1])
            || graph.Producer(gather.Input[0]) is not { OpType: "Shape", Domain: "" } shape || shape.Input[0] != x || shape.Attribute.Count > 0)
            return null;
        return headSize / 2;
    }

    /// <summary>The table under Unsqueeze(axes [1]) of <paramref name="term"/>, which must be <paramref name="trig"/>(angles), possibly cast.</summary>
    private static string Table(GraphIndex graph, string term, string trig, out string angles)
    {
        if (graph.Producer(term) is not { OpType: "Unsqueeze", Domain: "" } unsqueeze)
            throw new PatternMismatch(graph.Producer(term) ?? new NodeProto { Name = term }, $"the {trig.ToLowerInvariant()} table '{term}' is not an Unsqueeze of a [B, S, D] table");
        var axes = unsqueeze.Input.Count > 1 ? graph.IntConstant(unsqueeze.Input[1]) : Attr.GetInts(unsqueeze, "axes");
        if (axes is not [1])
            throw new PatternMismatch(unsqueeze, $"the {trig.ToLowerInvariant()} table is unsqueezed at [{string.Join(", ", axes ?? [])}], not at the head axis 1 of [B,H,S,D]");
        var table = unsqueeze.Input[0];
        var producer = graph.Producer(table);
        if (producer is { OpType: "Cast", Domain: "" }) producer = graph.Producer(producer.Input[0]);
        if (producer is null || producer.OpType != trig || producer.Domain != "")
            throw new PatternMismatch(unsqueeze, $"the {trig.ToLowerInvariant()} table '{table}' is not {trig}(angles) computed in the graph");
        angles = producer.Input[0];
        return table;
    }
}
