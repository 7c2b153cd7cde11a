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

/// <summary>What one model did on one retrieval probe.</summary>
/// <param name="Context">Bytes in the probe.</param>
/// <param name="Position">Requested needle position (fraction of the window).</param>
/// <param name="Distance">Bytes between the planted line and the value.</param>
/// <param name="ValueBytes">Bytes in the value.</param>
/// <param name="Right">Value bytes whose arg-max prediction (teacher-forced) is right.</param>
/// <param name="Bits">Summed cross-entropy of the value bytes, in bits.</param>
public sealed record ProbeOutcome(int Context, double Position, int Distance, int ValueBytes, int Right, double Bits);

/// <summary>Retrieval at one (context, needle position) cell.</summary>
/// <param name="Context">Bytes in each probe.</param>
/// <param name="Position">Requested needle position (fraction of the window).</param>
/// <param name="Probes">Probes in the cell.</param>
/// <param name="MeanDistance">Mean bytes between the planted line and the value.</param>
/// <param name="ValueAccuracy">Fraction of value bytes whose arg-max prediction (teacher-forced) is right.</param>
/// <param name="ValueBitsPerByte">Mean cross-entropy of the value bytes, in bits.</param>
/// <param name="ValueAccuracyError">Standard error of <paramref name="ValueAccuracy"/> across the probes (the bytes of
/// one value are not independent draws, the probes are): how far another set of probes of the same kind could move it.</param>
public sealed record ProbeScore(int Context, double Position, int Probes, double MeanDistance, double ValueAccuracy, double ValueBitsPerByte,
    double ValueAccuracyError)
{
    /// <summary>One score per (context, position) of <paramref name="outcomes"/>, in context then position order.</summary>
    public static IReadOnlyList<ProbeScore> Cells(IEnumerable<ProbeOutcome> outcomes) =>
        outcomes.GroupBy(o => (o.Context, o.Position)).OrderBy(g => g.Key)
            .Select(g => Pool(g.Key.Context, g.Key.Position, g.ToList())).ToList();

    /// <summary>The outcomes pooled byte by byte (NaN scores when there are none).</summary>
    public static ProbeScore Pool(int context, double position, IReadOnlyCollection<ProbeOutcome> outcomes)
    {
        var bytes = outcomes.Sum(o => o.ValueBytes);
        var accuracy = bytes > 0 ? (double)outcomes.Sum(o => o.Right) / bytes : double.NaN;
        return new ProbeScore(context, position, outcomes.Count, outcomes.Count > 0 ? outcomes.Average(o => o.Distance) : double.NaN,
            accuracy, bytes > 0 ? outcomes.Sum(o => o.Bits) / bytes : double.NaN,
            RatioStandardError(outcomes.Select(o => ((double)o.Right, (double)o.ValueBytes)).ToList(), accuracy));
    }

    /// <summary>
    /// Retrieval of <paramref name="a"/> minus that of <paramref name="b"/> on the same probes (outcomes in the same
    /// probe order, as <see cref="Evaluator.Probe"/> returns them), with the standard error of the paired difference:
    /// both models read the same windows and values, so the difference varies much less than either score.
    /// </summary>
    public static (double Difference, double StandardError) Paired(IReadOnlyList<ProbeOutcome> a, IReadOnlyList<ProbeOutcome> b)
    {
        if (a.Count != b.Count || a.Zip(b).Any(p => p.First.Context != p.Second.Context || p.First.Position != p.Second.Position
                                                   || p.First.Distance != p.Second.Distance || p.First.ValueBytes != p.Second.ValueBytes))
            throw new ArgumentException("paired retrieval needs the outcomes of the same probes in the same order");
        var bytes = a.Sum(o => o.ValueBytes);
        if (bytes == 0) return (double.NaN, double.NaN);
        var difference = (double)(a.Sum(o => o.Right) - b.Sum(o => o.Right)) / bytes;
        return (difference, RatioStandardError(a.Zip(b, (x, y) => ((double)(x.Right - y.Right), (double)x.ValueBytes)).ToList(), difference));
    }

    /// <summary>Standard error of the ratio Σy / Σx over independent units (y, x) with ratio <paramref name="ratio"/>
    /// (the linearised ratio estimator; NaN with fewer than two units).</summary>
    private static double RatioStandardError(IReadOnlyList<(double Y, double X)> units, double ratio)
    {
        var n = units.Count;
        var total = units.Sum(u => u.X);
        if (n < 2 || total <= 0) return double.NaN;
        var squares = units.Sum(u => (u.Y - ratio * u.X) * (u.Y - ratio * u.X));
        return Math.Sqrt(squares * n / (n - 1)) / total;
    }
}

