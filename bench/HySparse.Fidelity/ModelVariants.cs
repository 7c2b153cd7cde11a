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
/// <param name="Seed">Training seed: 1 for the main models, 2 for <c>dense-seed2.onnx</c> / <c>hysparse-seed2.onnx</c>.</param>
public sealed record ModelVariant(string Name, string Kind, string Layout, string Detail, byte[] Model, int Seed = 1)
{
    /// <summary>The dense model of seed 1: top-1 agreement is measured against it.</summary>
    public bool IsReference => Kind == "dense" && Seed == 1;
}

/// <summary>
/// Builds the list of variants: the three trained models and the dense one converted by the
/// project's converter at several layouts and K, and at 1:3 with a bigger block and a wider window
/// (the questions a user converting a dense model asks),
/// then the second-seed dense and native models when the folder holds them.
/// </summary>
public static class ModelVariants
{
    /// <summary>Ratios of full to sparse layers the dense model is converted at.</summary>
    public static readonly string[] Ratios = ["1:1", "1:3", "1:7"];

    /// <summary>Second training seed of the dense model (same interface), evaluated when present.</summary>
    public const string SecondSeedDense = "dense-seed2.onnx";

    /// <summary>Second training seed of the native model, evaluated when present.</summary>
    public const string SecondSeedNative = "hysparse-seed2.onnx";

    /// <param name="directory">The models folder (dense.onnx, hysparse.onnx, swa.onnx, optional second seeds).</param>
    /// <param name="quick">Only the 1:3 retrofit at the trained K (the smoke run): no other K, block size or window.</param>
    /// <param name="fullLayerSets">More retrofits of the dense model, one per set of full layers (e.g. "0,6,7":
    /// the layers that hold its induction heads), at the trained K; exactly the listed layers are full (the last
    /// layer too only when listed); each set goes through <see cref="LayoutSpec.FromFullLayers"/>, which names what
    /// is wrong with a bad one.</param>
    public static IReadOnlyList<ModelVariant> Build(string directory, bool quick, IReadOnlyList<string>? fullLayerSets = null)
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
                variants.Add(Convert(dense, LayoutSpec.Ratio(ratio), ratio, new HybridParameters { TopK = k, BlockSize = blockSize, Window = window }));
        if (!quick)
        {
            // Block size and window, at 1:3: the trained K's keys in blocks twice as big (half as many),
            // and the trained K with a window four times as wide.
            variants.Add(Convert(dense, LayoutSpec.Ratio("1:3"), "1:3", new HybridParameters { TopK = trainedK / 2, BlockSize = 2 * blockSize, Window = window }, blockSize, window));
            variants.Add(Convert(dense, LayoutSpec.Ratio("1:3"), "1:3", new HybridParameters { TopK = trainedK, BlockSize = blockSize, Window = 4 * window }, blockSize, window));
        }
        foreach (var set in fullLayerSets ?? [])
            variants.Add(Convert(dense, LayoutSpec.FromFullLayers(set, sparseLast: true), $"full {set}", new HybridParameters { TopK = trainedK, BlockSize = blockSize, Window = window }));
        variants.Add(Convert(dense, LayoutSpec.Ratio("1:3"), "1:3", new HybridParameters { TopK = trainedK, BlockSize = blockSize, Window = window, Mode = HybridMode.KvSharing }));
        variants.Add(new("HySparse native", "native", Metadata(native, HybridMetadata.Layout),
            $"K {trainedK} × {blockSize} + w {window}, gate, sinks, KV sharing", native.ToByteArray()));
        variants.Add(new("sliding-window baseline", "swa", Metadata(swa, HybridMetadata.Layout), $"w {window}, sinks", swa.ToByteArray()));
        foreach (var (seed1, file) in new[] { (variants[0], SecondSeedDense), (variants.Single(v => v.Kind == "native"), SecondSeedNative) })
        {
            var path = Path.Combine(directory, file);
            if (File.Exists(path))
                variants.Add(seed1 with { Name = $"{seed1.Name} (seed 2)", Model = ModelFile.Load(path).ToByteArray(), Seed = 2 });
        }
        return variants;
    }

    /// <param name="trainedBlockSize">The native model's block size: a row whose block size differs names it.</param>
    /// <param name="trainedWindow">The native model's window: a row whose window differs names it.</param>
    private static ModelVariant Convert(ModelProto dense, LayoutSpec layout, string layoutName, HybridParameters parameters,
        int? trainedBlockSize = null, int? trainedWindow = null)
    {
        var (converted, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = layout, Parameters = parameters });
        var kind = parameters.Mode == HybridMode.KvSharing ? "kv_sharing" : "retrofit";
        var name = $"{(kind == "kv_sharing" ? "KV-sharing" : "retrofit")} {layoutName}, K {parameters.TopK}"
                   + (trainedBlockSize is { } b && b != parameters.BlockSize ? $" × {parameters.BlockSize}" : "")
                   + (trainedWindow is { } w && w != parameters.Window ? $", w {parameters.Window}" : "");
        return new(name, kind, report.Layout.Letters, $"K {parameters.TopK} × {parameters.BlockSize} + w {parameters.Window}", converted.ToByteArray());
    }

    /// <summary>The sliding window the native model was trained with (every hybrid row uses it).</summary>
    public static int TrainedWindow(string directory) =>
        int.Parse(Metadata(ModelFile.Load(Path.Combine(directory, "hysparse.onnx")), HybridMetadata.Window), System.Globalization.CultureInfo.InvariantCulture);

    private static int CountLayers(ModelProto model) => model.Graph.Input.Count(i => i.Name.StartsWith("past_key_values.", StringComparison.Ordinal)) / 2;

    /// <summary>A metadata entry the exporter wrote; a clear error when the file lacks it.</summary>
    public static string Metadata(ModelProto model, string key) =>
        model.MetadataProps.FirstOrDefault(p => p.Key == key)?.Value
        ?? throw new InvalidDataException($"model '{model.Graph.Name}' has no metadata '{key}': re-export it with models/train/export_onnx.py");
}
