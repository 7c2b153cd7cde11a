using System.CommandLine;
using HySparse.Onnx;
using HySparse.Exporter;
using HySparse.Models.Native;

namespace HySparse.Cli;

/// <summary><c>hysparse inspect</c>: attention layers found and KV figures dense vs hybrid.</summary>
internal sealed class InspectCommand : Verb
{
    /// <summary>Contexts the KV figures of inspect and convert are shown at unless --context says otherwise.</summary>
    public static readonly long[] DefaultContexts = [4096, 32768];

    private readonly Argument<string> _model = SharedOptions.Model("model", "the ONNX model file, or an onnxruntime-genai model folder (its decoder is inspected)");
    private readonly Option<long[]> _contexts = SharedOptions.Contexts("context lengths");
    private readonly Option<bool> _json = SharedOptions.Json("print the report as JSON on stdout");
    private readonly LayoutOptions _layout = new(new HybridParameters());

    public InspectCommand() : base("inspect", "attention layers, heads and KV bytes, dense against a hybrid layout")
    {
        Arguments.Add(_model);
        Options.Add(_contexts);
        Options.Add(_json);
        _layout.AddTo(this);
        Details = $"""
            Details:
              What the converter sees in a model. Lists the attention layers found (style, heads, head size,
              cache type) and any that cannot be converted with the reason. For a dense model it shows what
              the layout given (default 1:3) would do; for a converted model, the layout and mode it has and
              which caches are window caches (kv-sharing); for a HySparse-native model (hysparse.mode =
              native, trained with its sparse layers), its layout, K, B, w and window caches from its
              metadata. KV figures at each context T (* marks the model's or requested mode):
                KV cache           bytes the caches hold: dense and retrofit keep T tokens in every layer;
                                   kv-sharing keeps T in full layers and only the window in sparse layers
                KV read per token  bytes one decode step reads: T per full layer, at most
                                   min(T, K*B + w) per sparse layer
              A layer's cache costs 2 * kv_heads * head_size * element_bytes per token.

            {LayoutOptions.Notes}

            Examples:
              hysparse inspect llama.onnx
              hysparse inspect llama.onnx --ratio 1:7 --context 8k,32k,128k --json

            """;
    }

    public override string PositionalError(IReadOnlyList<string> given) => SharedOptions.OneModelError(Name, given);

