using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace HySparse.Onnx;

/// <summary>
/// Runs a decoder-only ONNX model token by token, carrying its KV cache from one call to the next.
/// </summary>
/// <remarks>
/// <para>Works with the input/output naming that torch/Optimum exports, the onnxruntime-genai model
/// builder and HySparse's converter all use: inputs <c>input_ids</c> (int64 [B, S]), optional
/// <c>attention_mask</c> (int64 [B, P+S]) and <c>position_ids</c> (int64 [B, S]), caches
/// <c>past_key_values.N.key|value</c>; outputs <c>logits</c> and <c>present.N.key|value</c>. GPT-2 style
/// models (<c>com.microsoft.Attention</c>, onnxruntime-genai's <c>gpt2</c> type) cache keys and values
/// together, <c>past_N</c> → <c>present_N</c> [2, B, H, T, D], and may take <c>attention_mask</c> as
/// int32 or float: both run as well.</para>
/// <para>Each <c>present</c> tensor is fed back as the matching <c>past</c> on the next step without a
/// copy, whatever its length: so full-length caches, HySparse window caches (which stay at most
/// <c>window</c> tokens long) and KV-sharing layouts all run through the same loop, and
/// <see cref="KvCacheBytes"/> reports what the model really keeps.</para>
/// <para>Models with GroupQueryAttention's shared-buffer caches (onnxruntime-genai's
/// <c>past_present_share_buffer</c>, and HySparse conversions of such models) are run with a
/// <c>bufferCapacity</c>: every past is then a buffer of that many positions from the first step on,
/// bound as the matching present output too, so the model writes the new tokens into it in place;
/// the model learns the valid lengths from <c>attention_mask</c>.</para>
/// <para>Bound mode (<c>boundCapacity</c>): for serving loops and benchmarks. Every cache lives in native
/// memory allocated once for contexts up to that many tokens, bound through IOBinding: a step writes its
/// present into the buffer the next step reads as its past (two buffers per cache, swapped), so no step
/// allocates or copies a cache on the managed side; token ids, the mask and float32 logits use buffers
/// allocated once too. <see cref="LoadCache"/> fills the caches directly (restoring a saved prompt,
/// benchmarks with synthetic contexts).</para>
/// </remarks>
public sealed class KvCacheDecoder : IDisposable
{

    private readonly InferenceSession _session;
    private readonly List<(string Past, string Present)> _cachePairs = [];
    private readonly List<string> _extraOutputs = [];
    private readonly bool _hasMask;
    private readonly TensorElementType _maskType;
    private readonly bool _hasPositions;
    private readonly RunOptions _runOptions = new();
    private readonly int? _bufferCapacity;
    private IDisposableReadOnlyCollection<OrtValue>? _lastOutputs;
    private OrtValue[] _caches = [];
    private long[] _mask = [];
    private bool _disposed;
    // Bound mode (null otherwise): the caches, the binding, and buffers reused by every step.
    private readonly BoundCaches? _bound;
    private readonly OrtIoBinding? _binding;
    private long[] _boundIds = [];
    private long[] _boundMaskRows = [];   // [B, capacity]: each row's mask so far
    private long[] _boundMask = [];       // [B, total] packed for the step
    private long[] _boundPositions = [];
    private readonly Dictionary<int, float[]> _boundLogits = [];
    private readonly List<OrtValue> _boundViews = [];

