namespace HySparse.Onnx;

/// <summary>What kind of attention a decoder layer runs.</summary>
public enum LayerKind
{
    /// <summary>Full attention (<see cref="HySparseOps.FullAttn"/> or an ordinary attention layer): keeps a full-length KV cache.</summary>
    Full,

    /// <summary>Sparse attention (<see cref="HySparseOps.SparseAttn"/>): selected blocks plus a sliding window.</summary>
    Sparse,
}

/// <summary>How the KV caches of a layout are kept, which decides how much memory they take.</summary>
public enum KvCacheMode
{
    /// <summary>
    /// The original model: every layer keeps its own full-length cache. Layer kinds are ignored, which
    /// makes this mode the baseline a hybrid layout is compared with.
    /// </summary>
    Dense,

    /// <summary>
    /// Training-free retrofit (<c>combine = "union"</c>, <c>window_cache = 0</c>): sparse layers read fewer
    /// keys but still keep their own full-length cache, so memory equals <see cref="Dense"/>.
    /// </summary>
    Retrofit,

    /// <summary>
    /// HySparse-native KV sharing (<c>window_cache = 1</c>): full layers keep full-length caches that the
    /// following sparse layers read; a sparse layer keeps only its last <c>window</c> tokens.
    /// </summary>
    KvSharing,
}

/// <summary>
/// KV-cache memory of a decoder layout: bytes per token and at a given context length, for the dense
/// model and for HySparse layouts, and the ratio between the two.
/// </summary>
/// <remarks>
/// One layer that keeps <c>n</c> tokens holds keys and values of <c>H_kv</c> heads of <c>D</c> elements, that
/// is <c>2·H_kv·D·bytes·n</c> bytes per sequence. With KV sharing a sequence of <c>T</c> tokens therefore takes
/// <c>2·H_kv·D·bytes·(L_full·T + L_sparse·min(T, w))</c>; dense and retrofit layouts take
/// <c>2·H_kv·D·bytes·L·T</c>. Everything is computed in checked 64-bit integers: a layout whose byte
/// count does not fit throws <see cref="OverflowException"/> instead of wrapping.
/// </remarks>
public sealed class KvCacheCalculator
{
    private readonly LayerKind[] _layers;

