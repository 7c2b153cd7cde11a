using HySparse.Graph;
using Google.Protobuf;
using HySparse.Exporter;
using HySparse.Models.Llama;
using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using HySparse.Exporter.Layout;

namespace HySparse.Bench;

/// <summary>What the end-to-end benchmark builds and where it decodes.</summary>
/// <param name="Name">Label of the model size in tables and the plot.</param>
/// <param name="Model">The dense decoder's shape.</param>
/// <param name="Contexts">Total contexts T (cached + the new token) to decode at.</param>
/// <param name="RealPrefix">Tokens of real prefill whose caches start every context (the rest is synthetic, see <see cref="EndToEndBench"/>).</param>
public sealed record EndToEndConfig(string Name, LlamaConfig Model, IReadOnlyList<int> Contexts, int RealPrefix)
{
    /// <summary>
    /// 8 layers, hidden 1024, H_q 16, H_kv 4, D 64, SwiGLU 2816, vocabulary 32000 (≈ 123 M parameters):
    /// a TinyLlama-like GQA ratio at a size where a decode step's weights (≈ 490 MB in float32) and its KV
    /// cache (2 KiB per token and layer, 128 MiB at 8k over 8 layers) are of the same order, so attention
    /// matters at long context but the projections and the MLP are not negligible either.
    /// </summary>
    public static readonly EndToEndConfig Default = new("8L d1024 Hq16 Hkv4 D64",
        new LlamaConfig { Layers = 8, Hidden = 1024, Heads = 16, KvHeads = 4, HeadDim = 64, Ffn = 2816, Vocab = 32000, Seed = 5 },
        [2048, 8192, 16384], 512);

    /// <summary>A tiny model for smoke runs (seconds): 4 layers, hidden 128, H_q 4, H_kv 2, D 32.</summary>
    public static readonly EndToEndConfig Tiny = new("tiny 4L d128 Hq4 Hkv2 D32",
        new LlamaConfig { Layers = 4, Hidden = 128, Heads = 4, KvHeads = 2, HeadDim = 32, Ffn = 384, Vocab = 1000, Seed = 5 },
        [512, 2048], 64);
}

/// <summary>One mode of the end-to-end benchmark at one context.</summary>
/// <param name="Mode">dense, retrofit or kv-sharing.</param>
/// <param name="Context">T: cached tokens + the decoded one, at the first timed step.</param>
/// <param name="MedianMs">Median wall time of one decode step (one token).</param>
/// <param name="MinMs">Fastest timed step.</param>
/// <param name="MaxMs">Slowest timed step.</param>
/// <param name="TokensPerSecond">1000 ÷ median.</param>
/// <param name="SpeedupVsDense">Tokens/s ÷ the dense model's at the same context.</param>
/// <param name="KvBytesPerToken">Cache bytes one more token of context adds (KvCacheCalculator).</param>
/// <param name="KvBytesTotal">Cache bytes at the context of the first timed step, T + warm-up steps (KvCacheCalculator).</param>
/// <param name="KvBytesHeld">Bytes the model's present caches held after the first timed step (checked equal to <paramref name="KvBytesTotal"/>).</param>
public sealed record EndToEndResult(string Mode, long Context, double MedianMs, double MinMs, double MaxMs, double TokensPerSecond,
                                    double SpeedupVsDense, long KvBytesPerToken, long KvBytesTotal, long KvBytesHeld);

/// <summary>Everything the end-to-end benchmark reports.</summary>
/// <param name="Model">Model label.</param>
/// <param name="Config">The dense model's shape.</param>
/// <param name="Layout">Layer pattern of the converted models (F = full, S = sparse), as the converter's default layout made it.</param>
/// <param name="Parameters">K × B and w of the converted models.</param>
/// <param name="RealPrefix">Real prefill tokens at the start of every cache.</param>
/// <param name="Threads">Intra-op threads of every session.</param>
/// <param name="Warmup">Untimed steps per mode and context.</param>
/// <param name="Steps">Timed steps per mode and context.</param>
/// <param name="Results">Per mode and context.</param>
public sealed record EndToEndReport(string Model, LlamaConfig Config, string Layout, HybridParameters Parameters, int RealPrefix,
                                    int Threads, int Warmup, int Steps, IReadOnlyList<EndToEndResult> Results);

