using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Google.Protobuf;
using HySparse.Exporter;
using HySparse.Exporter.Layout;
using HySparse.Graph;
using HySparse.Models.Llama;
using HySparse.Onnx;

namespace HySparse.Bench;

/// <summary>What the end-to-end prefill benchmark builds and at which prompt lengths it prefills.</summary>
/// <param name="Name">Label of the model in tables.</param>
/// <param name="Model">The dense decoder's shape.</param>
/// <param name="Contexts">Prompt lengths S (one prefill call each, empty caches).</param>
/// <param name="OriginalMaxContext">Longest prompt the original (decomposed) export is run at: it materialises
/// H_q × S × S float32 scores per layer, which does not fit this machine's memory much beyond 4k.</param>
/// <param name="ChunkSize">Chunk of the chunked-prefill row.</param>
public sealed record PrefillBenchConfig(string Name, LlamaConfig Model, IReadOnlyList<int> Contexts, int OriginalMaxContext, int ChunkSize)
{
    /// <summary>
    /// Issue 15's decoder: 4 layers, hidden 256, H_q 8, H_kv 2, D 32, SwiGLU 688, a byte vocabulary (256).
    /// Small on purpose: attention is most of a long prefill here, so the table shows what sparse layers
    /// can save; a model with wide MLPs or a large vocabulary would dilute it (see docs/performance.md).
    /// </summary>
    public static readonly PrefillBenchConfig Default = new("4L d256 Hq8 Hkv2 D32 V256",
        new LlamaConfig { Layers = 4, Hidden = 256, Heads = 8, KvHeads = 2, HeadDim = 32, Ffn = 688, Vocab = 256, Seed = 5 },
        [4096, 16384, 32768], 4096, 4096);

    /// <summary>The same shape at short prompts, for smoke runs (seconds).</summary>
    public static readonly PrefillBenchConfig Tiny = Default with { Name = "4L d256 Hq8 Hkv2 D32 V256 (short prompts)", Contexts = [512, 1024], OriginalMaxContext = 1024, ChunkSize = 256 };
}

/// <summary>One mode at one prompt length.</summary>
/// <param name="Mode">Row label.</param>
/// <param name="Context">Prompt length S.</param>
/// <param name="SamplesMs">Wall time of each timed prefill call (one per round).</param>
/// <param name="PeakRssMiB">Largest VmHWM of the measuring processes (weights, runtime and the call's peak).</param>
/// <param name="RssBeforeMiB">Median VmRSS just before the timed call.</param>
/// <param name="Skipped">Why the mode was not run at this length, or null.</param>
public sealed record PrefillResult(string Mode, int Context, IReadOnlyList<double> SamplesMs, double PeakRssMiB, double RssBeforeMiB, string? Skipped)
{
    /// <summary>Median of <see cref="SamplesMs"/>.</summary>
    public double MedianMs => SamplesMs.Count == 0 ? double.NaN : new Timing([.. SamplesMs]).MedianMs;
}

/// <summary>Everything the end-to-end prefill benchmark reports.</summary>
/// <param name="Model">Model label.</param>
/// <param name="Config">The dense model's shape.</param>
/// <param name="Parameters">K × B and w of the hybrids.</param>
/// <param name="Threads">Intra-op threads of every session.</param>
/// <param name="Rounds">Timed calls per cell (one per round, modes interleaved).</param>
/// <param name="Results">Per mode and prompt length.</param>
/// <param name="Checks">Agreement checks between modes that must compute the same logits.</param>
/// <param name="LoadAverage">The 1-minute load average before and after.</param>
/// <param name="Profiles">Kernel time by op type of one profiled call per conversion (empty unless asked for).</param>
public sealed record PrefillReport(string Model, LlamaConfig Config, HybridParameters Parameters, int Threads, int Rounds,
                                   IReadOnlyList<PrefillResult> Results, IReadOnlyList<string> Checks, string LoadAverage,
                                   IReadOnlyList<PrefillProfile> Profiles);

/// <summary>ONNX Runtime's profile of one prefill call: kernel milliseconds by op type.</summary>
/// <param name="Mode">Row label of the model.</param>
/// <param name="Context">Prompt length S.</param>
/// <param name="OpMs">Summed kernel time per op type.</param>
public sealed record PrefillProfile(string Mode, int Context, IReadOnlyDictionary<string, double> OpMs);

