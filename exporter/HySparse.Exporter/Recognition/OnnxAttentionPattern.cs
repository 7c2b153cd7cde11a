using HySparse.Graph;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// The standard ONNX <c>Attention</c> operator (opset 23):
/// <code>
/// Y, present_key, present_value = Attention(Q, K, V, attn_mask?, past_key?, past_value?)
/// </code>
/// with Q/K/V [B,H,S,D] or [B,S,H·D] (<c>q_num_heads</c>/<c>kv_num_heads</c>) and caches [B,H_kv,P,D].
/// One node is one layer; the HySparse op takes its Q, K, V, caches and outputs as they are. Converted
/// when it maps exactly onto the op's causal + padding attention: <c>attn_mask</c> computed from
/// <c>attention_mask</c> (boolean or additive; computed on a probe batch and checked to be its causal
/// + padding mask, or padding only with <c>is_causal=1</c>, by <see cref="MaskProbe"/>), and/or
/// <c>is_causal=1</c>. With <c>past_key</c> the causal mask of ONNX
/// Attention is aligned to the bottom right (new token s sees keys up to P + s, ONNX Runtime 1.31's
/// CPU kernel included, checked by the tests), which is the op's; without a past Q and K have the same
/// length and both alignments agree. Refused with the reason otherwise: <c>softcap</c>, a used
/// <c>qk_matmul_output</c>, bidirectional attention (no mask and <c>is_causal=0</c>).
/// </summary>
public sealed class OnnxAttentionPattern : IAttentionPattern
{
    /// <inheritdoc />
    public AttentionStyle Style => AttentionStyle.Fused;

    /// <inheritdoc />
    public IEnumerable<NodeProto> Anchors(GraphIndex graph) =>
        graph.Graph.Node.Where(n => n is { OpType: "Attention", Domain: "" or "ai.onnx" });

    /// <inheritdoc />
    public AttentionMatch Match(GraphIndex graph, NodeProto anchor) => AttentionMatch.Catching(() => MatchLayer(graph, anchor));

    private static AttentionLayer MatchLayer(GraphIndex graph, NodeProto node)
    {
        string Input(int i) => node.Input.Count > i ? node.Input[i] : "";
        string? Output(int i) => node.Output.Count > i && node.Output[i].Length > 0 ? node.Output[i] : null;
        var (query, key, value, mask, pastKey, pastValue) = (Input(0), Input(1), Input(2), Input(3), Input(4), Input(5));

        if (Output(3) is { } scores && (graph.IsGraphOutput(scores) || graph.Consumers(scores).Count > 0))
            throw new PatternMismatch(node, $"its qk_matmul_output '{scores}' is used; the HySparse op does not produce attention scores");
        var softcap = Attr.GetFloat(node, "softcap", 0f);
        if (softcap != 0f)
            throw new PatternMismatch(node, $"softcap = {softcap:G} caps the logits with tanh; the HySparse op computes plain softmax attention");
        if (pastKey.Length > 0 != pastValue.Length > 0)
            throw new PatternMismatch(node, "it has only one of past_key / past_value");
        foreach (var past in new[] { pastKey, pastValue }.Where(p => p.Length > 0))
            if (!graph.IsGraphInput(past))
                throw new PatternMismatch(node, $"its past cache '{past}' is not a graph input");

        var isCausal = Attr.GetInt(node, "is_causal", 0) != 0;
        if (mask.Length == 0 && !isCausal)
            throw new PatternMismatch(node, "no attn_mask and is_causal = 0: the attention is bidirectional, and a HySparse layer is causal");
        var padding = mask.Length > 0 ? DecomposedAttentionPattern.MaskSource(graph, mask, node) : null;
        // The op masks causally and by attention_mask: compute the mask on a probe batch and check it is that.
        if (mask.Length > 0 && MaskProbe.CheckCausalPadding(graph, mask, MaskMeaning.AttentionInput, isCausal, cached: pastKey.Length > 0) is { } notCausal)
            throw new PatternMismatch(node, notCausal);

        var (rank, heads, kvHeads, headSize) = Geometry(graph, node, query, key, pastKey);
        var elementType = pastKey.Length > 0 && graph.GraphInput(pastKey)?.Type?.TensorType is { } declared
            ? (DataType)declared.ElemType
            : Upstream.FloatType(graph, value) ?? throw new PatternMismatch(node, $"cannot tell the element type of '{value}': no floating-point weight or input feeds it");
        var scale = Attr.GetFloat(node, "scale", 0f);

        return new AttentionLayer
        {
            Style = AttentionStyle.Fused,
            AnchorNode = AttentionMatch.NodeLabel(node),
            CacheIndex = pastKey.Length > 0 ? CacheNames.LayerNumber(pastKey) : null,
            Query = query,
            Key = key,
            Value = value,
            Rank = rank,
            PastKey = pastKey.Length > 0 ? pastKey : null,
            PastValue = pastValue.Length > 0 ? pastValue : null,
            PresentKey = Output(1),
            PresentValue = Output(2),
            Output = node.Output[0],
            AttentionMask = padding,
            Scale = scale != 0f ? scale : 1f / MathF.Sqrt(headSize),
            NumHeads = heads,
            KvNumHeads = kvHeads,
            HeadSize = headSize,
            ElementType = elementType,
            ReplacedNodes = [node],
        };
    }

