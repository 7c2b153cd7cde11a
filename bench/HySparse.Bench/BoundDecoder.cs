using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace HySparse.Bench;

/// <summary>
/// Decodes one token per call through a whole decoder model (<c>input_ids</c>, <c>attention_mask</c>,
/// <c>past_key_values.N.key|value</c> → <c>logits</c>, <c>present.N.key|value</c>) with every input and
/// output bound through IOBinding to memory allocated once.
/// </summary>
/// <remarks>
/// Each cache owns two native buffers of the largest length it will reach. A step reads its past from
/// one and the model writes its present into the other; the next step binds them the other way round.
/// So the present of one step becomes the next step's past without a copy, and no step allocates a
/// cache: whatever copying remains is the model's own (its <c>Concat(past, new)</c>, or the HySparse
/// ops' <c>present = past ++ new</c>), which is the cost of the model's cache convention and is part of
/// what the benchmark measures. A shared-buffer model (<c>convert --kv-buffer</c>, GroupQueryAttention
/// conversions) gets one buffer of the capacity per cache instead, bound as both past and present, as
/// onnxruntime-genai binds it: the ops write the new token into it and copy nothing.
/// </remarks>
public sealed unsafe class BoundDecoder : IDisposable
{
    private const string InputIds = "input_ids", AttentionMask = "attention_mask", Logits = "logits";
    private const string PastPrefix = "past_key_values.", PresentPrefix = "present.";

    // One cache input/output pair and its two buffers; Current indexes the buffer holding the past.
    private sealed class Cache
    {
        public required string Past { get; init; }
        public required string Present { get; init; }
        public required bool IsWindow { get; init; }
        public required int Heads { get; init; }
        public required int HeadDim { get; init; }
        public required nint[] Buffers { get; init; }
        public long Length { get; set; }
        public int Current { get; set; }
    }

    private readonly InferenceSession _session;
    private readonly OrtIoBinding _binding;
    private readonly RunOptions _runOptions = new();
    private readonly List<Cache> _caches = [];
    private readonly List<OrtValue> _stepValues = [];
    private readonly int _window;
    private readonly long _capacity;
    private readonly bool _sharedBuffers;
    private readonly long[] _tokenIds = new long[1];
    private readonly long[] _mask;
    private readonly float[] _logits;
    private readonly OrtValue _logitsValue;
    private bool _disposed;

    /// <summary>Binds <paramref name="session"/> and allocates the buffers for contexts up to <paramref name="capacity"/> tokens.</summary>
    /// <param name="session">A session over the model (not owned: it outlives this decoder).</param>
    /// <param name="windowCaches">Cache inputs that are HySparse window caches (KV sharing): at most
    /// <paramref name="window"/> tokens long; every other cache grows by one token per step.</param>
    /// <param name="window">Window length w of the window caches.</param>
    /// <param name="capacity">Largest total context (cached + new tokens) a step may reach.</param>
    /// <param name="vocab">Vocabulary size (the logits' last dimension).</param>
    /// <param name="sharedBuffers">The model keeps its caches in shared buffers of <paramref name="capacity"/> positions
    /// (metadata <c>hysparse.kv_cache = shared_buffer</c>): one buffer per cache, bound as past and present.</param>
    public BoundDecoder(InferenceSession session, IReadOnlySet<string> windowCaches, int window, long capacity, int vocab, bool sharedBuffers = false)
    {
        if (sharedBuffers && windowCaches.Count > 0) throw new ArgumentException("shared-buffer models have no window caches", nameof(windowCaches));
        _sharedBuffers = sharedBuffers;
        _session = session;
        _binding = _session.CreateIoBinding();
        _window = window;
        _capacity = capacity;
        _mask = new long[capacity];
        Array.Fill(_mask, 1L);
        _logits = new float[vocab];
        _logitsValue = OrtValue.CreateTensorValueFromMemory(_logits, [1, 1, vocab]);
        foreach (var past in _session.InputNames.Where(n => n.StartsWith(PastPrefix, StringComparison.Ordinal)))
        {
            var dims = _session.InputMetadata[past].Dimensions;
            if (dims.Length != 4 || dims[1] <= 0 || dims[3] <= 0)
                throw new InvalidOperationException($"cache input '{past}' must be [B, H_kv, length, D] with fixed H_kv and D");
            if (_session.InputMetadata[past].ElementDataType != TensorElementType.Float)
                throw new InvalidOperationException($"cache input '{past}' is not float32; the end-to-end benchmark builds float32 models");
            bool isWindow = windowCaches.Contains(past);
            long rows = isWindow ? Math.Min(window, capacity) : capacity;
            nuint bytes = (nuint)(dims[1] * rows * dims[3] * sizeof(float));
            _caches.Add(new Cache
            {
                Past = past, Present = PresentPrefix + past[PastPrefix.Length..], IsWindow = isWindow, Heads = dims[1], HeadDim = dims[3],
                Buffers = sharedBuffers ? [(nint)NativeMemory.AlignedAlloc(bytes, 64)] : [(nint)NativeMemory.AlignedAlloc(bytes, 64), (nint)NativeMemory.AlignedAlloc(bytes, 64)],
            });
        }
    }

