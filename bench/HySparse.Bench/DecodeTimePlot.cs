using System.Globalization;
using System.Text;
using HySparse.Onnx;

namespace HySparse.Bench;

/// <summary>
/// Draws decode time per token against context length, one ScottPlot panel per (shape, type), stacked
/// in one SVG (log–log axes, a legend per panel): dense GroupQueryAttention in both cache conventions,
/// the HySparse ops, and the mean attention time per layer of a 1:3 hybrid (1 full + 3 sparse); and,
/// when the end-to-end benchmark ran, a panel of whole-model time per token: the dense decoder against
/// its retrofit and kv-sharing conversions.
/// </summary>
public static class DecodeTimePlot
{
    private const int PanelWidth = 900, PanelHeight = 380;

    private sealed record Series(string Label, string Color, ScottPlot.LinePattern Dash, Func<IReadOnlyList<Measurement>, double?> Value);

    private static readonly ScottPlot.LinePattern Solid = ScottPlot.LinePattern.Solid, Dashed = ScottPlot.LinePattern.Dashed,
        Dotted = ScottPlot.LinePattern.Dotted, DenselyDashed = ScottPlot.LinePattern.DenselyDashed;

    private static readonly Series[] AllSeries =
    [
        new("GQA, separate past/present (dense)", "#1f4e99", Solid, m => Pick(m, Labels.Gqa, Labels.Separate)),
        new("GQA, shared buffer (dense)", "#5b9bd5", Dashed, m => Pick(m, Labels.Gqa, Labels.SharedBuffer)),
        new("HySparseFullAttn (+ top-K indices)", "#c00000", Solid, m => Pick(m, HySparseOps.FullAttn, Labels.Concat)),
        new("HySparseFullAttn, shared buffer", "#c00000", Dashed, m => Pick(m, HySparseOps.FullAttn, Labels.SharedBuffer)),
        new("HySparseSparseAttn retrofit (own full cache)", "#ed7d31", Solid, m => Pick(m, HySparseOps.SparseAttn, Labels.Retrofit)),
        new("HySparseSparseAttn retrofit, shared buffer", "#ed7d31", Dashed, m => Pick(m, HySparseOps.SparseAttn, Labels.RetrofitInPlace)),
        new("HySparseSparseAttn shared-KV (window cache)", "#2e8b57", Solid, m => Pick(m, HySparseOps.SparseAttn, Labels.SharedKv)),
        new("hybrid 1:3 shared-KV, mean per layer", "#7030a0", DenselyDashed,
            m => Pick(m, HySparseOps.FullAttn, Labels.Concat) is double f && Pick(m, HySparseOps.SparseAttn, Labels.SharedKv) is double s
                 ? (f + 3 * s) / 4 : null),
        new("hybrid 1:3 retrofit in place, mean per layer", "#7030a0", Dotted,
            m => Pick(m, HySparseOps.FullAttn, Labels.SharedBuffer) is double f && Pick(m, HySparseOps.SparseAttn, Labels.RetrofitInPlace) is double s
                 ? (f + 3 * s) / 4 : null),
        new("whole model: dense decoder", "#000000", Solid, m => Pick(m, EndToEndBench.Dense, EndToEndVariant)),
        new("whole model: all-full conversion", "#7f7f7f", Solid, m => Pick(m, EndToEndBench.AllFull, EndToEndVariant)),
        new("whole model: hybrid 1:3 retrofit", "#b8860b", Solid, m => Pick(m, EndToEndBench.Retrofit, EndToEndVariant)),
        new("whole model: hybrid 1:3 kv-sharing", "#008b8b", Solid, m => Pick(m, EndToEndBench.KvSharing, EndToEndVariant)),
    ];

    private const string EndToEndPhase = "e2e", EndToEndVariant = "whole model";

