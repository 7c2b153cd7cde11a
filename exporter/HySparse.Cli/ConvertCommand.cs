using System.Diagnostics;
using HySparse.Exporter;
using HySparse.Exporter.Folders;
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
        var contexts = reader.PositiveIntList("--context", "--contexts") ?? InspectCommand.DefaultContexts;
        var kvBuffer = reader.Flag("--kv-buffer");
        var options = SharedOptions.ReadConversion(reader) with { KvBuffer = kvBuffer };
        var input = SharedOptions.ModelPath(reader, "convert");
        var isFolder = GenAiModelFolder.IsModelFolder(input);
        output ??= isFolder ? Path.TrimEndingDirectorySeparator(input) + "-hysparse" : DefaultOutput(input);

        var clock = Stopwatch.StartNew();
        Action<string>? progress = json || quiet ? null : step => stderr.WriteLine($"[{clock.Elapsed.TotalSeconds,6:0.00} s] {step}");
        FolderConversionReport? folder = null;
        ConversionReport report;
        if (isFolder)
        {
            folder = ModelFolderConverter.Convert(input, output, options, overwrite, progress: progress);
            report = folder.Decoder;
        }
        else
        {
            report = HybridConverter.ConvertFile(input, output, options, overwrite, progress);
        }
        progress?.Invoke("done");
        var kv = report.KvAt(contexts);

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
                parameters = new { mode = report.Parameters.ModeName, topK = report.Parameters.TopK, blockSize = report.Parameters.BlockSize, window = report.Parameters.Window, combine = "union" },
                interfaceChanges = report.InterfaceChanges,
                windowCaches = report.WindowCaches,
                kv,
                layers = report.Layers,
                metadata = report.Metadata,
                genai = folder is null ? null : new { copiedFiles = folder.CopiedFiles, configChanges = folder.ConfigChanges },
            });
            return ExitCodes.Success;
        }

        var p = report.Parameters;
        stdout.WriteLine($"Converted {input} -> {output}");
        if (folder is not null)
        {
            stdout.WriteLine($"  genai      model folder: decoder {folder.DecoderFile} converted, {folder.CopiedFiles.Count} other file(s) copied, {HySparseNativeLibrary.FileName} added");
            foreach (var change in folder.ConfigChanges) stdout.WriteLine($"             {GenAiModelFolder.ConfigFileName}: {change}");
        }
        stdout.WriteLine($"  attention  {report.Style.ToString().ToLowerInvariant()}, {report.Layers.Count} layers");
        stdout.WriteLine($"  layout     {report.Layout.Pattern}  ({options.Layout.Description}{(options.Layout.SparseLast ? "" : ", last layer full")}; full layers {string.Join(",", report.Layout.FullLayers)})");
        stdout.WriteLine($"  sparse     top-k {p.TopK} blocks x block size {p.BlockSize} + window {p.Window} = at most {p.SparseReach} keys per token per sparse layer");
        stdout.WriteLine($"  mode       {SharedOptions.ModeLine(p.Mode)}");
        if (report.WindowCaches.Count == 0)
        {
            stdout.WriteLine(report.InterfaceChanges == "none"
                ? "             model inputs and outputs are unchanged (same names, shapes and types)"
                : $"             model interface changed: {report.InterfaceChanges}");
        }
        else
        {
            // The interface changed: whoever feeds the model must know which caches stay short.
            if (report.BuffersConcatenated)
                stdout.WriteLine("             model interface changed: the shared KV buffers become concatenated caches (past = the tokens so far, present = past ++ new; onnxruntime-genai: past_present_share_buffer = false)");
            stdout.WriteLine($"             model interface changed: {report.WindowCaches.Count} cache inputs/outputs keep their names but become window caches");
            stdout.WriteLine($"             (past: last min({p.Window}, T-S) tokens, length dim '{HybridMetadata.PastWindowDim}' (dim 2; dim 3 of a combined past_N); present: last min({p.Window}, T), '{HybridMetadata.PresentWindowDim}'; start empty, feed present back as past):");
            foreach (var name in report.WindowCaches) stdout.WriteLine($"               {name}");
        }
        foreach (var figures in kv)
        {
            var hybrid = p.Mode == HybridMode.KvSharing ? figures.KvSharingCache : figures.RetrofitCache;
            stdout.WriteLine($"  KV cache   at {figures.Context} tokens: {SharedOptions.Bytes(figures.DenseCache)} dense, {SharedOptions.Bytes(hybrid)} this model ({(double)hybrid / figures.DenseCache:P0}) per sequence");
        }
        stdout.WriteLine();
        var sharing = p.Mode == HybridMode.KvSharing;
        stdout.WriteLine($"  layer  kind    selection from  {(sharing ? "own cache  " : "")}node");
        foreach (var layer in report.Layers)
        {
            var from = layer.OracleLayer is { } oracle ? $"layer {oracle}" : "-";
            var cache = !sharing ? "" : layer.Kind == LayerKind.Full ? "full       " : "window     ";
            stdout.WriteLine($"  {layer.Index,5}  {(layer.Kind == LayerKind.Full ? "full" : "sparse"),-6}  {from,-14}  {cache}{layer.Node}");
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
