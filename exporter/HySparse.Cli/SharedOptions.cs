using HySparse.Exporter;
using DataType = global::Onnx.TensorProto.Types.DataType;
using HySparse.Exporter.Layout;

namespace HySparse.Cli;

/// <summary>Options convert and inspect share: the layout and the sparse parameters.</summary>
internal static class SharedOptions
{
    public static ConversionOptions ReadConversion(ArgumentReader reader, HybridParameters? defaults = null)
    {
        var pattern = reader.Option("--pattern");
        var ratio = reader.Option("--ratio");
        var fullLayers = reader.Option("--full-layers");
        var sparseLast = reader.Flag("--sparse-last");
        var kvSharing = reader.Flag("--kv-sharing");
        if (new[] { pattern, ratio, fullLayers }.Count(o => o is not null) > 1)
            throw new UsageException("give only one of --pattern, --ratio and --full-layers");
        var layout = pattern is not null ? LayoutSpec.FromPattern(pattern, sparseLast)
            : ratio is not null ? LayoutSpec.Ratio(ratio, sparseLast)
            : fullLayers is not null ? LayoutSpec.FromFullLayers(fullLayers, sparseLast)
            : LayoutSpec.Ratio("1:3", sparseLast);
        defaults ??= new HybridParameters();
        var parameters = new HybridParameters
        {
            TopK = reader.PositiveInt("--top-k") ?? defaults.TopK,
            BlockSize = reader.PositiveInt("--block-size") ?? defaults.BlockSize,
            Window = reader.PositiveInt("--window") ?? defaults.Window,
            Mode = kvSharing ? HybridMode.KvSharing : defaults.Mode,
        };
        return new ConversionOptions { Layout = layout, Parameters = parameters };
    }

    /// <summary>One line on what the mode keeps and reads, for convert, inspect and demo.</summary>
    public static string ModeLine(HybridMode mode) => mode == HybridMode.KvSharing
        ? "kv-sharing: sparse layers read selected blocks from the preceding full layer's KV cache and keep only a window cache of their own"
        : "retrofit: every layer keeps its own KV cache; sparse layers take one softmax over selected blocks ∪ window";

    /// <summary>The single positional argument: the model path.</summary>
    public static string ModelPath(ArgumentReader reader, string verb)
    {
        var positionals = reader.Positionals();
        return positionals.Count switch
        {
            1 => positionals[0],
            0 => throw new UsageException($"{verb} needs a model file: hysparse {verb} <model.onnx>"),
            _ => throw new UsageException($"{verb} takes one model file, got {positionals.Count} arguments: {string.Join(" ", positionals)}"),
        };
    }

    /// <summary>
    /// The model file a path names: the path itself, or for an onnxruntime-genai model folder the
    /// decoder its genai_config.json names.
    /// </summary>
    public static string ModelFile(string path) =>
        HySparse.Exporter.Folders.GenAiModelFolder.IsModelFolder(path) ? HySparse.Exporter.Folders.GenAiModelFolder.Open(path).DecoderPath : path;

    /// <summary>ONNX element type as people write it (float32, float16, bfloat16…).</summary>
    public static string TypeName(DataType type) => type switch
    {
        DataType.Float => "float32",
        DataType.Double => "float64",
        _ => type.ToString().ToLowerInvariant(),
    };

    /// <summary>Bytes as a short human figure (KiB/MiB/GiB, binary).</summary>
    public static string Bytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double value = bytes;
        var unit = 0;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        return unit == 0 ? $"{bytes} B" : $"{value:0.##} {units[unit]}";
    }
}
