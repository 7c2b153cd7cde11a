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
}
