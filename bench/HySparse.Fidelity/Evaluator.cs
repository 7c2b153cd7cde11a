using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;

namespace HySparse.Fidelity;

/// <summary>Quality of one variant at one context length.</summary>
/// <param name="Context">Tokens per window (bytes).</param>
/// <param name="BitsPerByte">Mean next-byte cross-entropy over every position of every window, in bits.</param>
/// <param name="LateBitsPerByte">The same over the second half of each window only (positions that have long context).</param>
/// <param name="Top1Agreement">Fraction of positions whose arg-max byte equals the dense model's (1 for dense).</param>
/// <param name="KvBytesPerToken">KV-cache bytes the model holds after the prefill, per token (measured from the present tensors).</param>
/// <param name="StandardError">Standard error of <paramref name="BitsPerByte"/> across the windows (how much the
/// choice of text moves it; differences between variants on the same windows vary much less).</param>
public sealed record ContextScore(int Context, double BitsPerByte, double LateBitsPerByte, double Top1Agreement, double KvBytesPerToken, double StandardError);

/// <summary>The long-range retrieval probe: a random value planted early must be reproduced at the end.</summary>
/// <param name="Context">Length of each probe text.</param>
/// <param name="Probes">Probe texts.</param>
/// <param name="ValueAccuracy">Fraction of value bytes whose arg-max prediction (teacher-forced) is right.</param>
/// <param name="ValueBitsPerByte">Mean cross-entropy of the value bytes, in bits (log2 36 ≈ 5.2 is chance).</param>
public sealed record ProbeScore(int Context, int Probes, double ValueAccuracy, double ValueBitsPerByte);

/// <summary>Runs variants over held-out text in ONNX Runtime (CPU) through <see cref="KvCacheDecoder"/>.</summary>
public sealed class Evaluator(byte[] text, int windows)
{
    private const int Vocab = 256;
    private const string ValueAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
    private const int ValueLength = 8;
    private readonly Dictionary<int, int[]> _denseArgMax = [];

    /// <summary>Evaluates one variant at each context. The dense variant must come first (its
    /// arg-max predictions are the reference for agreement).</summary>
    public IReadOnlyList<ContextScore> Score(ModelVariant variant, IEnumerable<int> contexts)
    {
        using var session = Open(variant.Model);
        var scores = new List<ContextScore>();
        foreach (var context in contexts)
        {
            var (tokens, targets) = Windows(context);
            using var decoder = new KvCacheDecoder(session, windows);
            var logits = decoder.Step(tokens);
            var kvPerToken = (double)decoder.KvCacheBytes / ((long)windows * context);
            double bits = 0, lateBits = 0;
            var perWindow = new double[windows];
            var argMax = new int[windows * context];
            for (var i = 0; i < argMax.Length; i++)
            {
                var row = logits.AsSpan(i * Vocab, Vocab);
                var loss = CrossEntropyBits(row, targets[i], out argMax[i]);
                bits += loss;
                perWindow[i / context] += loss / context;
                if (i % context >= context / 2) lateBits += loss;
            }
            var mean = perWindow.Average();
            var standardError = windows > 1 ? Math.Sqrt(perWindow.Sum(b => (b - mean) * (b - mean)) / (windows - 1) / windows) : double.NaN;
            if (variant.Kind == "dense") _denseArgMax[context] = argMax;
            var reference = _denseArgMax.GetValueOrDefault(context)
                ?? throw new InvalidOperationException("evaluate the dense variant first: agreement is measured against it");
            var agree = argMax.Where((a, i) => a == reference[i]).Count();
            scores.Add(new ContextScore(context, bits / argMax.Length, lateBits / (windows * (context - context / 2)), (double)agree / argMax.Length, kvPerToken, standardError));
        }
        return scores;
    }

    /// <summary>
    /// Plants <c>KEY_n = "xxxxxxxx"</c> (8 random characters) near the start of a window of real text
    /// and repeats <c>KEY_n = "</c> at its end: the value bytes can only be predicted by reading
    /// back across the whole context.
    /// </summary>
    public ProbeScore Probe(ModelVariant variant, int context, int probes, int seed = 7)
    {
        using var session = Open(variant.Model);
        var random = new Random(seed);
        var tokens = new long[probes * context];
        var valueStarts = new int[probes];
        var values = new byte[probes][];
        for (var p = 0; p < probes; p++)
        {
            var value = Enumerable.Range(0, ValueLength).Select(_ => (byte)ValueAlphabet[random.Next(ValueAlphabet.Length)]).ToArray();
            var name = $"KEY_{random.Next(100, 1000)}";
            var plant = System.Text.Encoding.ASCII.GetBytes($"\n{name} = \"{System.Text.Encoding.ASCII.GetString(value)}\"\n");
            var ask = System.Text.Encoding.ASCII.GetBytes($"\n{name} = \"");
            var query = ask.Concat(value).Append((byte)'"').ToArray();
            var fillerStart = (int)((long)(text.Length - context) * (p + 1) / (probes + 1));
            var probe = new byte[context];
            Array.Copy(text, fillerStart, probe, 0, context);
            Array.Copy(plant, 0, probe, 32, plant.Length);
            Array.Copy(query, 0, probe, context - query.Length, query.Length);
            for (var i = 0; i < context; i++) tokens[p * context + i] = probe[i];
            valueStarts[p] = context - query.Length + ask.Length;
            values[p] = value;
        }
        using var decoder = new KvCacheDecoder(session, probes);
        var logits = decoder.Step(tokens);
        double bits = 0;
        var right = 0;
        for (var p = 0; p < probes; p++)
            for (var j = 0; j < ValueLength; j++)
            {
                // The logits at position i predict byte i + 1.
                var position = p * context + valueStarts[p] + j - 1;
                bits += CrossEntropyBits(logits.AsSpan(position * Vocab, Vocab), values[p][j], out var best);
                if (best == values[p][j]) right++;
            }
        return new ProbeScore(context, probes, (double)right / (probes * ValueLength), bits / (probes * ValueLength));
    }

    /// <summary>Evenly spaced windows of <paramref name="context"/> bytes and the byte after each position.</summary>
    private (long[] Tokens, int[] Targets) Windows(int context)
    {
        if (text.Length < context + 1)
            throw new InvalidDataException($"the validation text has {text.Length} bytes, fewer than one window of {context + 1}");
        var stride = (text.Length - context - 1) / Math.Max(1, windows - 1);
        var tokens = new long[windows * context];
        var targets = new int[windows * context];
        for (var w = 0; w < windows; w++)
            for (var i = 0; i < context; i++)
            {
                tokens[w * context + i] = text[w * stride + i];
                targets[w * context + i] = text[w * stride + i + 1];
            }
        return (tokens, targets);
    }

    private static double CrossEntropyBits(ReadOnlySpan<float> logits, int target, out int argMax)
    {
        argMax = 0;
        double max = double.NegativeInfinity;
        for (var v = 0; v < logits.Length; v++)
            if (logits[v] > max)
            {
                max = logits[v];
                argMax = v;
            }
        double sum = 0;
        for (var v = 0; v < logits.Length; v++) sum += Math.Exp(logits[v] - max);
        return (max + Math.Log(sum) - logits[target]) / Math.Log(2);
    }

    private static InferenceSession Open(byte[] model)
    {
        using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        options.RegisterHySparseOps();
        return new InferenceSession(model, options);
    }
}