    /// <summary>Names of the cache inputs, in model order.</summary>
    public IEnumerable<string> CacheInputs => _caches.Select(c => c.Past);

    /// <summary>Cached tokens before the next step (the context of the next step minus one).</summary>
    public long Position { get; private set; }

    /// <summary>Bytes the caches hold now (what the last present outputs hold: the whole buffers for shared buffers).</summary>
    public long KvCacheBytes => _caches.Sum(c => c.Heads * (_sharedBuffers ? _capacity : c.Length) * c.HeadDim * (long)sizeof(float));

    /// <summary>
    /// Sets the past to <paramref name="cached"/> tokens: <paramref name="fill"/> writes, for a cache input
    /// and a head, the rows of absolute positions [first, first + count) into the given span. A window
    /// cache receives only the last min(w, cached) positions, as the model expects.
    /// </summary>
    public void Load(long cached, Action<string, int, long, Span<float>> fill)
    {
        if (cached < 0 || cached + 1 > _capacity) throw new ArgumentOutOfRangeException(nameof(cached), $"{cached} cached tokens do not fit a capacity of {_capacity}");
        Parallel.ForEach(_caches.SelectMany(c => Enumerable.Range(0, c.Heads).Select(h => (c, h))), item =>
        {
            var (c, h) = item;
            long length = c.IsWindow ? Math.Min(_window, cached) : cached;
            // A shared buffer keeps each head's rows at its capacity's stride: [1, H_kv, C, D].
            long stride = _sharedBuffers ? _capacity : length;
            var head = new Span<float>((float*)c.Buffers[0] + h * stride * c.HeadDim, checked((int)(length * c.HeadDim)));
            fill(c.Past, h, cached - length, head);
        });
        foreach (var c in _caches)
        {
            c.Length = c.IsWindow ? Math.Min(_window, cached) : cached;
            c.Current = 0;
        }
        Position = cached;
    }

    /// <summary>Decodes <paramref name="token"/> at the next position; returns the wall time of the model run in ms.</summary>
    /// <remarks>Binding the step's tensor views is outside the timed span; it allocates nothing of the caches' size.</remarks>
    public double Step(long token)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long total = Position + 1;
        if (total > _capacity) throw new InvalidOperationException($"context {total} exceeds the capacity {_capacity}");
        foreach (var v in _stepValues) v.Dispose();
        _stepValues.Clear();

        _tokenIds[0] = token;
        _binding.BindInput(InputIds, Track(OrtValue.CreateTensorValueFromMemory(_tokenIds, [1, 1])));
        _binding.BindInput(AttentionMask, Track(OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, _mask.AsMemory(0, (int)total), [1, total])));
        foreach (var c in _caches)
        {
            if (_sharedBuffers)
            {
                var buffer = View(c.Buffers[0], c, _capacity);
                _binding.BindInput(c.Past, buffer);
                _binding.BindOutput(c.Present, buffer);
                continue;
            }
            long presentLength = c.IsWindow ? Math.Min(_window, c.Length + 1) : c.Length + 1;
            _binding.BindInput(c.Past, View(c.Buffers[c.Current], c, c.Length));
            _binding.BindOutput(c.Present, View(c.Buffers[1 - c.Current], c, presentLength));
        }
        _binding.BindOutput(Logits, _logitsValue);

        long start = Stopwatch.GetTimestamp();
        _session.RunWithBinding(_runOptions, _binding);
        double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;

        foreach (var c in _caches)
        {
            c.Length = c.IsWindow ? Math.Min(_window, c.Length + 1) : c.Length + 1;
            if (!_sharedBuffers) c.Current = 1 - c.Current;
        }
        Position = total;
        return ms;
    }

    /// <summary>The logits of the last step.</summary>
    public ReadOnlySpan<float> LastLogits => _logits;

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var v in _stepValues) v.Dispose();
        _binding.Dispose();
        _runOptions.Dispose();
        _logitsValue.Dispose();
        foreach (var c in _caches)
            foreach (var b in c.Buffers) NativeMemory.AlignedFree((void*)b);
    }

    private OrtValue View(nint buffer, Cache c, long length) =>
        Track(OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance, TensorElementType.Float,
            [1, c.Heads, length, c.HeadDim], buffer, c.Heads * length * c.HeadDim * sizeof(float)));

    private OrtValue Track(OrtValue value)
    {
        _stepValues.Add(value);
        return value;
    }
}
