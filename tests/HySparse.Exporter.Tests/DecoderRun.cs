using Microsoft.ML.OnnxRuntime.Tensors;

namespace HySparse.Exporter.Tests;

/// <summary>Inputs of one decoder call, with seeded random token ids and caches.</summary>
public sealed class DecoderInputs
{
    public required int Batch { get; init; }
    public required long[] InputIds { get; init; }
    public required long[] Mask { get; init; }
    public required float[][] PastKeys { get; init; }
    public required float[][] PastValues { get; init; }

    /// <summary>Length of the cache inputs when they are fixed-capacity buffers (GroupQueryAttention's shared buffer); null when they hold the past.</summary>
    public int? Capacity { get; init; }

    public int NewTokens => InputIds.Length / Batch;
    public int Total => Mask.Length / Batch;
    public int Past => Total - NewTokens;
    /// <summary>Length (dimension 2) of the cache inputs.</summary>
    public int CacheLength => Capacity ?? Past;

    /// <summary>
    /// Random ids and caches; <paramref name="leftPadding"/>[b] leading mask entries of row b are 0
    /// (they may reach into the new tokens).
    /// </summary>
    public static DecoderInputs Random(LlamaConfig config, int batch, int past, int newTokens, int[] leftPadding, ulong seed)
    {
        var rng = new SplitMix64(seed);
        var total = past + newTokens;
        var ids = new long[batch * newTokens];
        for (var i = 0; i < ids.Length; i++) ids[i] = rng.NextInt(config.Vocab);
        var mask = new long[batch * total];
        for (var b = 0; b < batch; b++)
            for (var j = 0; j < total; j++) mask[b * total + j] = j < leftPadding[b] ? 0 : 1;
        float[] Cache()
        {
            var cache = new float[batch * config.KvHeads * past * config.HeadDim];
            for (var i = 0; i < cache.Length; i++) cache[i] = rng.NextSymmetric(1f);
            return cache;
        }
        return new DecoderInputs
        {
            Batch = batch, InputIds = ids, Mask = mask,
            PastKeys = Enumerable.Range(0, config.Layers).Select(_ => Cache()).ToArray(),
            PastValues = Enumerable.Range(0, config.Layers).Select(_ => Cache()).ToArray(),
        };
    }
}

/// <summary>Runs a decoder model in ONNX Runtime (CPU) and returns its outputs as float64 arrays.</summary>
public static class DecoderRunner
{
    public static DecoderOutputs Run(byte[] model, LlamaConfig config, DecoderInputs inputs, Action<SessionOptions>? configure = null) =>
        Run(options => new InferenceSession(model, options), config, inputs, configure);

    /// <summary>Runs a model file (needed when its weights live in external data beside it).</summary>
    public static DecoderOutputs RunFile(string path, LlamaConfig config, DecoderInputs inputs, Action<SessionOptions>? configure = null) =>
        Run(options => new InferenceSession(path, options), config, inputs, configure);