/// <summary>
/// Whole-model decode speed: a dense Llama-style decoder (HySparse.Models, decomposed attention as torch
/// exports it) against the same model converted by <see cref="HybridConverter"/> with every layer full
/// (the fused kernel without sparsity, a baseline that separates the two gains), into a 1:3 retrofit
/// hybrid, into a KV-sharing hybrid and into a retrofit hybrid converted with <c>--kv-buffer</c> (caches
/// updated in place in shared buffers), all in one process with the same intra-op threads.
/// </summary>
/// <remarks>
/// <para>Caches: a real prefill of <see cref="EndToEndConfig.RealPrefix"/> random tokens through the dense
/// model gives real keys and values; positions beyond it are drawn, per layer, head and channel, from a
/// normal distribution with that channel's mean and standard deviation over the real prefix (seeded by
/// position, so every mode sees the same cache). Prefilling 16k tokens through the decomposed dense
/// model would take minutes per context; the decode cost of every mode depends on the cache's size and
/// not on its values (the sparse layers always attend K blocks and the window), so synthetic rows of
/// the right scale measure the same work.</para>
/// <para>Timing: per context, every mode is loaded with the same cache and stepped round-robin
/// (step i of every mode before step i + 1 of any), one new token per step, so load changes hit them
/// alike; the context grows by one token per step.</para>
/// </remarks>
public sealed class EndToEndBench(SessionFactory sessions, int seed)
{
    /// <summary>Mode labels, in table order.</summary>
    public const string Dense = "dense", AllFull = "all-full (--pattern F)",
        AllFullDecomposedRope = "all-full, RoPE left decomposed", Retrofit = "hybrid 1:3 retrofit", KvSharing = "hybrid 1:3 kv-sharing", InPlace = "hybrid 1:3 in-place";

    /// <summary>Decode steps of the binding check.</summary>
    private const int CheckSteps = 3;

    // Before anything is timed: the model, bound the way it is timed (caches loaded by the benchmark,
    // ping-pong buffers, window caches cut to w), must produce the logits KvCacheDecoder produces from
    // scratch on the same tokens. The context stays within w, where every sparse layer still attends all
    // positions and KV sharing is exact, so the dense prefill's caches are this model's caches too.
    private static void CheckBinding(ModeModel mode, SyntheticCache cache, LlamaConfig c, HybridParameters parameters)
    {
        int cached = Math.Min(cache.PrefixTokens.Length, parameters.Window) - CheckSteps;
        var tokens = cache.PrefixTokens.AsSpan(0, cached + CheckSteps);
        using var reference = new KvCacheDecoder(mode.Session, bufferCapacity: mode.SharedBuffers ? cached + CheckSteps : null);
        reference.Step(tokens[..cached]);
        using var bound = Bound(mode, cached + CheckSteps);
        bound.LoadCache(cached, Fill(cache));
        double worst = 0, scale = 0;
        for (int i = 0; i < CheckSteps; ++i)
        {
            var want = reference.Step(tokens.Slice(cached + i, 1));
            var got = bound.Step(tokens.Slice(cached + i, 1));
            for (int v = 0; v < want.Length; v++)
            {
                worst = Math.Max(worst, Math.Abs(got[v] - want[v]));
                scale = Math.Max(scale, Math.Abs(want[v]));
            }
        }
        // The caches come from a longer prefill (other matrix blockings), so equal up to float32 rounding.
        if (!(worst <= 1e-3 * Math.Max(scale, 1)))
            throw new InvalidOperationException($"{mode.Mode}: the bound decode differs from KvCacheDecoder by {worst:G3} (logits up to {scale:G3})");
        Console.Error.WriteLine($"  {mode.Mode}: bound decode = KvCacheDecoder within {worst:G2} (logits up to {scale:G2})");
    }

    // One model under test: its session lives for the whole benchmark; the serialized model does not.
    // SharedBuffers: converted with --kv-buffer, decoded on buffers updated in place.
    private sealed record ModeModel(string Mode, InferenceSession Session, KvCacheCalculator Kv, bool SharedBuffers = false);