    /// <summary>
    /// Rank of Q/K/V, H_q, H_kv and D. 4-D inputs are recognised by their head split (Reshape →
    /// Transpose(0,2,1,3)), whose constants give the head counts; H_kv and D may also come from the
    /// past cache's declared shape. 3-D inputs carry <c>q_num_heads</c>/<c>kv_num_heads</c>; D is the
    /// cache's or the projection width over the heads.
    /// </summary>
    private static (int Rank, int Heads, int KvHeads, int HeadSize) Geometry(GraphIndex graph, NodeProto node, string query, string key, string pastKey)
    {
        var cacheDims = pastKey.Length > 0 ? graph.GraphInput(pastKey)?.Type?.TensorType?.Shape?.Dim : null;
        int? cacheHeads = cacheDims is { Count: 4 } && cacheDims[1].DimValue > 0 ? (int)cacheDims[1].DimValue : null;
        int? cacheSize = cacheDims is { Count: 4 } && cacheDims[3].DimValue > 0 ? (int)cacheDims[3].DimValue : null;

        if (HeadSplit.Find(graph, query) is { Bnsh: true } querySplit)
        {
            var keySplit = HeadSplit.Find(graph, key);
            var kvHeads = cacheHeads ?? keySplit?.Heads
                ?? throw new PatternMismatch(node, $"cannot tell the KV head count: keys '{key}' come from no head split with constant heads and there is no past cache with a declared shape");
            var headSize = cacheSize ?? keySplit?.HeadSize ?? querySplit.HeadSize;
            if (headSize != querySplit.HeadSize || querySplit.Heads % kvHeads != 0)
                throw new PatternMismatch(node, $"query heads ({querySplit.Heads} of size {querySplit.HeadSize}) do not fit the keys ({kvHeads} of size {headSize})");
            return (4, querySplit.Heads, kvHeads, headSize);
        }

        var heads = Attr.GetInt(node, "q_num_heads", 0);
        var kvNumHeads = Attr.GetInt(node, "kv_num_heads", 0);
        if (heads < 1 || kvNumHeads < 1)
            throw new PatternMismatch(node, $"Q '{query}' is neither a [B,H,S,D] head split with constant H and D nor 3-D with q_num_heads / kv_num_heads attributes");
        if (heads % kvNumHeads != 0)
            throw new PatternMismatch(node, $"kv_num_heads ({kvNumHeads}) does not divide q_num_heads ({heads})");
        var size = cacheSize ?? (HeadSplit.LastDimension(graph, query) is { } width && width % heads == 0 ? (int?)(width / heads) : null)
            ?? throw new PatternMismatch(node, $"cannot tell the head size: no past cache declares it and the width of Q '{query}' is unknown");
        if (cacheHeads is { } declaredHeads && declaredHeads != kvNumHeads)
            throw new PatternMismatch(node, $"kv_num_heads = {kvNumHeads} but past cache '{pastKey}' declares {declaredHeads} heads");
        return (3, (int)heads, (int)kvNumHeads, size);
    }
}
