using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// <c>com.microsoft.MultiHeadAttention</c> as ONNX Runtime's transformer optimiser fuses a decoder's
/// self-attention: 3-D Q/K/V [B,S,H·D], BNSH past/present caches that it concatenates
/// (present = past ++ new), <c>unidirectional=1</c>, and optionally a <c>key_padding_mask</c> that is
/// <c>attention_mask</c> cast to int32, and a Q/K/V projection <c>bias</c> it adds itself. The
/// HySparse ops take the same Q/K/V (with the bias added in front of them) and caches in their
/// concatenating mode and <c>attention_mask</c> itself. Refused with a reason: a layer that is not
/// causal, a mask in another form, an additive attention bias, packed QKV, and the shared-buffer /
/// beam-search inputs.
/// </summary>
public sealed class MultiHeadAttentionPattern() : FusedOperatorPattern(MicrosoftDomain, "MultiHeadAttention", AttentionStyle.MultiHeadAttention)
{
    private static readonly Dictionary<string, Func<AttributeProto, string?>> Attributes = new()
    {
        ["num_heads"] = FusedOperator.Any,
        ["scale"] = FusedOperator.Any,
        ["unidirectional"] = FusedOperator.Unidirectional,
        ["mask_filter_value"] = FusedOperator.MaskFilterValue,
    };

    private protected override AttentionLayer MatchLayer(GraphIndex graph, NodeProto node, FusedOperator op)
    {
        op.CheckAttributes(Attributes);
        op.RequireUnidirectional();
        op.RequireAbsentInputs(
            (5, "attention_bias", "the HySparse ops take no additive bias"),
            (8, "past_sequence_length", "a shared past/present buffer is not converted for this operator"),
            (9, "cache_indirection", "beam-search cache indirection is not supported by the HySparse ops"));
        var (output, presentKey, presentValue) = op.RequiredOutputs(3, "output_qk");

        var numHeads = op.PositiveInt("num_heads");
        var bias = op.Input(3);
        var query = op.RequireInput(0, "query", "the op has nothing to attend with");
        var key = op.RequireInput(1, "key", "packed QKV (or KV) in the query is not converted");
        var value = op.RequireInput(2, "value", "packed KV in the key is not converted");
        var pastKey = op.RequireInput(6, "past_key", "a layer without a KV cache input is not a decoder layer the converter handles");
        var pastValue = op.RequireInput(7, "past_value", "a layer without a KV cache input is not a decoder layer the converter handles");
        var (headSize, elementType) = op.PastCaches(pastKey, pastValue, numHeads, "num_heads");
        RequireSelfAttention(graph, op, query, key, value);

        return new AttentionLayer
        {
            Style = AttentionStyle.MultiHeadAttention,
            AnchorNode = AttentionMatch.NodeLabel(node),
            CacheIndex = CacheNames.LayerNumber(pastKey),
            Query = query,
            Key = key,
            Value = value,
            Rank = 3,
            PastKey = pastKey,
            PastValue = pastValue,
            PresentKey = presentKey,
            PresentValue = presentValue,
            Output = output,
            AttentionMask = op.Input(4) is { } keyPaddingMask ? op.PaddingMask(keyPaddingMask, "key_padding_mask") : null,
            Scale = op.Scale(headSize),
            NumHeads = numHeads,
            KvNumHeads = numHeads,
            HeadSize = headSize,
            ElementType = elementType,
            Inputs = bias is null ? null : new FusedInputs(PackedQkv: false, Rotary: null, QkvBias: bias),
            ReplacedNodes = [node],
        };
    }

    /// <summary>
    /// Key and value 4-D BNSH (already projected per head, cross-attention style) cannot be told from
    /// 3-D without shapes; a declared rank other than 3 is refused, as is a query of another rank.
    /// </summary>
    private static void RequireSelfAttention(GraphIndex graph, FusedOperator op, params string[] tensors)
    {
        foreach (var tensor in tensors)
        {
            var rank = (graph.GraphInput(tensor) ?? graph.Graph.ValueInfo.FirstOrDefault(v => v.Name == tensor))?.Type?.TensorType?.Shape?.Dim.Count;
            if (rank is { } r && r != 3)
                throw op.Refuse($"'{tensor}' is declared with rank {r}; only 3-D [B, S, H·D] query, key and value are converted");
        }
    }
}
