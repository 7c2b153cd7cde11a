using System.Globalization;
using System.Text;
using System.Text.Json;

namespace HySparse.Fidelity;

/// <summary>Everything measured for one variant.</summary>
/// <param name="Variant">The model.</param>
/// <param name="Scores">Bits per byte, agreement and KV bytes at each context.</param>
/// <param name="Probes">One outcome per retrieval probe.</param>
/// <param name="Recall">Attention recall per selecting sparse layer (empty for dense, SWA).</param>
public sealed record VariantResult(ModelVariant Variant, IReadOnlyList<ContextScore> Scores, IReadOnlyList<ProbeOutcome> Probes, IReadOnlyList<LayerRecall> Recall)
{
    /// <summary>Retrieval pooled over every probe at <paramref name="context"/> (all needle positions).</summary>
    public ProbeScore RetrievalAt(int context) => ProbeScore.Pool(context, double.NaN, Probes.Where(p => p.Context == context).ToList());

    /// <summary>Mean recall over the sparse layers (NaN without any).</summary>
    public double MeanRecall => Recall.Count > 0 ? Recall.Average(r => r.Recall) : double.NaN;
}

/// <summary>One of issue 11's "done when" targets with the measured value.</summary>
/// <param name="Goal">The target in words.</param>
/// <param name="Measured">What was measured.</param>
/// <param name="Met">Whether it is met; null for a number the issue asks to state without a threshold (or one that cannot be computed).</param>
/// <param name="Verdict">"met", "missed by …", "stated" or why it cannot be judged.</param>
public sealed record Target(string Goal, string Measured, bool? Met, string Verdict);