    // The decode loop every mode is timed with: KvCacheDecoder's bound mode (caches preallocated and bound,
    // present → past by swapping buffers; window caches from the model's metadata), or, for a shared-buffer
    // model, its buffers bound as both past and present.
    private static KvCacheDecoder Bound(ModeModel mode, long capacity) => mode.SharedBuffers
        ? new KvCacheDecoder(mode.Session, bufferCapacity: checked((int)capacity))
        : new KvCacheDecoder(mode.Session, boundCapacity: checked((int)capacity));

    private static Action<string, int, int, long, Span<float>> Fill(SyntheticCache cache) =>
        (past, _, head, first, rows) => cache.Fill(past, head, first, rows);

    /// <summary>Builds the models, decodes at every context and returns the report.</summary>
    public EndToEndReport Run(EndToEndConfig config, int warmup, int steps)
    {
        var c = config.Model;
        var parameters = new HybridParameters();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Console.Error.WriteLine($"end-to-end: building {config.Name} ...");
        var dense = LlamaModelBuilder.Build(c, LlamaAttentionStyle.Decomposed);
        Console.Error.WriteLine($"  built in {clock.Elapsed.TotalSeconds:F0} s; converting and opening sessions ...");
        // One serialized model and one converted copy at a time: the float32 weights are large.
        var denseSession = sessions.Create(dense.ToByteArray(), withHySparse: false);
        var hybrids = new List<(string Mode, InferenceSession Session, KvCacheCalculator Kv, bool Buffered)>();
        try
        {
            // The all-full conversion (every layer the fused HySparseFullAttn, no sparse layer) separates what
            // the fused kernel gives from what sparsity gives (issue 15).
            LayerLayout? layout = null;
            // The all-full conversion with its RoPE left decomposed separates what the converter's RoPE
            // fusion gives (per-step graph overhead of small models).
            foreach (var (mode, spec, hybridMode, kvMode, buffered, fuseRotary) in new[]
                     {
                         (AllFull, LayoutSpec.FromLetters("F"), HybridMode.Retrofit, KvCacheMode.Retrofit, false, true),
                         (AllFullDecomposedRope, LayoutSpec.FromLetters("F"), HybridMode.Retrofit, KvCacheMode.Retrofit, false, false),
                         (Retrofit, LayoutSpec.Default, HybridMode.Retrofit, KvCacheMode.Retrofit, false, true),
                         (KvSharing, LayoutSpec.Default, HybridMode.KvSharing, KvCacheMode.KvSharing, false, true),
                         (InPlace, LayoutSpec.Default, HybridMode.Retrofit, KvCacheMode.Retrofit, true, true),
                     })
            {
                var (model, report) = HybridConverter.Convert(dense, new ConversionOptions
                {
                    Layout = spec, Parameters = parameters with { Mode = hybridMode }, KvBuffer = buffered, FuseRotary = fuseRotary,
                });
                if (mode is not (AllFull or AllFullDecomposedRope)) layout ??= report.Layout;
                var kv = new KvCacheCalculator(report.Layout.Kinds, c.KvHeads, c.HeadDim, sizeof(float), kvMode, parameters.Window);
                hybrids.Add((mode, sessions.Create(model.ToByteArray(), withHySparse: true), kv, buffered));
            }
            dense = null!;
            var denseKv = new KvCacheCalculator(layout!.Kinds, c.KvHeads, c.HeadDim, sizeof(float), KvCacheMode.Dense, parameters.Window);
            var modes = new List<ModeModel> { new(Dense, denseSession, denseKv) };
            modes.AddRange(hybrids.Select(h => new ModeModel(h.Mode, h.Session, h.Kv, h.Buffered)));
            Console.Error.WriteLine($"  ready after {clock.Elapsed.TotalSeconds:F0} s");
            return Measure(config, parameters, layout!, modes, warmup, steps);
        }
        finally
        {
            denseSession.Dispose();
            foreach (var h in hybrids) h.Session.Dispose();
        }
    }

