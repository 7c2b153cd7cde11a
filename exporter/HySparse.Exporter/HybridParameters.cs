using HySparse.Exporter.Layout;

namespace HySparse.Exporter;

/// <summary>How sparse layers obtain keys and values.</summary>
public enum HybridMode
{
    /// <summary>Training-free retrofit: every layer keeps its own K/V; sparse layers use one softmax over selected ∪ window.</summary>
    Retrofit,
    /// <summary>
    /// KV sharing: sparse layers read selected blocks from the preceding full layer's cache and keep
    /// only a sliding-window cache of their own, so their <c>past_key_values.N.*</c> inputs and
    /// <c>present.N.*</c> outputs hold at most <c>w</c> tokens.
    /// </summary>
    KvSharing,
}

/// <summary>Sparse-attention parameters written into the converted model (see docs/ops.md).</summary>
public sealed record HybridParameters
{
    /// <summary>Blocks each token selects (K).</summary>
    public int TopK { get; init; } = 16;
    /// <summary>Tokens per key block (B).</summary>
    public int BlockSize { get; init; } = 64;
    /// <summary>Sliding-window length in tokens (w).</summary>
    public int Window { get; init; } = 128;
    /// <summary>Conversion mode.</summary>
    public HybridMode Mode { get; init; } = HybridMode.Retrofit;

    /// <summary>The mode as metadata and JSON write it: "retrofit" or "kv_sharing".</summary>
    public string ModeName => Mode == HybridMode.KvSharing ? "kv_sharing" : "retrofit";

    /// <summary>Parses <see cref="ModeName"/>; null for anything else.</summary>
    public static HybridMode? ParseMode(string? name) => name switch
    {
        "retrofit" => HybridMode.Retrofit,
        "kv_sharing" => HybridMode.KvSharing,
        _ => null,
    };

    /// <summary>Keys a sparse layer attends to per token at most: K·B + w.</summary>
    public long SparseReach => (long)TopK * BlockSize + Window;

    /// <summary>Largest <see cref="TopK"/> the operators accept (docs/ops.md).</summary>
    public const int MaxTopK = 65536;
    /// <summary>Largest <see cref="BlockSize"/> the operators accept (docs/ops.md).</summary>
    public const int MaxBlockSize = 4096;

    /// <summary>Throws <see cref="HybridParametersException"/> naming the first parameter out of range (below 1, or above the operators' limits).</summary>
    public void Validate()
    {
        if (TopK < 1) throw new HybridParametersException($"top-k must be at least 1 block (got {TopK})");
        if (TopK > MaxTopK) throw new HybridParametersException($"top-k must be at most {MaxTopK} blocks, the operators' limit (got {TopK})");
        if (BlockSize < 1) throw new HybridParametersException($"block size must be at least 1 token (got {BlockSize})");
        if (BlockSize > MaxBlockSize) throw new HybridParametersException($"block size must be at most {MaxBlockSize} tokens, the operators' limit (got {BlockSize})");
        if (Window < 1) throw new HybridParametersException($"window must be at least 1 token (got {Window})");
    }
}
