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

/// <summary>Long-range retrieval at one context and needle position: a value planted in the window must be reproduced at its end.</summary>
/// <param name="Context">Length of each probe text.</param>
/// <param name="Position">Where the value was planted, as a fraction of the window (0.1: early, far from the question).</param>
/// <param name="Probes">Probe texts.</param>
/// <param name="ValueAccuracy">Fraction of value bytes whose arg-max prediction (teacher-forced) is right.</param>
/// <param name="ValueBitsPerByte">Mean cross-entropy of the value bytes, in bits.</param>
/// <param name="MeanDistance">Mean bytes from the planted line to the value asked for.</param>
public sealed record ProbeScore(int Context, double Position, int Probes, double ValueAccuracy, double ValueBitsPerByte, double MeanDistance);

/// <summary>One retrieval probe of models/fixtures/trained/probes.json (written by models/train/make_probes.py).</summary>
public sealed record RetrievalProbe(int Context, double Position, string Format, byte[] Data, int ValueStart, int ValueEnd, int PlantStart)
{
    /// <summary>Reads the probes file.</summary>
    public static IReadOnlyList<RetrievalProbe> Load(string path)
    {
        using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(path));
        return json.RootElement.GetProperty("probes").EnumerateArray().Select(p => new RetrievalProbe(
            p.GetProperty("context").GetInt32(), p.GetProperty("position").GetDouble(), p.GetProperty("format").GetString()!,
            Convert.FromBase64String(p.GetProperty("data").GetString()!), p.GetProperty("value_start").GetInt32(),
            p.GetProperty("value_end").GetInt32(), p.GetProperty("plant_start").GetInt32())).ToList();
    }
}

/// <summary>Runs variants over held-out text in ONNX Runtime (CPU) through <see cref="KvCacheDecoder"/>.</summary>
public sealed class Evaluator(byte[] text, int windows)
{
    private const int Vocab = 256;
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
            var (logits, kvBytes) = RunBatched(session, tokens, windows, context);
            var kvPerToken = (double)kvBytes / ((long)windows * context);
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
    /// Retrieval at one context: for each needle position, the value bytes of the probes predicted right
    /// (teacher-forced arg-max) and their cross-entropy. The probes come from retrieval.py's evaluation
    /// formats, which training never shows.
    /// </summary>
    public IReadOnlyList<ProbeScore> Probe(ModelVariant variant, int context, IReadOnlyList<RetrievalProbe> probes)
    {
        using var session = Open(variant.Model);
        var scores = new List<ProbeScore>();
        foreach (var group in probes.Where(p => p.Context == context).GroupBy(p => p.Position).OrderBy(g => g.Key))
        {
            var list = group.ToList();
            var tokens = list.SelectMany(p => p.Data.Select(b => (long)b)).ToArray();
            var (logits, _) = RunBatched(session, tokens, list.Count, context);
            double bits = 0;
            int right = 0, total = 0;
            for (var p = 0; p < list.Count; p++)
                for (var j = list[p].ValueStart; j < list[p].ValueEnd; j++)
                {
                    // The logits at position i predict byte i + 1.
                    var position = (long)p * context + j - 1;
                    bits += CrossEntropyBits(logits.AsSpan((int)(position * Vocab), Vocab), list[p].Data[j], out var best);
                    if (best == list[p].Data[j]) right++;
                    total++;
                }
            scores.Add(new ProbeScore(context, group.Key, list.Count, (double)right / total, bits / total,
                                      list.Average(p => p.ValueStart - p.PlantStart)));
        }
        return scores;
    }

    /// <summary>
    /// Rows of <paramref name="context"/> tokens through one prefill each, in batches small enough that the
    /// decomposed dense model's [B, H, T, T] scores stay near 256 MiB; returns all logits and the KV bytes
    /// summed over the batches.
    /// </summary>
    internal static (float[] Logits, long KvBytes) RunBatched(InferenceSession session, long[] tokens, int rows, int context)
    {
        var batch = (int)Math.Clamp((256L << 20) / (4L * 4 * context * context), 1, rows);
        var logits = new float[(long)rows * context * Vocab];
        long kvBytes = 0;
        for (var first = 0; first < rows; first += batch)
        {
            var count = Math.Min(batch, rows - first);
            using var decoder = new KvCacheDecoder(session, count);
            var part = decoder.Step(tokens.AsSpan(first * context, count * context));
            part.CopyTo(logits, (long)first * context * Vocab);
            kvBytes += decoder.KvCacheBytes;
        }
        return (logits, kvBytes);
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

    internal static double CrossEntropyBits(ReadOnlySpan<float> logits, int target, out int argMax)
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

    internal static InferenceSession Open(byte[] model)
    {
        using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        options.RegisterHySparseOps();
        return new InferenceSession(model, options);
    }
}
