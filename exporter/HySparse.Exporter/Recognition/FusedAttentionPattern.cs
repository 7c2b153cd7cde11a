using HySparse.Exporter.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// Fused attention operators the converter knows by name but cannot rewrite yet: ONNX
/// <c>Attention</c> (opset 23). Matching them only to refuse keeps such models from being reported
/// as having no attention, and names each layer that blocks the conversion.
/// </summary>
public sealed class FusedAttentionPattern : IAttentionPattern
{
    private static readonly Dictionary<(string Domain, string OpType), string> Reasons = new()
    {
        [("", "Attention")] = "the ONNX Attention operator (opset 23) is not converted yet",
        [("ai.onnx", "Attention")] = "the ONNX Attention operator (opset 23) is not converted yet",
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
