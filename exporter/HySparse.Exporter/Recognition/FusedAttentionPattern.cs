using HySparse.Exporter.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// Fused attention operators the converter knows by name but cannot rewrite yet:
/// <c>com.microsoft.GroupQueryAttention</c>, <c>com.microsoft.MultiHeadAttention</c> and ONNX
/// <c>Attention</c> (opset 23). Matching them only to refuse keeps such models from being reported
/// as having no attention, and names each layer that blocks the conversion.
/// </summary>
public sealed class FusedAttentionPattern : IAttentionPattern
{
    private static readonly Dictionary<(string Domain, string OpType), string> Reasons = new()
    {
        [("com.microsoft", "GroupQueryAttention")] =
            "com.microsoft.GroupQueryAttention is not converted yet (its seqlens_k / total_sequence_length and shared-buffer cache need operator support first)",
        [("com.microsoft", "MultiHeadAttention")] = "com.microsoft.MultiHeadAttention is not converted yet",
    };

    /// <inheritdoc />
    public AttentionStyle Style => AttentionStyle.Fused;

    /// <inheritdoc />
    public IEnumerable<NodeProto> Anchors(GraphIndex graph) =>
        graph.Graph.Node.Where(n => Reasons.ContainsKey((n.Domain, n.OpType)));

    /// <inheritdoc />
    public AttentionMatch Match(GraphIndex graph, NodeProto anchor) =>
        AttentionMatch.Fail(anchor, Reasons[(anchor.Domain, anchor.OpType)]);
}
