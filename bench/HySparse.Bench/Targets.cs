using HySparse.Onnx;

namespace HySparse.Bench;

/// <summary>One of issue 5's targets evaluated on one (shape, type, length) of this run.</summary>
/// <param name="Target">The target as the issue states it.</param>
/// <param name="Case">Shape, type and length it was checked at.</param>
/// <param name="Measured">The measured quantity, with its reference.</param>
/// <param name="Met">True when met, false when missed, null when not measurable in this run.</param>
public sealed record TargetCheck(string Target, string Case, string Measured, bool? Met);

/// <summary>Evaluates the issue's performance targets on a run's measurements.</summary>
public static class Targets
{
    /// <summary>Every check the measurements allow; a target with nothing to check at is listed as not measured.</summary>
    public static IReadOnlyList<TargetCheck> Evaluate(IReadOnlyList<Measurement> results, EndToEndReport? endToEnd = null)
    {
        var checks = new List<TargetCheck>();
        var groups = results.Where(r => !double.IsNaN(r.MedianMs)).GroupBy(r => (r.Phase, r.Shape, r.Type, r.Length)).ToList();

        Ratio(checks, "HySparseFullAttn prefill ≤ 1.25× GQA at S = 2048", groups, "prefill", 2048, 1.25,
              HySparseOps.FullAttn, Labels.NoPast, Labels.NoPast);
        Ratio(checks, "HySparseFullAttn decode ≤ 1.3× GQA at T = 16k (same convention: both copy the cache)", groups, "decode", 16384, 1.3,
              HySparseOps.FullAttn, Labels.Concat, Labels.Separate);
        Ratio(checks, "HySparseFullAttn decode ≤ 1.3× GQA at T = 16k (GQA with its in-place shared buffer)", groups, "decode", 16384, 1.3,
              HySparseOps.FullAttn, Labels.Concat, Labels.SharedBuffer);
        Ratio(checks, "HySparseFullAttn decode ≤ 1.3× GQA at T = 16k (both with the in-place shared buffer)", groups, "decode", 16384, 1.3,
              HySparseOps.FullAttn, Labels.SharedBuffer, Labels.SharedBuffer);
        Ratio(checks, "HySparseSparseAttn decode ≤ 1/8 GQA at T = 16k (retrofit vs GQA separate)", groups, "decode", 16384, 0.125,
              HySparseOps.SparseAttn, Labels.Retrofit, Labels.Separate);
        Ratio(checks, "HySparseSparseAttn decode ≤ 1/8 GQA at T = 16k (retrofit in place vs GQA shared buffer)", groups, "decode", 16384, 0.125,
              HySparseOps.SparseAttn, Labels.RetrofitInPlace, Labels.SharedBuffer);
        Ratio(checks, "HySparseSparseAttn decode ≤ 1/8 GQA at T = 16k (shared-KV vs GQA shared buffer)", groups, "decode", 16384, 0.125,
              HySparseOps.SparseAttn, Labels.SharedKv, Labels.SharedBuffer);

        foreach (var variant in new[] { Labels.Retrofit, Labels.RetrofitInPlace, Labels.SharedKv })
        {
            const string target = "HySparseSparseAttn decode at T = 32k within 2× of its bandwidth floor";
            var rows = results.Where(r => r.Phase == "decode" && r.Length == 32768 && r.Op == HySparseOps.SparseAttn && r.Variant == variant && !double.IsNaN(r.MedianMs)).ToList();
            if (rows.Count == 0) checks.Add(new TargetCheck(target, $"{variant}", "not measured in this run", null));
            foreach (var r in rows)
            {
                checks.Add(new TargetCheck(target, $"{r.Shape} {r.Type} T {r.Length}, {variant}",
                    $"{r.MedianMs:F3} ms = {r.TimesFloor:F2}× floor {r.FloorMs:F3} ms ({r.FloorBound})", r.TimesFloor <= 2.0));
            }
        }

        const string wholeModel = "Hybrid 1:3 retrofit decode ≥ 2× dense tokens/s at 8k context";
        var at8k = endToEnd?.Results.FirstOrDefault(r => r.Context == 8192 && r.Mode == EndToEndBench.Retrofit);
        checks.Add(at8k is null
            ? new TargetCheck(wholeModel, "whole model", "not measured in this run (needs the end-to-end benchmark at T = 8192)", null)
            : new TargetCheck(wholeModel, $"{endToEnd!.Model}, T 8192",
                $"{at8k.TokensPerSecond:F1} tokens/s vs dense {at8k.TokensPerSecond / at8k.SpeedupVsDense:F1} = {at8k.SpeedupVsDense:F2}×", at8k.SpeedupVsDense >= 2));

        // float16 must never be slower than float32 on the same op, variant, shape and length (our ops;
        // GroupQueryAttention's float16 CPU path is ONNX Runtime's business and shown in the tables only).
        var byKey = results.Where(r => r.Op != Labels.Gqa && !double.IsNaN(r.MedianMs)).GroupBy(r => (r.Phase, r.Shape, r.Length, r.Op, r.Variant));
        foreach (var g in byKey)
        {
            var f32 = g.FirstOrDefault(r => r.Type == "f32");
            var f16 = g.FirstOrDefault(r => r.Type == "f16");
            if (f32 is null || f16 is null) continue;
            checks.Add(new TargetCheck("float16 never slower than float32 at the same shape",
                $"{g.Key.Phase} {g.Key.Shape} {(g.Key.Phase == "prefill" ? "S" : "T")} {g.Key.Length}, {g.Key.Op} ({g.Key.Variant})",
                $"f16 {f16.MedianMs:F3} ms / f32 {f32.MedianMs:F3} ms = {f16.MedianMs / f32.MedianMs:F2}", f16.MedianMs <= f32.MedianMs));
        }
        return checks;
    }

    private static void Ratio(List<TargetCheck> checks, string target,
                              List<IGrouping<(string Phase, string Shape, string Type, long Length), Measurement>> groups,
                              string phase, long length, double limit, string op, string variant, string gqaVariant)
    {
        bool any = false;
        foreach (var g in groups.Where(g => g.Key.Phase == phase && g.Key.Length == length))
        {
            var ours = g.FirstOrDefault(r => r.Op == op && r.Variant == variant);
            var gqa = g.FirstOrDefault(r => r.Op == Labels.Gqa && r.Variant == gqaVariant);
            if (ours is null || gqa is null) continue;
            any = true;
            double ratio = ours.MedianMs / gqa.MedianMs;
            checks.Add(new TargetCheck(target, $"{g.Key.Shape} {g.Key.Type} {(phase == "prefill" ? "S" : "T")} {length}",
                $"{ours.MedianMs:F3} ms / GQA ({gqaVariant}) {gqa.MedianMs:F3} ms = {ratio:F3} (limit {limit:0.###})", ratio <= limit));
        }
        if (!any) checks.Add(new TargetCheck(target, $"{phase} at {length}", "not measured in this run", null));
    }
}