/// <summary>Runs variants over held-out text in ONNX Runtime (CPU) through <see cref="KvCacheDecoder"/>.</summary>
public sealed class Evaluator(byte[] text, int windows)
{
    private const int Vocab = 256;
    private readonly Dictionary<int, int[]> _denseArgMax = [];

    /// <summary>Evaluates one variant at each context. The dense variant (seed 1) must come first (its
    /// arg-max predictions are the reference for agreement).</summary>
    public IReadOnlyList<ContextScore> Score(ModelVariant variant, IEnumerable<int> contexts)
    {
        using var session = Open(variant.Model);
        var scores = new List<ContextScore>();
        foreach (var context in contexts)
        {
            var (tokens, targets) = Windows(context);
            var reference = variant.IsReference ? null : _denseArgMax.GetValueOrDefault(context)
                ?? throw new InvalidOperationException("evaluate the dense variant first: agreement is measured against it");
            double bits = 0, lateBits = 0, kvBytes = 0;
            var perWindow = new double[windows];
            var argMax = new int[windows * context];
            Prefill(session, tokens, windows, context, (first, rows, logits, decoder) =>
            {
                kvBytes += decoder.KvCacheBytes;
                for (var k = 0; k < rows * context; k++)
                {
                    var i = first * context + k;
                    var loss = CrossEntropyBits(logits.AsSpan(k * Vocab, Vocab), targets[i], out argMax[i]);
                    bits += loss;
                    perWindow[i / context] += loss / context;
                    if (i % context >= context / 2) lateBits += loss;
                }
            });
            var mean = perWindow.Average();
            var standardError = windows > 1 ? Math.Sqrt(perWindow.Sum(b => (b - mean) * (b - mean)) / (windows - 1) / windows) : double.NaN;
            if (variant.IsReference) _denseArgMax[context] = argMax;
            var agree = reference is null ? argMax.Length : argMax.Where((a, i) => a == reference[i]).Count();
            scores.Add(new ContextScore(context, bits / argMax.Length, lateBits / (windows * (context - context / 2)), (double)agree / argMax.Length,
                kvBytes / ((long)windows * context), standardError));
        }
        return scores;
    }

    /// <summary>
    /// Runs the retrieval probes (see <see cref="RetrievalProbe"/>): each probe is one prefill, and the
    /// value bytes are scored teacher-forced (the logits at position i predict byte i + 1).
    /// </summary>
    public static IReadOnlyList<ProbeOutcome> Probe(ModelVariant variant, IReadOnlyList<RetrievalProbe> probes)
    {
        using var session = Open(variant.Model);
        var outcomes = new List<ProbeOutcome>();
        foreach (var group in probes.GroupBy(p => p.Context))
        {
            var context = group.Key;
            var batch = group.ToList();
            var tokens = batch.SelectMany(p => p.Data.Select(b => (long)b)).ToArray();
            Prefill(session, tokens, batch.Count, context, (first, rows, logits, _) =>
            {
                for (var r = 0; r < rows; r++)
                {
                    var probe = batch[first + r];
                    double bits = 0;
                    var right = 0;
                    for (var i = probe.ValueStart; i < probe.ValueEnd; i++)
                    {
                        bits += CrossEntropyBits(logits.AsSpan((r * context + i - 1) * Vocab, Vocab), probe.Data[i], out var best);
                        if (best == probe.Data[i]) right++;
                    }
                    outcomes.Add(new ProbeOutcome(context, probe.Position, probe.Distance, probe.ValueEnd - probe.ValueStart, right, bits));
                }
            });
        }
        return outcomes;
    }

