using HySparse.Exporter.Layout;

namespace HySparse.Exporter;

/// <summary>What to convert a model into.</summary>
public sealed record ConversionOptions
{
    /// <summary>Which layers become full and which sparse.</summary>
    public LayoutSpec Layout { get; init; } = LayoutSpec.Default;
    /// <summary>K, B, w and the mode.</summary>
    public HybridParameters Parameters { get; init; } = new();
    /// <summary>
    /// Keep concatenated caches (<c>present = Concat(past, new)</c>) in fixed-capacity buffers updated in
    /// place (<c>--kv-buffer</c>): the ops run in their shared-buffer mode, so a decode step writes its new
    /// tokens instead of copying every cache. Changes the interface (buffers, right padding only).
    /// </summary>
    public bool KvBuffer { get; init; }
    /// <summary>
    /// Replace the decomposed RoPE in front of decomposed-attention layers (Slice, Neg, Concat, Mul, Add
    /// on Q and K) by <c>com.microsoft.RotaryEmbedding</c> (the default; <c>--keep-decomposed-rope</c> turns
    /// it off). The rotation is the same up to float rounding; the model's interface does not change.
    /// </summary>
    public bool FuseRotary { get; init; } = true;
}