    private static DecoderOutputs Run(Func<SessionOptions, InferenceSession> open, LlamaConfig config, DecoderInputs inputs, Action<SessionOptions>? configure)
    {
        using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        configure?.Invoke(options);
        using var session = open(options);
        var names = new List<string> { DecoderNames.InputIds, DecoderNames.AttentionMask };
        var values = new List<OrtValue>
        {
            OrtValue.CreateTensorValueFromMemory(inputs.InputIds, [inputs.Batch, inputs.NewTokens]),
            MaskValue(session, inputs),
        };
        // Positions as the float64 reference takes them, so padded rows match it too.
        if (session.InputMetadata.ContainsKey(DecoderNames.PositionIds))
        {
            names.Add(DecoderNames.PositionIds);
            values.Add(OrtValue.CreateTensorValueFromMemory(ReferenceLlama.Positions(inputs.Mask, inputs.Batch, inputs.NewTokens), [inputs.Batch, inputs.NewTokens]));
        }
        // An export without KV cache has neither past inputs nor present outputs; a GPT-2 style one
        // (com.microsoft.Attention) keeps keys and values of a layer in one [2,B,H,T,D] tensor.
        var combined = session.InputMetadata.ContainsKey(DecoderNames.CombinedPast(0));
        var cached = combined || session.InputMetadata.ContainsKey(DecoderNames.PastKey(0));
        if (!cached && inputs.Past > 0) throw new ArgumentException("a model without KV cache takes no past tokens");
        long[] cacheShape = [inputs.Batch, config.KvHeads, inputs.CacheLength, config.HeadDim];
        var outputNames = new List<string> { DecoderNames.Logits };
        for (var l = 0; l < config.Layers && cached; l++)
        {
            if (combined)
            {
                names.Add(DecoderNames.CombinedPast(l));
                values.Add(OrtValue.CreateTensorValueFromMemory([.. inputs.PastKeys[l], .. inputs.PastValues[l]], [2, .. cacheShape]));
                outputNames.Add(DecoderNames.CombinedPresent(l));
                continue;
            }
            names.Add(DecoderNames.PastKey(l));
            values.Add(OrtValue.CreateTensorValueFromMemory(inputs.PastKeys[l], cacheShape));
            names.Add(DecoderNames.PastValue(l));
            values.Add(OrtValue.CreateTensorValueFromMemory(inputs.PastValues[l], cacheShape));
            outputNames.Add(DecoderNames.PresentKey(l));
            outputNames.Add(DecoderNames.PresentValue(l));
        }
        try
        {
            using var runOptions = new RunOptions();
            using var results = session.Run(runOptions, names, values, outputNames);
            double[] Read(int i) => results[i].GetTensorDataAsSpan<float>().ToArray().Select(v => (double)v).ToArray();
            var layers = cached ? config.Layers : 0;
            if (combined)
            {
                var presents = Enumerable.Range(0, layers).Select(l => Read(1 + l)).ToArray();
                return new DecoderOutputs(Read(0), presents.Select(p => p[..(p.Length / 2)]).ToArray(), presents.Select(p => p[(p.Length / 2)..]).ToArray());
            }
            return new DecoderOutputs(
                Read(0),
                Enumerable.Range(0, layers).Select(l => Read(1 + 2 * l)).ToArray(),
                Enumerable.Range(0, layers).Select(l => Read(2 + 2 * l)).ToArray());
        }
        finally
        {
            foreach (var value in values) value.Dispose();
        }
    }

    /// <summary>The 0/1 mask in the element type the model declares (int64, or int32 / float as GPT-2 tools write it).</summary>
    private static OrtValue MaskValue(InferenceSession session, DecoderInputs inputs)
    {
        long[] shape = [inputs.Batch, inputs.Total];
        return session.InputMetadata[DecoderNames.AttentionMask].ElementDataType switch
        {
            TensorElementType.Int32 => OrtValue.CreateTensorValueFromMemory(inputs.Mask.Select(m => (int)m).ToArray(), shape),
            TensorElementType.Float => OrtValue.CreateTensorValueFromMemory(inputs.Mask.Select(m => (float)m).ToArray(), shape),
            _ => OrtValue.CreateTensorValueFromMemory(inputs.Mask, shape),
        };
    }

    /// <summary>
    /// Prefill of 16 tokens (second row left-padded by 5), then <paramref name="decodeSteps"/> one-token
    /// steps that feed each call's presents back as the next call's pasts.
    /// </summary>
    public static List<(DecoderInputs Inputs, DecoderOutputs Outputs)> PrefillThenDecode(byte[] model, LlamaConfig config, int decodeSteps, Action<SessionOptions>? configure = null)
    {
        var runs = new List<(DecoderInputs, DecoderOutputs)>();
        var inputs = DecoderInputs.Random(config, batch: 2, past: 0, newTokens: 16, leftPadding: [0, 5], seed: 99);
        for (var step = 0; ; step++)
        {
            var outputs = Run(model, config, inputs, configure);
            runs.Add((inputs, outputs));
            if (step == decodeSteps) return runs;
            var total = inputs.Total + 1;
            var mask = new long[inputs.Batch * total];
            for (var b = 0; b < inputs.Batch; b++)
            {
                Array.Copy(inputs.Mask, b * inputs.Total, mask, b * total, inputs.Total);
                mask[b * total + total - 1] = 1;
            }
            inputs = new DecoderInputs
            {
                Batch = inputs.Batch,
                InputIds = Enumerable.Range(0, inputs.Batch).Select(b => (long)((step * 7 + b * 11 + 3) % config.Vocab)).ToArray(),
                Mask = mask,
                PastKeys = outputs.PresentKeys.Select(k => k.Select(v => (float)v).ToArray()).ToArray(),
                PastValues = outputs.PresentValues.Select(k => k.Select(v => (float)v).ToArray()).ToArray(),
            };
        }
    }
}
