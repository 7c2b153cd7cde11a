using HySparse.Exporter.Layout;
using HySparse.Exporter.Recognition;
using HySparse.Onnx;

namespace HySparse.Exporter;

/// <summary>One converted layer.</summary>
/// <param name="Index">Position among the model's attention layers (graph order).</param>
/// <param name="CacheIndex">N of <c>past_key_values.N</c>, when the caches are named that way.</param>
/// <param name="Kind">Full or sparse.</param>
/// <param name="SourceNode">The node the layer was recognised at.</param>
/// <param name="Node">The HySparse node that replaced it.</param>
/// <param name="OracleLayer">For a sparse layer: the full layer whose selection it reads.</param>
public sealed record ConvertedLayer(int Index, int? CacheIndex, LayerKind Kind, string SourceNode, string Node, int? OracleLayer);

/// <summary>What a conversion did.</summary>
public sealed record ConversionReport
{
    /// <summary>Attention style found in the source.</summary>
    public required AttentionStyle Style { get; init; }
    /// <summary>The layout applied.</summary>
    public required LayerLayout Layout { get; init; }
    /// <summary>The parameters applied.</summary>
    public required HybridParameters Parameters { get; init; }
    /// <summary>Per layer, in graph order.</summary>
    public required IReadOnlyList<ConvertedLayer> Layers { get; init; }
    /// <summary>The metadata entries written.</summary>
    public required IReadOnlyDictionary<string, string> Metadata { get; init; }
    /// <summary>KV sharing: the cache inputs then outputs that became window caches (empty in retrofit).</summary>
    public required IReadOnlyList<string> WindowCaches { get; init; }
    /// <summary>How the model's inputs and outputs changed, in words ("none" in retrofit).</summary>
    public string InterfaceChanges => Metadata[HybridMetadata.InterfaceChanges];
    /// <summary>The cache geometry all layers share, or null when they differ.</summary>
    public CacheGeometry? Cache { get; init; }
    /// <summary>KV sharing of a shared-buffer model: its buffers became concatenated caches.</summary>
    public bool BuffersConcatenated { get; init; }
    /// <summary>Decomposed RoPE applications (one per Q or K) replaced by <c>com.microsoft.RotaryEmbedding</c>.</summary>
    public int FusedRotaries { get; init; }
    /// <summary>Where a decomposed-attention layer's Q or K kept its decomposed RoPE, and why.</summary>
    public IReadOnlyList<string> RotariesLeftDecomposed { get; init; } = [];

    /// <summary>KV figures (dense, retrofit, KV sharing) at <paramref name="contexts"/>; empty without a common cache geometry.</summary>
    public IReadOnlyList<KvFigures> KvAt(IEnumerable<long> contexts) =>
        Cache is { } cache ? KvAccounting.Compute(cache, Layout, Parameters, contexts) : [];
}