/// <summary>
/// Time to first token of whole models (issue 15): one prefill call with empty caches through the
/// original decomposed export, its all-full conversion (<c>--pattern F</c>: every layer the fused
/// <c>HySparseFullAttn</c>) and its 1:3 conversions with the last layer sparse (<c>FSSS</c>), retrofit and
/// KV sharing, plus the retrofit prefilled in chunks through its cache.
/// </summary>
/// <remarks>
/// Each timed call runs in a child process of its own (this program, <c>prefill-child</c>), so its peak
/// resident memory is the process's VmHWM and nothing of one mode's arena is left for the next. Rounds
/// interleave the modes (round r runs every mode at every length, in an order rotated by r), so load
/// changes on the shared machine hit them alike. Each child first prefills 64 tokens untimed (session
/// warm-up), then times one call over the whole prompt. The prompt is the same seeded random tokens for
/// every mode; last-token logits come back so modes that must agree are checked to agree.
/// </remarks>
public sealed class PrefillBench(int threads, string? library, int seed)
{
    /// <summary>Mode labels, in table order.</summary>
    public const string Original = "original export (decomposed)", AllFull = "all-full (--pattern F)",
        AllFullDecomposedRope = "all-full, RoPE left decomposed (--keep-decomposed-rope)", Retrofit = "1:3 retrofit, sparse last (FSSS)",
        KvSharing = "1:3 kv-sharing, sparse last (FSSS)", Chunked = "1:3 retrofit FSSS, chunked";

    private sealed record Mode(string Label, string Path, bool HySparse, int Chunk);