    /// <summary>Describes a layout layer by layer.</summary>
    /// <param name="layers">The kind of every decoder layer, in model order (at least one).</param>
    /// <param name="kvNumHeads">Key/value heads per layer, <c>H_kv</c> (≥ 1).</param>
    /// <param name="headDim">Head size <c>D</c> (≥ 1).</param>
    /// <param name="elementBytes">Bytes per cached element: 2 for float16/bfloat16, 4 for float32, 1 for 8-bit types (≥ 1).</param>
    /// <param name="mode">How caches are kept.</param>
    /// <param name="window">Sliding-window length <c>w</c> in tokens of the sparse layers (≥ 1); it only
    /// changes the result in <see cref="KvCacheMode.KvSharing"/>.</param>
    /// <exception cref="ArgumentNullException"><paramref name="layers"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="layers"/> is empty or holds an undefined kind; or, in
    /// <see cref="KvCacheMode.KvSharing"/>, the first layer is sparse (a sparse layer shares the cache of
    /// the full layer before it, so one must come first).</exception>
    /// <exception cref="ArgumentOutOfRangeException">A count or size is below 1, or <paramref name="mode"/> is undefined.</exception>
    public KvCacheCalculator(IEnumerable<LayerKind> layers, int kvNumHeads, int headDim, int elementBytes,
                             KvCacheMode mode, int window = 128)
    {
        ArgumentNullException.ThrowIfNull(layers);
        ArgumentOutOfRangeException.ThrowIfLessThan(kvNumHeads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headDim, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(elementBytes, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(window, 1);
        if (!Enum.IsDefined(mode))
            throw new ArgumentOutOfRangeException(nameof(mode), mode, "Unknown KV-cache mode.");

        _layers = layers.ToArray();
        if (_layers.Length == 0)
            throw new ArgumentException("A layout needs at least one layer.", nameof(layers));
        for (var i = 0; i < _layers.Length; i++)
        {
            if (!Enum.IsDefined(_layers[i]))
                throw new ArgumentException($"Layer {i} has the undefined kind {(int)_layers[i]}.", nameof(layers));
        }
        if (mode == KvCacheMode.KvSharing && _layers[0] == LayerKind.Sparse)
            throw new ArgumentException(
                "With KV sharing every sparse layer reads the cache of the full layer before it, but layer 0 is sparse.",
                nameof(layers));

        KvNumHeads = kvNumHeads;
        HeadDim = headDim;
        ElementBytes = elementBytes;
        Mode = mode;
        Window = window;
        FullLayerCount = _layers.Count(kind => kind == LayerKind.Full);
        BytesPerLayerToken = checked(2L * kvNumHeads * headDim * elementBytes);
    }

    /// <summary>
    /// Describes a layout by its layer counts. Only the counts matter for memory; the full layers are
    /// placed evenly, the first at layer 0, so the layout is valid for every mode.
    /// </summary>
    /// <param name="fullLayers">Number of full-attention layers (≥ 1 for <see cref="KvCacheMode.KvSharing"/>, else ≥ 0).</param>
    /// <param name="sparseLayers">Number of sparse layers (≥ 0).</param>
    /// <param name="kvNumHeads">See the layer-by-layer constructor.</param>
    /// <param name="headDim">See the layer-by-layer constructor.</param>
    /// <param name="elementBytes">See the layer-by-layer constructor.</param>
    /// <param name="mode">See the layer-by-layer constructor.</param>
    /// <param name="window">See the layer-by-layer constructor.</param>
    /// <exception cref="ArgumentOutOfRangeException">A count is negative, or see the layer-by-layer constructor.</exception>
    /// <exception cref="ArgumentException">The layout has no layer, or KV sharing without a full layer.</exception>
    public static KvCacheCalculator FromCounts(int fullLayers, int sparseLayers, int kvNumHeads, int headDim,
                                               int elementBytes, KvCacheMode mode, int window = 128)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(fullLayers);
        ArgumentOutOfRangeException.ThrowIfNegative(sparseLayers);
        if (mode == KvCacheMode.KvSharing && fullLayers == 0 && sparseLayers > 0)
            throw new ArgumentException("With KV sharing the sparse layers need at least one full layer to share.",
                                        nameof(fullLayers));
        var total = checked(fullLayers + sparseLayers);
        var layers = new LayerKind[total];
        Array.Fill(layers, LayerKind.Sparse);
        for (long k = 0; k < fullLayers; k++)
            layers[(int)(k * total / fullLayers)] = LayerKind.Full;
        return new KvCacheCalculator(layers, kvNumHeads, headDim, elementBytes, mode, window);
    }

    /// <summary>The layer kinds, in model order.</summary>
    public IReadOnlyList<LayerKind> Layers => _layers;

    /// <summary>Number of layers <c>L</c>.</summary>
    public int LayerCount => _layers.Length;

    /// <summary>Number of full-attention layers <c>L_full</c>.</summary>
    public int FullLayerCount { get; }

    /// <summary>Number of sparse layers <c>L_sparse</c>.</summary>
    public int SparseLayerCount => _layers.Length - FullLayerCount;

    /// <summary>Key/value heads per layer <c>H_kv</c>.</summary>
    public int KvNumHeads { get; }

    /// <summary>Head size <c>D</c>.</summary>
    public int HeadDim { get; }

    /// <summary>Bytes per cached element.</summary>
    public int ElementBytes { get; }

    /// <summary>How the caches are kept.</summary>
    public KvCacheMode Mode { get; }

    /// <summary>Sliding-window length <c>w</c> of the sparse layers.</summary>
    public int Window { get; }

    /// <summary>Bytes one layer spends on one cached token of one sequence: <c>2·H_kv·D·bytes</c>.</summary>
    public long BytesPerLayerToken { get; }

    /// <summary>Number of layers whose cache grows with the context: all of them, except under KV sharing, where only the full layers.</summary>
    public int FullLengthCacheLayerCount => Mode == KvCacheMode.KvSharing ? FullLayerCount : LayerCount;

    /// <summary>
    /// Bytes each further token adds to one sequence's caches once the context is longer than the
    /// window (before that, under KV sharing, sparse layers grow too): <c>2·H_kv·D·bytes·L_full</c> under
    /// KV sharing, <c>2·H_kv·D·bytes·L</c> otherwise.
    /// </summary>
    public long BytesPerToken => checked(BytesPerLayerToken * FullLengthCacheLayerCount);

    /// <summary>Bytes per token of the same layers run densely, <c>2·H_kv·D·bytes·L</c>.</summary>
    public long DenseBytesPerToken => checked(BytesPerLayerToken * LayerCount);

    /// <summary>Tokens every layer's cache holds at context length <paramref name="contextLength"/>, summed over the layers.</summary>
    /// <param name="contextLength">Tokens in the sequence <c>T</c> (≥ 0).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="contextLength"/> is negative.</exception>
    public long CachedTokensAt(long contextLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(contextLength);
        if (Mode != KvCacheMode.KvSharing) return checked(LayerCount * contextLength);
        return checked(FullLayerCount * contextLength + SparseLayerCount * Math.Min(contextLength, Window));
    }

    /// <summary>
    /// KV-cache bytes of <paramref name="batchSize"/> sequences of <paramref name="contextLength"/> tokens:
    /// <c>B·2·H_kv·D·bytes·(L_full·T + L_sparse·min(T, w))</c> under KV sharing, <c>B·2·H_kv·D·bytes·L·T</c> otherwise.
    /// </summary>
    /// <param name="contextLength">Tokens per sequence <c>T</c> (≥ 0).</param>
    /// <param name="batchSize">Sequences <c>B</c> (≥ 1).</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    /// <exception cref="OverflowException">The byte count does not fit in 64 bits.</exception>
    public long BytesAt(long contextLength, long batchSize = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        return checked(batchSize * BytesPerLayerToken * CachedTokensAt(contextLength));
    }

    /// <summary>KV-cache bytes of the same layers run densely (every layer a full-length cache): <c>B·2·H_kv·D·bytes·L·T</c>.</summary>
    /// <param name="contextLength">Tokens per sequence <c>T</c> (≥ 0).</param>
    /// <param name="batchSize">Sequences <c>B</c> (≥ 1).</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    /// <exception cref="OverflowException">The byte count does not fit in 64 bits.</exception>
    public long DenseBytesAt(long contextLength, long batchSize = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(contextLength);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        return checked(batchSize * DenseBytesPerToken * contextLength);
    }

    /// <summary>
    /// How many times smaller this layout's caches are than the dense model's at context length
    /// <paramref name="contextLength"/>: <c>DenseBytesAt(T) / BytesAt(T)</c> (1 for dense and retrofit layouts).
    /// </summary>
    /// <param name="contextLength">Tokens per sequence <c>T</c> (≥ 1: at 0 both sides are empty).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="contextLength"/> is below 1.</exception>
    public double CompressionRatioAt(long contextLength)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(contextLength, 1);
        return (double)DenseBytesAt(contextLength) / BytesAt(contextLength);
    }
}
