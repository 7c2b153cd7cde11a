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

    /// <summary>Throws <see cref="LayoutException"/> naming the first parameter out of range (below 1, or above the operators' limits).</summary>
    public void Validate()
    {
        if (TopK < 1) throw new LayoutException($"top-k must be at least 1 block (got {TopK})");
        if (TopK > MaxTopK) throw new LayoutException($"top-k must be at most {MaxTopK} blocks, the operators' limit (got {TopK})");
        if (BlockSize < 1) throw new LayoutException($"block size must be at least 1 token (got {BlockSize})");
        if (BlockSize > MaxBlockSize) throw new LayoutException($"block size must be at most {MaxBlockSize} tokens, the operators' limit (got {BlockSize})");
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
    /// <summary>
    /// "retrofit" or "kv_sharing" (<see cref="HybridParameters.ModeName"/>) for a converted model;
    /// <see cref="NativeMode"/> for a model built or trained as HySparse, <see cref="SlidingWindowMode"/>
    /// for a sliding-window hybrid trained as such.
    /// </summary>
    public const string Mode = Prefix + "mode";
    /// <summary>
    /// <see cref="Mode"/> of a HySparse-native model (trained with its sparse layers: q′, k′/v′, gates,
    /// sinks; <c>combine=gate</c>, window caches). It has no dense original: nothing to convert or verify against.
    /// </summary>
    public const string NativeMode = "native";
    /// <summary>
    /// <see cref="Mode"/> of a hybrid sliding-window model trained as such (full layers, and
    /// sliding-window layers with window caches: <c>HySparseSparseAttn</c> with an empty selection).
    /// Like a native model it has no dense original.
    /// </summary>
    public const string SlidingWindowMode = "sliding_window";
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
    /// <summary>What changed in the model's inputs and outputs ("none" in retrofit), in words.</summary>
    public const string InterfaceChanges = Prefix + "interface_changes";
    /// <summary>
    /// KV sharing only: comma-separated cache inputs and outputs that became window caches (at most
    /// <c>w</c> tokens along dimension 2, starting empty).
    /// </summary>
    public const string WindowCaches = Prefix + "window_caches";
    /// <summary>Symbolic length (dimension 2) the converter declares for a window cache input: min(w, T − S) tokens.</summary>
    public const string PastWindowDim = "past_window_length";
    /// <summary>Symbolic length the converter declares for a window cache output: min(w, T) tokens.</summary>
    public const string PresentWindowDim = "present_window_length";
    /// <summary>
    /// How the caches are fed: <see cref="ConcatenatedCache"/> (each past holds the tokens so far and
    /// present = past ++ new) or <see cref="SharedBufferCache"/> (fixed-capacity buffers, GroupQueryAttention's convention).
    /// </summary>
    public const string KvCache = Prefix + "kv_cache";
    /// <summary><see cref="KvCache"/> value: past holds the tokens so far, present = past ++ new.</summary>
    public const string ConcatenatedCache = "concatenated";
    /// <summary><see cref="KvCache"/> value: past and present are one fixed-capacity buffer per cache; valid lengths come from the attention mask.</summary>
    public const string SharedBufferCache = "shared_buffer";
    /// <summary>Converter name and version.</summary>
    public const string Converter = Prefix + "converter";
}
