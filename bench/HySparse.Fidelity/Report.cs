using System.Globalization;
using System.Text;
using System.Text.Json;

namespace HySparse.Fidelity;

/// <summary>Everything measured for one variant.</summary>
public sealed record VariantResult(ModelVariant Variant, IReadOnlyList<ContextScore> Scores, ProbeScore Probe);

/// <summary>Writes the fidelity tables (markdown), the raw numbers (JSON) and the quality-vs-memory plot (SVG).</summary>
public static class Report
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static string Markdown(IReadOnlyList<VariantResult> results, IReadOnlyList<int> contexts, string svgName)
    {
        var longest = contexts.Max();
        var sb = new StringBuilder();
        sb.AppendLine("| model | layout | attention | " + string.Join(" | ", contexts.Select(c => $"bits/byte @{Label(c)}"))
                      + $" | late-half bits/byte @{Label(longest)} | top-1 = dense @{Label(longest)} | KV bytes/token @{Label(longest)} |");
        sb.AppendLine("| --- | --- | --- | " + string.Join(" | ", contexts.Select(_ => "---:")) + " | ---: | ---: | ---: |");
        foreach (var r in results)
        {
            var last = r.Scores.Single(s => s.Context == longest);
            sb.AppendLine($"| {r.Variant.Name} | `{r.Variant.Layout}` | {r.Variant.Detail} | "
                          + string.Join(" | ", contexts.Select(c => F(r.Scores.Single(s => s.Context == c).BitsPerByte, 3)
                                                                   + (c == longest ? $" ± {F(last.StandardError, 3)}" : "")))
                          + $" | {F(last.LateBitsPerByte, 3)} | {F(100 * last.Top1Agreement, 1)} % | {F(last.KvBytesPerToken, 0)} |");
        }
        sb.AppendLine();
        sb.AppendLine($"± is the standard error across the windows at {Label(longest)}: it measures how much the choice of text moves a model's number; "
                      + "every model reads the same windows, so differences between rows vary much less than that.");
        sb.AppendLine();
        sb.AppendLine($"![bits per byte at {Label(longest)} against KV-cache bytes per token]({svgName})");
        sb.AppendLine();
        sb.AppendLine($"**Retrieval probe** ({results[0].Probe.Probes} texts of {Label(results[0].Probe.Context)} bytes; a random 8-character value planted at byte 32 "
                      + "and asked for at the end; chance is 1/36 per byte, log2 36 = 5.17 bits):");
        sb.AppendLine();
        sb.AppendLine("| model | value bytes right | bits per value byte |");
        sb.AppendLine("| --- | ---: | ---: |");
        foreach (var r in results)
            sb.AppendLine($"| {r.Variant.Name} | {F(100 * r.Probe.ValueAccuracy, 1)} % | {F(r.Probe.ValueBitsPerByte, 2)} |");
        return sb.ToString();
    }

    public static string Json(IReadOnlyList<VariantResult> results, object run) =>
        JsonSerializer.Serialize(new
        {
            run,
            variants = results.Select(r => new
            {
                r.Variant.Name, r.Variant.Kind, r.Variant.Layout, r.Variant.Detail,
                scores = r.Scores, probe = r.Probe,
            }),
        }, new JsonSerializerOptions { WriteIndented = true });

    /// <summary>Scatter of bits per byte at the longest context against KV bytes per token, one labelled point per variant.</summary>
    /// <summary>Quality against KV bytes per token at <paramref name="context"/>, one marker per variant, as SVG.</summary>
    public static string Svg(IReadOnlyList<VariantResult> results, int context)
    {
        var plot = Plots.New($"bits per byte against KV bytes per token at {Label(context)}",
            $"KV-cache KiB per token at {Label(context)} (measured)", $"bits per byte at {Label(context)} (lower is better)");
        var colours = new Dictionary<string, string> { ["dense"] = "#000000", ["retrofit"] = "#1f77b4", ["kv_sharing"] = "#9467bd", ["native"] = "#d62728", ["swa"] = "#2ca02c" };
        foreach (var r in results)
        {
            var score = r.Scores.Single(s => s.Context == context);
            var marker = plot.Add.Marker(score.KvBytesPerToken / 1024.0, score.BitsPerByte, ScottPlot.MarkerShape.FilledCircle, 9,
                ScottPlot.Color.FromHex(colours.GetValueOrDefault(r.Variant.Kind, "#808080")));
            marker.LegendText = $"{r.Variant.Name} ({score.BitsPerByte:F3})";
        }
        plot.Axes.SetLimitsX(0, results.Max(r => r.Scores.Single(s => s.Context == context).KvBytesPerToken) / 1024.0 * 1.1);
        return Plots.Svg(plot, 760, 440);
    }

    public static string Label(int context) => context % 1024 == 0 ? $"{context / 1024}k" : context.ToString(Inv);

    private static string F(double v, int digits) => v.ToString("F" + digits, Inv);
}

/// <summary>The loss curve of one trained model (models/train writes it as <c>kind.loss.jsonl</c>).</summary>
/// <param name="Kind">dense, hysparse or swa.</param>
/// <param name="Points">(step, bytes seen, seconds, training bits per byte, validation bits per byte or NaN) per logged step.</param>
public sealed record TrainingCurve(string Kind, IReadOnlyList<(int Step, long Tokens, double Seconds, int Sequence, double TrainBpb, double ValidationBpb)> Points)
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
            return (r.GetProperty("step").GetInt32(), r.GetProperty("tokens").GetInt64(), r.GetProperty("seconds").GetDouble(),
                r.GetProperty("seq").GetInt32(), r.GetProperty("train_bpb").GetDouble(),
                r.TryGetProperty("validation_bpb", out var v) ? v.GetDouble() : double.NaN);
        }).ToList();
        return new TrainingCurve(kind, points);
    }
}

/// <summary>Training summary table and loss-curve plot.</summary>
public static class TrainingReport
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static string Markdown(IReadOnlyList<TrainingCurve> curves, string svgName)
    {
        var sb = new StringBuilder();
        sb.AppendLine("| model | steps | bytes seen | wall time | last training bits/byte | validation bits/byte at the end (train.py's 4 windows) |");
        sb.AppendLine("| --- | ---: | ---: | ---: | ---: | ---: |");
        foreach (var c in curves)
        {
            var last = c.Points[^1];
            var validation = c.Points.LastOrDefault(p => !double.IsNaN(p.ValidationBpb));
            sb.AppendLine(Inv, $"| {c.Kind} | {last.Step} | {last.Tokens:N0} | {last.Seconds / 60:F0} min | {last.TrainBpb:F3} | {(double.IsNaN(validation.ValidationBpb) ? "—" : $"{validation.ValidationBpb:F3} @{validation.Sequence}")} |");
        }
        sb.AppendLine();
        sb.AppendLine($"![training bits per byte by step]({svgName})");
        return sb.ToString();
    }

    /// <summary>Training bits per byte by step, one line per model, as SVG.</summary>
    public static string Svg(IReadOnlyList<TrainingCurve> curves)
    {
        var plot = Plots.New("training loss", "training step", "training bits per byte");
        var colours = new Dictionary<string, string> { ["dense"] = "#000000", ["hysparse"] = "#d62728", ["swa"] = "#2ca02c" };
        foreach (var c in curves)
        {
            var line = plot.Add.ScatterLine(c.Points.Select(p => (double)p.Step).ToArray(), c.Points.Select(p => p.TrainBpb).ToArray(),
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