    /// <summary>Builds and converts the models, then runs every round; returns the report.</summary>
    public PrefillReport Run(PrefillBenchConfig config, int rounds, bool profile = false)
    {
        var c = config.Model;
        var parameters = new HybridParameters();
        string load0 = LoadAverage();
        var dir = Directory.CreateTempSubdirectory("hysparse-prefill-");
        try
        {
            Console.Error.WriteLine($"end-to-end prefill: building {config.Name} ...");
            var dense = LlamaModelBuilder.Build(c, LlamaAttentionStyle.Decomposed);
            var modes = new List<Mode> { Write(dir, Original, dense, hySparse: false) };
            modes.Add(Convert(dir, AllFull, dense, LayoutSpec.FromLetters("F"), parameters));
            modes.Add(Convert(dir, AllFullDecomposedRope, dense, LayoutSpec.FromLetters("F"), parameters, fuseRotary: false));
            modes.Add(Convert(dir, Retrofit, dense, LayoutSpec.Ratio("1:3", sparseLast: true), parameters));
            modes.Add(Convert(dir, KvSharing, dense, LayoutSpec.Ratio("1:3", sparseLast: true), parameters with { Mode = HybridMode.KvSharing }));
            modes.Add(modes.Single(m => m.Label == Retrofit) with { Label = $"{Chunked} ({config.ChunkSize})", Chunk = config.ChunkSize });

            var samples = new Dictionary<(string, int), List<Sample>>();
            for (int r = 0; r < rounds; r++)
            {
                foreach (int s in config.Contexts)
                {
                    for (int i = 0; i < modes.Count; i++)
                    {
                        var mode = modes[(i + r) % modes.Count];
                        if (Skip(mode, s, config) is not null) continue;
                        var sample = RunChild(mode, s, dir.FullName);
                        Console.Error.WriteLine($"  round {r + 1} S {s,6} {mode.Label,-40} {sample.Ms,9:F0} ms  peak {sample.HwmMiB,6:F0} MiB");
                        (samples.TryGetValue((mode.Label, s), out var list) ? list : samples[(mode.Label, s)] = []).Add(sample);
                    }
                }
            }

            // Where the time goes: one profiled call per single-call conversion at the longest length
            // up to 16k (ORT's profiler, kernel time by op type; profiled calls are not in the table).
            var profiles = new List<(string Mode, int S, IReadOnlyDictionary<string, double> OpMs)>();
            if (profile && config.Contexts.Where(x => x <= 16384).DefaultIfEmpty(config.Contexts.Min()).Max() is int ps)
            {
                foreach (var mode in modes.Where(m => m.HySparse && m.Chunk == 0))
                {
                    var sample = RunChild(mode, ps, dir.FullName, profile: true);
                    profiles.Add((mode.Label, ps, sample.OpMs!));
                    Console.Error.WriteLine($"  profiled S {ps} {mode.Label}: {sample.Ms:F0} ms");
                }
            }

            var results = new List<PrefillResult>();
            foreach (int s in config.Contexts)
            {
                foreach (var mode in modes)
                {
                    if (Skip(mode, s, config) is { } why)
                    {
                        results.Add(new PrefillResult(mode.Label, s, [], double.NaN, double.NaN, why));
                        continue;
                    }
                    var list = samples[(mode.Label, s)];
                    results.Add(new PrefillResult(mode.Label, s, list.Select(x => x.Ms).ToArray(), list.Max(x => x.HwmMiB),
                        new Timing([.. list.Select(x => x.RssBeforeMiB)]).MedianMs, null));
                }
            }
            var checks = new List<string>();
            foreach (int s in config.Contexts)
            {
                if (Logits(samples, Original, s) is { } original && Logits(samples, AllFull, s) is { } allFull)
                    checks.Add(Agree($"S {s}: all-full conversion vs original export", allFull, original));
                if (Logits(samples, AllFullDecomposedRope, s) is { } unfused && Logits(samples, AllFull, s) is { } fused)
                    checks.Add(Agree($"S {s}: all-full with fused RoPE vs RoPE left decomposed", fused, unfused));
                if (Logits(samples, Retrofit, s) is { } single && Logits(samples, modes[^1].Label, s) is { } chunked)
                    checks.Add(Agree($"S {s}: chunked vs single-call prefill of the FSSS retrofit", chunked, single));
            }
            return new PrefillReport(config.Name, c, parameters, threads, rounds, results, checks, $"{load0} before, {LoadAverage()} after",
                profiles.Select(p => new PrefillProfile(p.Mode, p.S, p.OpMs)).ToArray());
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static string? Skip(Mode mode, int s, PrefillBenchConfig config)
    {
        if (mode.Label != Original || s <= config.OriginalMaxContext) return null;
        var c = config.Model;
        double gib = (double)c.Heads * s * s * sizeof(float) / (1L << 30);
        return $"not run: materialises {c.Heads} × {s} × {s} float32 scores per layer ({gib:F0} GiB per tensor)";
    }

    private static Mode Write(DirectoryInfo dir, string label, global::Onnx.ModelProto model, bool hySparse)
    {
        var path = Path.Combine(dir.FullName, $"model{dir.GetFiles().Length}.onnx");
        File.WriteAllBytes(path, model.ToByteArray());
        return new Mode(label, path, hySparse, 0);
    }

    private static Mode Convert(DirectoryInfo dir, string label, global::Onnx.ModelProto dense, LayoutSpec layout, HybridParameters parameters,
                                bool fuseRotary = true)
    {
        var (model, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = layout, Parameters = parameters, FuseRotary = fuseRotary });
        Console.Error.WriteLine($"  {label}: layout {report.Layout.Letters}");
        return Write(dir, label, model, hySparse: true);
    }

    private sealed record Sample(double Ms, double HwmMiB, double RssBeforeMiB, float[] LastLogits, IReadOnlyDictionary<string, double>? OpMs = null);

    private static float[]? Logits(Dictionary<(string, int), List<Sample>> samples, string label, int s) =>
        samples.TryGetValue((label, s), out var list) ? list[0].LastLogits : null;

    private static string Agree(string what, float[] got, float[] want)
    {
        double worst = 0, scale = 0;
        for (int v = 0; v < want.Length; v++)
        {
            worst = Math.Max(worst, Math.Abs(got[v] - want[v]));
            scale = Math.Max(scale, Math.Abs(want[v]));
        }
        // The same function in another order of float32 operations (fused kernel vs MatMul/Softmax, chunks).
        if (!(worst <= 1e-3 * Math.Max(scale, 1)))
            throw new InvalidOperationException($"{what}: last-token logits differ by {worst:G3} (logits up to {scale:G3})");
        return $"{what}: last-token logits agree within {worst:G2} (up to {scale:G2})";
    }

    private Sample RunChild(Mode mode, int s, string dir, bool profile = false)
    {
        var logitsPath = Path.Combine(dir, "logits.bin");
        var start = ChildStart();
        foreach (var arg in new[] { ChildVerb, mode.Path, mode.HySparse ? "1" : "0", s.ToString(CultureInfo.InvariantCulture),
                                    mode.Chunk.ToString(CultureInfo.InvariantCulture), threads.ToString(CultureInfo.InvariantCulture),
                                    seed.ToString(CultureInfo.InvariantCulture), logitsPath, library ?? "",
                                    profile ? Path.Combine(dir, "profile") : "" })
            start.ArgumentList.Add(arg);
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        using var child = Process.Start(start) ?? throw new InvalidOperationException("could not start the prefill child process");
        var stderr = child.StandardError.ReadToEndAsync();
        var stdout = child.StandardOutput.ReadToEnd();
        child.WaitForExit();
        if (child.ExitCode != 0)
            throw new InvalidOperationException($"{mode.Label} at S {s}: the child process exited with {child.ExitCode}" +
                                                (child.ExitCode == 137 ? " (killed: out of memory?)" : "") + $": {stderr.Result.Trim()}");
        using var json = JsonDocument.Parse(stdout.Trim().Split('\n')[^1]);
        var root = json.RootElement;
        var bytes = File.ReadAllBytes(logitsPath);
        var logits = new float[bytes.Length / sizeof(float)];
        Buffer.BlockCopy(bytes, 0, logits, 0, bytes.Length);
        var ops = root.TryGetProperty("opMs", out var o) && o.ValueKind == JsonValueKind.Object ? o.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble()) : null;
        return new Sample(root.GetProperty("ms").GetDouble(), root.GetProperty("hwmMiB").GetDouble(), root.GetProperty("rssBeforeMiB").GetDouble(), logits, ops);
    }