    /// <summary>Wraps <paramref name="session"/> (not owned: dispose it yourself, after this object).</summary>
    /// <param name="session">A session over a decoder model with the naming described above.</param>
    /// <param name="batchSize">Rows decoded together.</param>
    /// <param name="extraOutputs">Other model outputs to fetch at every step (for example a full
    /// layer's <c>block_indices</c> exposed as a graph output), read with <see cref="ExtraOutput"/>.</param>
    /// <param name="bufferCapacity">For shared-buffer models: the positions each cache buffer holds
    /// (the longest sequence the decoder will run); null for caches that grow with every step.</param>
    /// <param name="boundCapacity">Bound mode (see remarks): preallocate every cache, the ids, the mask and
    /// the logits for contexts up to this many tokens and bind them through IOBinding. For models whose
    /// caches grow (concatenating caches, HySparse window caches); not with <paramref name="bufferCapacity"/>.
    /// In bound mode the array <see cref="Step"/> returns is the decoder's own, reused by later steps of the
    /// same length: read it (or copy it) before the next step.</param>
    /// <exception cref="ArgumentException">The model lacks <c>input_ids</c> or <c>logits</c>, a cache
    /// input has no matching output, or an extra output does not exist.</exception>
    public KvCacheDecoder(InferenceSession session, int batchSize = 1, IEnumerable<string>? extraOutputs = null, int? bufferCapacity = null,
                          int? boundCapacity = null)
    {
        ArgumentNullException.ThrowIfNull(session);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        if (bufferCapacity is { } capacity) ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1, nameof(bufferCapacity));
        _bufferCapacity = bufferCapacity;
        _session = session;
        BatchSize = batchSize;
        if (!session.InputMetadata.ContainsKey(DecoderNames.InputIds))
            throw new ArgumentException($"The model has no '{DecoderNames.InputIds}' input; inputs: {string.Join(", ", session.InputNames)}", nameof(session));
        if (!session.OutputMetadata.ContainsKey(DecoderNames.Logits))
            throw new ArgumentException($"The model has no '{DecoderNames.Logits}' output; outputs: {string.Join(", ", session.OutputNames)}", nameof(session));
        _hasMask = session.InputMetadata.ContainsKey(DecoderNames.AttentionMask);
        _maskType = _hasMask ? session.InputMetadata[DecoderNames.AttentionMask].ElementDataType : TensorElementType.Int64;
        _hasPositions = session.InputMetadata.ContainsKey(DecoderNames.PositionIds);

