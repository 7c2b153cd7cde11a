using HySparse.Graph;
using System.Diagnostics;
using HySparse.Exporter.Recognition;
using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;
using Onnx;

namespace HySparse.Exporter;

/// <summary>What to run when comparing a dense model with its conversion.</summary>
public sealed record VerifyOptions
{
    /// <summary>Prompt tokens per sequence (the prefill call).</summary>
    public int PromptLength { get; init; } = 64;
    /// <summary>One-token decode calls after the prefill.</summary>
    public int DecodeSteps { get; init; } = 8;
    /// <summary>Sequences per call.</summary>
    public int Batch { get; init; } = 1;
    /// <summary>Seed of the random prompt tokens.</summary>
    public ulong Seed { get; init; } = 1;
    /// <summary>
    /// Make the prompt a copy test: random tokens whose second half repeats the first (period
    /// PromptLength / 2), and report how much of the repeat each model predicts. A model that reads
    /// back (induction heads) predicts nearly all of it; a conversion that hides the first half from the
    /// layers that look it up does not — what random prompts alone cannot show, since there every
    /// model's best guess is noise.
    /// </summary>
    public bool Copy { get; init; }
    /// <summary>
    /// Draw the random prompt tokens from [Low, High) instead of the whole vocabulary (null): keeps special
    /// tokens out of a subword model's prompt, or a byte-level model's prompt in the bytes it was trained on.
    /// </summary>
    public (int Low, int High)? Tokens { get; init; }
}

/// <summary>Differences at one call.</summary>
/// <param name="Step">0 for the prefill, then 1, 2, … for decode steps.</param>
/// <param name="Tokens">New tokens per sequence in this call.</param>
/// <param name="MaxAbsError">Largest |hybrid − dense| over the call's logits.</param>
/// <param name="MaxRelError">Largest |hybrid − dense| / max(|dense|, 1).</param>
/// <param name="Top1Agreement">Fraction of new tokens whose arg-max logit is the same.</param>
/// <param name="DenseMilliseconds">Wall time of the dense call.</param>
/// <param name="HybridMilliseconds">Wall time of the hybrid call.</param>
public sealed record VerifyStep(int Step, int Tokens, double MaxAbsError, double MaxRelError, double Top1Agreement, double DenseMilliseconds, double HybridMilliseconds);

/// <summary>Outcome of a verification run.</summary>
/// <param name="Steps">Prefill then each decode step.</param>
/// <param name="MaxAbsError">Largest absolute logit difference over all calls.</param>
/// <param name="Top1Agreement">Fraction of all compared tokens whose arg-max agrees.</param>
/// <param name="DenseDecodeMilliseconds">Mean dense decode-step time (0 without decode steps).</param>
/// <param name="HybridDecodeMilliseconds">Mean hybrid decode-step time.</param>
/// <param name="DenseKvBytes">Bytes of the dense model's caches after the last call (what it really returned).</param>
/// <param name="HybridKvBytes">Bytes of the converted model's caches after the last call (smaller with KV sharing).</param>
/// <param name="Copy">With <see cref="VerifyOptions.Copy"/>: how much of the prompt's repeat each model predicts; null otherwise.</param>
public sealed record VerifyReport(IReadOnlyList<VerifyStep> Steps, double MaxAbsError, double Top1Agreement, double DenseDecodeMilliseconds, double HybridDecodeMilliseconds,
    long DenseKvBytes, long HybridKvBytes, CopyScore? Copy = null);

/// <summary>The copy test of <see cref="VerifyOptions.Copy"/>: arg-max predictions of the prompt's repeated half.</summary>
/// <param name="Distance">Tokens between a token and its copy (the period of the prompt).</param>
/// <param name="Positions">Predictions scored per sequence: every position of the repeat whose next token is a copy, except the
/// repeat's first token (nothing says the prompt starts over there).</param>
/// <param name="Dense">Fraction of those predictions the dense model gets right.</param>
/// <param name="Hybrid">The same for the converted model.</param>
public sealed record CopyScore(int Distance, int Positions, double Dense, double Hybrid);

