using HySparse.Exporter;

namespace HySparse.Cli;

/// <summary><c>hysparse inspect</c>: attention layers found and KV figures dense vs hybrid.</summary>
internal static class InspectCommand
{
    private static readonly long[] DefaultContexts = [4096, 32768];

    public static int Run(ArgumentReader reader, TextWriter stdout)
    {
        var json = reader.Flag("--json");
        var contexts = reader.PositiveIntList("--context", "--contexts") ?? DefaultContexts;
        var options = SharedOptions.ReadConversion(reader);
        var path = SharedOptions.ModelPath(reader, "inspect");
        var report = ModelInspector.Inspect(ModelFile.Load(path), options, contexts);

        if (json)
        {
            CliApp.WriteJson(stdout, new
            {
                ok = true,
                model = path,
                converted = report.Converted,
                sourceAttention = report.SourceStyle,
                layers = report.Layers.Select(l => new { l.Index, l.CacheIndex, l.Node, l.Kind, l.NumHeads, l.KvNumHeads, l.HeadSize, cacheType = SharedOptions.TypeName(l.CacheType), l.BytesPerToken }),
                unconvertible = report.Failures,
                layout = report.Layout?.Pattern,
                parameters = new { topK = report.Parameters.TopK, blockSize = report.Parameters.BlockSize, window = report.Parameters.Window },
                kv = report.Kv,
                metadata = report.Metadata,
            });
            return ExitCodes.Success;
        }

        var layers = report.Layers;
        stdout.WriteLine($"{path}: {layers.Count} attention layer(s), {(report.Converted ? $"converted (HySparse, source attention {report.SourceStyle ?? "unknown"})" : $"attention style {report.SourceStyle ?? "unrecognised"}")}");
        var shapes = layers.Select(l => (l.NumHeads, l.KvNumHeads, l.HeadSize, l.CacheType)).Distinct().ToList();
        if (shapes.Count == 1)
        {
            var (hq, hkv, d, type) = shapes[0];
            stdout.WriteLine($"  heads      {hq} query, {hkv} key/value (GQA group {(hkv > 0 ? hq / hkv : 0)}), head size {d}, cache {SharedOptions.TypeName(type)}");
        }
        if (layers.Count > 0)
        {
            stdout.WriteLine($"  KV cache   {SharedOptions.Bytes(layers.Sum(l => l.BytesPerToken))} per token (dense)");
            stdout.WriteLine();
            stdout.WriteLine("  layer  kind    heads q/kv/d  node");
            foreach (var l in layers) stdout.WriteLine($"  {l.Index,5}  {l.Kind,-6}  {$"{l.NumHeads}/{l.KvNumHeads}/{l.HeadSize}",-12}  {l.Node}");
        }
        if (report.Failures.Count > 0)
        {
            stdout.WriteLine();
            stdout.WriteLine($"  {report.Failures.Count} attention layer(s) cannot be converted:");
            foreach (var failure in report.Failures) stdout.WriteLine($"    {failure.Node}: {failure.Reason}");
        }
        if (report.Layout is { } layout)
        {
            var p = report.Parameters;
            stdout.WriteLine();
            stdout.WriteLine($"  {(report.Converted ? "hybrid layout" : "with layout")} {layout.Pattern}, top-k {p.TopK}, block size {p.BlockSize}, window {p.Window} (sparse layers read at most {p.SparseReach} keys per token)");
            stdout.WriteLine("  context   KV cache: dense / retrofit / kv-sharing*     KV read per decoded token: dense / hybrid");
            foreach (var kv in report.Kv)
            {
                stdout.WriteLine($"  {kv.Context,7}   {SharedOptions.Bytes(kv.DenseCache),10} / {SharedOptions.Bytes(kv.RetrofitCache),10} / {SharedOptions.Bytes(kv.KvSharingCache),10}     {SharedOptions.Bytes(kv.DenseDecodeRead),10} / {SharedOptions.Bytes(kv.HybridDecodeRead),10} ({(double)kv.DenseDecodeRead / kv.HybridDecodeRead:0.0}x less)");
            }
            stdout.WriteLine("  * kv-sharing: sparse layers keep only a window cache and read the full layer's KV (not yet offered by convert).");
        }
        return ExitCodes.Success;
    }
}
