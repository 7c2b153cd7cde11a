using HySparse.Exporter.Layout;

namespace HySparse.Exporter;

/// <summary>How sparse layers obtain keys and values.</summary>
public enum HybridMode
{
    /// <summary>Training-free retrofit: every layer keeps its own K/V; sparse layers use one softmax over selected ∪ window.</summary>
    Retrofit,
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

    /// <summary>Keys a sparse layer attends to per token at most: K·B + w.</summary>
    public long SparseReach => (long)TopK * BlockSize + Window;

    /// <summary>Throws <see cref="LayoutException"/> naming the first parameter below 1.</summary>
    public void Validate()
    {
        if (TopK < 1) throw new LayoutException($"top-k must be at least 1 block (got {TopK})");
        if (BlockSize < 1) throw new LayoutException($"block size must be at least 1 token (got {BlockSize})");
        if (Window < 1) throw new LayoutException($"window must be at least 1 token (got {Window})");
    }
}

/// <summary>
/// Keys of the <c>metadata_props</c> a converted model carries. Their presence marks the model as
/// converted; <c>inspect</c> reads them back.
/// </summary>
public static class HybridMetadata
{
    /// <summary>Prefix of every key the converter writes.</summary>
    public const string Prefix = "hysparse.";
    /// <summary>Format of these entries ("1").</summary>
    public const string FormatVersion = Prefix + "format_version";
    /// <summary>"retrofit".</summary>
    public const string Mode = Prefix + "mode";
    /// <summary>One letter per attention layer, e.g. "FSSSFSSF".</summary>
    public const string Layout = Prefix + "layout";
    /// <summary>Comma-separated full layers.</summary>
    public const string FullLayers = Prefix + "full_layers";
    /// <summary>K.</summary>
    public const string TopK = Prefix + "top_k";
    /// <summary>B.</summary>
    public const string BlockSize = Prefix + "block_size";
    /// <summary>w.</summary>
    public const string Window = Prefix + "window";
    /// <summary>Combine mode of the sparse layers.</summary>
    public const string Combine = Prefix + "combine";
    /// <summary>Attention style found in the source model.</summary>
    public const string SourceStyle = Prefix + "source_attention";
    /// <summary>The layout request as given.</summary>
    public const string Request = Prefix + "layout_request";
    /// <summary>What changed in the model's inputs and outputs ("none" in retrofit).</summary>
    public const string InterfaceChanges = Prefix + "interface_changes";
    /// <summary>Converter name and version.</summary>
    public const string Converter = Prefix + "converter";
}