/// <summary>Writes the fidelity tables (markdown), the raw numbers (JSON) and the plots (SVG).</summary>
public static class Report
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>The context the targets are stated at: 2k, or the longest evaluated when 2k is not.</summary>
    public static int TargetContext(IEnumerable<int> contexts) => contexts.Contains(2048) ? 2048 : contexts.Max();

    /// <summary>Issue 11's targets: dense quality and retrieval, native against dense (for each seed pair), SWA beyond its window, retrofit 1:3 against dense.</summary>
    /// <param name="results">Every variant, dense (seed 1) among them.</param>
    /// <param name="context">Context of the bits-per-byte targets.</param>
    /// <param name="probeContext">Context of the retrieval targets.</param>
    /// <param name="window">The sliding window of the hybrid models.</param>
    public static IReadOnlyList<Target> Targets(IReadOnlyList<VariantResult> results, int context, int probeContext, int window)
    {
        var dense = results.First(r => r.Variant.IsReference);
        var native = results.FirstOrDefault(r => r.Variant.Kind == "native" && r.Variant.Seed == 1);
        var swa = results.FirstOrDefault(r => r.Variant.Kind == "swa");
        double Bpb(VariantResult r) => r.Scores.Single(s => s.Context == context).BitsPerByte;
        double Retrieval(VariantResult r) => r.RetrievalAt(probeContext).ValueAccuracy;
        IReadOnlyList<ProbeOutcome> At(VariantResult r) => r.Probes.Where(p => p.Context == probeContext).ToList();
        var at = Label(context);
        var rat = Label(probeContext);
        var targets = new List<Target>();

        // The dense and native targets for each seed: a second seed's native model against the dense model of
        // its own seed (the same data order), so a target met by one seed pair and missed by the other shows.
        void SeedTargets(VariantResult denseModel, VariantResult? nativeModel, string seed)
        {
            var denseBpb = Bpb(denseModel);
            targets.Add(new($"dense{seed} ≤ 2.3 bits/byte at {at}", F(denseBpb, 3), denseBpb <= 2.3, denseBpb <= 2.3 ? "met" : $"missed by {F(denseBpb - 2.3, 3)} bits/byte"));
            var denseRetrieval = Retrieval(denseModel);
            var denseError = denseModel.RetrievalAt(probeContext).ValueAccuracyError;
            targets.Add(new($"dense{seed} retrieval ≥ 60 % at {rat}", $"{F(100 * denseRetrieval, 1)}{PlusMinus(100 * denseError)} %", denseRetrieval >= 0.6,
                denseRetrieval >= 0.6 ? "met" : $"missed by {F(100 * (0.6 - denseRetrieval), 1)} points"
                                                // No spread (one probe, or every probe alike, e.g. all wrong): no error to count in.
                                                + (double.IsNaN(denseError) || denseError <= 0 ? "" : $" ({F((0.6 - denseRetrieval) / denseError, 1)} standard errors)")));
            if (nativeModel is null) return;
            var gap = Bpb(nativeModel) - denseBpb;
            targets.Add(new($"HySparse native{seed} within 0.05 bits/byte of dense{seed} (or better) at {at}", $"{F(Bpb(nativeModel), 3)} vs {F(denseBpb, 3)} ({Signed(gap, 3)})",
                gap <= 0.05, gap <= 0.05 ? "met" : $"missed by {F(gap - 0.05, 3)} bits/byte"));
            var points = 100 * (denseRetrieval - Retrieval(nativeModel));
            var (_, pairedError) = ProbeScore.Paired(At(nativeModel), At(denseModel));
            targets.Add(new($"HySparse native{seed} within 10 points of dense{seed} on retrieval at {rat}",
                $"{Pct(Retrieval(nativeModel))} vs {Pct(denseRetrieval)} ({Signed(-points, 1)}{PlusMinus(100 * pairedError)} points{(double.IsNaN(pairedError) ? "" : ", paired")})",
                points <= 10, points <= 10 ? "met" + NearChance(denseRetrieval) : $"missed by {F(points - 10, 1)} points"));
        }

        SeedTargets(dense, native, "");
        if (results.FirstOrDefault(r => r.Variant.Kind == "dense" && r.Variant.Seed == 2) is { } dense2)
            SeedTargets(dense2, results.FirstOrDefault(r => r.Variant.Kind == "native" && r.Variant.Seed == 2), " (seed 2)");
        var denseRetrieval = Retrieval(dense);
        var nearChance = NearChance(denseRetrieval);
        if (swa is not null)
        {
            string Beyond(VariantResult r) => Pct(ProbeScore.Pool(0, double.NaN, r.Probes.Where(p => p.Distance > window).ToList()).ValueAccuracy);
            var count = swa.Probes.Count(p => p.Distance > window);
            targets.Add(new($"sliding-window baseline's retrieval beyond its window ({count} probes with distance > {window} bytes, all contexts)",
                $"{Beyond(swa)} (dense {Beyond(dense)}{(native is null ? "" : $", native {Beyond(native)}")})", null, "stated"));
        }
        // 1:3 is a KV budget as much as a layout: a retrofit with the same number of full layers elsewhere
        // (--full-layers, e.g. scan-layers' choice) is judged beside it, and named as such.
        static bool Is1To3(VariantResult r) => r.Variant.Name.StartsWith("retrofit 1:3,", StringComparison.Ordinal);
        var ratioFull = results.Where(r => r.Variant.Kind == "retrofit" && Is1To3(r)).Select(r => r.Variant.Layout.Count(c => c == 'F')).FirstOrDefault();
        foreach (var retrofit in results.Where(r => r.Variant.Kind == "retrofit" && (Is1To3(r)
                     || (ratioFull > 0 && r.Variant.Name.StartsWith("retrofit full ", StringComparison.Ordinal) && r.Variant.Layout.Count(c => c == 'F') == ratioFull))))
        {
            var kept = Retrieval(retrofit) / denseRetrieval;
            var name = Is1To3(retrofit) ? retrofit.Variant.Name : $"{retrofit.Variant.Name} (as many full layers as 1:3)";
            targets.Add(new($"{name} keeps ≥ 90 % of dense's retrieval at {rat}", $"{Pct(Retrieval(retrofit))} vs {Pct(denseRetrieval)}",
                denseRetrieval > 0 ? kept >= 0.9 : null,
                denseRetrieval == 0 ? "cannot be judged: dense retrieves nothing" : kept >= 0.9 ? $"met ({F(100 * kept, 0)} % kept){nearChance}" : $"missed: {F(100 * kept, 0)} % kept"));
        }
        return targets;
    }

    /// <summary>Below three times a uniform guess over a–z0–9 dense does not retrieve: matching it says nothing.</summary>
    private static string NearChance(double denseRetrieval) =>
        denseRetrieval < 3.0 / 36 ? $" — but dense is near chance ({Pct(denseRetrieval)}): not evidence" : "";

    /// <param name="results">Every variant, dense (seed 1) first.</param>
    /// <param name="contexts">Contexts of the quality tables.</param>
    /// <param name="window">The hybrid models' sliding window (for the SWA target).</param>
    /// <param name="svgName">The quality-vs-memory plot's file name.</param>
    /// <param name="retrievalSvgName">The retrieval-by-distance plot's file name.</param>
    public static string Markdown(IReadOnlyList<VariantResult> results, IReadOnlyList<int> contexts, int window, string svgName, string retrievalSvgName)
    {
        var at = TargetContext(contexts);
        var sb = new StringBuilder();
        sb.AppendLine("| model | layout | attention | " + string.Join(" | ", contexts.Select(c => $"bits/byte @{Label(c)}"))
                      + " | " + string.Join(" | ", contexts.Select(c => $"late half @{Label(c)}")) + " |");
        sb.AppendLine("| --- | --- | --- | " + string.Join(" | ", contexts.Concat(contexts).Select(_ => "---:")) + " |");
        foreach (var r in results)
            sb.AppendLine($"| {r.Variant.Name} | `{r.Variant.Layout}` | {r.Variant.Detail} | "
                          + string.Join(" | ", contexts.Select(c => F(Score(r, c).BitsPerByte, 3) + (c == at ? $" ± {F(Score(r, c).StandardError, 3)}" : "")))
                          + " | " + string.Join(" | ", contexts.Select(c => F(Score(r, c).LateBitsPerByte, 3))) + " |");
        sb.AppendLine();
        sb.AppendLine($"± is the standard error across the windows at {Label(at)}: it measures how much the choice of text moves a model's number; "
                      + "every model reads the same windows, so differences between rows vary much less than that. "
                      + "\"Late half\": the second half of each window only, where the model has at least half the context behind it.");
        sb.AppendLine();
        sb.AppendLine("| model | " + string.Join(" | ", contexts.Select(c => $"top-1 = dense @{Label(c)}")) + " | "
                      + string.Join(" | ", contexts.Select(c => $"KV bytes/token @{Label(c)}")) + " |");
        sb.AppendLine("| --- | " + string.Join(" | ", contexts.Concat(contexts).Select(_ => "---:")) + " |");
        foreach (var r in results)
            sb.AppendLine($"| {r.Variant.Name} | " + string.Join(" | ", contexts.Select(c => $"{F(100 * Score(r, c).Top1Agreement, 1)} %"))
                          + " | " + string.Join(" | ", contexts.Select(c => F(Score(r, c).KvBytesPerToken, 0))) + " |");
        sb.AppendLine();
        sb.AppendLine($"![bits per byte at {Label(at)} against KV-cache bytes per token]({svgName})");
        sb.AppendLine();
        AppendRetrieval(sb, results, retrievalSvgName);
        AppendRecall(sb, results);
        AppendSeedSpread(sb, results, contexts);
        var probeContexts = results[0].Probes.Select(p => p.Context).Distinct().ToList();
        sb.AppendLine("### Targets (issue 11)");
        sb.AppendLine();
        sb.AppendLine("| target | measured | |");
        sb.AppendLine("| --- | --- | --- |");
        foreach (var t in Targets(results, at, TargetContext(probeContexts), window))
            sb.AppendLine($"| {t.Goal} | {t.Measured} | {(t.Met switch { true => "✅ ", false => "❌ ", null => "" })}{t.Verdict} |");
        return sb.ToString();
    }

    private static void AppendRetrieval(StringBuilder sb, IReadOnlyList<VariantResult> results, string retrievalSvgName)
    {
        var cells = ProbeScore.Cells(results[0].Probes);
        var header = string.Join(" | ", cells.Select(c => $"@{Label(c.Context)}, needle {F(100 * c.Position, 0)} %"));
        var rule = string.Join(" | ", cells.Select(_ => "---:"));
        sb.AppendLine("### Retrieval by distance");
        sb.AppendLine();
        sb.AppendLine($"{results[0].Probes.Count} probes per model from `probes.json` (models/train/make_probes.py: retrieval.py's evaluation formats, which the training mix "
                      + $"does not contain; {cells[0].Probes} per cell): a value planted at 10, 50 or 90 % of the window and asked for at its end. "
                      + "Mean distance from the planted line to the value, in bytes: "
                      + string.Join(", ", cells.Select(c => $"{F(c.MeanDistance, 0)} (@{Label(c.Context)}, {F(100 * c.Position, 0)} %)")) + ".");
        sb.AppendLine();
        foreach (var (title, cell) in new (string, Func<ProbeScore, string>)[]
                 {
                     ("Value bytes predicted right (teacher-forced arg-max):", c => Pct(c.ValueAccuracy)),
                     ("Bits per value byte (cross-entropy):", c => F(c.ValueBitsPerByte, 2)),
                 })
        {
            sb.AppendLine(title);
            sb.AppendLine();
            sb.AppendLine($"| model | {header} |");
            sb.AppendLine($"| --- | {rule} |");
            foreach (var r in results)
                sb.AppendLine($"| {r.Variant.Name} | " + string.Join(" | ", ProbeScore.Cells(r.Probes).Select(cell)) + " |");
            sb.AppendLine();
        }
        var contexts = cells.Select(c => c.Context).Distinct().ToList();
        sb.AppendLine("Pooled over the three needle positions, ± the standard error across the probes (another set of probes of the same kind "
                      + "could move a model's number about that much; two models on the same probes differ with less noise — the targets give that paired error):");
        sb.AppendLine();
        sb.AppendLine("| model | " + string.Join(" | ", contexts.Select(c => $"@{Label(c)}")) + " |");
        sb.AppendLine("| --- | " + string.Join(" | ", contexts.Select(_ => "---:")) + " |");
        foreach (var r in results)
            sb.AppendLine($"| {r.Variant.Name} | " + string.Join(" | ", contexts.Select(c => r.RetrievalAt(c)).Select(p => $"{F(100 * p.ValueAccuracy, 1)}{PlusMinus(100 * p.ValueAccuracyError)} %")) + " |");
        sb.AppendLine();
        sb.AppendLine("Chance: the values are 4–12 characters of a–z0–9, hex digits, or a word and a number; a uniform guess over a–z0–9 gets "
                      + "1/36 = 2.8 % of the bytes right at log2 36 = 5.17 bits per byte (a model that knows the alphabets but reads nothing back does somewhat better).");
        sb.AppendLine();
        sb.AppendLine($"![retrieval accuracy by distance]({retrievalSvgName})");
        sb.AppendLine();
    }

    private static void AppendRecall(StringBuilder sb, IReadOnlyList<VariantResult> results)
    {
        var rows = results.Where(r => r.Recall.Count > 0).ToList();
        sb.AppendLine("### Attention recall of the oracle");
        sb.AppendLine();
        if (rows.Count == 0)
        {
            sb.AppendLine("No variant has sparse layers that read an oracle's selection.");
            sb.AppendLine();
            return;
        }
        var first = rows[0].Recall[0];
        var layers = rows.SelectMany(r => r.Recall.Select(l => l.Layer)).Distinct().Order().ToList();
        sb.AppendLine($"For each sparse layer: the share of the layer's own dense attention probability (softmax over every causal key, float64, "
                      + "from the layer's post-RoPE query and the keys it reads — its own for a retrofit, the shared full layer's for KV sharing and the native model) "
                      + $"that falls inside the oracle's selected blocks ∪ the sliding window; mean over heads and query positions of {first.Windows} window{(first.Windows == 1 ? "" : "s")} of {Label(first.Context)}. "
                      + "1 means the sparse layer sees everything its dense attention would weigh; the rest is what it misses.");
        sb.AppendLine();
        sb.AppendLine("| model | " + string.Join(" | ", layers.Select(l => $"layer {l}")) + " | mean | keys covered |");
        sb.AppendLine("| --- | " + string.Join(" | ", layers.Select(_ => "---:")) + " | ---: | ---: |");
        foreach (var r in rows)
            sb.AppendLine($"| {r.Variant.Name} | " + string.Join(" | ", layers.Select(l => r.Recall.FirstOrDefault(x => x.Layer == l) is { } x ? F(x.Recall, 3) : "·"))
                          + $" | {F(r.MeanRecall, 3)} | {F(r.Recall.Average(x => x.Coverage), 3)} |");
        sb.AppendLine();
        sb.AppendLine("· : a full layer in that model. \"Keys covered\": the mean share of the causal keys inside selected blocks ∪ window, "
                      + "i.e. the recall a layer with uniform attention would have; recall far above it means the oracle finds where the layer looks, "
                      + "recall near it means the layer's attention is spread out.");
        sb.AppendLine();
        AppendGates(sb, rows, layers);
    }

    /// <summary>The native model's gates: how much each sparse layer's output takes from the selected blocks.</summary>
    private static void AppendGates(StringBuilder sb, IReadOnlyList<VariantResult> rows, IReadOnlyList<int> layers)
    {
        var gated = rows.Where(r => r.Recall.Any(l => !double.IsNaN(l.SaGate))).ToList();
        if (gated.Count == 0) return;
        sb.AppendLine("Gates of the models that combine their two branches by gates (`combine=\"gate\"`): mean σ(gate) of the SA branch (selected blocks) / "
                      + "the window branch, over heads, positions and the same windows. Recall says whether the selection holds what a layer would attend to; "
                      + "the SA gate says how much of the layer's output comes from it.");
        sb.AppendLine();
        sb.AppendLine("| model | " + string.Join(" | ", layers.Select(l => $"layer {l}")) + " | mean |");
        sb.AppendLine("| --- | " + string.Join(" | ", layers.Select(_ => "---:")) + " | ---: |");
        foreach (var r in gated)
        {
            var withGates = r.Recall.Where(l => !double.IsNaN(l.SaGate)).ToList();
            sb.AppendLine($"| {r.Variant.Name} | " + string.Join(" | ", layers.Select(l => withGates.FirstOrDefault(x => x.Layer == l) is { } x ? $"{F(x.SaGate, 2)} / {F(x.WindowGate, 2)}" : "·"))
                          + $" | {F(withGates.Average(x => x.SaGate), 2)} / {F(withGates.Average(x => x.WindowGate), 2)} |");
        }
        sb.AppendLine();
    }

    private static void AppendSeedSpread(StringBuilder sb, IReadOnlyList<VariantResult> results, IReadOnlyList<int> contexts)
    {
        sb.AppendLine("### Seed spread");
        sb.AppendLine();
        var pairs = results.Where(r => r.Variant.Seed == 2)
            .Select(second => (First: results.First(r => r.Variant.Seed == 1 && r.Variant.Kind == second.Variant.Kind), Second: second)).ToList();
        if (pairs.Count == 0)
        {
            sb.AppendLine($"No second seed was evaluated (the models folder has no `{ModelVariants.SecondSeedDense}` or `{ModelVariants.SecondSeedNative}`): "
                          + "how much a training seed moves these numbers is not measured.");
            sb.AppendLine();
            return;
        }
        sb.AppendLine("The same recipe trained with a second seed; spread = seed 2 − seed 1.");
        sb.AppendLine();
        sb.AppendLine("| model | metric | seed 1 | seed 2 | spread |");
        sb.AppendLine("| --- | --- | ---: | ---: | ---: |");
        foreach (var (first, second) in pairs)
            foreach (var (metric, value, digits, unit, spreadUnit) in SeedMetrics(contexts, first.Probes.Select(p => p.Context).Distinct()))
                sb.AppendLine($"| {first.Variant.Name} | {metric} | {F(value(first), digits)}{unit} | {F(value(second), digits)}{unit} | {Signed(value(second) - value(first), digits)}{spreadUnit} |");
        sb.AppendLine();
    }

    /// <summary>
    /// The metrics whose seed spread is reported. A difference of two percentages is in points, not
    /// percent (53.6 % → 55.9 % is +2.3 points, a 4 % relative change), hence the separate spread unit.
    /// </summary>
    private static IEnumerable<(string Metric, Func<VariantResult, double> Value, int Digits, string Unit, string SpreadUnit)> SeedMetrics(IEnumerable<int> contexts, IEnumerable<int> probeContexts)
    {
        foreach (var c in contexts)
        {
            yield return ($"bits/byte @{Label(c)}", r => Score(r, c).BitsPerByte, 3, "", "");
            yield return ($"late-half bits/byte @{Label(c)}", r => Score(r, c).LateBitsPerByte, 3, "", "");
        }
        foreach (var c in probeContexts)
            yield return ($"retrieval @{Label(c)}", r => 100 * r.RetrievalAt(c).ValueAccuracy, 1, " %", " points");
        yield return ("mean attention recall", r => r.MeanRecall, 3, "", "");
    }

    public static string Json(IReadOnlyList<VariantResult> results, object run, IReadOnlyList<Target> targets) =>
        JsonSerializer.Serialize(new
        {
            run,
            targets,
            variants = results.Select(r => new
            {
                r.Variant.Name, r.Variant.Kind, r.Variant.Layout, r.Variant.Detail, r.Variant.Seed,
                scores = r.Scores,
                retrieval = ProbeScore.Cells(r.Probes),
                recall = r.Recall,
            }),
        }, new JsonSerializerOptions { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals });

    /// <summary>Quality against KV bytes per token at <paramref name="context"/>, one marker per variant, as SVG.</summary>
    public static string Svg(IReadOnlyList<VariantResult> results, int context)
    {
        var plot = Plots.New($"bits per byte against KV bytes per token at {Label(context)}",
            $"KV-cache KiB per token at {Label(context)} (measured)", $"bits per byte at {Label(context)} (lower is better)");
        foreach (var r in results)
        {
            var score = Score(r, context);
            var marker = plot.Add.Marker(score.KvBytesPerToken / 1024.0, score.BitsPerByte, ScottPlot.MarkerShape.FilledCircle, 9, Colour(r.Variant));
            marker.LegendText = $"{r.Variant.Name} ({score.BitsPerByte:F3})";
        }
        plot.Axes.SetLimitsX(0, results.Max(r => Score(r, context).KvBytesPerToken) / 1024.0 * 1.1);
        return Plots.Svg(plot, 760, 440);
    }

    /// <summary>Retrieval accuracy against the needle's distance at <paramref name="context"/>, one line per variant, as SVG.</summary>
    public static string RetrievalSvg(IReadOnlyList<VariantResult> results, int context)
    {
        var plot = Plots.New($"retrieval at {Label(context)} by distance", "bytes from the planted value to the query (mean per needle position)",
            "value bytes right (%)");
        foreach (var r in results)
        {
            var cells = ProbeScore.Cells(r.Probes).Where(c => c.Context == context).ToList();
            var line = plot.Add.ScatterLine(cells.Select(c => c.MeanDistance).ToArray(), cells.Select(c => 100 * c.ValueAccuracy).ToArray(), Colour(r.Variant));
            line.LineWidth = r.Variant.Kind is "dense" or "native" or "swa" ? 2 : 1;
            line.LegendText = r.Variant.Name;
        }
        plot.Axes.SetLimitsY(0, 100);
        return Plots.Svg(plot, 760, 440);
    }

    public static string Label(int context) => context % 1024 == 0 ? $"{context / 1024}k" : context.ToString(Inv);

    private static ContextScore Score(VariantResult r, int context) => r.Scores.Single(s => s.Context == context);

    private static ScottPlot.Color Colour(ModelVariant variant)
    {
        var colours = new Dictionary<string, string> { ["dense"] = "#000000", ["retrofit"] = "#1f77b4", ["kv_sharing"] = "#9467bd", ["native"] = "#d62728", ["swa"] = "#2ca02c" };
        var colour = ScottPlot.Color.FromHex(colours.GetValueOrDefault(variant.Kind, "#808080"));
        return variant.Seed == 1 ? colour : colour.WithAlpha(0.5);
    }

    private static string F(double v, int digits) => double.IsNaN(v) ? "—" : v.ToString("F" + digits, Inv);

    private static string Signed(double v, int digits) => double.IsNaN(v) ? "—" : (v >= 0 ? "+" : "−") + F(Math.Abs(v), digits);

    private static string Pct(double v) => double.IsNaN(v) ? "—" : $"{F(100 * v, 1)} %";

    /// <summary>" ± e" with one decimal, or nothing where the error cannot be computed (a single probe).</summary>
    private static string PlusMinus(double error) => double.IsNaN(error) ? "" : $" ± {F(error, 1)}";
}

