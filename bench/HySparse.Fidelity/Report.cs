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
    public static string Svg(IReadOnlyList<VariantResult> results, int context)
    {
        const double width = 760, height = 440, left = 70, right = 250, top = 30, bottom = 50;
        var points = results.Select(r => (r.Variant, Score: r.Scores.Single(s => s.Context == context))).ToList();
        var xs = points.Select(p => p.Score.KvBytesPerToken).ToList();
        var ys = points.Select(p => p.Score.BitsPerByte).ToList();
        double xMin = 0, xMax = xs.Max() * 1.1;
        double yMin = ys.Min() - 0.05 * (ys.Max() - ys.Min() + 0.1), yMax = ys.Max() + 0.05 * (ys.Max() - ys.Min() + 0.1);
        double X(double v) => left + (v - xMin) / (xMax - xMin) * (width - left - right);
        double Y(double v) => height - bottom - (v - yMin) / (yMax - yMin) * (height - top - bottom);
        var sb = new StringBuilder();
        Report.Frame(sb, width, height, left, right, top, bottom);
        for (var i = 0; i <= 4; i++)
        {
            var xv = xMin + (xMax - xMin) * i / 4;
            var yv = yMin + (yMax - yMin) * i / 4;
            sb.AppendLine(Inv, $"<text x=\"{X(xv):F1}\" y=\"{height - bottom + 16}\" text-anchor=\"middle\">{xv / 1024:F1} KiB</text>");
            sb.AppendLine(Inv, $"<text x=\"{left - 6}\" y=\"{Y(yv) + 4:F1}\" text-anchor=\"end\">{yv:F2}</text>");
        }
        sb.AppendLine(Inv, $"<text x=\"{(left + width - right) / 2}\" y=\"{height - 12}\" text-anchor=\"middle\">KV-cache bytes per token at {Label(context)} (measured)</text>");
        sb.AppendLine(Inv, $"<text x=\"16\" y=\"{(top + height - bottom) / 2}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {(top + height - bottom) / 2})\">bits per byte at {Label(context)} (lower is better)</text>");
        var colours = new Dictionary<string, string> { ["dense"] = "black", ["retrofit"] = "#1f77b4", ["kv_sharing"] = "#9467bd", ["native"] = "#d62728", ["swa"] = "#2ca02c" };
        var legendY = top;
        foreach (var (variant, score) in points)
        {
            var colour = colours.GetValueOrDefault(variant.Kind, "gray");
            sb.AppendLine(Inv, $"<circle cx=\"{X(score.KvBytesPerToken):F1}\" cy=\"{Y(score.BitsPerByte):F1}\" r=\"5\" fill=\"{colour}\"><title>{variant.Name}: {score.BitsPerByte:F3}</title></circle>");
            sb.AppendLine(Inv, $"<circle cx=\"{width - right + 20}\" cy=\"{legendY}\" r=\"5\" fill=\"{colour}\"/>");
            sb.AppendLine(Inv, $"<text x=\"{width - right + 30}\" y=\"{legendY + 4}\">{Escape(variant.Name)} ({score.BitsPerByte:F3})</text>");
            legendY += 18;
        }
        sb.AppendLine("</svg>");
        return sb.ToString();
    }

    /// <summary>Opens an SVG of the given size on a white background and draws the two axes of the plot area.</summary>
    internal static void Frame(StringBuilder sb, double width, double height, double left, double right, double top, double bottom)
    {
        sb.AppendLine(Inv, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">");
        sb.AppendLine("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        sb.AppendLine(Inv, $"<line x1=\"{left}\" y1=\"{height - bottom}\" x2=\"{width - right}\" y2=\"{height - bottom}\" stroke=\"black\"/>");
        sb.AppendLine(Inv, $"<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{height - bottom}\" stroke=\"black\"/>");
    }

    private static string Escape(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;");

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

    public static string Svg(IReadOnlyList<TrainingCurve> curves)
    {
        const double width = 640, height = 360, left = 60, right = 120, top = 20, bottom = 45;
        var maxStep = curves.Max(c => c.Points[^1].Step);
        var yMax = Math.Ceiling(curves.Max(c => c.Points.Max(p => p.TrainBpb)));
        var yMin = Math.Floor(curves.Min(c => c.Points.Min(p => p.TrainBpb)));
        double X(double v) => left + v / maxStep * (width - left - right);
        double Y(double v) => height - bottom - (v - yMin) / (yMax - yMin) * (height - top - bottom);
        var colours = new Dictionary<string, string> { ["dense"] = "black", ["hysparse"] = "#d62728", ["swa"] = "#2ca02c" };
        var sb = new StringBuilder();
        Report.Frame(sb, width, height, left, right, top, bottom);
        for (var i = 0; i <= 4; i++)
        {
            sb.AppendLine(Inv, $"<text x=\"{X(maxStep * i / 4.0):F1}\" y=\"{height - bottom + 16}\" text-anchor=\"middle\">{maxStep * i / 4}</text>");
            var yv = yMin + (yMax - yMin) * i / 4;
            sb.AppendLine(Inv, $"<text x=\"{left - 6}\" y=\"{Y(yv) + 4:F1}\" text-anchor=\"end\">{yv:F1}</text>");
        }
        sb.AppendLine(Inv, $"<text x=\"{(left + width - right) / 2}\" y=\"{height - 10}\" text-anchor=\"middle\">training step</text>");
        sb.AppendLine(Inv, $"<text x=\"14\" y=\"{(top + height - bottom) / 2}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {(top + height - bottom) / 2})\">training bits per byte</text>");
        var legendY = top + 10;
        foreach (var c in curves)
        {
            var colour = colours.GetValueOrDefault(c.Kind, "gray");
            var path = string.Join(" ", c.Points.Select((p, i) => string.Create(Inv, $"{(i == 0 ? 'M' : 'L')}{X(p.Step):F1},{Y(p.TrainBpb):F1}")));
            sb.AppendLine(Inv, $"<path d=\"{path}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"/>");
            sb.AppendLine(Inv, $"<line x1=\"{width - right + 10}\" y1=\"{legendY}\" x2=\"{width - right + 30}\" y2=\"{legendY}\" stroke=\"{colour}\" stroke-width=\"2\"/>");
            sb.AppendLine(Inv, $"<text x=\"{width - right + 35}\" y=\"{legendY + 4}\">{c.Kind}</text>");
            legendY += 18;
        }
        sb.AppendLine("</svg>");
        return sb.ToString();
    }
}
