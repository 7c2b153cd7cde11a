using HySparse.Exporter.Layout;
using HySparse.Graph;

namespace HySparse.Exporter;

/// <summary>The copy test with one layer made sparse.</summary>
/// <param name="Layer">The layer made sparse (every other layer full; its blocks selected by the layer before it).</param>
/// <param name="Copy">Share of the repeat the conversion predicts (the dense model's is <see cref="LayerScanReport.DenseCopy"/>).</param>
public sealed record LayerCopy(int Layer, double Copy);

/// <summary>What <see cref="LayerScanner.Scan"/> measured and the layout it suggests.</summary>
/// <param name="Layers">Attention layers of the model.</param>
/// <param name="Distance">Tokens between a prompt token and its copy.</param>
/// <param name="DenseCopy">Share of the repeat the dense model predicts.</param>
/// <param name="Single">One entry per layer 1 … L−1: the copy test with only that layer sparse.</param>
/// <param name="FullLayers">The suggested full layers: layer 0 and the layers whose sparsity cost the copy most.</param>
/// <param name="SuggestedCopy">The copy test of the suggested layout (every other layer sparse).</param>
/// <param name="RatioLetters">The layout --ratio 1:3 gives this model, for comparison.</param>
/// <param name="RatioCopy">The copy test of that layout.</param>
public sealed record LayerScanReport(int Layers, int Distance, double DenseCopy, IReadOnlyList<LayerCopy> Single, IReadOnlyList<int> FullLayers,
    double SuggestedCopy, string RatioLetters, double RatioCopy)
{
    /// <summary>The suggestion as <c>--full-layers</c> takes it.</summary>
    public string FullLayersArgument => string.Join(",", FullLayers);

    /// <summary>The convert options that give exactly the suggested layout: <c>--sparse-last</c> too when the last
    /// layer is not among the full ones (without it the converter makes the last layer full, as the paper does).</summary>
    public string ConvertArguments => $"--full-layers {FullLayersArgument}" + (FullLayers.Contains(Layers - 1) ? "" : " --sparse-last");
}

/// <summary>
/// Finds the layers a retrofit should keep full. A ratio layout does not know where a model's induction
/// heads are (the layers that find an earlier occurrence of the current context and copy what followed
/// it); made sparse, such a layer sees only the selected blocks and the window, and the model stops
/// reading back — docs/fidelity.md measures it on the trained model, whose heads sit in layer 6, which
/// 1:3 makes sparse. The scan converts the model with one layer sparse at a time, runs
/// <see cref="ModelVerifier.CopyTest"/> on each (random tokens whose second half repeats the first; on
/// the dense model once),
/// keeps full layer 0 and the layers whose sparsity cost the copy most, and checks that layout and the
/// 1:3 one the same way. A single-layer ablation misses layers that matter only together; the check of
/// the suggested layout shows what the combination keeps.
/// </summary>
public static class LayerScanner
{
    /// <summary>Scans the dense model at <paramref name="densePath"/>.</summary>
    /// <param name="densePath">A dense decoder with the interface <see cref="ModelVerifier"/> feeds.</param>
    /// <param name="parameters">The sparse parameters the conversion will use (retrofit mode).</param>
    /// <param name="copyTest">Prompt length, batch, seed and token range of the copy test (<see cref="VerifyOptions.Copy"/> is implied).</param>
    /// <param name="fullLayers">How many layers the suggestion keeps full (layer 0 among them); null: as many as <c>--ratio 1:3</c>.</param>
    /// <param name="progress">Receives one line per conversion.</param>
    public static LayerScanReport Scan(string densePath, HybridParameters parameters, VerifyOptions copyTest, int? fullLayers = null, Action<string>? progress = null)
    {
        parameters.Validate();
        if (copyTest.PromptLength < 4)
            throw new VerifySettingsException($"--prompt must be at least 4 tokens (two halves of 2) for the copy test, not {copyTest.PromptLength}");
        if (parameters.Mode != HybridMode.Retrofit)
            throw new HybridParametersException("the layer scan measures retrofit conversions; a kv-sharing model's sparse layers read another layer's keys whatever the layout");
        var source = ModelFile.Load(densePath);
        if (HybridConverter.IsConverted(source) || HybridConverter.IsNative(source))
            throw new ConversionException(ConversionError.AlreadyConverted, $"'{densePath}' is already a HySparse model; the scan takes the dense original");
        var layers = HybridConverter.Analyse(source).Layers.Count;
        if (layers < 2)
            throw new ConversionException(ConversionError.NoAttention, $"'{densePath}' has {layers} attention layer{(layers == 1 ? "" : "s")} the converter recognises; a scan needs at least two");
        var ratio = LayoutSpec.Default.Plan(layers);
        var keep = fullLayers ?? ratio.FullLayers.Count;
        if (keep < 1 || keep > layers)
            throw new LayoutException($"the scan can keep 1 to {layers} layers full on this model, not {keep}");

        var test = copyTest with { Copy = true };
        var scratch = Directory.CreateTempSubdirectory("hysparse-scan-");
        try
        {
            var input = StageInput(densePath, source, scratch.FullName);
            progress?.Invoke("dense model");
            var denseCopy = ModelVerifier.CopyTest(input, test);
            double Measure(string name, LayoutSpec layout)
            {
                var output = Path.Combine(scratch.FullName, name + ".onnx");
                HybridConverter.ConvertFile(input, output, new ConversionOptions { Layout = layout, Parameters = parameters }, overwrite: true);
                var copy = ModelVerifier.CopyTest(output, test);
                File.Delete(output);
                return copy;
            }

            var single = new List<LayerCopy>();
            for (var layer = 1; layer < layers; layer++)
            {
                progress?.Invoke($"layer {layer} of {layers - 1} sparse");
                var full = Enumerable.Range(0, layers).Where(l => l != layer);
                single.Add(new LayerCopy(layer, Measure($"layer{layer}", LayoutSpec.FromFullLayers(string.Join(",", full), sparseLast: true))));
            }
            // Lowest copy with the layer sparse = the layer the copy needs most; ties keep the earlier layer.
            var chosen = single.OrderBy(s => s.Copy).ThenBy(s => s.Layer).Take(keep - 1).Select(s => s.Layer).Prepend(0).Order().ToList();
            progress?.Invoke($"suggested full layers {string.Join(",", chosen)}");
            var suggested = Measure("suggested", LayoutSpec.FromFullLayers(string.Join(",", chosen), sparseLast: true));
            progress?.Invoke($"--ratio 1:3 ({ratio.Letters})");
            var ratioCopy = Measure("ratio", LayoutSpec.Default);
            return new LayerScanReport(layers, test.PromptLength / 2, denseCopy, single, chosen, suggested, ratio.Letters, ratioCopy);
        }
        finally
        {
            scratch.Delete(recursive: true);
        }
    }

    /// <summary>
    /// The model path the conversions read: the input itself, or — when it keeps weights in external data
    /// files, which a model finds relative to its own folder — a copy in the scratch folder beside copies
    /// of those files, so that conversions are written there and the user's folder is left untouched.
    /// </summary>
    private static string StageInput(string densePath, global::Onnx.ModelProto model, string scratch)
    {
        var files = ExternalData.Files(model);
        if (files.Count == 0) return densePath;
        var folder = Path.GetDirectoryName(Path.GetFullPath(densePath))!;
        foreach (var file in files)
        {
            var target = Path.Combine(scratch, file);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(Path.Combine(folder, file), target);
        }
        var staged = Path.Combine(scratch, "dense.onnx");
        File.Copy(densePath, staged);
        return staged;
    }
}
