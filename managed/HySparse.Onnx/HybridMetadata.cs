namespace HySparse.Onnx;

/// <summary>
/// The <c>hysparse.*</c> entries of a HySparse model's <c>metadata_props</c>: the model-format contract
/// that the converter writes, the native model builder and the training export write for models built
/// as HySparse, and <c>inspect</c>, <c>verify</c>, the benchmarks and apps read. Their presence marks a
/// model as HySparse.
/// </summary>
public static class HybridMetadata
{
    /// <summary>Prefix of every key the converter writes.</summary>
    public const string Prefix = "hysparse.";
    /// <summary>Format of these entries ("1").</summary>
    public const string FormatVersion = Prefix + "format_version";
    /// <summary>
    /// "retrofit" or "kv_sharing" for a converted model;
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
    /// <summary>Native models: how the sparse layers' branch gates are shaped, <see cref="PerHeadGate"/> or <see cref="PerChannelGate"/>.</summary>
    public const string Gate = Prefix + "gate";
    /// <summary><see cref="Gate"/> value: one gate per query head and branch.</summary>
    public const string PerHeadGate = "per_head";
    /// <summary><see cref="Gate"/> value: one gate per channel and branch.</summary>
    public const string PerChannelGate = "per_channel";
    /// <summary>Native models: "1" when the sparse layers' softmaxes have sinks, else "0".</summary>
    public const string Sinks = Prefix + "sinks";
}