        foreach (var name in session.InputNames.Where(IsCachePast))
        {
            var present = name.StartsWith(DecoderNames.PastPrefix, StringComparison.Ordinal)
                ? DecoderNames.PresentPrefix + name[DecoderNames.PastPrefix.Length..]
                : DecoderNames.CombinedPresentPrefix + name[DecoderNames.CombinedPastPrefix.Length..];
            if (!session.OutputMetadata.ContainsKey(present))
                throw new ArgumentException($"Cache input '{name}' has no matching output '{present}'", nameof(session));
            _cachePairs.Add((name, present));
        }
        foreach (var name in extraOutputs ?? [])
        {
            if (!session.OutputMetadata.ContainsKey(name))
                throw new ArgumentException($"The model has no output '{name}'; outputs: {string.Join(", ", session.OutputNames)}", nameof(extraOutputs));
            _extraOutputs.Add(name);
        }
        if (boundCapacity is { } bound)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(bound, 1, nameof(boundCapacity));
            if (bufferCapacity is not null)
                throw new ArgumentException("bufferCapacity (shared-buffer models) and boundCapacity (growing caches) are two modes; give one", nameof(boundCapacity));
            if (_cachePairs.FirstOrDefault(p => !p.Past.StartsWith(DecoderNames.PastPrefix, StringComparison.Ordinal)) is { Past: { } combinedPast })
                throw new InvalidOperationException($"Cache input '{combinedPast}' combines keys and values; bound mode supports [B, H_kv, length, D] caches");
            foreach (var (past, _) in _cachePairs) CheckCacheShape(past);
            _bound = new BoundCaches(session, _cachePairs, batchSize, bound, ElementSize);
            _binding = session.CreateIoBinding();
            _boundMaskRows = new long[(long)batchSize * bound];
            _boundMask = new long[(long)batchSize * bound];
        }
        Reset();
    }

    private void CheckCacheShape(string past)
    {
        var dims = _session.InputMetadata[past].Dimensions;
        if (dims.Length != 4 || dims[1] <= 0 || dims[3] <= 0)
            throw new InvalidOperationException($"Cache input '{past}' must be [B, H_kv, length, D] with H_kv and D declared, got {string.Join("x", dims)}");
    }

    /// <summary>A cache input: <c>past_key_values.*</c>, or a combined <c>past_N</c>.</summary>
    private static bool IsCachePast(string name) =>
        name.StartsWith(DecoderNames.PastPrefix, StringComparison.Ordinal)
        || (name.StartsWith(DecoderNames.CombinedPastPrefix, StringComparison.Ordinal) && name.Length > DecoderNames.CombinedPastPrefix.Length
            && name.AsSpan(DecoderNames.CombinedPastPrefix.Length).IndexOfAnyExceptInRange('0', '9') < 0);

    /// <summary>Rows decoded together.</summary>
    public int BatchSize { get; }

    /// <summary>Tokens consumed so far (the absolute position of the next token).</summary>
    public long Position { get; private set; }

    /// <summary>Number of cache tensors (two per attention layer, or one for combined caches).</summary>
    public int CacheTensorCount => _cachePairs.Count;

    /// <summary>Bytes currently held by all KV-cache tensors (the last <c>present</c> outputs).</summary>
    public long KvCacheBytes => _bound?.Bytes ?? _caches.Sum(TensorBytes);

    /// <summary>Lengths (dimension 2 of [B, H, T, D], 3 of a combined [2, B, H, T, D]) of each cache tensor, in model input order.</summary>
    public IReadOnlyList<long> CacheLengths => _bound?.Lengths ?? _caches.Select(c => c.GetTensorTypeAndShape().Shape[^2]).ToArray();

    /// <summary>Forgets the cache and starts a new sequence.</summary>
    public void Reset()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        DisposeCaches();
        if (_bound is not null)
        {
            _bound.Reset();
            _mask = [];
            Position = 0;
            return;
        }
        _caches = new OrtValue[_cachePairs.Count];
        for (var i = 0; i < _cachePairs.Count; i++)
        {
            var meta = _session.InputMetadata[_cachePairs[i].Past];
            var combined = !_cachePairs[i].Past.StartsWith(DecoderNames.PastPrefix, StringComparison.Ordinal);
            var rank = combined ? 5 : 4;
            if (meta.Dimensions.Length != rank)
                throw new InvalidOperationException($"Cache input '{_cachePairs[i].Past}' must be {rank}-D {(combined ? "[2, B, H, length, D]" : "[B, H_kv, length, D]")}, the model declares rank {meta.Dimensions.Length}");
            if (combined && _bufferCapacity is not null)
                throw new InvalidOperationException($"Cache input '{_cachePairs[i].Past}' combines keys and values; such caches grow every step and cannot be run as shared buffers");
            var heads = meta.Dimensions[^3];
            var headDim = meta.Dimensions[^1];
            if (heads <= 0 || headDim <= 0)
                throw new InvalidOperationException($"Cache input '{_cachePairs[i].Past}' must declare its head count and head size, got {string.Join("x", meta.Dimensions)}");
            long[] shape = [BatchSize, heads, _bufferCapacity ?? 0, headDim];
            _caches[i] = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, meta.ElementDataType, combined ? [2, .. shape] : shape);
            // A buffer's unused positions are never read, but zeros keep runs reproducible.
            if (_bufferCapacity is not null) _caches[i].GetTensorMutableRawData().Clear();
        }
        _mask = [];
        Position = 0;
    }

    /// <summary>
    /// Feeds <paramref name="tokens"/> ([B, S] row-major) and returns the logits of every new token,
    /// as float32 [B, S, vocab] whatever the model's output type.
    /// </summary>
    /// <param name="tokens">Token ids, <see cref="BatchSize"/> rows of S tokens.</param>
    /// <param name="newTokenMask">Optional 0/1 per new token ([B, S]); 0 marks padding (for batches of
    /// prompts of different lengths). Earlier tokens keep the mask they were given.</param>
    public float[] Step(ReadOnlySpan<long> tokens, ReadOnlySpan<long> newTokenMask = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokens.Length == 0 || tokens.Length % BatchSize != 0)
            throw new ArgumentException($"tokens must hold {BatchSize} rows of equal length, got {tokens.Length} ids", nameof(tokens));
        var newLen = tokens.Length / BatchSize;
        if (!newTokenMask.IsEmpty && newTokenMask.Length != tokens.Length)
            throw new ArgumentException($"newTokenMask must have one entry per token ({tokens.Length}), got {newTokenMask.Length}", nameof(newTokenMask));

        if (_bound is not null) return BoundStep(tokens, newTokenMask, newLen);
        var total = Position + newLen;
        if (total > _bufferCapacity)
            throw new InvalidOperationException($"{total} tokens do not fit the KV buffers of {_bufferCapacity} positions");
        var mask = new long[BatchSize * total];
        for (var b = 0; b < BatchSize; b++)
        {
            for (long j = 0; j < total; j++)
            {
                mask[b * total + j] = j < Position ? _mask[b * Position + j]
                    : newTokenMask.IsEmpty ? 1 : newTokenMask[b * newLen + (int)(j - Position)];
            }
        }

        var names = new List<string> { DecoderNames.InputIds };
        using var ids = OrtValue.CreateTensorValueFromMemory(tokens.ToArray(), [BatchSize, newLen]);
        var values = new List<OrtValue> { ids };
        using var maskValue = MaskValue(mask, [BatchSize, total]);
        if (_hasMask)
        {
            names.Add(DecoderNames.AttentionMask);
            values.Add(maskValue);
        }
        using var positions = OrtValue.CreateTensorValueFromMemory(PositionIds(mask, total, newLen), [BatchSize, newLen]);
        if (_hasPositions)
        {
            names.Add(DecoderNames.PositionIds);
            values.Add(positions);
        }
        for (var i = 0; i < _cachePairs.Count; i++)
        {
            names.Add(_cachePairs[i].Past);
            values.Add(_caches[i]);
        }

        float[] logits;
        if (_bufferCapacity is null)
        {
            var outputNames = new List<string> { DecoderNames.Logits };
            outputNames.AddRange(_cachePairs.Select(p => p.Present));
            outputNames.AddRange(_extraOutputs);
            var outputs = _session.Run(_runOptions, names, values, outputNames);
            logits = ToFloat(outputs[0]);
            // The new caches are the outputs just produced; the previous ones can go.
            DisposeCaches();
            _lastOutputs = outputs;
            _caches = outputs.Skip(1).Take(_cachePairs.Count).ToArray();
        }
        else
        {
            logits = RunInPlace(names, values);
        }
        _mask = mask;
        Position = total;
        return logits;
    }

    /// <summary>
    /// Shared-buffer step: each buffer is bound as both the past input and the present output, as
    /// onnxruntime-genai binds them, so the attention operators see present and past as one memory
    /// and write only the new tokens into it. The buffers stay this decoder's; the outputs ONNX Runtime
    /// allocates (logits, extra outputs) live until the next step.
    /// </summary>
    private float[] RunInPlace(List<string> names, List<OrtValue> values)
    {
        using var binding = _session.CreateIoBinding();
        for (var i = 0; i < names.Count; i++) binding.BindInput(names[i], values[i]);
        binding.BindOutputToDevice(DecoderNames.Logits, OrtMemoryInfo.DefaultInstance);
        for (var i = 0; i < _cachePairs.Count; i++) binding.BindOutput(_cachePairs[i].Present, _caches[i]);
        foreach (var name in _extraOutputs) binding.BindOutputToDevice(name, OrtMemoryInfo.DefaultInstance);
        _session.RunWithBinding(_runOptions, binding);
        var outputs = binding.GetOutputValues();
        _lastOutputs?.Dispose();
        _lastOutputs = outputs;
        return ToFloat(outputs[0]);
    }

    // Bound mode's step: the same inputs as Step builds, in buffers allocated once.
    private float[] BoundStep(ReadOnlySpan<long> tokens, ReadOnlySpan<long> newTokenMask, int newLen)
    {
        var bound = _bound!;
        var binding = _binding!;
        var total = Position + newLen;
        if (total > bound.Capacity)
            throw new InvalidOperationException($"{total} tokens do not fit the bound caches of {bound.Capacity} positions");
        var capacity = bound.Capacity;
        for (var b = 0; b < BatchSize; b++)
        {
            for (var s = 0; s < newLen; s++)
                _boundMaskRows[b * capacity + Position + s] = newTokenMask.IsEmpty ? 1 : newTokenMask[b * newLen + s];
            _boundMaskRows.AsSpan((int)(b * capacity), (int)total).CopyTo(_boundMask.AsSpan((int)(b * total), (int)total));
        }
        if (_boundIds.Length < tokens.Length) _boundIds = new long[tokens.Length];
        tokens.CopyTo(_boundIds);

        foreach (var v in _boundViews) v.Dispose();
        _boundViews.Clear();
        binding.ClearBoundInputs();
        binding.ClearBoundOutputs();
        binding.BindInput(DecoderNames.InputIds, Track(OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, _boundIds.AsMemory(0, tokens.Length), [BatchSize, newLen])));
        var packedMask = _boundMask.AsMemory(0, (int)(BatchSize * total));
        if (_hasMask)
        {
            binding.BindInput(DecoderNames.AttentionMask, Track(_maskType == TensorElementType.Int64
                ? OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, packedMask, [BatchSize, total])
                : MaskValue(packedMask.ToArray(), [BatchSize, total])));
        }
        if (_hasPositions)
        {
            if (_boundPositions.Length < tokens.Length) _boundPositions = new long[tokens.Length];
            PositionIds(packedMask.Span, total, newLen, _boundPositions);
            binding.BindInput(DecoderNames.PositionIds, Track(OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, _boundPositions.AsMemory(0, tokens.Length), [BatchSize, newLen])));
        }
        var logitsMeta = _session.OutputMetadata[DecoderNames.Logits];
        var vocab = logitsMeta.Dimensions[^1];
        float[]? logits = null;
        if (logitsMeta.ElementDataType == TensorElementType.Float && vocab > 0)
        {
            if (!_boundLogits.TryGetValue(newLen, out logits)) _boundLogits[newLen] = logits = new float[BatchSize * newLen * vocab];
            binding.BindOutput(DecoderNames.Logits, Track(OrtValue.CreateTensorValueFromMemory(logits, [BatchSize, newLen, vocab])));
        }
        else
        {
            binding.BindOutputToDevice(DecoderNames.Logits, OrtMemoryInfo.DefaultInstance);
        }
        bound.Bind(binding, newLen, _boundViews);
        foreach (var name in _extraOutputs) binding.BindOutputToDevice(name, OrtMemoryInfo.DefaultInstance);

        _session.RunWithBinding(_runOptions, binding);

        if (logits is null || _extraOutputs.Count > 0)
        {
            // Outputs ORT allocated (non-float32 logits, extra outputs) live until the next step.
            var outputs = binding.GetOutputValues();
            _lastOutputs?.Dispose();
            _lastOutputs = outputs;
            logits ??= ToFloat(outputs[0]);
        }
        bound.Advance(newLen);
        _mask = [];   // bound mode keeps the mask in its rows buffer
        Position = total;
        return logits;
    }

    private OrtValue Track(OrtValue value)
    {
        _boundViews.Add(value);
        return value;
    }

    /// <summary>
    /// Bound or shared-buffer mode: sets the cache to <paramref name="tokens"/> positions, as if a prompt
    /// of that length had been run with every token real (restoring a saved prompt; benchmarks with
    /// synthetic contexts). <paramref name="fill"/> writes, for a cache input, a batch row, a KV head and
    /// the first absolute position, that head's rows (length × D floats) into the span. A window cache
    /// receives only its last min(w, tokens) positions. For float32 caches.
    /// </summary>
    /// <exception cref="InvalidOperationException">The decoder was constructed with neither
    /// <c>boundCapacity</c> nor <c>bufferCapacity</c> (its caches are ONNX Runtime's outputs).</exception>
    public void LoadCache(long tokens, Action<string, int, int, long, Span<float>> fill)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(fill);
        if (_bound is not null)
        {
            _bound.Load(tokens, fill);
            Array.Clear(_boundMaskRows);
            for (var b = 0; b < BatchSize; b++) _boundMaskRows.AsSpan((int)(b * _bound.Capacity), (int)tokens).Fill(1);
        }
        else if (_bufferCapacity is { } capacity)
        {
            if (tokens < 0 || tokens > capacity) throw new ArgumentOutOfRangeException(nameof(tokens), $"{tokens} cached tokens do not fit the KV buffers of {capacity} positions");
            for (var i = 0; i < _caches.Length; i++)
            {
                var info = _caches[i].GetTensorTypeAndShape();
                if (info.ElementDataType != TensorElementType.Float)
                    throw new NotSupportedException($"Loading caches is implemented for float32 caches; '{_cachePairs[i].Past}' is {info.ElementDataType}");
                var shape = info.Shape;   // [B, H, C, D]: each head's rows at the capacity's stride
                var data = _caches[i].GetTensorMutableDataAsSpan<float>();
                for (var bh = 0; bh < shape[0] * shape[1]; bh++)
                    fill(_cachePairs[i].Past, (int)(bh / shape[1]), (int)(bh % shape[1]), 0, data.Slice((int)(bh * capacity * shape[3]), (int)(tokens * shape[3])));
            }
            _mask = new long[BatchSize * tokens];
            Array.Fill(_mask, 1L);
        }
        else
        {
            throw new InvalidOperationException("LoadCache needs caches the decoder owns: construct it with boundCapacity (or bufferCapacity for a shared-buffer model)");
        }
        Position = tokens;
    }

    /// <summary>
    /// An extra output (named at construction) of the last <see cref="Step"/>. The value belongs to
    /// this decoder and stays valid until the next <see cref="Step"/>, <see cref="Reset"/> or
    /// <see cref="Dispose"/>.
    /// </summary>
    /// <exception cref="InvalidOperationException">No step has run since the last reset.</exception>
    /// <exception cref="KeyNotFoundException"><paramref name="name"/> was not named at construction.</exception>
    public OrtValue ExtraOutput(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var index = _extraOutputs.IndexOf(name);
        if (index < 0) throw new KeyNotFoundException($"'{name}' is not one of the extra outputs this decoder fetches");
        if (_lastOutputs is null) throw new InvalidOperationException("No step has run since the decoder was reset");
        return _lastOutputs[1 + _cachePairs.Count + index];
    }

    /// <summary>
    /// Chunked prefill: feeds <paramref name="prompt"/> ([B, S] row-major) through the cache
    /// <paramref name="chunkSize"/> tokens at a time and returns the logits of each row's last prompt
    /// token, float32 [B, vocab]. The result equals one <see cref="Step"/> over the whole prompt (to
    /// float rounding: the attention sums run in another order), while what a call holds besides the
    /// caches — logits, attention scratch, a full layer's block scores — stays that of a chunk, so a
    /// prompt of any length fits. Shared-buffer decoders need a <c>bufferCapacity</c> of at least S.
    /// </summary>
    /// <param name="prompt">Token ids, <see cref="BatchSize"/> rows of S tokens.</param>
    /// <param name="chunkSize">Most tokens per call (the last chunk of a row may be shorter).</param>
    /// <param name="promptMask">Optional 0/1 per prompt token ([B, S]), as for <see cref="Step"/>.</param>
    public float[] Prefill(ReadOnlySpan<long> prompt, int chunkSize, ReadOnlySpan<long> promptMask = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfLessThan(chunkSize, 1);
        if (prompt.Length == 0 || prompt.Length % BatchSize != 0)
            throw new ArgumentException($"prompt must hold {BatchSize} rows of equal length, got {prompt.Length} ids", nameof(prompt));
        if (!promptMask.IsEmpty && promptMask.Length != prompt.Length)
            throw new ArgumentException($"promptMask must have one entry per token ({prompt.Length}), got {promptMask.Length}", nameof(promptMask));
        var promptLen = prompt.Length / BatchSize;
        float[] last = [];
        for (var start = 0; start < promptLen; start += chunkSize)
        {
            var len = Math.Min(chunkSize, promptLen - start);
            var ids = new long[BatchSize * len];
            var mask = promptMask.IsEmpty ? [] : new long[BatchSize * len];
            for (var b = 0; b < BatchSize; b++)
            {
                prompt.Slice(b * promptLen + start, len).CopyTo(ids.AsSpan(b * len, len));
                if (!promptMask.IsEmpty) promptMask.Slice(b * promptLen + start, len).CopyTo(mask.AsSpan(b * len, len));
            }
            var logits = Step(ids, mask);
            if (start + len < promptLen) continue;
            var vocab = logits.Length / (BatchSize * len);
            last = new float[BatchSize * vocab];
            for (var b = 0; b < BatchSize; b++)
                logits.AsSpan((b * len + len - 1) * vocab, vocab).CopyTo(last.AsSpan(b * vocab, vocab));
        }
        return last;
    }

    /// <summary>Greedy decoding: feeds the prompt, then appends the arg-max token <paramref name="newTokens"/> times.</summary>
    /// <returns>The generated tokens, [B, newTokens] row-major.</returns>
    public long[] GenerateGreedy(ReadOnlySpan<long> prompt, int newTokens) => GenerateGreedy(prompt, newTokens, int.MaxValue);

    /// <summary>Greedy decoding with the prompt fed by <see cref="Prefill"/> in chunks of at most
    /// <paramref name="prefillChunk"/> tokens.</summary>
    /// <returns>The generated tokens, [B, newTokens] row-major.</returns>
    public long[] GenerateGreedy(ReadOnlySpan<long> prompt, int newTokens, int prefillChunk)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(newTokens, 0);
        var generated = new long[BatchSize * newTokens];
        if (newTokens == 0) return generated;
        var next = ArgMaxLast(Prefill(prompt, prefillChunk), 1);
        for (var step = 0; step < newTokens; step++)
        {
            for (var b = 0; b < BatchSize; b++) generated[b * newTokens + step] = next[b];
            if (step + 1 == newTokens) break;
            next = StepGreedy(next);
        }
        return generated;
    }

    /// <summary>
    /// One greedy step: feeds <paramref name="tokens"/> as <see cref="Step"/> does and returns each row's
    /// arg-max next token, [B].
    /// </summary>
    public long[] StepGreedy(ReadOnlySpan<long> tokens) => ArgMaxLast(Step(tokens), tokens.Length / BatchSize);

    /// <summary>Arg-max over the vocabulary of the last token of each row of [B, S, vocab] logits.</summary>
    private long[] ArgMaxLast(float[] logits, int newLen)
    {
        var vocab = logits.Length / (BatchSize * newLen);
        var result = new long[BatchSize];
        for (var b = 0; b < BatchSize; b++)
        {
            var row = logits.AsSpan((b * newLen + newLen - 1) * vocab, vocab);
            var best = 0;
            for (var v = 1; v < vocab; v++) if (row[v] > row[best]) best = v;
            result[b] = best;
        }
        return result;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        DisposeCaches();
        foreach (var v in _boundViews) v.Dispose();
        _binding?.Dispose();
        _bound?.Dispose();
        _runOptions.Dispose();
        _disposed = true;
    }

    /// <summary>The mask in the element type the model declares: int64, or int32 / float as GPT-2 tools write it.</summary>
    private OrtValue MaskValue(long[] mask, long[] shape) => _maskType switch
    {
        TensorElementType.Int32 => OrtValue.CreateTensorValueFromMemory(mask.Select(m => (int)m).ToArray(), shape),
        TensorElementType.Float => OrtValue.CreateTensorValueFromMemory(mask.Select(m => (float)m).ToArray(), shape),
        _ => OrtValue.CreateTensorValueFromMemory(mask, shape),
    };

    // Positions count only real tokens, so left-padded rows start at position 0 like unpadded ones.
    private static long[] PositionIds(long[] mask, long total, int newLen)
    {
        var positions = new long[mask.Length / (int)total * newLen];
        PositionIds(mask, total, newLen, positions);
        return positions;
    }

    private static void PositionIds(ReadOnlySpan<long> mask, long total, int newLen, Span<long> positions)
    {
        var batch = mask.Length / (int)total;
        for (var b = 0; b < batch; b++)
        {
            long seen = 0;
            for (long j = 0; j < total; j++)
            {
                var real = mask[(int)(b * total + j)] != 0;
                var s = j - (total - newLen);
                if (s >= 0) positions[(int)(b * newLen + s)] = real ? seen : 0;
                if (real) seen++;
            }
        }
    }

    private void DisposeCaches()
    {
        // Concatenating caches are the last outputs themselves; shared buffers are allocated here and
        // only bound to the outputs, so they are disposed on their own.
        var cachesAreOutputs = _lastOutputs is not null && _bufferCapacity is null;
        _lastOutputs?.Dispose();
        _lastOutputs = null;
        if (!cachesAreOutputs)
            foreach (var c in _caches) c?.Dispose();
        _caches = [];
    }

    private static long TensorBytes(OrtValue value)
    {
        var info = value.GetTensorTypeAndShape();
        return info.ElementCount * ElementSize(info.ElementDataType);
    }

    private static int ElementSize(TensorElementType type) => type switch
    {
        TensorElementType.Float => 4,
        TensorElementType.Float16 or TensorElementType.BFloat16 => 2,
        TensorElementType.Double or TensorElementType.Int64 => 8,
        TensorElementType.Int32 => 4,
        _ => throw new NotSupportedException($"KV cache element type {type} is not supported"),
    };

    private static float[] ToFloat(OrtValue value)
    {
        var info = value.GetTensorTypeAndShape();
        return info.ElementDataType switch
        {
            TensorElementType.Float => value.GetTensorDataAsSpan<float>().ToArray(),
            TensorElementType.Float16 => value.GetTensorDataAsSpan<Float16>().ToArray().Select(h => (float)h).ToArray(),
            _ => throw new NotSupportedException($"logits of type {info.ElementDataType} are not supported"),
        };
    }
}
