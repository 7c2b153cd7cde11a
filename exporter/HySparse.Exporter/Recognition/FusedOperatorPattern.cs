using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// A pattern anchored at one fused attention operator (<c>Domain.OpType</c>): every such node is an
/// anchor, and matching is the operator's checks, which abandon the match with a reason.
/// </summary>
public abstract class FusedOperatorPattern : IAttentionPattern
{
    /// <summary>The operator's domain.</summary>
    protected abstract string Domain { get; }
    /// <summary>The operator's type.</summary>
    protected abstract string OpType { get; }

    /// <inheritdoc />
    public abstract AttentionStyle Style { get; }

    /// <inheritdoc />
    public IEnumerable<NodeProto> Anchors(GraphIndex graph) => graph.Graph.Node.Where(n => n.Domain == Domain && n.OpType == OpType);

    /// <inheritdoc />
    public AttentionMatch Match(GraphIndex graph, NodeProto anchor) =>
        AttentionMatch.Catching(() => MatchLayer(graph, anchor, new FusedOperator(graph, anchor)));

    /// <summary>Describes the layer at <paramref name="node"/>, throwing <see cref="PatternMismatch"/> (via <paramref name="op"/>) when it cannot be converted.</summary>
    private protected abstract AttentionLayer MatchLayer(GraphIndex graph, NodeProto node, FusedOperator op);
}
