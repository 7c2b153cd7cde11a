using HySparse.Exporter.Layout;
using HySparse.Onnx;

namespace HySparse.Exporter;

/// <summary>KV-cache size and decode traffic of one layout at one context length, in bytes per sequence.</summary>
/// <param name="Context">Tokens in the cache, T.</param>
/// <param name="DenseCache">Cache of the dense model: every layer keeps T tokens.</param>
/// <param name="RetrofitCache">Cache of the retrofit hybrid: the same as dense (every layer keeps its own full KV).</param>
/// <param name="KvSharingCache">Cache with KV sharing: full layers keep T tokens, sparse layers only their window.</param>
/// <param name="DenseDecodeRead">KV bytes one decode step reads in the dense model: T tokens per layer.</param>
/// <param name="HybridDecodeRead">At most what one decode step reads in the hybrid: T per full layer, min(T, K·B + w) per sparse layer.</param>
public sealed record KvFigures(long Context, long DenseCache, long RetrofitCache, long KvSharingCache, long DenseDecodeRead, long HybridDecodeRead);

/// <summary>The cache geometry of one layer: what a token costs it.</summary>
/// <param name="KvHeads">Key/value heads H_kv.</param>
/// <param name="HeadSize">Head size D.</param>
/// <param name="ElementBytes">Bytes per cached element.</param>
public sealed record CacheGeometry(int KvHeads, int HeadSize, int ElementBytes)
{
    /// <summary>
    /// The geometry every layer shares (as in every real decoder), or null when layers differ or one
    /// is unknown: the accounting formula assumes one geometry for all layers.
    /// </summary>
    public static CacheGeometry? Common(IEnumerable<CacheGeometry> layers) =>
        layers.Distinct().ToList() is [var only] && only.KvHeads > 0 && only.HeadSize > 0 && only.ElementBytes > 0 ? only : null;
}

/// <summary>
/// KV figures of a layout. Cache sizes come from <see cref="KvCacheCalculator"/> (the library's
/// formula); decode traffic adds what a sparse layer reads: at most K·B + w of its keys per token.
/// </summary>
public static class KvAccounting
{
    /// <summary>Figures for each context length, for layers of the given geometry; <paramref name="sparseLayersSelect"/>
    /// false means sliding-window layers, which read only their window (no selected blocks).</summary>
    public static IReadOnlyList<KvFigures> Compute(CacheGeometry cache, LayerLayout layout, HybridParameters parameters, IEnumerable<long> contexts, bool sparseLayersSelect = true) =>
        Compute(cache.KvHeads, cache.HeadSize, cache.ElementBytes, layout, parameters, contexts, sparseLayersSelect);

    /// <summary>Figures for each context length, for layers of <paramref name="kvHeads"/> × <paramref name="headSize"/> elements of <paramref name="elementBytes"/>;
    /// <paramref name="sparseLayersSelect"/> false means sliding-window layers, which read only their window.</summary>
    public static IReadOnlyList<KvFigures> Compute(int kvHeads, int headSize, int elementBytes, LayerLayout layout, HybridParameters parameters, IEnumerable<long> contexts, bool sparseLayersSelect = true)
    {
        var reach = sparseLayersSelect ? parameters.SparseReach : parameters.Window;
        KvCacheCalculator Calculator(KvCacheMode mode) => new(layout.Kinds, kvHeads, headSize, elementBytes, mode, parameters.Window);
        var retrofit = Calculator(KvCacheMode.Retrofit);
        var sharing = Calculator(KvCacheMode.KvSharing);
        return contexts.Select(t =>
        {
            var hybridRead = checked(retrofit.BytesPerLayerToken * (retrofit.FullLayerCount * t + retrofit.SparseLayerCount * Math.Min(t, reach)));
            return new KvFigures(t, retrofit.DenseBytesAt(t), retrofit.BytesAt(t), sharing.BytesAt(t), retrofit.DenseBytesAt(t), hybridRead);
        }).ToList();
    }
}
