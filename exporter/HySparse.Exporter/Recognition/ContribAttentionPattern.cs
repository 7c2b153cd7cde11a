using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// <c>com.microsoft.Attention</c> as ONNX Runtime's transformer optimiser fuses GPT-2 and as
/// onnxruntime-genai's <c>gpt2</c> model type runs it: the op projects its <c>input</c> [B,S,hidden]
/// itself with merged <c>weights</c> [hidden, 3·H·D] and an optional <c>bias</c>, attends causally
/// (<c>unidirectional=1</c>), optionally masks padding with a raw 2-D <c>mask_index</c> =
/// <c>Cast(attention_mask, int32)</c>, and caches keys and values together: <c>past</c> [2,B,H,P,D] →
/// <c>present</c> [2,B,H,P+S,D]. The rewrite puts the projection (MatMul, Add, Split) in front of the
/// HySparse op, takes the combined past apart for it and stacks its presents back into the combined
/// present, so the model's interface does not change. Refused with a reason: what is not causal, an
/// additive attention bias, any other mask form, the shared past/present buffer
/// (<c>past_sequence_length</c>, <c>past_present_share_buffer</c>), rotary embedding inside the op,
/// unequal Q/K/V widths, and a layer without a cache.
/// </summary>
public sealed class ContribAttentionPattern() : FusedOperatorPattern(MicrosoftDomain, "Attention", AttentionStyle.ContribAttention)
{
    private static readonly Dictionary<string, Func<AttributeProto, string?>> Attributes = new()
    {
        ["num_heads"] = FusedOperator.Any,
        ["scale"] = FusedOperator.Any,
        ["unidirectional"] = FusedOperator.Unidirectional,
        ["mask_filter_value"] = FusedOperator.MaskFilterValue,
        // Read in MatchLayer: equal widths are the only form ONNX Runtime accepts with a past anyway.
        ["qkv_hidden_sizes"] = FusedOperator.Any,
        ["past_present_share_buffer"] = FusedOperator.IntIn(
            "a shared past/present buffer whose valid length comes from past_sequence_length is not converted for this operator", 0),
        ["do_rotary"] = FusedOperator.IntIn(
            "rotary embedding inside com.microsoft.Attention is not converted (its positions follow the op's own past length rules)", 0),
        // Only meaningful with do_rotary=1, which is refused above.
        ["rotary_embedding_dim"] = FusedOperator.Any,
    };

    private protected override AttentionLayer MatchLayer(GraphIndex graph, NodeProto node, FusedOperator op)
    {
        op.CheckAttributes(Attributes);
        op.RequireUnidirectional();
        op.RequireAbsentInputs(
            (5, "attention_bias", "the HySparse ops take no additive bias (relative position bias, ALiBi)"),
            (6, "past_sequence_length", "a shared past/present buffer is not converted for this operator"));
        var present = op.Output(1) ?? throw op.Refuse("output 'present' is not produced; the converter needs the layer's KV cache output");

        var numHeads = op.PositiveInt("num_heads");
        var input = op.RequireInput(0, "input", "the op has nothing to attend with");
        var weights = op.RequireInput(1, "weights", "it is required");
        var past = op.RequireInput(4, "past", "a layer without a KV cache input is not a decoder layer the converter handles");
        var (headSize, elementType) = op.CombinedPastCache(past, numHeads, "num_heads");
        CheckWidths(graph, node, op, weights, op.Input(2), numHeads * headSize);

        return new AttentionLayer
        {
            Style = AttentionStyle.ContribAttention,
            AnchorNode = AttentionMatch.NodeLabel(node),
            CacheIndex = CacheNames.CombinedLayerNumber(past),
            Query = input,
            Key = "",
            Value = "",
            Rank = 3,
            PastKey = null,
            PastValue = null,
            PresentKey = null,
            PresentValue = null,
            Combined = new CombinedKvCache(past, present),
            Output = node.Output[0],
            AttentionMask = op.Input(3) is { } maskIndex ? op.PaddingMask(maskIndex, "mask_index") : null,
            Scale = op.Scale(headSize),
            NumHeads = numHeads,
            KvNumHeads = numHeads,
            HeadSize = headSize,
            ElementType = elementType,
            Inputs = new FusedInputs(PackedQkv: true, Rotary: null, QkvBias: op.Input(2), QkvWeights: weights),
            ReplacedNodes = [node],
        };
    }

    /// <summary>
    /// Q, K and V must each be H·D wide (<paramref name="width"/>, from the cache's head size): from
    /// <c>qkv_hidden_sizes</c> when given, and from the weights' and bias's shapes when they are constants.
    /// </summary>
    private static void CheckWidths(GraphIndex graph, NodeProto node, FusedOperator op, string weights, string? bias, int width)
    {
        if (node.Attribute.FirstOrDefault(a => a.Name == "qkv_hidden_sizes") is { } sizes
            && !(sizes.Ints.Count == 3 && sizes.Ints.All(s => s == width)))
            throw op.Refuse($"qkv_hidden_sizes is [{string.Join(", ", sizes.Ints)}]; only equal Q, K and V widths of num_heads × head size = {width} " +
                "are converted (ONNX Runtime requires them with a past cache too)");
        if (graph.Constant(weights) is { } w && (w.Dims.Count != 2 || w.Dims[1] != 3L * width))
            throw op.Refuse($"weights '{weights}' has shape [{string.Join(", ", w.Dims)}]; expected [hidden, {3L * width}] (Q, K and V of {width} each)");
        if (bias is not null && graph.Constant(bias) is { } b && (b.Dims.Count != 1 || b.Dims[0] != 3L * width))
            throw op.Refuse($"bias '{bias}' has shape [{string.Join(", ", b.Dims)}]; expected [{3L * width}]");
    }
}