    /// <summary>The SVG document, or null when the run has no decode measurements.</summary>
    public static string? Render(IReadOnlyList<Measurement> results, EndToEndReport? endToEnd = null)
    {
        // Whole-model points become rows of their own panel, so they share the panel drawing.
        var wholeModel = endToEnd?.Results.Select(r => new Measurement
        {
            Phase = EndToEndPhase, Shape = $"whole model {endToEnd.Model}", Type = "f32",
            Length = r.Context, Op = r.Mode, Variant = EndToEndVariant, MedianMs = r.MedianMs,
        }) ?? [];
        var panels = results.Where(r => r.Phase == "decode").Concat(wholeModel).Where(r => !double.IsNaN(r.MedianMs))
                            .GroupBy(r => (r.Shape, r.Type)).ToList();
        if (panels.Count == 0) return null;

        // One ScottPlot plot per panel, stacked in one document as nested SVGs.
        var svg = new StringBuilder();
        svg.AppendLine(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{PanelWidth}\" height=\"{panels.Count * PanelHeight}\">");
        for (int p = 0; p < panels.Count; p++)
        {
            var rows = panels[p].ToList();
            string scope = rows[0].Phase == EndToEndPhase ? "all layers" : "one attention layer";
            var panel = Panel($"{panels[p].Key.Shape} {panels[p].Key.Type}: {scope} — decode time per token (log–log)", rows);
            svg.AppendLine(CultureInfo.InvariantCulture, $"<g transform=\"translate(0,{p * PanelHeight})\">");
            svg.AppendLine(WithoutProlog(panel.GetSvgXml(PanelWidth, PanelHeight)));
            svg.AppendLine("</g>");
        }
        svg.AppendLine("</svg>");
        return svg.ToString();
    }

    private static ScottPlot.Plot Panel(string title, List<Measurement> rows)
    {
        var plot = new ScottPlot.Plot();
        plot.Title(title, size: 14);
        plot.XLabel("context T (tokens)", size: 12);
        plot.YLabel("ms per decoded token", size: 12);
        plot.ShowLegend(ScottPlot.Edge.Right);
        // Log–log: the data are plotted as log₂ T and log₁₀ ms, and the ticks say T and ms.
        foreach (var series in AllSeries)
        {
            var points = Points(rows, series);
            if (points.Count == 0) continue;
            var line = plot.Add.Scatter(points.Select(q => Math.Log2(q.T)).ToArray(), points.Select(q => Math.Log10(q.Ms)).ToArray(),
                ScottPlot.Color.FromHex(series.Color));
            line.LinePattern = series.Dash;
            line.LineWidth = 2;
            line.MarkerSize = 5;
            line.LegendText = series.Label;
        }
        var contexts = new ScottPlot.TickGenerators.NumericManual();
        foreach (long t in rows.Select(r => r.Length).Distinct().Order())
            contexts.AddMajor(Math.Log2(t), t >= 1024 && t % 1024 == 0 ? $"{t / 1024}k" : t.ToString(CultureInfo.InvariantCulture));
        plot.Axes.Bottom.TickGenerator = contexts;
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic
        {
            LabelFormatter = y => Math.Pow(10, y).ToString("G3", CultureInfo.InvariantCulture),
            MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
            IntegerTicksOnly = true,
        };
        return plot;
    }

    private static string WithoutProlog(string svg) =>
        svg.StartsWith("<?xml", StringComparison.Ordinal) ? svg[(svg.IndexOf("?>", StringComparison.Ordinal) + 2)..] : svg;

    private static List<(long T, double Ms)> Points(List<Measurement> rows, Series s) =>
        rows.GroupBy(r => r.Length).OrderBy(g => g.Key)
            .Select(g => (T: g.Key, Ms: s.Value(g.ToList())))
            .Where(p => p.Ms is > 0)
            .Select(p => (p.T, p.Ms!.Value)).ToList();

    private static double? Pick(IReadOnlyList<Measurement> rows, string op, string variant) =>
        rows.FirstOrDefault(r => r.Op == op && r.Variant == variant && !double.IsNaN(r.MedianMs))?.MedianMs;

}
