using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// A pattern anchored at one fused attention operator (<c>Domain.OpType</c>): every such node is an
/// anchor, and matching is the operator's checks, which abandon the match with a reason.
/// </summary>
/// <param name="domain">The operator's domain.</param>
/// <param name="opType">The operator's type.</param>
/// <param name="style">The style the recognised layers are reported as.</param>
public abstract class FusedOperatorPattern(string domain, string opType, AttentionStyle style) : IAttentionPattern
{
    /// <summary>The domain of the fused operators of onnxruntime's transformer tools.</summary>
    protected const string MicrosoftDomain = "com.microsoft";

    /// <summary>The operator's domain.</summary>
    protected string Domain { get; } = domain;
    /// <summary>The operator's type.</summary>
    protected string OpType { get; } = opType;

    /// <inheritdoc />
    public AttentionStyle Style { get; } = style;

    /// <inheritdoc />
    public IEnumerable<NodeProto> Anchors(GraphIndex graph) => graph.Graph.Node.Where(n => n.Domain == Domain && n.OpType == OpType);

    /// <inheritdoc />
    public AttentionMatch Match(GraphIndex graph, NodeProto anchor) =>
        AttentionMatch.Catching(() => MatchLayer(graph, anchor, new FusedOperator(graph, anchor)));

    /// <summary>Describes the layer at <paramref name="node"/>, throwing <see cref="PatternMismatch"/> (via <paramref name="op"/>) when it cannot be converted.</summary>
    private protected abstract AttentionLayer MatchLayer(GraphIndex graph, NodeProto node, FusedOperator op);
}
