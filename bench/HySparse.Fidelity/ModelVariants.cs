using HySparse.Onnx;
using Google.Protobuf;
using HySparse.Exporter;
using HySparse.Exporter.Layout;
using Onnx;

namespace HySparse.Fidelity;

/// <summary>One model the report evaluates: a trained model as exported, or the dense one converted.</summary>
/// <param name="Name">Row label.</param>
/// <param name="Kind">dense, retrofit, kv_sharing, native or swa.</param>
/// <param name="Layout">One letter per layer (F full, S sparse or sliding window).</param>
/// <param name="Detail">Parameters in words (K, block size, window).</param>
/// <param name="Model">The serialized model.</param>
public sealed record ModelVariant(string Name, string Kind, string Layout, string Detail, byte[] Model);

/// <summary>
/// Builds the list of variants: the three trained models and the dense one converted by the
/// project's converter at several layouts and K (the question a user converting a dense model asks).
/// </summary>
public static class ModelVariants
{
    /// <summary>Ratios of full to sparse layers the dense model is converted at.</summary>
    public static readonly string[] Ratios = ["1:1", "1:3", "1:7"];

    public static IReadOnlyList<ModelVariant> Build(string directory, bool quick)
    {
        var dense = ModelFile.Load(Path.Combine(directory, "dense.onnx"));
        var native = ModelFile.Load(Path.Combine(directory, "hysparse.onnx"));
        var swa = ModelFile.Load(Path.Combine(directory, "swa.onnx"));
        // Convert with the block size and window the native model was trained with, so every row
        // reads the same number of keys per sparse layer at the same K.
        var blockSize = int.Parse(Metadata(native, HybridMetadata.BlockSize));
        var window = int.Parse(Metadata(native, HybridMetadata.Window));
        var trainedK = int.Parse(Metadata(native, HybridMetadata.TopK));

        var variants = new List<ModelVariant> { new("dense", "dense", new string('F', CountLayers(dense)), "full attention", dense.ToByteArray()) };
        var ratios = quick ? ["1:3"] : Ratios;
        int[] topKs = quick ? [trainedK] : [trainedK / 2, trainedK];
        foreach (var ratio in ratios)
            foreach (var k in topKs)
                variants.Add(Convert(dense, ratio, new HybridParameters { TopK = k, BlockSize = blockSize, Window = window }));
        variants.Add(Convert(dense, "1:3", new HybridParameters { TopK = trainedK, BlockSize = blockSize, Window = window, Mode = HybridMode.KvSharing }));
        variants.Add(new("HySparse native", "native", Metadata(native, HybridMetadata.Layout),
            $"K {trainedK} × {blockSize} + w {window}, gate, sinks, KV sharing", native.ToByteArray()));
        variants.Add(new("sliding-window baseline", "swa", Metadata(swa, HybridMetadata.Layout), $"w {window}, sinks", swa.ToByteArray()));
        // Second seeds, when the folder has them (the GPU recipe trains them): the seed spread.
        if (File.Exists(Path.Combine(directory, "dense-seed2.onnx")))
            variants.Add(new("dense, seed 2", "dense_seed2", new string('F', CountLayers(dense)), "full attention",
                             File.ReadAllBytes(Path.Combine(directory, "dense-seed2.onnx"))));
        if (File.Exists(Path.Combine(directory, "hysparse-seed2.onnx")))
            variants.Add(new("HySparse native, seed 2", "native_seed2", Metadata(native, HybridMetadata.Layout),
                             $"K {trainedK} × {blockSize} + w {window}, gate, sinks, KV sharing", File.ReadAllBytes(Path.Combine(directory, "hysparse-seed2.onnx"))));
        return variants;
    }

    private static ModelVariant Convert(ModelProto dense, string ratio, HybridParameters parameters)
    {
        var (converted, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio(ratio), Parameters = parameters });
        var kind = parameters.Mode == HybridMode.KvSharing ? "kv_sharing" : "retrofit";
        var name = $"{(kind == "kv_sharing" ? "KV-sharing" : "retrofit")} {ratio}, K {parameters.TopK}";
        return new(name, kind, report.Layout.Pattern, $"K {parameters.TopK} × {parameters.BlockSize} + w {parameters.Window}", converted.ToByteArray());
    }

    private static int CountLayers(ModelProto model) => model.Graph.Input.Count(i => i.Name.StartsWith("past_key_values.", StringComparison.Ordinal)) / 2;

    /// <summary>A metadata entry the exporter wrote; a clear error when the file lacks it.</summary>
    public static string Metadata(ModelProto model, string key) =>
        model.MetadataProps.FirstOrDefault(p => p.Key == key)?.Value
        ?? throw new InvalidDataException($"model '{model.Graph.Name}' has no metadata '{key}': re-export it with models/train/export_onnx.py");
}
