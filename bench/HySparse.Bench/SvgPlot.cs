using System.Globalization;
using System.Security;
using System.Text;
using HySparse.Onnx;

namespace HySparse.Bench;

/// <summary>
/// Draws decode time per token against context length, one panel per (shape, type), as a plain SVG
/// (log–log axes, polylines, a shared legend): dense GroupQueryAttention in both cache conventions,
/// the HySparse ops, and the mean attention time per layer of a 1:3 hybrid (1 full + 3 sparse); and,
/// when the end-to-end benchmark ran, a panel of whole-model time per token: the dense decoder against
/// its retrofit and kv-sharing conversions.
/// </summary>
public static class SvgPlot
{
    private const int PanelWidth = 520, PanelHeight = 340, Columns = 2, LegendColumnWidth = 320;
    private const int Left = 64, Right = 16, Top = 34, Bottom = 46;

    private sealed record Series(string Label, string Color, string Dash, Func<IReadOnlyList<Measurement>, double?> Value);

    private static readonly Series[] AllSeries =
    [
        new("GQA, separate past/present (dense)", "#1f4e99", "", m => Pick(m, Labels.Gqa, Labels.Separate)),
        new("GQA, shared buffer (dense)", "#5b9bd5", "6 4", m => Pick(m, Labels.Gqa, Labels.SharedBuffer)),
        new("HySparseFullAttn (+ top-K indices)", "#c00000", "", m => Pick(m, HySparseOps.FullAttn, Labels.Concat)),
        new("HySparseFullAttn, shared buffer", "#c00000", "6 4", m => Pick(m, HySparseOps.FullAttn, Labels.SharedBuffer)),
        new("HySparseSparseAttn retrofit (own full cache)", "#ed7d31", "", m => Pick(m, HySparseOps.SparseAttn, Labels.Retrofit)),
        new("HySparseSparseAttn retrofit, shared buffer", "#ed7d31", "6 4", m => Pick(m, HySparseOps.SparseAttn, Labels.RetrofitInPlace)),
        new("HySparseSparseAttn shared-KV (window cache)", "#2e8b57", "", m => Pick(m, HySparseOps.SparseAttn, Labels.SharedKv)),
        new("hybrid 1:3 shared-KV, mean per layer", "#7030a0", "3 3",
            m => Pick(m, HySparseOps.FullAttn, Labels.Concat) is double f && Pick(m, HySparseOps.SparseAttn, Labels.SharedKv) is double s
                 ? (f + 3 * s) / 4 : null),
        new("hybrid 1:3 retrofit in place, mean per layer", "#7030a0", "1 3",
            m => Pick(m, HySparseOps.FullAttn, Labels.SharedBuffer) is double f && Pick(m, HySparseOps.SparseAttn, Labels.RetrofitInPlace) is double s
                 ? (f + 3 * s) / 4 : null),
        new("whole model: dense decoder", "#000000", "", m => Pick(m, EndToEndBench.Dense, EndToEndVariant)),
        new("whole model: hybrid 1:3 retrofit", "#b8860b", "", m => Pick(m, EndToEndBench.Retrofit, EndToEndVariant)),
        new("whole model: hybrid 1:3 kv-sharing", "#008b8b", "", m => Pick(m, EndToEndBench.KvSharing, EndToEndVariant)),
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
        var used = AllSeries.Where(s => panels.Any(p => Points(p.ToList(), s).Count > 0)).ToArray();
        int rows = (panels.Count + Columns - 1) / Columns;
        int width = PanelWidth * Math.Min(Columns, panels.Count);
        // Legend entries in as many columns of LegendColumnWidth as fit the width.
        int legendColumns = Math.Max(1, (width - 40) / LegendColumnWidth);
        int legendHeight = 42 + (used.Length + legendColumns - 1) / legendColumns * 22;
        int height = legendHeight + rows * PanelHeight;

        var svg = new StringBuilder();
        svg.AppendLine($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">");
        svg.AppendLine($"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>");
        svg.AppendLine($"<text x=\"{width / 2}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">Decode time per token vs context (log–log)</text>");
        for (int i = 0; i < used.Length; i++)
        {
            int x = 20 + (i % legendColumns) * (width - 40) / legendColumns, y = 42 + (i / legendColumns) * 22;
            svg.AppendLine($"<line x1=\"{x}\" y1=\"{y}\" x2=\"{x + 28}\" y2=\"{y}\" stroke=\"{used[i].Color}\" stroke-width=\"2.5\" stroke-dasharray=\"{used[i].Dash}\"/>");
            svg.AppendLine($"<text x=\"{x + 34}\" y=\"{y + 4}\">{Escape(used[i].Label)}</text>");
        }
        for (int p = 0; p < panels.Count; p++)
        {
            int ox = (p % Columns) * PanelWidth, oy = legendHeight + (p / Columns) * PanelHeight;
            var rowsOfPanel = panels[p].ToList();
            string scope = rowsOfPanel[0].Phase == EndToEndPhase ? "all layers" : "one attention layer";
            DrawPanel(svg, ox, oy, $"{panels[p].Key.Shape} {panels[p].Key.Type}: {scope}", rowsOfPanel, used);
        }
        svg.AppendLine("</svg>");
        return svg.ToString();
    }

    private static void DrawPanel(StringBuilder svg, int ox, int oy, string title, List<Measurement> rows, Series[] series)
    {
        var lines = series.Select(s => (s, pts: Points(rows, s))).Where(l => l.pts.Count > 0).ToList();
        var all = lines.SelectMany(l => l.pts).ToList();
        double xMin = Math.Log2(all.Min(p => p.T)), xMax = Math.Log2(all.Max(p => p.T));
        if (xMax - xMin < 1e-9) { xMin -= 0.5; xMax += 0.5; }
        double yMin = Math.Floor(Math.Log10(all.Min(p => p.Ms))), yMax = Math.Ceiling(Math.Log10(all.Max(p => p.Ms)));
        if (yMax <= yMin) yMax = yMin + 1;
        int plotW = PanelWidth - Left - Right, plotH = PanelHeight - Top - Bottom;
        double X(double t) => ox + Left + (Math.Log2(t) - xMin) / (xMax - xMin) * plotW;
        double Y(double ms) => oy + Top + (yMax - Math.Log10(ms)) / (yMax - yMin) * plotH;

        svg.AppendLine($"<text x=\"{ox + Left + plotW / 2}\" y=\"{oy + 18}\" text-anchor=\"middle\" font-weight=\"bold\">{Escape(title)}</text>");
        svg.AppendLine($"<rect x=\"{ox + Left}\" y=\"{oy + Top}\" width=\"{plotW}\" height=\"{plotH}\" fill=\"none\" stroke=\"#444\"/>");
        foreach (long t in all.Select(p => p.T).Distinct().Order())
        {
            string x = F(X(t));
            svg.AppendLine($"<line x1=\"{x}\" y1=\"{oy + Top}\" x2=\"{x}\" y2=\"{oy + Top + plotH}\" stroke=\"#ddd\"/>");
            svg.AppendLine($"<text x=\"{x}\" y=\"{oy + Top + plotH + 16}\" text-anchor=\"middle\">{(t >= 1024 && t % 1024 == 0 ? $"{t / 1024}k" : t.ToString(CultureInfo.InvariantCulture))}</text>");
        }
        for (double e = yMin; e <= yMax + 1e-9; e++)
        {
            double ms = Math.Pow(10, e);
            string y = F(Y(ms));
            svg.AppendLine($"<line x1=\"{ox + Left}\" y1=\"{y}\" x2=\"{ox + Left + plotW}\" y2=\"{y}\" stroke=\"#ddd\"/>");
            svg.AppendLine($"<text x=\"{ox + Left - 6}\" y=\"{y}\" text-anchor=\"end\" dominant-baseline=\"middle\">{ms.ToString("G4", CultureInfo.InvariantCulture)}</text>");
        }
        svg.AppendLine($"<text x=\"{ox + Left + plotW / 2}\" y=\"{oy + PanelHeight - 10}\" text-anchor=\"middle\">context T (tokens)</text>");
        svg.AppendLine($"<text transform=\"translate({ox + 16},{oy + Top + plotH / 2}) rotate(-90)\" text-anchor=\"middle\">ms per decoded token</text>");
        foreach (var (s, pts) in lines)
        {
            string coords = string.Join(" ", pts.Select(p => $"{F(X(p.T))},{F(Y(p.Ms))}"));
            svg.AppendLine($"<polyline points=\"{coords}\" fill=\"none\" stroke=\"{s.Color}\" stroke-width=\"2\" stroke-dasharray=\"{s.Dash}\"/>");
            foreach (var p in pts) svg.AppendLine($"<circle cx=\"{F(X(p.T))}\" cy=\"{F(Y(p.Ms))}\" r=\"2.5\" fill=\"{s.Color}\"/>");
        }
    }

    private static List<(long T, double Ms)> Points(List<Measurement> rows, Series s) =>
        rows.GroupBy(r => r.Length).OrderBy(g => g.Key)
            .Select(g => (T: g.Key, Ms: s.Value(g.ToList())))
            .Where(p => p.Ms is > 0)
            .Select(p => (p.T, p.Ms!.Value)).ToList();

    private static double? Pick(IReadOnlyList<Measurement> rows, string op, string variant) =>
        rows.FirstOrDefault(r => r.Op == op && r.Variant == variant && !double.IsNaN(r.MedianMs))?.MedianMs;

    private static string F(double v) => v.ToString("F1", CultureInfo.InvariantCulture);

    private static string Escape(string s) => SecurityElement.Escape(s);
}