    // This program again: its apphost, or `dotnet <dll>` when it was started that way.
    private static ProcessStartInfo ChildStart()
    {
        var process = Environment.ProcessPath ?? throw new InvalidOperationException("the benchmark's own path is unknown");
        var start = new ProcessStartInfo(process) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(process) == "dotnet") start.ArgumentList.Add(typeof(PrefillBench).Assembly.Location);
        return start;
    }

    /// <summary>The first argument that makes this program a prefill child (internal protocol).</summary>
    public const string ChildVerb = "prefill-child";

    /// <summary>
    /// The child side: args are the model path, 1/0 (register the HySparse ops), S, chunk (0: one call),
    /// threads, seed, the file for the last token's logits and the native library ("" to locate it).
    /// Prints one JSON line: ms, hwmMiB, rssBeforeMiB.
    /// </summary>
    public static int ChildMain(string[] args)
    {
        string path = args[1];
        bool hySparse = args[2] == "1";
        int s = int.Parse(args[3], CultureInfo.InvariantCulture), chunk = int.Parse(args[4], CultureInfo.InvariantCulture);
        int threads = int.Parse(args[5], CultureInfo.InvariantCulture), seed = int.Parse(args[6], CultureInfo.InvariantCulture);
        string? profile = args.Length > 9 && args[9].Length > 0 ? args[9] : null;
        var factory = new SessionFactory(threads, args[8].Length == 0 ? null : args[8]);
        using var session = factory.Create(File.ReadAllBytes(path), hySparse, profile);
        int vocab = (int)session.OutputMetadata[DecoderNames.Logits].Dimensions[^1];
        var random = new SplitMix64((ulong)seed);
        var tokens = new long[s];
        for (int i = 0; i < s; i++) tokens[i] = random.NextInt(vocab);
        using (var warm = new KvCacheDecoder(session)) warm.Step(tokens.AsSpan(0, Math.Min(64, s)));
        GC.Collect();
        double rssBefore = StatusMiB("VmRSS");
        using var decoder = new KvCacheDecoder(session);
        var clock = Stopwatch.StartNew();
        float[] logits = chunk > 0 ? decoder.Prefill(tokens, chunk) : decoder.Step(tokens);
        double ms = clock.Elapsed.TotalMilliseconds;
        double hwm = StatusMiB("VmHWM");
        var last = logits.AsSpan(logits.Length - vocab).ToArray();   // [.., S, vocab]: the prompt's last token
        var bytes = new byte[last.Length * sizeof(float)];
        Buffer.BlockCopy(last, 0, bytes, 0, bytes.Length);
        File.WriteAllBytes(args[7], bytes);
        var opMs = profile is null ? null : OpTimes(session.EndProfiling());
        Console.WriteLine(JsonSerializer.Serialize(new { ms, hwmMiB = hwm, rssBeforeMiB = rssBefore, opMs }));
        return 0;
    }

    // Kernel time per op type in the last run of an ONNX Runtime profile (the warm-up run comes first).
    private static Dictionary<string, double> OpTimes(string profilePath)
    {
        using var trace = JsonDocument.Parse(File.ReadAllText(profilePath));
        var events = trace.RootElement.EnumerateArray().ToList();
        var run = events.Last(e => e.GetProperty("name").GetString() == "model_run");
        long start = run.GetProperty("ts").GetInt64(), end = start + run.GetProperty("dur").GetInt64();
        var times = new Dictionary<string, double>();
        foreach (var e in events)
        {
            if (e.GetProperty("cat").GetString() != "Node" || !e.GetProperty("name").GetString()!.EndsWith("_kernel_time", StringComparison.Ordinal)) continue;
            long ts = e.GetProperty("ts").GetInt64();
            if (ts < start || ts > end) continue;
            var op = e.GetProperty("args").GetProperty("op_name").GetString()!;
            times[op] = times.GetValueOrDefault(op) + e.GetProperty("dur").GetInt64() / 1000.0;
        }
        File.Delete(profilePath);
        return times;
    }

    private static double StatusMiB(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key + ":", StringComparison.Ordinal))
                return double.Parse(line[(key.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) / 1024;
        return double.NaN;
    }

    private static string LoadAverage() =>
        File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "?";

    /// <summary>The markdown section: setup, table (median, min–max, × all-full, peak memory), checks.</summary>
    public static string Markdown(PrefillReport report)
    {
        var sb = new StringBuilder();
        var c = report.Config;
        sb.AppendLine($"### End-to-end prefill ({report.Model})").AppendLine();
        sb.AppendLine($"One prefill call with empty caches (time to first token), {c.Layers} layers, hidden {c.Hidden}, H_q {c.Heads}, H_kv {c.KvHeads}, D {c.HeadDim}, " +
                      $"SwiGLU {c.Ffn}, vocabulary {c.Vocab}, float32; hybrids K = {report.Parameters.TopK} blocks of {report.Parameters.BlockSize}, w = {report.Parameters.Window}; " +
                      $"{report.Threads} intra-op threads; {report.Rounds} rounds, one timed call per cell and round, each in its own process, modes interleaved; " +
                      $"load average {report.LoadAverage}. Peak: the measuring process's VmHWM (model, runtime and the call).").AppendLine();
        sb.AppendLine("| S | model | median ms | min–max ms | × all-full | peak MiB | RSS before call MiB |");
        sb.AppendLine("| ---: | --- | ---: | --- | ---: | ---: | ---: |");
        foreach (var group in report.Results.GroupBy(r => r.Context))
        {
            double allFull = group.First(r => r.Mode == AllFull).MedianMs;
            foreach (var r in group)
            {
                if (r.Skipped is not null)
                {
                    sb.AppendLine($"| {r.Context} | {r.Mode} | — | {r.Skipped} | | | |");
                    continue;
                }
                sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {r.Context} | {r.Mode} | {r.MedianMs:F0} | {r.SamplesMs.Min():F0}–{r.SamplesMs.Max():F0} | {r.MedianMs / allFull:F3} | {r.PeakRssMiB:F0} | {r.RssBeforeMiB:F0} |"));
            }
        }
        sb.AppendLine();
        foreach (var check in report.Checks) sb.AppendLine($"- {check}");
        if (report.Profiles.Count > 0)
        {
            var ops = report.Profiles.SelectMany(p => p.OpMs).GroupBy(kv => kv.Key).OrderByDescending(g => g.Max(kv => kv.Value)).Select(g => g.Key).ToList();
            sb.AppendLine().AppendLine($"Kernel time by op type, one profiled call at S = {report.Profiles[0].Context} (ONNX Runtime's profiler; ms):").AppendLine();
            sb.AppendLine("| op type | " + string.Join(" | ", report.Profiles.Select(p => p.Mode)) + " |");
            sb.AppendLine("| --- |" + string.Concat(report.Profiles.Select(_ => " ---: |")));
            foreach (var op in ops)
                sb.AppendLine($"| {op} | " + string.Join(" | ", report.Profiles.Select(p => p.OpMs.TryGetValue(op, out var ms) ? ms.ToString("F1", CultureInfo.InvariantCulture) : "")) + " |");
            sb.AppendLine("| **all kernels** | " + string.Join(" | ", report.Profiles.Select(p => p.OpMs.Values.Sum().ToString("F1", CultureInfo.InvariantCulture))) + " |");
        }
        return sb.ToString();
    }
}
