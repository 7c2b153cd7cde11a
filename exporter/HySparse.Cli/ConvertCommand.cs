using System.Diagnostics;
using HySparse.Exporter;
using HySparse.Exporter.Layout;
using HySparse.Onnx;

namespace HySparse.Cli;

/// <summary><c>hysparse convert</c>: rewrite a dense decoder into a hybrid one.</summary>
internal static class ConvertCommand
{
    public static int Run(ArgumentReader reader, TextWriter stdout, TextWriter stderr)
    {
        var json = reader.Flag("--json");
        var quiet = reader.Flag("--quiet", "-q");
        var overwrite = reader.Flag("--overwrite");
        var output = reader.Option("--output", "-o");
        var options = SharedOptions.ReadConversion(reader);
        var input = SharedOptions.ModelPath(reader, "convert");
        output ??= DefaultOutput(input);

        var clock = Stopwatch.StartNew();
        Action<string>? progress = json || quiet ? null : step => stderr.WriteLine($"[{clock.Elapsed.TotalSeconds,6:0.00} s] {step}");
        var report = HybridConverter.ConvertFile(input, output, options, overwrite, progress);
        progress?.Invoke("done");

        if (json)
        {
            CliApp.WriteJson(stdout, new
            {
                ok = true,
                input,
                output,
                sourceAttention = report.Style,
                layout = report.Layout.Pattern,
                fullLayers = report.Layout.FullLayers,
                parameters = new { mode = report.Parameters.Mode, topK = report.Parameters.TopK, blockSize = report.Parameters.BlockSize, window = report.Parameters.Window, combine = "union" },
                interfaceChanges = "none",
                layers = report.Layers,
                metadata = report.Metadata,
            });
            return ExitCodes.Success;
        }

        var p = report.Parameters;
        stdout.WriteLine($"Converted {input} -> {output}");
        stdout.WriteLine($"  attention  {report.Style.ToString().ToLowerInvariant()}, {report.Layers.Count} layers");
        stdout.WriteLine($"  layout     {report.Layout.Pattern}  ({options.Layout.Description}{(options.Layout.SparseLast ? "" : ", last layer full")}; full layers {string.Join(",", report.Layout.FullLayers)})");
        stdout.WriteLine($"  sparse     top-k {p.TopK} blocks x block size {p.BlockSize} + window {p.Window} = at most {p.SparseReach} keys per token per sparse layer");
        stdout.WriteLine("  mode       retrofit: every layer keeps its own KV cache; sparse layers take one softmax over selected blocks ∪ window");
        stdout.WriteLine("             model inputs and outputs are unchanged (same names, shapes and types)");
        stdout.WriteLine();
        stdout.WriteLine("  layer  kind    selection from  node");
        foreach (var layer in report.Layers)
        {
            var from = layer.OracleLayer is { } oracle ? $"layer {oracle}" : "-";
            stdout.WriteLine($"  {layer.Index,5}  {(layer.Kind == LayerKind.Full ? "full" : "sparse"),-6}  {from,-14}  {layer.Node}");
        }
        return ExitCodes.Success;
    }

    /// <summary><c>model.onnx</c> → <c>model.hysparse.onnx</c> beside it.</summary>
    private static string DefaultOutput(string input)
    {
        var directory = Path.GetDirectoryName(input) ?? "";
        var stem = Path.GetFileNameWithoutExtension(input);
        return Path.Combine(directory, $"{stem}.hysparse.onnx");
    }
}
