namespace HySparse.Exporter.Tests;

/// <summary>Converted models run in ONNX Runtime with the HySparse CPU operators.</summary>
[TestClass]
[TestCategory(NeedsOps)]
public sealed class HySparseEquivalenceTests
{
    /// <summary>Tests that load the native operator library.</summary>
    internal const string NeedsOps = "NeedsHySparseOps";

    private static readonly LlamaConfig Config = new() { Layers = 6, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 48, Vocab = 53, Seed = 21 };

    [TestMethod]
    [DataRow(5, 4, 3, DisplayName = "every block selected (K·B ≥ T), small window")]
    [DataRow(1, 4, 19, DisplayName = "window covers the context (w ≥ T), one block")]
    public void RetrofitEqualsDenseWhenSelectionAndWindowCoverTheContext(int topK, int blockSize, int window)
    {
        // T reaches 16 + 3 = 19 tokens. Union attention is dense only when the selected blocks and the
        // window together cover every key (docs/ops.md): K·B + w ≥ T alone is not enough, since top-K
        // may pick blocks inside the window.
        var parameters = new HybridParameters { TopK = topK, BlockSize = blockSize, Window = window };
        var dense = LlamaModelBuilder.Build(Config);
        var (hybrid, _) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio("1:2"), Parameters = parameters });

        var denseRun = Decode(dense.ToByteArray(), withOps: false);
        var hybridRun = Decode(hybrid.ToByteArray(), withOps: true);

        for (var step = 0; step < denseRun.Count; step++)
        {
            var (inputs, expected) = denseRun[step];
            var actual = hybridRun[step].Outputs;
            Close.AssertRealTokens(inputs, Config, expected, actual, 1e-4, $"step {step}");
        }
    }

    [TestMethod]
    public void RetrofitWithSmallTopKRunsAndKeepsFullLengthCaches()
    {
        var parameters = new HybridParameters { TopK = 1, BlockSize = 4, Window = 4 };
        var dense = LlamaModelBuilder.Build(Config);
        var (hybrid, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio("1:2"), Parameters = parameters });

        var runs = Decode(hybrid.ToByteArray(), withOps: true);
        var denseRuns = Decode(dense.ToByteArray(), withOps: false);

        var (inputs, outputs) = runs[^1];
        Assert.IsTrue(outputs.Logits.All(double.IsFinite), "logits must be finite");
        // 4 + 4 of 19 keys per sparse layer: the hybrid must really compute something else than dense.
        var largestChange = outputs.Logits.Zip(denseRuns[^1].Outputs.Logits, (h, d) => Math.Abs(h - d)).Max();
        Assert.IsGreaterThan(1e-3, largestChange);
        // Retrofit keeps every layer's own full-length cache: [B, H_kv, T, D] everywhere.
        var cacheElements = inputs.Batch * Config.KvHeads * inputs.Total * Config.HeadDim;
        for (var l = 0; l < Config.Layers; l++)
        {
            Assert.HasCount(cacheElements, outputs.PresentKeys[l]);
            Assert.HasCount(cacheElements, outputs.PresentValues[l]);
        }
        var figures = KvAccounting.Compute(Config.KvHeads, Config.HeadDim, 4, report.Layout, parameters, [inputs.Total]).Single();
        // The accounting is per sequence; the run holds a batch of them.
        Assert.AreEqual(outputs.PresentKeys.Sum(k => (long)k.Length) * 2 * 4 / inputs.Batch, figures.RetrofitCache);
    }

    private static List<(DecoderInputs Inputs, DecoderOutputs Outputs)> Decode(byte[] model, bool withOps) =>
        DecoderRunner.PrefillThenDecode(model, Config, decodeSteps: 3, withOps ? o => o.RegisterHySparseOps() : null);
}
