using System.Text.Json.Nodes;
using HySparse.Exporter.Layout;
using HySparse.Onnx;

namespace HySparse.Exporter.Folders;

/// <summary>What a model folder conversion did.</summary>
/// <param name="Input">The source folder.</param>
/// <param name="Output">The folder written.</param>
/// <param name="DecoderFile">The decoder's file name in both folders.</param>
/// <param name="Decoder">The decoder's conversion.</param>
/// <param name="CopiedFiles">Files copied unchanged (relative paths), external data included.</param>
/// <param name="ConfigChanges">The genai_config.json entries set, as "key = value".</param>
public sealed record FolderConversionReport(string Input, string Output, string DecoderFile, ConversionReport Decoder,
                                            IReadOnlyList<string> CopiedFiles, IReadOnlyList<string> ConfigChanges);

/// <summary>
/// Converts an onnxruntime-genai model folder into a folder genai runs as a HySparse model: the decoder
/// is converted, every other file is copied, the HySparse library is put beside the model (genai loads
/// custom-op libraries only from inside the model or app folder) and named in the decoder's session
/// options, and the search options the converted cache layout needs are set.
/// </summary>
/// <remarks>
/// The output folder appears whole or not at all: everything is written into a hidden sibling folder
/// that is renamed into place at the end (and removed on any failure).
/// </remarks>
public static class ModelFolderConverter
{
    /// <summary>Converts <paramref name="inputFolder"/> into <paramref name="outputFolder"/>.</summary>
    /// <param name="inputFolder">A folder with genai_config.json; it is only read.</param>
    /// <param name="outputFolder">The folder to create (replaced only with <paramref name="overwrite"/>).</param>
    /// <param name="options">Layout and parameters for the decoder.</param>
    /// <param name="overwrite">Replace an existing output folder.</param>
    /// <param name="nativeLibrary">The HySparse library to copy into the folder; located with <see cref="HySparseNativeLibrary.Locate"/> when null.</param>
    /// <param name="progress">Told when each step starts.</param>
    public static FolderConversionReport Convert(string inputFolder, string outputFolder, ConversionOptions options, bool overwrite = false,
                                                 string? nativeLibrary = null, Action<string>? progress = null)
    {
        var folder = GenAiModelFolder.Open(inputFolder);
        var output = Path.GetFullPath(outputFolder);
        CheckOutput(folder.Directory, output, outputFolder, overwrite);
        var library = HySparseNativeLibrary.Locate(nativeLibrary);

        var staging = Path.Combine(Path.GetDirectoryName(output)!, $".{Path.GetFileName(output)}.{Guid.NewGuid():N}.tmp");
        Directory.CreateDirectory(staging);
        try
        {
            var copied = new List<string>();
            foreach (var file in Directory.EnumerateFiles(folder.Directory, "*", SearchOption.AllDirectories))
            {
                var relative = Path.GetRelativePath(folder.Directory, file);
                if (relative == folder.DecoderFile || relative == GenAiModelFolder.ConfigFileName) continue;
                var target = Path.Combine(staging, relative);
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                File.Copy(file, target);
                copied.Add(relative);
            }
            progress?.Invoke($"copied {copied.Count} file(s) of {folder.Directory}");

            var decoderOut = Path.Combine(staging, folder.DecoderFile);
            Directory.CreateDirectory(Path.GetDirectoryName(decoderOut)!);
            var report = HybridConverter.ConvertFile(folder.DecoderPath, decoderOut, options, overwrite: false, progress);

            File.Copy(library, Path.Combine(staging, HySparseNativeLibrary.FileName));
            var changes = ConfigureGenAi(folder, report);
            folder.WriteConfig(staging);
            progress?.Invoke($"set {string.Join("; ", changes)} in {GenAiModelFolder.ConfigFileName}");

            Publish(staging, output, overwrite);
            return new FolderConversionReport(folder.Directory, output, folder.DecoderFile, report, copied, changes);
        }
        finally
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
        }
    }

    /// <summary>
    /// Sets what genai needs to run the converted decoder: the custom-op library, and a cache
    /// convention that matches the converted caches.
    /// </summary>
    private static List<string> ConfigureGenAi(GenAiModelFolder folder, ConversionReport report)
    {
        var changes = new List<string>();
        // A bare file name: genai resolves it in the model folder (absolute paths outside the model or
        // app folder and any '..' are refused by genai).
        folder.DecoderSessionOptions()["custom_ops_library"] = HySparseNativeLibrary.FileName;
        changes.Add($"model.decoder.session_options.custom_ops_library = {HySparseNativeLibrary.FileName}");

        var sharedBuffers = report.Metadata.TryGetValue(HybridMetadata.KvCache, out var kv) && kv == HybridMetadata.SharedBufferCache;
        var search = folder.Search();
        var declared = search["past_present_share_buffer"]?.GetValue<bool>();
        if (declared != sharedBuffers)
        {
            search["past_present_share_buffer"] = sharedBuffers;
            changes.Add($"search.past_present_share_buffer = {(sharedBuffers ? "true" : "false")}");
        }
        if (report.WindowCaches.Count > 0) changes.Add(DeclareWindowLayers(folder, report));
        return changes;
    }

    /// <summary>
    /// KV sharing: the sparse layers' caches hold the last w tokens. genai sizes each present it binds
    /// from its own bookkeeping, never from the model, so it must be told which layers keep a window and
    /// how long it is: <c>model.decoder.sliding_window</c>, the mechanism genai uses for models with
    /// sliding-window layers. genai's CPU capacity is <c>window_size + cache_slack</c> (slack defaults to
    /// 16 on CPU, 0 on CUDA): <c>w − 1</c> plus a slack of 1 gives exactly <c>w</c> on both. genai must
    /// neither slide the cache nor the inputs itself (the op evicts), so both switches are off.
    /// </summary>
    private static string DeclareWindowLayers(GenAiModelFolder folder, ConversionReport report)
    {
        var window = report.Parameters.Window;
        if (window < 2)
            throw new ConversionException(ConversionError.InvalidLayout, "genai declares a window cache as window_size + 1 slack position, so a window of 1 token cannot be expressed; use --window 2 or more");
        var sparse = report.Layers.Where(l => l.Kind == LayerKind.Sparse).ToList();
        if (sparse.Any(l => l.CacheIndex is null))
            throw new ConversionException(ConversionError.InvalidModel,
                "the converted decoder's window caches are not named past_key_values.N.*, so genai cannot be told which layers keep a window");
        var decoder = (JsonObject)((JsonObject)folder.Config["model"]!)["decoder"]!;
        if (decoder["sliding_window"] is JsonObject existing && existing.Count > 0)
            throw new ConversionException(ConversionError.UnconvertibleLayers,
                "genai_config.json already declares model.decoder.sliding_window; a model with sliding-window layers of its own cannot also get HySparse window caches");
        var layers = new JsonArray(sparse.Select(l => JsonValue.Create(l.CacheIndex!.Value)).ToArray<JsonNode?>());
        decoder["sliding_window"] = new JsonObject
        {
            ["window_size"] = window - 1,
            ["cache_slack"] = 1,
            ["slide_key_value_cache"] = false,
            ["slide_inputs"] = false,
            ["layers"] = layers,
        };
        return $"model.decoder.sliding_window = {{window_size {window - 1} + cache_slack 1 = w, layers [{string.Join(",", sparse.Select(l => l.CacheIndex))}], genai slides nothing}}";
    }

    private static void CheckOutput(string input, string output, string given, bool overwrite)
    {
        if (IsSameOrInside(output, input) || IsSameOrInside(input, output))
            throw new ConversionException(ConversionError.InvalidOutput,
                $"output folder '{given}' is, contains or lies inside the input folder; the converter never modifies its input, choose another folder");
        if (File.Exists(output))
            throw new ConversionException(ConversionError.InvalidOutput, $"output '{given}' is a file; give a folder path for a model folder");
        if (!Directory.Exists(Path.GetDirectoryName(output)))
            throw new ConversionException(ConversionError.InvalidOutput, $"the parent of output folder '{given}' does not exist");
        if (Directory.Exists(output) && !overwrite)
            throw new ConversionException(ConversionError.InvalidOutput, $"output folder '{given}' exists; pass --overwrite to replace it");
    }

    private static bool IsSameOrInside(string path, string folder)
    {
        // With links resolved, so that a symlink to (or into) the input folder is seen for what it is.
        var relative = Path.GetRelativePath(FileIdentity.Resolve(folder), FileIdentity.Resolve(path));
        return relative == "." || (!relative.StartsWith("..", StringComparison.Ordinal) && !Path.IsPathRooted(relative));
    }

    /// <summary>Renames the finished staging folder into place; an existing output is swapped out only after that succeeds.</summary>
    private static void Publish(string staging, string output, bool overwrite)
    {
        if (!Directory.Exists(output))
        {
            Directory.Move(staging, output);
            return;
        }
        if (!overwrite) throw new ConversionException(ConversionError.InvalidOutput, $"output folder '{output}' appeared while converting");
        var old = Path.Combine(Path.GetDirectoryName(output)!, $".{Path.GetFileName(output)}.{Guid.NewGuid():N}.old");
        Directory.Move(output, old);
        try
        {
            Directory.Move(staging, output);
        }
        catch
        {
            Directory.Move(old, output);
            throw;
        }
        Directory.Delete(old, recursive: true);
    }
}
