using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace HySparse.Onnx;

/// <summary>
/// The caches of a <see cref="KvCacheDecoder"/> in bound mode: for each cache input, two native buffers
/// of the largest length it will reach, allocated once. A step binds its past as a view of one and its
/// present as a view of the other; the next step swaps them, so the present of one step is the next
/// step's past without a copy and no step allocates a cache. HySparse window caches (KV-sharing models,
/// listed in the <c>hysparse.window_caches</c> metadata) never exceed the window.
/// </summary>
/// <remarks>
/// A view of <c>L</c> positions is the tensor <c>[B, H, L, D]</c> laid out contiguously from the buffer's
/// start, which is how the model writes its present: so a present becomes a past as it is.
/// </remarks>
internal sealed unsafe class BoundCaches : IDisposable
{
    private sealed class Cache
    {
        public required string Past { get; init; }
        public required string Present { get; init; }
        public required bool IsWindow { get; init; }
        public required long Heads { get; init; }
        public required long HeadDim { get; init; }
        public required TensorElementType Type { get; init; }
        public required int ElementSize { get; init; }
        public required nint[] Buffers { get; init; }
        public long Length { get; set; }
        public int Current { get; set; }
    }

    private readonly List<Cache> _caches = [];
    private readonly long _batch;
    private readonly long _window;
    private bool _disposed;

    /// <summary>Allocates the buffers of every cache pair for contexts up to <paramref name="capacity"/> tokens.</summary>
    public BoundCaches(InferenceSession session, IReadOnlyList<(string Past, string Present)> pairs, int batch, long capacity,
                       Func<TensorElementType, int> elementSize)
    {
        Capacity = capacity;
        _batch = batch;
        var metadata = session.ModelMetadata.CustomMetadataMap;
        var windows = metadata.TryGetValue(HybridMetadata.WindowCaches, out var list)
            ? list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet() : [];
        if (windows.Count > 0 && !(metadata.TryGetValue(HybridMetadata.Window, out var w) && long.TryParse(w, out _window) && _window > 0))
            throw new InvalidOperationException($"The model lists window caches in '{HybridMetadata.WindowCaches}' but has no valid '{HybridMetadata.Window}'");
        try
        {
            foreach (var (past, present) in pairs)
            {
                var meta = session.InputMetadata[past];
                var dims = meta.Dimensions;
                var isWindow = windows.Contains(past);
                long rows = isWindow ? Math.Min(_window, capacity) : capacity;
                var size = elementSize(meta.ElementDataType);
                var bytes = (nuint)(batch * dims[1] * rows * dims[3] * size);
                _caches.Add(new Cache
                {
                    Past = past, Present = present, IsWindow = isWindow, Heads = dims[1], HeadDim = dims[3], Type = meta.ElementDataType, ElementSize = size,
                    Buffers = [(nint)NativeMemory.AlignedAlloc(bytes, 64), (nint)NativeMemory.AlignedAlloc(bytes, 64)],
                });
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The largest context a step may reach.</summary>
    public long Capacity { get; }

    /// <summary>Bytes the caches hold: what the last presents hold.</summary>
    public long Bytes => _caches.Sum(c => _batch * c.Heads * c.Length * c.HeadDim * c.ElementSize);

    /// <summary>Each cache's length, in model input order.</summary>
    public IReadOnlyList<long> Lengths => _caches.Select(c => c.Length).ToArray();

    /// <summary>Forgets the cached tokens (the buffers stay).</summary>
    public void Reset()
    {
        foreach (var c in _caches)
        {
            c.Length = 0;
            c.Current = 0;
        }
    }

    /// <summary>Binds each past (its current length) and present (after <paramref name="newTokens"/> more) as views; returns the views to dispose after the run.</summary>
    public void Bind(OrtIoBinding binding, long newTokens, List<OrtValue> views)
    {
        foreach (var c in _caches)
        {
            var past = View(c, c.Buffers[c.Current], c.Length);
            views.Add(past);
            binding.BindInput(c.Past, past);
            var present = View(c, c.Buffers[1 - c.Current], PresentLength(c, newTokens));
            views.Add(present);
            binding.BindOutput(c.Present, present);
        }
    }

    /// <summary>After a run: the presents become the pasts.</summary>
    public void Advance(long newTokens)
    {
        foreach (var c in _caches)
        {
            c.Length = PresentLength(c, newTokens);
            c.Current = 1 - c.Current;
        }
    }

    /// <summary>
    /// Sets the past to <paramref name="tokens"/> positions of float32 caches: <paramref name="fill"/> writes, for a
    /// cache input, a batch row, a head and the first absolute position, that head's rows into the span.
    /// A window cache receives only the last min(w, tokens) positions.
    /// </summary>
    public void Load(long tokens, Action<string, int, int, long, Span<float>> fill)
    {
        if (tokens < 0 || tokens > Capacity) throw new ArgumentOutOfRangeException(nameof(tokens), $"{tokens} cached tokens do not fit a capacity of {Capacity}");
        if (_caches.FirstOrDefault(c => c.Type != TensorElementType.Float) is { } other)
            throw new NotSupportedException($"Loading caches is implemented for float32 caches; '{other.Past}' is {other.Type}");
        Parallel.ForEach(_caches.SelectMany(c => Enumerable.Range(0, (int)(_batch * c.Heads)).Select(bh => (c, bh))), item =>
        {
            var (c, bh) = item;
            long length = c.IsWindow ? Math.Min(_window, tokens) : tokens;
            var rows = new Span<float>((float*)c.Buffers[0] + bh * length * c.HeadDim, checked((int)(length * c.HeadDim)));
            fill(c.Past, (int)(bh / c.Heads), (int)(bh % c.Heads), tokens - length, rows);
        });
        foreach (var c in _caches)
        {
            c.Length = c.IsWindow ? Math.Min(_window, tokens) : tokens;
            c.Current = 0;
        }
    }

    private long PresentLength(Cache c, long newTokens) => c.IsWindow ? Math.Min(_window, c.Length + newTokens) : c.Length + newTokens;

    private OrtValue View(Cache c, nint buffer, long length) =>
        OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance, c.Type, [_batch, c.Heads, length, c.HeadDim], buffer,
                                           _batch * c.Heads * length * c.HeadDim * c.ElementSize);

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var c in _caches)
            foreach (var b in c.Buffers) NativeMemory.AlignedFree((void*)b);
    }
}