    /// <summary>
    /// The oracle's attention recall of each sparse layer of <paramref name="variant"/> at
    /// <paramref name="context"/> over <paramref name="rows"/> windows of the validation text (see
    /// <see cref="AttentionRecall"/>); empty for a model without selecting sparse layers.
    /// </summary>
    public IReadOnlyList<LayerRecall> Recall(ModelVariant variant, int context, int rows)
    {
        var (model, layers) = AttentionRecall.Instrument(variant.Model);
        if (layers.Count == 0) return [];
        using var session = Open(model);
        var (tokens, _) = Windows(context, rows);
        var recall = new double[layers.Count];
        var coverage = new double[layers.Count];
        var saGate = new double[layers.Count];
        var windowGate = new double[layers.Count];
        var names = layers.SelectMany(l => new[] { l.Query, l.Key, l.BlockIndices, l.Gate }).OfType<string>().Distinct().ToList();
        Prefill(session, tokens, rows, context, (_, _, _, decoder) =>
        {
            for (var i = 0; i < layers.Count; i++)
            {
                var stats = layers[i].Measure(decoder.ExtraOutput(layers[i].Query), decoder.ExtraOutput(layers[i].Key), decoder.ExtraOutput(layers[i].BlockIndices));
                recall[i] += stats.Recall * decoder.BatchSize;
                coverage[i] += stats.Coverage * decoder.BatchSize;
                if (layers[i].Gate is not { } gateName) continue;
                var gate = decoder.ExtraOutput(gateName);
                var (sa, window) = AttentionRecall.GateMeans(gate.GetTensorDataAsSpan<float>(), gate.GetTensorTypeAndShape().Shape);
                saGate[i] += sa * decoder.BatchSize;
                windowGate[i] += window * decoder.BatchSize;
            }
        }, names);
        return layers.Select((l, i) => new LayerRecall(l.Layer, context, rows, recall[i] / rows, coverage[i] / rows,
            l.Gate is null ? double.NaN : saGate[i] / rows, l.Gate is null ? double.NaN : windowGate[i] / rows)).ToList();
    }

    /// <summary>
    /// Prefills <paramref name="rows"/> sequences of <paramref name="context"/> tokens a batch at a time
    /// (as many rows as keep the dense model's [B, H, T, T] attention scores near 256 MiB) and hands each
    /// batch's logits [rows, context, vocab] and decoder to <paramref name="consume"/> with the index of its first row.
    /// </summary>
    private static void Prefill(InferenceSession session, long[] tokens, int rows, int context, Action<int, int, float[], KvCacheDecoder> consume, IEnumerable<string>? extraOutputs = null)
    {
        var perBatch = (int)Math.Clamp((1L << 28) / (4L * 4 * context * context), 1, rows);
        for (var first = 0; first < rows; first += perBatch)
        {
            var n = Math.Min(perBatch, rows - first);
            using var decoder = new KvCacheDecoder(session, n, extraOutputs);
            var logits = decoder.Step(tokens.AsSpan(first * context, n * context));
            consume(first, n, logits, decoder);
        }
    }

    /// <summary>Evenly spaced windows of <paramref name="context"/> bytes and the byte after each position.</summary>
    private (long[] Tokens, int[] Targets) Windows(int context, int? count = null)
    {
        var n = count ?? windows;
        if (text.Length < context + 1)
            throw new InvalidDataException($"the validation text has {text.Length} bytes, fewer than one window of {context + 1}");
        var stride = (text.Length - context - 1) / Math.Max(1, n - 1);
        var tokens = new long[n * context];
        var targets = new int[n * context];
        for (var w = 0; w < n; w++)
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
