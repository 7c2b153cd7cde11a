using Google.Protobuf;
using HySparse.Exporter.Layout;
using HySparse.Fidelity;

namespace HySparse.Exporter.Tests;

/// <summary>
/// The fidelity report's attention recall: the share of a sparse layer's dense attention probability
/// inside the selected blocks ∪ the window, on hand-made tensors and through a converted trained model.
/// </summary>
[TestClass]
public sealed class AttentionRecallTests
{
    [TestMethod]
    public void RecallIsTheDenseProbabilityInsideSelectedBlocksAndWindow()
    {
        // One KV head read by two query heads, head size 1, scale 1, blocks of 1 token, window 1.
        // Keys ln 1..ln 4: head 0 (q = 1) gives position j the weight j + 1; head 1 (q = 0) weighs all keys equally.
        var spec = new SparseLayerSpec(NumHeads: 2, KvHeads: 1, Scale: 1, BlockSize: 1, Window: 1);
        float[] key = [0, MathF.Log(2), MathF.Log(3), MathF.Log(4)];
        // Query [B=1, S=4, H_q·D=2] (BSNH): (head 0, head 1) per position.
        float[] query = [1, 0, 1, 0, 1, 0, 1, 0];
        // Selected blocks per position (K = 1): none, none, block 1, block 0.
        int[] indices = [-1, -1, 1, 0];
        // Head 0: t=0 {0}: 1; t=1 {1}: 2/3; t=2 {1,2}: 5/6; t=3 {0,3}: 5/10. Mean 3/4.
        // Head 1: t=0: 1; t=1: 1/2; t=2: 2/3; t=3: 2/4. Mean 2/3.
        const double expected = (0.75 + 2.0 / 3) / 2;

        var stats = AttentionRecall.Mean(spec, query, [1, 4, 2], key, [1, 4, 1], indices, [1, 1, 4, 1]);
        Assert.AreEqual(expected, stats.Recall, 1e-6);
        // Keys inside: 1/1, 1/2, 2/3, 2/4 for both heads.
        Assert.AreEqual((1 + 0.5 + 2.0 / 3 + 0.5) / 4, stats.Coverage, 1e-12);
        // The same tensors in the 4-D layout [B, H, S, D].
        float[] bnsh = [1, 1, 1, 1, 0, 0, 0, 0];
        Assert.AreEqual(expected, AttentionRecall.Mean(spec, bnsh, [1, 2, 4, 1], key, [1, 1, 4, 1], indices, [1, 1, 4, 1]).Recall, 1e-6);
    }

    [TestMethod]
    public void RecallIsOneWhenSelectedBlocksAndWindowCoverTheContext()
    {
        // T = 40, blocks of 8, K = 4, window 8: K·B + w = 40. Each token selects the lowest eligible
        // blocks (0..3), the window covers the last 8 positions, so every causal key is inside.
        const int t = 40, d = 4, hq = 4, hkv = 2, k = 4;
        var spec = new SparseLayerSpec(hq, hkv, 0, BlockSize: 8, Window: 8);
        var random = new Random(3);
        var query = Enumerable.Range(0, t * hq * d).Select(_ => (float)(4 * random.NextDouble() - 2)).ToArray();
        var key = Enumerable.Range(0, t * hkv * d).Select(_ => (float)(4 * random.NextDouble() - 2)).ToArray();
        var indices = new int[hkv * t * k];
        for (var g = 0; g < hkv; g++)
            for (var s = 0; s < t; s++)
                for (var slot = 0; slot < k; slot++)
                    indices[(g * t + s) * k + slot] = slot <= s / 8 ? slot : -1;

        var full = AttentionRecall.Mean(spec, query, [1, t, hq * d], key, [1, t, hkv * d], indices, [1, hkv, t, k]);
        Assert.AreEqual(1.0, full.Recall, 1e-12);
        Assert.AreEqual(1.0, full.Coverage, 1e-12);
        // Dropping block 0 from every selection loses mass for the tokens past the window.
        var partial = indices.Select(i => i == 0 ? -1 : i).ToArray();
        Assert.IsLessThan(1.0, AttentionRecall.Mean(spec, query, [1, t, hq * d], key, [1, t, hkv * d], partial, [1, hkv, t, k]).Recall);
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void ARetrofitThatSelectsEveryBlockRecallsEverything()
    {
        var directory = Path.Combine(AppContext.BaseDirectory, "fixtures", "trained");
        var evaluator = new Evaluator(File.ReadAllBytes(Path.Combine(directory, "validation.bin")), windows: 1);
        var dense = ModelFile.Load(Path.Combine(directory, "dense.onnx"));
        // 64 tokens in blocks of 16: 4 blocks, all selected (K ≥ nb).
        var (all, _) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio("1:3"), Parameters = new HybridParameters { TopK = 4, BlockSize = 16, Window = 16 } });
        var recall = evaluator.Recall(new ModelVariant("all blocks", "retrofit", "FSSSFSSF", "", all.ToByteArray()), context: 64, rows: 2);

        CollectionAssert.AreEqual(new[] { 1, 2, 3, 5, 6 }, recall.Select(r => r.Layer).ToArray());
        foreach (var layer in recall) Assert.AreEqual(1.0, layer.Recall, 1e-9, $"layer {layer.Layer}");

        // The native model reads the shared full layers' keys; with 8 of 16 blocks and a window of 64 at 256 tokens it misses some mass.
        var native = evaluator.Recall(new ModelVariant("native", "native", "FSSSFSSS", "", File.ReadAllBytes(Path.Combine(directory, "hysparse.onnx"))), context: 256, rows: 1);
        CollectionAssert.AreEqual(new[] { 1, 2, 3, 5, 6, 7 }, native.Select(r => r.Layer).ToArray());
        foreach (var layer in native) Assert.IsTrue(layer.Recall is > 0.3 and < 1.0, $"layer {layer.Layer}: {layer.Recall}");
        // The native model gates its branches (the retrofit's union has no gates); σ is strictly inside (0, 1).
        foreach (var layer in native)
            Assert.IsTrue(layer.SaGate is > 0 and < 1 && layer.WindowGate is > 0 and < 1, $"layer {layer.Layer}: gates {layer.SaGate} / {layer.WindowGate}");
        Assert.IsTrue(recall.All(l => double.IsNaN(l.SaGate) && double.IsNaN(l.WindowGate)));
    }

    [TestMethod]
    public void GateMeansAreTheMeanSigmoidOfEachBranchsHalf()
    {
        // [B=1, S=2, 2·H_q=4]: SA logits for heads 0, 1, then window logits. σ(0) = 1/2, σ(ln 3) = 3/4,
        // σ(−ln 3) = 1/4, σ(ln 9) = 9/10.
        float ln3 = MathF.Log(3), ln9 = MathF.Log(9);
        float[] gate = [0, ln3, ln9, -ln3, /* position 1 */ -ln3, ln9, 0, 0];
        var (sa, window) = AttentionRecall.GateMeans(gate, [1, 2, 4]);
        Assert.AreEqual((0.5 + 0.75 + 0.25 + 0.9) / 4, sa, 1e-6);
        Assert.AreEqual((0.9 + 0.25 + 0.5 + 0.5) / 4, window, 1e-6);
        // A per-channel gate [B, S, 2·H_q·D] splits the same way.
        Assert.AreEqual(0.5, AttentionRecall.GateMeans(new float[] { 0, 0, ln3, -ln3 }, [1, 1, 4]).Window, 1e-6);
        Assert.ThrowsExactly<ArgumentException>(() => AttentionRecall.GateMeans(new float[3], [1, 1, 3]));
    }
}