/// <summary>The loss curve of one trained model (models/train writes it as <c>kind.loss.jsonl</c>).</summary>
/// <param name="Kind">dense, hysparse or swa; dense-seed2 or hysparse-seed2 for a second seed.</param>
/// <param name="Points">(step, bytes seen, seconds, training bits per byte, validation bits per byte or NaN) per logged step.</param>
/// <param name="StartedFrom">"random weights", or the model a warm start took its weights from (the export's
/// <c>training.warm_start</c> metadata, written by models/train/warm_start.py): the curve then begins with that model's training.</param>
public sealed record TrainingCurve(string Kind, IReadOnlyList<(int Step, long Tokens, double Seconds, int Sequence, double TrainBpb, double ValidationBpb)> Points,
    string StartedFrom = "random weights")
{
    /// <summary>Reads <c>{kind}.loss.jsonl</c> from <paramref name="directory"/>; null when the file is absent.</summary>
    public static TrainingCurve? Load(string directory, string kind)
    {
        var path = Path.Combine(directory, $"{kind}.loss.jsonl");
        if (!File.Exists(path)) return null;
        var points = File.ReadLines(path).Where(l => l.Length > 0).Select(line =>
        {
            using var doc = JsonDocument.Parse(line);
            var r = doc.RootElement;
            // train_gpu.py's evaluation records carry no training loss, and name the evaluated length eval_seq.
            return (r.GetProperty("step").GetInt32(), r.GetProperty("tokens").GetInt64(), r.GetProperty("seconds").GetDouble(),
                r.TryGetProperty("eval_seq", out var evalSeq) ? evalSeq.GetInt32() : r.GetProperty("seq").GetInt32(),
                r.TryGetProperty("train_bpb", out var t) ? t.GetDouble() : double.NaN,
                r.TryGetProperty("validation_bpb", out var v) ? v.GetDouble() : double.NaN);
        }).ToList();
        return new TrainingCurve(kind, points, StartOf(Path.Combine(directory, $"{kind}.onnx")));
    }

    private static string StartOf(string modelPath)
    {
        if (!File.Exists(modelPath)) return "random weights";
        var warm = HySparse.Exporter.ModelFile.Load(modelPath).MetadataProps.FirstOrDefault(p => p.Key == "training.warm_start")?.Value;
        if (warm is null) return "random weights";
        using var doc = JsonDocument.Parse(warm);
        var r = doc.RootElement;
        var kind = r.TryGetProperty("from_kind", out var k) ? k.GetString() : "another";
        return r.TryGetProperty("from_steps", out var steps) ? $"warm start: {kind} model after {steps.GetInt32().ToString("N0", CultureInfo.InvariantCulture)} steps" : $"warm start: {kind} model";
    }
}

