namespace HySparse.Onnx.Tests;

/// <summary>HySparseFullAttn through ONNX Runtime against the float64 reference of docs/ops.md.</summary>
[TestClass]
public sealed class FullAttnTests
{
    // float32 storage, float32 accumulation, against float64.
    private const double OutputAbsTol = 5e-5, OutputRelTol = 1e-4;
    private const double ScoreAbsTol = 2e-6, ScoreRelTol = 1e-4;

    [TestMethod]
    // batch, new tokens, past tokens, H_q, H_kv, D, block size, top-K, 3-D layout, seed
    [DataRow(1, 37, 0, 1, 1, 64, 8, 3, true, 1, DisplayName = "prefill T=37 (not a block multiple), MHA 1 head")]
    [DataRow(1, 1, 45, 2, 1, 64, 16, 2, false, 2, DisplayName = "decode P=45, GQA 2:1, 4-D")]
    [DataRow(2, 9, 30, 4, 2, 128, 16, 2, true, 3, DisplayName = "chunked prefill B=2, GQA 4:2, D=128")]
    [DataRow(1, 20, 13, 8, 8, 64, 8, 4, false, 4, DisplayName = "chunked prefill 8:8 heads, 4-D")]
    [DataRow(2, 1, 100, 8, 2, 128, 32, 2, true, 5, DisplayName = "decode P=100, GQA 8:2, D=128")]
    [DataRow(1, 50, 0, 8, 4, 64, 16, 6, true, 6, DisplayName = "K=6 > 4 blocks: -1 padding")]
    [DataRow(1, 9, 0, 4, 4, 64, 64, 2, false, 9, DisplayName = "one partial block")]
    [DataRow(3, 5, 11, 4, 1, 64, 4, 3, false, 7, DisplayName = "B=3, MQA 4:1, block size 4")]
    [DataRow(1, 33, 0, 2, 2, 128, 1, 5, true, 8, DisplayName = "block size 1")]
    public void MatchesReference(int batch, int newLen, int pastLen, int hq, int hkv, int dim, int blockSize, int topK, bool threeD, int seed)
    {
        var data = AttentionData.Random(new AttentionShape(batch, hq, hkv, dim, newLen, pastLen + newLen), seed);
        CompareWithReference(data, new FullAttnOptions { BlockSize = blockSize, TopK = topK, ThreeD = threeD });
    }

    [TestMethod]
    [DataRow(true, DisplayName = "3-D")]
    [DataRow(false, DisplayName = "4-D")]
    public void PaddedBatch_LeftAndRightPadding_MatchesReference(bool threeD)
    {
        // Row 0 is left-padded (5 slots), row 1 right-padded (4 slots); the new tokens include padding in both.
        const int total = 43, newLen = 13;
        var mask = Masks.Padded(total, leftPadding: [5, 0], rightPadding: [0, 4]);
        var data = AttentionData.Random(new AttentionShape(2, 4, 2, 64, newLen, total), seed: 11, mask: mask);
        var result = CompareWithReference(data, new FullAttnOptions { BlockSize = 8, TopK = 3, ThreeD = threeD });

        // Padding tokens (row 1's last 4 new tokens) have zero output, all -1 indices and zero scores.
        var nb = (total + 7) / 8;
        for (var s = newLen - 4; s < newLen; s++)
        for (var g = 0; g < 2; g++)
        {
            var row = (1 * 2 + g) * newLen + s;
            Assert.IsTrue(result.BlockIndices!.Skip(row * 3).Take(3).All(i => i == -1), $"padding token s={s}: indices");
            Assert.IsTrue(result.BlockScores!.Skip(row * nb).Take(nb).All(v => v == 0), $"padding token s={s}: scores");
        }
    }

    [TestMethod]
    public void ExplicitScale_IsUsed()
    {
        var data = AttentionData.Random(new AttentionShape(1, 4, 2, 64, 7, 19), seed: 12);
        CompareWithReference(data, new FullAttnOptions { BlockSize = 4, TopK = 2, Scale = 0.37f });
    }

    [TestMethod]
    public void OptionalOutputs_AnySubset_GiveTheSameValues()
    {
        var data = AttentionData.Random(new AttentionShape(1, 4, 2, 64, 6, 26), seed: 13);
        var all = FullAttnCall.Run(data, new FullAttnOptions { BlockSize = 8, TopK = 2 });
        var noneOptional = FullAttnCall.Run(data, new FullAttnOptions { BlockSize = 8, TopK = 2, WantIndices = false, WantScores = false, WantSelected = false });
        var scoresOnly = FullAttnCall.Run(data, new FullAttnOptions { BlockSize = 8, TopK = 2, WantIndices = false, WantSelected = false });
        var selectedOnly = FullAttnCall.Run(data, new FullAttnOptions { BlockSize = 8, TopK = 2, WantIndices = false, WantScores = false });

        CollectionAssert.AreEqual(all.Output, noneOptional.Output, "output must not depend on which optional outputs are asked for");
        CollectionAssert.AreEqual(all.PresentKey, noneOptional.PresentKey);
        CollectionAssert.AreEqual(all.BlockScores, scoresOnly.BlockScores);
        CollectionAssert.AreEqual(all.SelectedKey, selectedOnly.SelectedKey);
        CollectionAssert.AreEqual(all.SelectedValue, selectedOnly.SelectedValue);
        Assert.IsNull(noneOptional.BlockIndices);
    }

    internal static FullAttnResult CompareWithReference(AttentionData data, FullAttnOptions options,
                                                        double outputAbsTol = OutputAbsTol, double outputRelTol = OutputRelTol)
    {
        var actual = FullAttnCall.Run(data, options);
        var expected = FullAttnCall.Reference(data, options);
        var sh = data.Shape;

        Check.Close(expected.Output, actual.Output, outputAbsTol, outputRelTol, "output");
        Check.Close(data.KeyCache(), actual.PresentKey, 0, 0, "present_key");
        Check.Close(data.ValueCache(), actual.PresentValue, 0, 0, "present_value");
        Check.Close(expected.BlockScores, actual.BlockScores!, ScoreAbsTol, ScoreRelTol, "block_scores");
        SelectionChecks.Verify(sh, data.Mask, options.BlockSize, options.TopK, actual.BlockIndices!, actual.BlockScores, expected);

        // The gathered KV must follow the op's own indices exactly (they equal the reference's away from near ties).
        Check.Close(AttentionReference.Gather(sh, data.KeyCache(), actual.BlockIndices!, options.BlockSize, options.TopK),
                    actual.SelectedKey!, 0, 0, "selected_key");
        Check.Close(AttentionReference.Gather(sh, data.ValueCache(), actual.BlockIndices!, options.BlockSize, options.TopK),
                    actual.SelectedValue!, 0, 0, "selected_value");
        return actual;
    }
}
