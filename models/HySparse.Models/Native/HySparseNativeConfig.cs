using HySparse.Models.Llama;

namespace HySparse.Models.Native;

/// <summary>How a sparse layer's sigmoid gates are shaped (docs/ops.md, input <c>gate</c>).</summary>
public enum SparseGateKind
{
    /// <summary>One SA and one SWA logit per query head: <c>gate</c> [B,S,2·H_q].</summary>
    PerHead,
    /// <summary>One SA and one SWA logit per channel of every head: <c>gate</c> [B,S,2·H_q·D] (gated attention's elementwise variant).</summary>
    PerChannel,
}

/// <summary>
/// Shape of a HySparse-native decoder (a model trained as HySparse, paper §2): a Llama-style
/// decoder whose layers are either full (attention that also selects the top-K key blocks) or
/// sparse (one query projection q′ for two branches: SA over the selected blocks of the preceding
/// full layer's cache, SWA over a window of the layer's own k′/v′; each branch its own softmax with
/// a sink; sigmoid gates computed from the layer input weigh them).
/// </summary>
public sealed record HySparseNativeConfig
{
    /// <summary>The decoder's sizes, seed and norms (every layer, full or sparse, has this geometry).</summary>
    public LlamaConfig Model { get; init; } = new();

    /// <summary>
    /// One letter per layer, <c>F</c> full or <c>S</c> sparse (e.g. <c>FSSF</c>); layer 0 must be full
    /// because a sparse layer reads the cache and the selection of the full layer before it.
    /// </summary>
    public string Layout { get; init; } = "FSSF";

    /// <summary>Blocks each token selects, K.</summary>
    public int TopK { get; init; } = 2;

    /// <summary>Tokens per key block.</summary>
    public int BlockSize { get; init; } = 4;

    /// <summary>Sliding-window length w of the SWA branch (and of the sparse layers' caches).</summary>
    public int Window { get; init; } = 8;

    /// <summary>Shape of the gates.</summary>
    public SparseGateKind Gate { get; init; } = SparseGateKind.PerHead;

    /// <summary>Whether the two branches have learnable sinks (<c>sinks</c> [2,H_q]); without them the op's denominators hold only the keys.</summary>
    public bool Sinks { get; init; } = true;

    /// <summary>A layout string with <paramref name="fullLayers"/> full and every other layer sparse.</summary>
    public static string LayoutOf(int layers, params int[] fullLayers)
    {
        var letters = Enumerable.Repeat('S', layers).ToArray();
        foreach (var l in fullLayers)
        {
            if (l < 0 || l >= layers) throw new ArgumentOutOfRangeException(nameof(fullLayers), l, $"a full layer must lie in [0, {layers})");
            letters[l] = 'F';
        }
        return new string(letters);
    }

    /// <summary>Whether layer <paramref name="layer"/> is full.</summary>
    public bool IsFull(int layer) => Layout[layer] == 'F';

    /// <summary>The full layers, ascending.</summary>
    public IReadOnlyList<int> FullLayers => Enumerable.Range(0, Layout.Length).Where(IsFull).ToArray();

    /// <summary>The full layer whose cache and selection sparse layer <paramref name="layer"/> reads: the last full layer before it.</summary>
    public int SharedFrom(int layer)
    {
        for (var l = layer; l >= 0; l--)
            if (IsFull(l)) return l;
        throw new InvalidOperationException($"layer {layer} has no full layer before it");
    }

    /// <summary>Whether full layer <paramref name="layer"/> is followed by a sparse layer (and so has to select blocks).</summary>
    public bool FeedsSparseLayer(int layer) => IsFull(layer) && layer + 1 < Layout.Length && !IsFull(layer + 1);

    /// <summary>Width of one sparse layer's gate logits: 2·H_q per head, 2·H_q·D per channel.</summary>
    public int GateWidth => Gate == SparseGateKind.PerHead ? 2 * Model.Heads : 2 * Model.Heads * Model.HeadDim;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first inconsistent field.</summary>
    public void Validate()
    {
        Model.Validate();
        if (Layout is null || Layout.Length != Model.Layers)
            throw new ArgumentException($"Layout must have one letter per layer ({Model.Layers}), got '{Layout}'");
        if (Layout.Any(ch => ch is not ('F' or 'S')))
            throw new ArgumentException($"Layout may hold only 'F' (full) and 'S' (sparse), got '{Layout}'");
        if (Layout[0] != 'F')
            throw new ArgumentException($"layer 0 must be full: a sparse layer reads the preceding full layer's cache and selection (layout '{Layout}')");
        if (TopK < 1) throw new ArgumentException($"TopK must be at least 1 (got {TopK})");
        if (BlockSize < 1) throw new ArgumentException($"BlockSize must be at least 1 (got {BlockSize})");
        if (Window < 1) throw new ArgumentException($"Window must be at least 1 (got {Window})");
        if (!Enum.IsDefined(Gate)) throw new ArgumentException($"unknown gate kind {Gate}");
    }
}