    private EndToEndReport Measure(EndToEndConfig config, HybridParameters parameters, LayerLayout layout, List<ModeModel> modes, int warmup, int steps)
    {
        var c = config.Model;
        var cache = SyntheticCache.FromRealPrefill(modes[0].Session, c, config.RealPrefix, seed);
        foreach (var m in modes) CheckBinding(m, cache, c, parameters);
        var results = new List<EndToEndResult>();
        var random = new SplitMix64((ulong)seed + 1);
        foreach (int t in config.Contexts)
        {
            long capacity = t + warmup + steps;
            var decoders = new List<(ModeModel Mode, KvCacheDecoder Decoder)>();
            try
            {
                foreach (var m in modes)
                {
                    var decoder = Bound(m, capacity);
                    decoders.Add((m, decoder));
                    decoder.LoadCache(t - 1, Fill(cache));
                }
                var samples = decoders.Select(_ => new List<double>()).ToArray();
                var held = new long[decoders.Count];
                for (int i = 0; i < warmup + steps; i++)
                {
                    long token = random.NextInt(c.Vocab);
                    for (int d = 0; d < decoders.Count; d++)
                    {
                        long start = System.Diagnostics.Stopwatch.GetTimestamp();
                        float[] logits = decoders[d].Decoder.Step([token]);
                        double ms = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                        if (i >= warmup) samples[d].Add(ms);
                        if (i == warmup)
                        {
                            held[d] = decoders[d].Decoder.KvCacheBytes;
                            // A model that decodes garbage fast is no result: its logits must at least be finite.
                            foreach (float x in logits)
                                if (!float.IsFinite(x)) throw new InvalidOperationException($"{decoders[d].Mode.Mode} at T {t}: non-finite logits");
                        }
                    }
                }
                double denseMedian = new Timing([.. samples[0]]).MedianMs;
                for (int d = 0; d < decoders.Count; d++)
                {
                    var timing = new Timing([.. samples[d]]);
                    var kv = decoders[d].Mode.Kv;
                    // The first timed step ran at context t + warmup: that is where the held bytes were read;
                    // shared buffers hold their whole capacity from the start.
                    long context = decoders[d].Mode.SharedBuffers ? capacity : t + warmup;
                    // What the model holds must be what the library's formula says it holds.
                    if (held[d] != kv.BytesAt(context))
                        throw new InvalidOperationException($"{decoders[d].Mode.Mode} at T {context}: the caches hold {held[d]} bytes, KvCacheCalculator says {kv.BytesAt(context)}");
                    var r = new EndToEndResult(decoders[d].Mode.Mode, t, timing.MedianMs, timing.MinMs, timing.MaxMs, 1000 / timing.MedianMs,
                        denseMedian / timing.MedianMs, kv.BytesPerToken, kv.BytesAt(context), held[d]);
                    results.Add(r);
                    Console.Error.WriteLine($"  e2e T {t,6} {r.Mode,-22} {r.MedianMs,9:F2} ms/token  {r.TokensPerSecond,8:F1} tok/s  ×{r.SpeedupVsDense:F2}  KV {r.KvBytesTotal / 1048576.0:F1} MiB");
                }
            }
            finally
            {
                foreach (var (_, decoder) in decoders) decoder.Dispose();
            }
        }
        return new EndToEndReport(config.Name, c, layout.Letters, parameters, config.RealPrefix, sessions.Threads, warmup, steps, results);
    }
}

/// <summary>
/// Cache contents for the end-to-end benchmark: real keys and values of a short prefill, then rows drawn
/// from each channel's normal distribution fitted to them.
/// </summary>
internal sealed class SyntheticCache
{
    private readonly Dictionary<string, float[]> _real = [];   // cache input → [H_kv, P, D]
    private readonly Dictionary<string, ulong> _streams = [];  // cache input → its index, seeding its rows
    private readonly Dictionary<string, (float[] Mean, float[] Std)> _stats = [];  // per [H_kv, D]
    private readonly int _prefix, _headDim, _seed;

    private SyntheticCache(long[] prefixTokens, int headDim, int seed)
    {
        PrefixTokens = prefixTokens;
        _prefix = prefixTokens.Length;
        _headDim = headDim;
        _seed = seed;
    }

