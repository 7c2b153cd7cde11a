using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// Finds attention layers written in one style. <see cref="Anchors"/> picks every node that starts
/// such a layer (so none is overlooked), <see cref="Match"/> checks the surrounding subgraph and
/// either describes the layer or says why it cannot be converted.
/// </summary>
public interface IAttentionPattern
{
    /// <summary>The style this pattern recognises.</summary>
    AttentionStyle Style { get; }

    /// <summary>Nodes that look like the core of an attention layer of this style, in graph order.</summary>
    IEnumerable<NodeProto> Anchors(GraphIndex graph);

    /// <summary>Matches the layer around <paramref name="anchor"/>.</summary>
    AttentionMatch Match(GraphIndex graph, NodeProto anchor);
}
