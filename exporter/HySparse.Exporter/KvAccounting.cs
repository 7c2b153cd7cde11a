using HySparse.Exporter.Layout;

namespace HySparse.Exporter;

/// <summary>KV-cache size and decode traffic of one layout at one context length, in bytes.</summary>
/// <param name="Context">Tokens in the cache, T.</param>
/// <param name="DenseCache">Cache of the dense model: every layer keeps T tokens.</param>
/// <param name="RetrofitCache">Cache of the retrofit hybrid: the same as dense (every layer keeps its own full KV).</param>
/// <param name="KvSharingCache">Cache with KV sharing: full layers keep T tokens, sparse layers only their window.</param>
/// <param name="DenseDecodeRead">KV bytes one decode step reads in the dense model: T tokens per layer.</param>
/// <param name="HybridDecodeRead">At most what one decode step reads in the hybrid: T per full layer, min(T, K·B + w) per sparse layer.</param>
public sealed record KvFigures(long Context, long DenseCache, long RetrofitCache, long KvSharingCache, long DenseDecodeRead, long HybridDecodeRead);

/// <summary>
/// The KV formulas of the design brief: per layer a token costs 2·H_kv·D·bytes; a sparse layer reads
/// at most K·B + w of them per decoded token and, with KV sharing, stores only the last w.
/// </summary>
public static class KvAccounting
{
    /// <summary>Figures for each context length.</summary>
    /// <param name="bytesPerToken">Per layer: 2·H_kv·D·element bytes.</param>
    /// <param name="layout">Kind of each layer (same count as <paramref name="bytesPerToken"/>).</param>
    /// <param name="parameters">K, B, w.</param>
    /// <param name="contexts">Context lengths T.</param>
    public static IReadOnlyList<KvFigures> Compute(IReadOnlyList<long> bytesPerToken, LayerLayout layout, HybridParameters parameters, IEnumerable<long> contexts)
    {
        if (bytesPerToken.Count != layout.Count) throw new ArgumentException("one bytes-per-token entry per layer is needed");
        return contexts.Select(t =>
        {
            long dense = 0, sharing = 0, hybridRead = 0;
            for (var l = 0; l < layout.Count; l++)
            {
                var full = layout.Kinds[l] == LayerKind.Full;
                dense += bytesPerToken[l] * t;
                sharing += bytesPerToken[l] * (full ? t : Math.Min(t, parameters.Window));
                hybridRead += bytesPerToken[l] * (full ? t : Math.Min(t, parameters.SparseReach));
            }
            return new KvFigures(t, dense, dense, sharing, dense, hybridRead);
        }).ToList();
    }
}