/// <summary>
/// Runs a dense decoder and its HySparse conversion side by side in ONNX Runtime (CPU) on the same
/// random prompt, then decodes greedily with the dense model's choice fed to both, so every call
/// compares like with like. A conversion of a shared-buffer model (metadata <c>hysparse.kv_cache</c>)
/// is run, like its source, on KV buffers with room for the whole run. Both models must have the
/// exported-decoder interface (input_ids, attention_mask, past_key_values.N.key/value → logits,
/// present.N.key/value, or GPT-2's combined past_N → present_N); a model without KV cache (input_ids, attention_mask → logits) is compared on
/// the prefill only.
/// </summary>
public static class ModelVerifier
{
    /// <summary>Compares the models at <paramref name="densePath"/> and <paramref name="hybridPath"/>.</summary>
    public static VerifyReport Verify(string densePath, string hybridPath, VerifyOptions options, Action<string>? progress = null)
    {
        if (options.PromptLength < 1 || options.DecodeSteps < 0 || options.Batch < 1)
            throw new VerifySettingsException("verify needs a prompt of at least one token, a batch of at least one and a non-negative number of decode steps");
        if (options.Copy && options.PromptLength < 4)
            throw new VerifySettingsException($"--copy needs --prompt of at least 4 tokens (two halves of 2), not {options.PromptLength}");
        var dense = ModelFile.Load(densePath);
        if (HybridConverter.IsNative(dense))
        {
            var mode = dense.MetadataProps.First(p => p.Key == HybridMetadata.Mode).Value;
            var what = mode == HybridMetadata.NativeMode ? "a HySparse-native model" : "a sliding-window hybrid";
            throw new ConversionException(ConversionError.AlreadyConverted,
                $"'{densePath}' is {what} (hysparse.mode = {mode}): verify compares a dense model with its conversion, and a model trained as a hybrid has no dense original; inspect it, or run it with HySparse.Onnx.KvCacheDecoder");
        }
        if (HybridConverter.IsConverted(dense))
            throw new ConversionException(ConversionError.AlreadyConverted,
                $"'{densePath}' is already a HySparse model; verify takes the dense original first and its conversion second");
        // Both files are checked the same way: a truncated converted model is an invalid input, not a crash.
        ModelFile.Load(hybridPath);
        var layers = DecoderInterface.Read(dense, densePath);
        using var denseSession = Open(densePath, registerOps: false);
        using var hybridSession = Open(hybridPath, registerOps: true);
        if (hybridSession.ModelMetadata.CustomMetadataMap.TryGetValue(HybridMetadata.Mode, out var hybridMode) && hybridMode is HybridMetadata.NativeMode or HybridMetadata.SlidingWindowMode)
            throw new ConversionException(ConversionError.AlreadyConverted,
                $"'{hybridPath}' is a model trained as a hybrid (hysparse.mode = {hybridMode}), not a conversion of '{densePath}': it was trained with its sparse layers and has no dense original to be compared with");

        var ids = Prompt(options, layers.Vocab);
        var prompt = ids;
        var period = options.PromptLength / 2;
        // Shared-buffer conversions only take fixed-capacity buffers; a GroupQueryAttention source is
        // fed the same way so that both see the same inputs.
        int? capacity = TakesSharedBuffers(hybridSession) ? options.PromptLength + options.DecodeSteps : null;
        // A --kv-buffer conversion keeps a concatenating source: that one is fed growing caches.
        var denseBuffered = capacity is not null && hybridSession.ModelMetadata.CustomMetadataMap.TryGetValue(HybridMetadata.SourceStyle, out var style)
            && style == AttentionStyle.GroupQueryAttention.ToString().ToLowerInvariant();
        using var denseState = Run(densePath, () => new KvCacheDecoder(denseSession, options.Batch, bufferCapacity: denseBuffered ? capacity : null));
        using var hybridState = Run(hybridPath, () => new KvCacheDecoder(hybridSession, options.Batch, bufferCapacity: capacity));
        // One untimed prefill per session first: ONNX Runtime finishes initialising on its first run.
        Run(densePath, () => denseState.Step(ids));
        Run(hybridPath, () => hybridState.Step(ids));
        denseState.Reset();
        hybridState.Reset();
        var steps = new List<VerifyStep>();
        CopyScore? copy = null;
        // Without a KV cache a call sees only its own tokens: decoding one token at a time would
        // compare attention over a single key, so such models are compared on the prefill alone.
        var decodeSteps = layers.Layers > 0 ? options.DecodeSteps : 0;
        if (decodeSteps < options.DecodeSteps) progress?.Invoke("the model has no KV cache (no past_key_values inputs): comparing the prefill only");
        for (var step = 0; step <= decodeSteps; step++)
        {
            progress?.Invoke(step == 0 ? $"prefill of {options.PromptLength} tokens" : $"decode step {step} of {decodeSteps}");
            var (denseLogits, denseMs) = Run(densePath, () => Timed(denseState, ids));
            var (hybridLogits, hybridMs) = Run(hybridPath, () => Timed(hybridState, ids));
            var tokens = ids.Length / options.Batch;
            steps.Add(Compare(step, tokens, denseLogits, hybridLogits, layers.Vocab, denseMs, hybridMs));
            if (step == 0 && options.Copy)
                copy = new CopyScore(period, options.PromptLength - period - 1,
                    CopyAccuracy(denseLogits, prompt, options.Batch, options.PromptLength, period, layers.Vocab),
                    CopyAccuracy(hybridLogits, prompt, options.Batch, options.PromptLength, period, layers.Vocab));
            ids = LastArgMax(denseLogits, options.Batch, tokens, layers.Vocab);
        }
        var decode = steps.Skip(1).ToList();
        var compared = steps.Sum(s => (double)s.Tokens);
        return new VerifyReport(steps, steps.Max(s => s.MaxAbsError), steps.Sum(s => s.Top1Agreement * s.Tokens) / compared,
            decode.Count > 0 ? decode.Average(s => s.DenseMilliseconds) : 0, decode.Count > 0 ? decode.Average(s => s.HybridMilliseconds) : 0,
            denseState.KvCacheBytes, hybridState.KvCacheBytes, copy);
    }