/// <summary>Training summary table and loss-curve plot.</summary>
public static class TrainingReport
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static string Markdown(IReadOnlyList<TrainingCurve> curves, string svgName)
    {
        var sb = new StringBuilder();
        sb.AppendLine("| model | started from | steps | bytes seen | wall time | last training bits/byte | validation bits/byte at the end (the trainer's own windows) |");
        sb.AppendLine("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
        foreach (var c in curves)
        {
            var last = c.Points[^1];
            var lastTrain = c.Points.LastOrDefault(p => !double.IsNaN(p.TrainBpb));
            var validation = c.Points.LastOrDefault(p => !double.IsNaN(p.ValidationBpb));
            sb.AppendLine(Inv, $"| {c.Kind} | {c.StartedFrom} | {last.Step} | {last.Tokens:N0} | {last.Seconds / 60:F0} min | {lastTrain.TrainBpb:F3} | {(double.IsNaN(validation.ValidationBpb) ? "—" : $"{validation.ValidationBpb:F3} @{validation.Sequence}")} |");
        }
        sb.AppendLine();
        sb.AppendLine($"![training bits per byte by step]({svgName})");
        return sb.ToString();
    }

    /// <summary>Training bits per byte by step, one line per model, as SVG.</summary>
    public static string Svg(IReadOnlyList<TrainingCurve> curves)
    {
        var plot = Plots.New("training loss", "training step", "training bits per byte");
        var colours = new Dictionary<string, string> { ["dense"] = "#000000", ["hysparse"] = "#d62728", ["swa"] = "#2ca02c", ["dense-seed2"] = "#8c8c8c", ["hysparse-seed2"] = "#ff9896" };
        foreach (var c in curves)
        {
            var trained = c.Points.Where(p => !double.IsNaN(p.TrainBpb)).ToList();
            var line = plot.Add.ScatterLine(trained.Select(p => (double)p.Step).ToArray(), trained.Select(p => p.TrainBpb).ToArray(),
                ScottPlot.Color.FromHex(colours.GetValueOrDefault(c.Kind, "#808080")));
            line.LineWidth = 1.5f;
            line.LegendText = c.Kind;
        }
        return Plots.Svg(plot, 640, 360);
    }
}

/// <summary>The reports' plots, drawn with ScottPlot and written as SVG.</summary>
internal static class Plots
{
    /// <summary>A plot with a title, axis labels and the legend to the right of the data.</summary>
    public static ScottPlot.Plot New(string title, string xLabel, string yLabel)
    {
        var plot = new ScottPlot.Plot();
        plot.Title(title, size: 15);
        plot.XLabel(xLabel, size: 13);
        plot.YLabel(yLabel, size: 13);
        plot.ShowLegend(ScottPlot.Edge.Right);
        return plot;
    }

    /// <summary>Renders <paramref name="plot"/> as an SVG document of the given size in pixels.</summary>
    public static string Svg(ScottPlot.Plot plot, int width, int height) => plot.GetSvgXml(width, height);
}