    protected override int Run(ParseResult parse, TextWriter stdout, TextWriter stderr)
    {
        var json = parse.GetValue(_json);
        var contexts = parse.GetValue(_contexts)!;
        var options = _layout.Read(parse);
        var path = SharedOptions.ModelFile(parse.GetRequiredValue(_model));
        var report = ModelInspector.Inspect(ModelFile.Load(path), options, contexts);

        if (json)
        {
            CliApp.WriteJson(stdout, new
            {
                ok = true,
                model = path,
                converted = report.Converted,
                native = report.Native,
                sourceAttention = report.SourceStyle,
                layers = report.Layers.Select(l => new { l.Index, l.CacheIndex, l.Node, l.Kind, l.NumHeads, l.KvNumHeads, l.HeadSize, cacheType = SharedOptions.TypeName(l.CacheType), l.BytesPerToken, l.HasKvCache }),
                unconvertible = report.Failures,
                layout = report.Layout?.Letters,
                parameters = new { mode = report.Native ? report.Metadata.GetValueOrDefault(HybridMetadata.Mode, HybridMetadata.NativeMode) : report.Parameters.ModeName, topK = report.Parameters.TopK, blockSize = report.Parameters.BlockSize, window = report.Parameters.Window },
                windowCaches = report.WindowCaches,
                kv = report.Kv,
                metadata = report.Metadata,
            });
            return ExitCodes.Success;
        }

        var layers = report.Layers;
        var kind = report.Native ? NativeDescription(report.Metadata)
            : report.Converted ? $"converted (HySparse, source attention {report.SourceStyle ?? "unknown"})"
            : $"attention style {report.SourceStyle ?? "unrecognised"}";
        stdout.WriteLine($"{path}: {layers.Count} attention layer(s), {kind}");
        var shapes = layers.Select(l => (l.NumHeads, l.KvNumHeads, l.HeadSize, l.CacheType)).Distinct().ToList();
        if (shapes.Count == 1)
        {
            var (hq, hkv, d, type) = shapes[0];
            stdout.WriteLine($"  heads      {hq} query, {hkv} key/value (GQA group {(hkv > 0 ? hq / hkv : 0)}), head size {d}, cache {SharedOptions.TypeName(type)}");
        }
        if (layers.Count > 0)
        {
            stdout.WriteLine(layers.Any(l => l.HasKvCache)
                ? $"  KV cache   {SharedOptions.Bytes(layers.Sum(l => l.BytesPerToken))} per token (dense)"
                : $"  KV cache   none: this export has no past/present caches (prefill only); the figures below are what a cache would hold, {SharedOptions.Bytes(layers.Sum(l => l.BytesPerToken))} per token (dense)");
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
            stdout.WriteLine($"  {(report.Converted ? "hybrid layout" : "with layout")} {layout.Letters}, top-k {p.TopK}, block size {p.BlockSize}, window {p.Window} (sparse layers read at most {p.SparseReach} keys per token)");
            stdout.WriteLine($"  mode       {(!report.Native ? SharedOptions.ModeLine(report.Mode) : IsSlidingWindow(report.Metadata) ? SlidingWindowModeLine : NativeModeLine)}");
            if (report.WindowCaches.Count > 0)
                stdout.WriteLine($"  window caches (at most {p.Window} tokens each): {string.Join(", ", report.WindowCaches)}");
            stdout.WriteLine($"  context   KV cache: {(report.Converted ? "dense / retrofit / kv-sharing (* this model)" : "dense / retrofit / kv-sharing (* requested mode)")}     KV read per decoded token: dense / hybrid");
            foreach (var kv in report.Kv)
            {
                var retrofit = SharedOptions.Bytes(kv.RetrofitCache) + (report.Mode == HybridMode.Retrofit ? "*" : " ");
                var kvSharing = SharedOptions.Bytes(kv.KvSharingCache) + (report.Mode == HybridMode.KvSharing ? "*" : " ");
                stdout.WriteLine($"  {kv.Context,7}   {SharedOptions.Bytes(kv.DenseCache),10} / {retrofit,11} / {kvSharing,11}    {SharedOptions.Bytes(kv.DenseDecodeRead),10} / {SharedOptions.Bytes(kv.HybridDecodeRead),10} ({(double)kv.DenseDecodeRead / kv.HybridDecodeRead:0.0}x less)");
            }
            stdout.WriteLine("  retrofit keeps every layer's full cache; kv-sharing keeps full caches in full layers and only the window in sparse layers.");
        }
        return ExitCodes.Success;
    }

    private const string NativeModeLine =
        "native: trained as HySparse; sparse layers gate an SA branch over the full layer's cache and an SWA branch over a window cache of their own (KV kept as with kv-sharing)";

    private const string SlidingWindowModeLine =
        "sliding window: trained as a hybrid of full layers and sliding-window layers; the window layers select no blocks and keep window caches";

    private static bool IsSlidingWindow(IReadOnlyDictionary<string, string> metadata) =>
        metadata.GetValueOrDefault(HybridMetadata.Mode) == HybridMetadata.SlidingWindowMode;

    /// <summary>The header of a native model: what it is, and its gate and sinks when the metadata says.</summary>
    private static string NativeDescription(IReadOnlyDictionary<string, string> metadata)
    {
        if (IsSlidingWindow(metadata))
            return $"sliding-window hybrid (window {metadata.GetValueOrDefault(HybridMetadata.Window, "?")}{(metadata.GetValueOrDefault(HybridMetadata.Sinks) == "1" ? ", sinks" : "")}; no dense original)";
        var details = new List<string> { $"combine {metadata.GetValueOrDefault(HybridMetadata.Combine, "gate")}" };
        if (metadata.TryGetValue(HybridMetadata.Gate, out var gate)) details.Add($"gates {gate.Replace('_', ' ')}");
        if (metadata.TryGetValue(HybridMetadata.Sinks, out var sinks)) details.Add(sinks == "1" ? "sinks" : "no sinks");
        return $"HySparse-native ({string.Join(", ", details)}; no dense original)";
    }
}