    /// <summary>
    /// The copy test of <paramref name="options"/> (<see cref="VerifyOptions.Copy"/> implied) on one model, dense
    /// or converted: one prefill of the same prompt <see cref="Verify"/> feeds, and the share of its repeat the
    /// model predicts (<see cref="CopyScore"/>). Verify runs its dense model beside every conversion; a caller
    /// comparing one dense model with many conversions (<see cref="LayerScanner"/>) scores the dense one once.
    /// </summary>
    public static double CopyTest(string path, VerifyOptions options)
    {
        options = options with { Copy = true };
        if (options.PromptLength < 4 || options.Batch < 1)
            throw new VerifySettingsException($"a copy test needs a prompt of at least 4 tokens (two halves of 2) and a batch of at least one, not {options.PromptLength} x {options.Batch}");
        var layers = DecoderInterface.Read(ModelFile.Load(path), path);
        var prompt = Prompt(options, layers.Vocab);
        using var session = Open(path, registerOps: true);
        // A shared-buffer conversion takes only fixed-capacity buffers: room for the prompt.
        using var decoder = Run(path, () => new KvCacheDecoder(session, options.Batch, bufferCapacity: TakesSharedBuffers(session) ? options.PromptLength : null));
        var logits = Run(path, () => decoder.Step(prompt));
        return CopyAccuracy(logits, prompt, options.Batch, options.PromptLength, options.PromptLength / 2, layers.Vocab);
    }

    /// <summary>A shared-buffer conversion (metadata <c>hysparse.kv_cache</c>): it takes only fixed-capacity KV buffers.</summary>
    private static bool TakesSharedBuffers(InferenceSession session) =>
        session.ModelMetadata.CustomMetadataMap.TryGetValue(HybridMetadata.KvCache, out var kvCache) && kvCache == HybridMetadata.SharedBufferCache;

    /// <summary>
    /// The random prompt of <paramref name="options"/>: Batch × PromptLength tokens from the seed, in the token range
    /// (checked against the model's vocabulary), the second half of each row repeating the first for a copy test.
    /// </summary>
    private static long[] Prompt(VerifyOptions options, int vocab)
    {
        var (low, high) = options.Tokens ?? (0, vocab);
        if (low < 0 || high > vocab)
            throw new VerifySettingsException($"--tokens: prompt tokens [{low}, {high}) reach outside the model's vocabulary [0, {vocab})");
        if (high - low < 2)
            throw new VerifySettingsException($"--tokens: prompt tokens [{low}, {high}) hold fewer than two ids");
        var rng = new SplitMix64(options.Seed);
        var ids = new long[options.Batch * options.PromptLength];
        var period = options.PromptLength / 2;
        for (var i = 0; i < ids.Length; i++)
            ids[i] = options.Copy && i % options.PromptLength >= period ? ids[i - period] : low + rng.NextInt(high - low);
        return ids;
    }

    /// <summary>Fraction of the positions t in [period, length − 1) of each sequence whose arg-max is the prompt's token t + 1
    /// (a copy of token t + 1 − period).</summary>
    private static double CopyAccuracy(float[] logits, long[] prompt, int batch, int length, int period, int vocab)
    {
        var right = 0;
        for (var b = 0; b < batch; b++)
            for (var t = period; t < length - 1; t++)
                if (ArgMax(logits, (b * length + t) * vocab, vocab) == prompt[b * length + t + 1]) right++;
        return (double)right / (batch * (length - period - 1));
    }

    /// <summary>
    /// Prepares or runs one call of the model at <paramref name="path"/>. ONNX Runtime's refusals at run
    /// time (inputs that contradict the model's declared shapes, an operator refusing its inputs) and the
    /// decoder's (a cache input without fixed head count and size) concern the model.
    /// </summary>
    private static T Run<T>(string path, Func<T> call)
    {
        try
        {
            return call();
        }
        catch (OnnxRuntimeException e)
        {
            throw new ConversionException(ConversionError.InvalidModel, $"ONNX Runtime failed to run '{path}' on verify's inputs: {e.Message}", inner: e);
        }
        catch (InvalidOperationException e)
        {
            throw new ConversionException(ConversionError.InvalidModel, $"'{path}' does not have the decoder interface verify feeds: {e.Message}", inner: e);
        }
    }

