using HySparse.Fidelity;

namespace HySparse.Exporter.Tests;

/// <summary>
/// The fidelity report's measurements on the trained fixtures at small contexts: the KV bytes it
/// reports are what each layout must hold, agreement is measured against dense, and the losses are
/// those of a trained model rather than of random weights.
/// </summary>
[TestClass]
[TestCategory(HySparseEquivalenceTests.NeedsOps)]
public sealed class FidelityReportTests
{
    private static string Directory => Path.Combine(AppContext.BaseDirectory, "fixtures", "trained");

    [TestMethod]
    public void ReportedKvBytesAndAgreementFollowFromEachLayout()
    {
        var variants = ModelVariants.Build(Directory, quick: true);
        var evaluator = new Evaluator(File.ReadAllBytes(Path.Combine(Directory, "validation.bin")), windows: 2);
        int[] contexts = [96, 192];
        const int window = 64, bytesPerLayerToken = 2 * 2 * 32 * 4; // K and V, 2 KV heads of 32, float32

        CollectionAssert.AreEqual(new[] { "dense", "retrofit", "kv_sharing", "native", "swa" }, variants.Select(v => v.Kind).ToArray());
        foreach (var variant in variants)
        {
            var scores = evaluator.Score(variant, contexts);
            foreach (var score in scores)
            {
                // Full layers and every retrofit layer keep all T tokens; window caches keep min(T, w).
                var keepsAll = variant.Kind is "dense" or "retrofit";
                double expected = variant.Layout.Sum(letter => letter == 'F' || keepsAll
                    ? bytesPerLayerToken
                    : bytesPerLayerToken * (double)Math.Min(score.Context, window) / score.Context);
                Assert.AreEqual(expected, score.KvBytesPerToken, 1e-9, $"{variant.Name} at {score.Context}");
                // Trained on this kind of text: far below the 8 bits of a uniform guess.
                Assert.IsLessThan(6.0, score.BitsPerByte, $"{variant.Name} at {score.Context}");
                if (variant.Kind == "dense") Assert.AreEqual(1.0, score.Top1Agreement);
                else Assert.IsTrue(score.Top1Agreement is > 0.2 and <= 1.0, $"{variant.Name}: agreement {score.Top1Agreement}");
            }
        }
    }

    [TestMethod]
    public void AgreementNeedsTheDenseReferenceFirst()
    {
        var variants = ModelVariants.Build(Directory, quick: true);
        var evaluator = new Evaluator(File.ReadAllBytes(Path.Combine(Directory, "validation.bin")), windows: 1);

        var error = Assert.ThrowsExactly<InvalidOperationException>(() => evaluator.Score(variants.Single(v => v.Kind == "native"), [64]));
        StringAssert.Contains(error.Message, "dense");
    }

    /// <summary>The recall arithmetic against a hand-computed softmax.</summary>
    [TestMethod]
    public void RecallIsTheAttentionMassInsideTheSelectedBlocksAndTheWindow()
    {
        // D 1, keys 0..5 with logits (scale 1) 0, 1, 2, 3, 4, 5 for q = 1; blocks of 2: {0,1} {2,3} {4,5}.
        float[] query = [1f];
        float[] keys = [0f, 1f, 2f, 3f, 4f, 5f];
        double Mass(params int[] j) => j.Sum(x => Math.Exp(x)) / Enumerable.Range(0, 6).Sum(x => Math.Exp(x));

        // At position 5 with window 1 (key 5 only) and block 1 selected (keys 2, 3).
        Assert.AreEqual(Mass(2, 3, 5), AttentionRecall.Recall(query, keys, 1, 5, 1.0, [1, -1], 2, 1), 1e-12);
        // Block 2 holds the window's key too: counted once.
        Assert.AreEqual(Mass(4, 5), AttentionRecall.Recall(query, keys, 1, 5, 1.0, [2], 2, 1), 1e-12);
        // Causal: at position 3 only keys 0..3 exist; block 0 (keys 0, 1), no window.
        Assert.AreEqual((Math.Exp(0) + Math.Exp(1)) / Enumerable.Range(0, 4).Sum(x => Math.Exp(x)),
                        AttentionRecall.Recall(query, keys, 1, 3, 1.0, [0], 2, 0), 1e-12);
        // A window covering every key: recall 1 whatever is selected.
        Assert.AreEqual(1.0, AttentionRecall.Recall(query, keys, 1, 5, 1.0, [-1], 2, 6), 1e-12);
    }

    /// <summary>On a converted trained model: recall in (0, 1], and exactly 1 when K·B + w covers the context.</summary>
    [TestMethod]
    public void RecallOfConvertedModelsIsAFractionAndOneWhenEverythingIsSelected()
    {
        var variants = ModelVariants.Build(Directory, quick: true);
        var text = File.ReadAllBytes(Path.Combine(Directory, "validation.bin"));
        var retrofit = variants.First(v => v.Kind == "retrofit");
        var partial = AttentionRecall.Measure(retrofit.Model, text, 512, 1)!;
        Assert.HasCount(5, partial.Layers);   // FSSSFSSF
        foreach (var layer in partial.Layers) Assert.IsTrue(layer.Recall is > 0.3 and < 1.0, $"{layer.Node}: {layer.Recall}");
        // K 8 blocks of 16 + w 64 = 192 >= 128 tokens: every key is attended.
        var full = AttentionRecall.Measure(retrofit.Model, text, 128, 1)!;
        foreach (var layer in full.Layers) Assert.AreEqual(1.0, layer.Recall, 1e-9, layer.Node);
        Assert.IsNull(AttentionRecall.Measure(variants.First(v => v.Kind == "dense").Model, text, 128, 1));
    }
}