    /// <summary>The token ids of the real prefill, whose keys and values start every cache.</summary>
    public long[] PrefixTokens { get; }

    /// <summary>Prefills <paramref name="prefix"/> seeded random tokens through the dense model and fits the per-channel statistics.</summary>
    public static SyntheticCache FromRealPrefill(InferenceSession session, LlamaConfig c, int prefix, int seed)
    {
        var random = new SplitMix64((ulong)seed);
        var ids = new long[prefix];
        for (int i = 0; i < prefix; i++) ids[i] = random.NextInt(c.Vocab);
        var cache = new SyntheticCache(ids, c.HeadDim, seed);
        var mask = new long[prefix];
        Array.Fill(mask, 1L);
        var names = new List<string> { DecoderNames.InputIds, DecoderNames.AttentionMask };
        var values = new List<OrtValue> { OrtValue.CreateTensorValueFromMemory(ids, [1, prefix]), OrtValue.CreateTensorValueFromMemory(mask, [1, prefix]) };
        var outputs = new List<string>();
        for (int l = 0; l < c.Layers; l++)
        {
            foreach (var (past, present) in new[] { (DecoderNames.PastKey(l), DecoderNames.PresentKey(l)), (DecoderNames.PastValue(l), DecoderNames.PresentValue(l)) })
            {
                names.Add(past);
                values.Add(OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), [1, c.KvHeads, 0, c.HeadDim]));
                outputs.Add(present);
            }
        }
        using var runOptions = new RunOptions();
        using (var results = session.Run(runOptions, names, values, outputs))
        {
            for (int i = 0; i < outputs.Count; i++)
            {
                var data = results[i].GetTensorDataAsSpan<float>().ToArray();
                var input = names[2 + i];
                cache._real[input] = data;
                cache._streams[input] = (ulong)i;
                cache._stats[input] = Fit(data, c.KvHeads, prefix, c.HeadDim);
            }
        }
        foreach (var v in values) v.Dispose();
        return cache;
    }

    /// <summary>Writes head <paramref name="head"/>'s rows of absolute positions [first, first + rows) of <paramref name="cacheInput"/>.</summary>
    public void Fill(string cacheInput, int head, long first, Span<float> destination)
    {
        int d = _headDim;
        var real = _real[cacheInput];
        var (mean, std) = _stats[cacheInput];
        long rows = destination.Length / d;
        for (long r = 0; r < rows; r++)
        {
            long position = first + r;
            var row = destination.Slice((int)(r * d), d);
            if (position < _prefix)
            {
                real.AsSpan((int)((head * (long)_prefix + position) * d), d).CopyTo(row);
                continue;
            }
            // A stream per (cache, head, position): the same row whatever the mode, context or thread.
            var random = new SplitMix64((ulong)_seed ^ (_streams[cacheInput] + 1) * 0x9E3779B97F4A7C15UL
                                        ^ (ulong)head * 0xD1B54A32D192ED03UL ^ (ulong)position * 0xBF58476D1CE4E5B9UL);
            for (int j = 0; j < d; j += 2)
            {
                // Box–Muller: two independent standard normals per pair of uniforms.
                double u1 = random.NextDouble() + 1e-300;
                double u2 = random.NextDouble();
                double radius = Math.Sqrt(-2 * Math.Log(u1));
                row[j] = (float)(mean[head * d + j] + std[head * d + j] * radius * Math.Cos(2 * Math.PI * u2));
                if (j + 1 < d) row[j + 1] = (float)(mean[head * d + j + 1] + std[head * d + j + 1] * radius * Math.Sin(2 * Math.PI * u2));
            }
        }
    }

    private static (float[] Mean, float[] Std) Fit(float[] data, int heads, int length, int d)
    {
        var mean = new float[heads * d];
        var std = new float[heads * d];
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < d; j++)
            {
                double sum = 0, squares = 0;
                for (int p = 0; p < length; p++)
                {
                    double x = data[(h * length + p) * d + j];
                    sum += x;
                    squares += x * x;
                }
                double m = sum / length;
                mean[h * d + j] = (float)m;
                std[h * d + j] = (float)Math.Sqrt(Math.Max(squares / length - m * m, 0));
            }
        return (mean, std);
    }
}
