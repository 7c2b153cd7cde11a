using HySparse.Exporter.Recognition;

namespace HySparse.Exporter;

/// <summary>The attention layers of a model, as far as the patterns can tell.</summary>
/// <param name="Layers">Recognised layers in graph order.</param>
/// <param name="Failures">Attention-like subgraphs that are not convertible, with reasons.</param>
public sealed record ModelAnalysis(IReadOnlyList<AttentionLayer> Layers, IReadOnlyList<UnconvertibleLayer> Failures)
{
    /// <summary>The style of the recognised layers (the first one's), or null when there are none.</summary>
    public AttentionStyle? Style => Layers.Count > 0 ? Layers[0].Style : null;
}
