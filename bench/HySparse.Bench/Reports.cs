using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace HySparse.Bench;

/// <summary>Where and how the run happened: printed above the tables and stored in the JSON.</summary>
public sealed record RunInfo(string Cpu, int LogicalCores, int Threads, string OrtVersion, string DotnetVersion,
                             string StartedUtc, string CommandLine, int Warmup, int Iterations, string? HySparseStatus);

/// <summary>Everything one run produced.</summary>
public sealed record RunReport(RunInfo Run, MachineFloor Floor, SparseParams Sparse, IReadOnlyList<Measurement> Measurements,
                               IReadOnlyList<TargetCheck> Targets, EndToEndReport? EndToEnd = null);

/// <summary>Renders a <see cref="RunReport"/> as markdown tables and as JSON.</summary>
public static class Reports
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>The markdown report: run details, floors, prefill and decode tables, targets.</summary>
    public static string Markdown(RunReport report)
    {
        var sb = new StringBuilder();
        var run = report.Run;
        sb.AppendLine("### Run").AppendLine();
        sb.AppendLine($"- CPU: {run.Cpu}, {run.LogicalCores} logical cores; ONNX Runtime {run.OrtVersion} (CPU provider), .NET {run.DotnetVersion}");
        sb.AppendLine($"- intra-op threads: {run.Threads} for every session and for the floors; {run.Warmup} warm-up + median of {run.Iterations} runs (runs over {CaseRunner.LongRunMs / 1000:0} s: 1 warm-up + median of 3); IOBinding with pre-allocated tensors; the ops of a case are timed round-robin");
        sb.AppendLine($"- started {run.StartedUtc}; command: `{run.CommandLine}`");
        if (run.HySparseStatus is not null) sb.AppendLine($"- HySparse ops: {run.HySparseStatus}");
        sb.AppendLine();

        var f = report.Floor;
        sb.AppendLine("### Machine floors (measured in this run)").AppendLine();
        sb.AppendLine("| floor | value | how |").AppendLine("| --- | --- | --- |");
        sb.AppendLine($"| streaming read bandwidth | {f.ReadBandwidthBytesPerSecond / 1e9:F1} GB/s | best of 7 vectorised sums of a {f.ArrayBytes >> 20} MiB array, {f.Threads} threads |");
        sb.AppendLine($"| float32 FMA rate | {f.FmaFlopsPerSecond / 1e9:F1} GFLOP/s | best of 7, 12 independent {f.VectorBits}-bit FMA chains per thread, {f.Threads} threads |");
        sb.AppendLine();

        var prefill = report.Measurements.Where(m => m.Phase == "prefill").ToList();
        if (prefill.Count > 0)
        {
            sb.AppendLine("### Prefill (S new tokens, no past; HySparseFullAttn also emits block_indices)").AppendLine();
            sb.AppendLine("| shape | type | S | op | median ms | ÷ GQA | floor ms | bound | × floor | max abs diff vs GQA |");
            sb.AppendLine("| --- | --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |");
            foreach (var m in prefill)
            {
                var gqa = Reference(report.Measurements, m, Labels.NoPast);
                sb.AppendLine($"| {m.Shape} | {m.Type} | {m.Length} | {m.Op} | {Ms(m)} | {Ratio(m, gqa)} | {m.FloorMs:F3} | {m.FloorBound} | {TimesFloor(m)} | {Diff(m)} |");
            }
            sb.AppendLine();
        }

        var decode = report.Measurements.Where(m => m.Phase == "decode").ToList();
        if (decode.Count > 0)
        {
            sb.AppendLine($"### Decode (one new token after T − 1 cached; sparse: K = {report.Sparse.TopK} blocks of {report.Sparse.BlockSize}, w = {report.Sparse.Window}, union)").AppendLine();
            sb.AppendLine("| shape | type | T | op | cache convention | median ms | ÷ GQA separate | ÷ GQA shared | floor ms | bound | × floor | max abs diff vs GQA |");
            sb.AppendLine("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |");
            foreach (var m in decode)
            {
                var separate = Reference(report.Measurements, m, Labels.Separate);
                var shared = Reference(report.Measurements, m, Labels.SharedBuffer);
                sb.AppendLine($"| {m.Shape} | {m.Type} | {m.Length} | {m.Op} | {m.Variant} | {Ms(m)} | {Ratio(m, separate)} | {Ratio(m, shared)} | {m.FloorMs:F3} | {m.FloorBound} | {TimesFloor(m)} | {Diff(m)} |");
            }
            sb.AppendLine();
        }

        if (report.EndToEnd is { } e2e) EndToEndMarkdown(sb, e2e);

        var failures = report.Measurements.Where(m => m.Error is not null).Select(m => m.Error).Distinct().ToList();
        if (failures.Count > 0)
        {
            sb.AppendLine("Rows marked *n/a* did not run: " + string.Join("; ", failures.Select(e => $"`{e}`"))).AppendLine();
        }

        sb.AppendLine("### Targets (issue 5)").AppendLine();
        sb.AppendLine("| target | case | measured | status |").AppendLine("| --- | --- | --- | --- |");
        foreach (var t in report.Targets)
        {
            string status = t.Met switch { true => "met", false => "**missed**", null => "not measured" };
            sb.AppendLine($"| {t.Target} | {t.Case} | {t.Measured} | {status} |");
        }
        return sb.ToString();
    }

    /// <summary>The report as indented JSON (NaN times of failed rows are written as "NaN").</summary>
    public static string Json(RunReport report) => JsonSerializer.Serialize(report, new JsonSerializerOptions
    {
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
    });

    // The end-to-end table: decode speed and KV bytes of the dense model and its two conversions.
    private static void EndToEndMarkdown(StringBuilder sb, EndToEndReport e)
    {
        var c = e.Config;
        sb.AppendLine($"### End-to-end decode ({e.Model}: {c.Layers} layers, hidden {c.Hidden}, H_q {c.Heads}, H_kv {c.KvHeads}, D {c.HeadDim}, FFN {c.Ffn}, vocab {c.Vocab}, float32)").AppendLine();
        sb.AppendLine($"Converted layout {e.Layout} (F full, S sparse), K = {e.Parameters.TopK} blocks of {e.Parameters.BlockSize}, w = {e.Parameters.Window}; "
                      + $"caches: {e.RealPrefix} tokens of real prefill, then synthetic rows with each channel's statistics; "
                      + $"{e.Threads} intra-op threads, {e.Warmup} warm-up + median of {e.Steps} decode steps, modes round-robin; IOBinding, present → past without copies. "
                      + $"KV MiB: at the first timed step (T + {e.Warmup}), from KvCacheCalculator and as held by the model's present caches.").AppendLine();
        sb.AppendLine("| T | model | median ms/token | min–max ms | tokens/s | × dense tokens/s | KV bytes/token | KV MiB (calculator) | KV MiB held |");
        sb.AppendLine("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var r in e.Results)
        {
            sb.AppendLine(string.Create(Inv, $"| {r.Context} | {r.Mode} | {r.MedianMs:F2} | {r.MinMs:F2}–{r.MaxMs:F2} | {r.TokensPerSecond:F1} | {r.SpeedupVsDense:F2} | {r.KvBytesPerToken} | {r.KvBytesTotal / 1048576.0:F2} | {r.KvBytesHeld / 1048576.0:F2} |"));
        }
        sb.AppendLine();
    }

    private static Measurement? Reference(IReadOnlyList<Measurement> all, Measurement m, string gqaVariant) =>
        all.FirstOrDefault(r => r.Op == Labels.Gqa && r.Variant == gqaVariant && r.Phase == m.Phase && r.Shape == m.Shape
                                && r.Type == m.Type && r.Length == m.Length);

    private static string Ms(Measurement m) => double.IsNaN(m.MedianMs) ? "*n/a*" : m.MedianMs.ToString("F3", Inv);

    private static string Ratio(Measurement m, Measurement? reference) =>
        reference is null || double.IsNaN(m.MedianMs) || double.IsNaN(reference.MedianMs) ? "" : (m.MedianMs / reference.MedianMs).ToString("F3", Inv);

    private static string TimesFloor(Measurement m) => double.IsNaN(m.MedianMs) ? "" : m.TimesFloor.ToString("F2", Inv);

    private static string Diff(Measurement m) => m.MaxAbsDiffVsGqa is double d ? d.ToString("G3", Inv) : "";
}
