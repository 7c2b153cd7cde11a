using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// <c>com.microsoft.GroupQueryAttention</c> as the onnxruntime-genai model builder emits it: 3-D Q/K/V
/// (or packed QKV in the query with key and value absent), BNSH past/present caches used as a shared
/// buffer of fixed capacity, <c>seqlens_k</c> / <c>total_sequence_length</c> saying how much of each row
/// is valid, and RoPE inside the op when <c>do_rotary=1</c>. The HySparse ops take the same caches,
/// <c>seqlens_k</c> and <c>total_sequence_length</c> in their shared-buffer mode; packed QKV is split
/// and RoPE moved into <c>com.microsoft.RotaryEmbedding</c> nodes before them (see
/// <see cref="FusedInputs"/>). What the ops cannot compute exactly is refused: local windows, soft-capping,
/// smooth softmax and head sinks, attention bias, quantized caches, explicit position ids.
/// </summary>
public sealed class GroupQueryAttentionPattern() : FusedOperatorPattern(MicrosoftDomain, "GroupQueryAttention", AttentionStyle.GroupQueryAttention)
{
    private static readonly Dictionary<string, Func<AttributeProto, string?>> Attributes = new()
    {
        ["num_heads"] = FusedOperator.Any,
        ["kv_num_heads"] = FusedOperator.Any,
        ["scale"] = FusedOperator.Any,
        ["do_rotary"] = FusedOperator.IntIn("must be 0 or 1", 0, 1),
        ["rotary_interleaved"] = FusedOperator.IntIn("must be 0 or 1", 0, 1),
        ["local_window_size"] = FusedOperator.IntIn("a local (sliding-window) attention layer cannot become a HySparse layer, whose ops attend to the whole causal context", -1),
        ["softcap"] = FusedOperator.FloatIs(0f, "the HySparse ops have no logit soft-capping"),
        ["smooth_softmax"] = FusedOperator.IntIn("the HySparse full-attention op has no softmax sink to add 1 to the denominator", 0),
        ["causal"] = FusedOperator.IntIn("bidirectional attention is not a decoder layer the HySparse ops can replace", 1),
        ["sliding_window_cache"] = FusedOperator.IntIn("a window-sized cache holds only part of the context the full layers need", 0),
        ["qk_output"] = FusedOperator.IntIn("the HySparse ops do not output the attention scores", 0),
        ["k_quant_type"] = QuantType,
        ["v_quant_type"] = QuantType,
        ["kv_cache_bit_width"] = FusedOperator.IntIn("quantized KV caches are not supported by the HySparse ops", 0),
        ["qk_norm_epsilon"] = FusedOperator.Any,
    };

    private static string? QuantType(AttributeProto attribute) =>
        attribute.S.ToStringUtf8() is "" or "NONE" ? null : $"attribute '{attribute.Name}' = {attribute.S.ToStringUtf8()}: quantized KV caches are not supported by the HySparse ops";

    private protected override AttentionLayer MatchLayer(GraphIndex graph, NodeProto node, FusedOperator op)
    {
        op.CheckAttributes(Attributes);
        op.RequireAbsentInputs(
            (9, "position_ids", "positions given explicitly follow rules of their own for a first prompt; only positions derived from seqlens_k are converted"),
            (10, "attention_bias", "the HySparse ops take no additive bias"),
            (11, "head_sink", "the HySparse full-attention op has no softmax sink"),
            (12, "k_scale", "quantized KV caches are not supported by the HySparse ops"),
            (13, "v_scale", "quantized KV caches are not supported by the HySparse ops"),
            (14, "q_norm_weight", "the per-head Q/K RMS norm inside the op is not converted"),
            (15, "k_norm_weight", "the per-head Q/K RMS norm inside the op is not converted"));
        var (output, presentKey, presentValue) = op.RequiredOutputs(3, "output_qk");

        var numHeads = op.PositiveInt("num_heads");
        var kvNumHeads = op.PositiveInt("kv_num_heads");
        if (numHeads % kvNumHeads != 0)
            throw op.Refuse($"kv_num_heads ({kvNumHeads}) does not divide num_heads ({numHeads})");
        var query = op.RequireInput(0, "query", "the op has nothing to attend with");
        var (key, value) = (op.Input(1), op.Input(2));
        if (key is null != value is null) throw op.Refuse("only one of key and value is given");
        var packed = key is null;
        var pastKey = op.RequireInput(3, "past_key", "a layer without a KV cache input is not a decoder layer the converter handles");
        var pastValue = op.RequireInput(4, "past_value", "a layer without a KV cache input is not a decoder layer the converter handles");
        var seqlensK = op.RequireInput(5, "seqlens_k", "it is required");
        var totalLength = op.RequireInput(6, "total_sequence_length", "it is required");
        var (headSize, elementType) = op.PastCaches(pastKey, pastValue, kvNumHeads, "kv_num_heads");

        InternalRotary? rotary = null;
        var (cos, sin) = (op.Input(7), op.Input(8));
        if (IntAttribute(node, "do_rotary") == 1)
        {
            if (cos is null || sin is null) throw op.Refuse("do_rotary=1 without cos_cache and sin_cache");
            var rotaryDim = 2 * (HalfRotaryWidth(graph, cos) ?? throw op.Refuse($"cos_cache '{cos}' has no fixed [positions, R/2] shape, so the rotary dimension is unknown"));
            if (rotaryDim > headSize) throw op.Refuse($"cos_cache '{cos}' rotates {rotaryDim} channels but a head has {headSize}");
            rotary = new InternalRotary(cos, sin, rotaryDim, IntAttribute(node, "rotary_interleaved") == 1, seqlensK);
        }
        else if (cos is not null || sin is not null)
        {
            throw op.Refuse("cos_cache/sin_cache are given with do_rotary=0");
        }

        return new AttentionLayer
        {
            Style = AttentionStyle.GroupQueryAttention,
            AnchorNode = AttentionMatch.NodeLabel(node),
            CacheIndex = CacheNames.LayerNumber(pastKey),
            Query = query,
            Key = key ?? "",
            Value = value ?? "",
            Rank = 3,
            PastKey = pastKey,
            PastValue = pastValue,
            PresentKey = presentKey,
            PresentValue = presentValue,
            Output = output,
            AttentionMask = null,
            Scale = op.Scale(headSize),
            NumHeads = numHeads,
            KvNumHeads = kvNumHeads,
            HeadSize = headSize,
            ElementType = elementType,
            Buffer = new SharedKvBuffer(seqlensK, totalLength),
            Inputs = packed || rotary is not null ? new FusedInputs(packed, rotary) : null,
            ReplacedNodes = [node],
        };
    }

    private static long IntAttribute(NodeProto node, string name) => HySparse.Graph.Attr.GetInt(node, name, 0);

    /// <summary>R/2 from a cos cache's shape [positions, R/2]: a constant's dims or a graph input's fixed declaration.</summary>
    private static int? HalfRotaryWidth(GraphIndex graph, string cache)
    {
        if (graph.Constant(cache) is { Dims.Count: 2 } constant) return checked((int)constant.Dims[1]);
        if (graph.GraphInput(cache)?.Type?.TensorType?.Shape?.Dim is { Count: 2 } dims && dims[1].DimValue > 0) return checked((int)dims[1].DimValue);
        return null;
    }
}