    private static (float[] Logits, double Milliseconds) Timed(KvCacheDecoder decoder, long[] ids)
    {
        var clock = Stopwatch.StartNew();
        var logits = decoder.Step(ids);
        return (logits, clock.Elapsed.TotalMilliseconds);
    }

    private static InferenceSession Open(string path, bool registerOps)
    {
        using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        if (registerOps) options.RegisterHySparseOps();
        try
        {
            return new InferenceSession(path, options);
        }
        catch (OnnxRuntimeException e)
        {
            // ONNX Runtime's own refusals (an external-data path it will not follow, a node no kernel
            // matches, an attribute an operator refuses) concern the model, not this tool.
            throw new ConversionException(ConversionError.InvalidModel, $"ONNX Runtime cannot load '{path}': {e.Message}", inner: e);
        }
    }

    private static VerifyStep Compare(int step, int tokens, float[] dense, float[] hybrid, int vocab, double denseMs, double hybridMs)
    {
        double maxAbs = 0, maxRel = 0;
        for (var i = 0; i < dense.Length; i++)
        {
            var difference = Math.Abs((double)hybrid[i] - dense[i]);
            maxAbs = Math.Max(maxAbs, difference);
            maxRel = Math.Max(maxRel, difference / Math.Max(Math.Abs(dense[i]), 1));
        }
        var rows = dense.Length / vocab;
        var agree = 0;
        for (var r = 0; r < rows; r++)
            if (ArgMax(dense, r * vocab, vocab) == ArgMax(hybrid, r * vocab, vocab)) agree++;
        return new VerifyStep(step, tokens, maxAbs, maxRel, (double)agree / rows, denseMs, hybridMs);
    }

    private static long[] LastArgMax(float[] logits, int batch, int tokens, int vocab) =>
        Enumerable.Range(0, batch).Select(b => (long)ArgMax(logits, ((b * tokens) + tokens - 1) * vocab, vocab)).ToArray();

    private static int ArgMax(float[] values, int offset, int count)
    {
        var best = 0;
        for (var i = 1; i < count; i++)
            if (values[offset + i] > values[offset + best]) best = i;
        return best;
    }

    /// <summary>The exported-decoder interface of a model: layer count, cache geometry, vocabulary.</summary>
    private sealed record DecoderInterface(int Layers, int KvHeads, int HeadSize, int Vocab)
    {
        public static DecoderInterface Read(ModelProto model, string path)
        {
            var inputs = model.Graph.Input.ToDictionary(i => i.Name);
            if (!inputs.ContainsKey(DecoderNames.InputIds) || !inputs.ContainsKey(DecoderNames.AttentionMask))
                throw new ConversionException(ConversionError.InvalidModel, $"'{path}' lacks the {DecoderNames.InputIds} / {DecoderNames.AttentionMask} inputs verify feeds");
            // GPT-2 style models (com.microsoft.Attention) cache keys and values together: past_N [2,B,H,P,D].
            var combined = inputs.ContainsKey(DecoderNames.CombinedPast(0));
            Func<int, string> pastName = combined ? DecoderNames.CombinedPast : DecoderNames.PastKey;
            var layers = 0;
            while (inputs.ContainsKey(pastName(layers))) layers++;
            var cache = layers > 0 ? inputs[pastName(0)].Type?.TensorType : null;
            var rank = combined ? 5 : 4;
            var logits = model.Graph.Output.FirstOrDefault(o => o.Name == DecoderNames.Logits)?.Type?.TensorType;
            // A model without KV cache (no past_key_values inputs) is fine: verify then runs the prefill only.
            if (layers > 0 && (cache is not { ElemType: (int)TensorProto.Types.DataType.Float } || cache.Shape?.Dim.Count != rank || cache.Shape.Dim[^3].DimValue < 1 || cache.Shape.Dim[^1].DimValue < 1)
                || logits is not { Shape.Dim.Count: 3 } || logits.Shape.Dim[2].DimValue < 1)
                throw new ConversionException(ConversionError.InvalidModel,
                    $"'{path}' does not have the float32 decoder interface verify needs (past_key_values.N.key [B,H_kv,P,D] or past_N [2,B,H,P,D] with fixed heads and head size if it has a cache, logits [B,S,V] with fixed V)");
            return new DecoderInterface(layers, (int)(cache?.Shape.Dim[^3].DimValue ?? 0), (int)(cache?.Shape.Dim[^1].DimValue ?? 0), (int)logits.Shape.Dim[2].DimValue);
        }
    }
}
