namespace HySparse.Onnx.Tests;

/// <summary>
/// <c>combine = "union"</c> over the layer's own cache is exact attention restricted to selected ∪ window.
/// When those sets cover every valid key it must equal dense causal attention, i.e. HySparseFullAttn's
/// output on the same Q/K/V, whatever the overlap between the selected blocks and the window (each
/// position must count once).
/// </summary>
[TestClass]
public sealed class UnionDenseEquivalenceTests
{
    private const double AbsTol = 5e-5;

    [TestMethod]
    // batch, S, P, H_q, H_kv, D, block size, top-K, window: always K·bs + w ≥ T
    [DataRow(1, 40, 0, 2, 1, 64, 8, 3, 16, DisplayName = "prefill T=40, K·bs=24, w=16")]
    [DataRow(2, 1, 52, 4, 2, 64, 16, 2, 21, DisplayName = "decode T=53, K·bs=32, w=21")]
    [DataRow(1, 9, 27, 8, 8, 128, 4, 5, 16, DisplayName = "chunk T=36, K·bs=20, w=16")]
    [DataRow(2, 13, 18, 8, 2, 64, 8, 2, 15, DisplayName = "chunk T=31, K·bs=16, w=15 (exact cover)")]
    public void FirstKBlocksPlusWindow_CoveringTheContext_EqualsDense(int batch, int newLen, int pastLen, int hq, int hkv, int dim,
                                                                     int blockSize, int topK, int window)
    {
        var shape = new AttentionShape(batch, hq, hkv, dim, newLen, pastLen + newLen);
        Assert.IsTrue(topK * blockSize + window >= shape.TotalLength, "test setup: K·bs + w must cover T");
        var data = AttentionData.Random(shape, seed: 300 + newLen);
        var indices = Enumerable.Range(0, batch * hkv * newLen).SelectMany(_ => Enumerable.Range(0, topK)).ToArray();
        CompareUnionWithDense(data, indices, topK, blockSize, window, mask: null);
    }

    [TestMethod]
    public void EveryEligibleBlockSelectedByTheFullOp_EqualsDense_WithPadding()
    {
        // K ≥ number of blocks: HySparseFullAttn selects every eligible block; the union then covers all valid keys.
        const int total = 45, newLen = 11, blockSize = 8, topK = 6;
        var mask = Masks.Padded(total, leftPadding: [4, 0], rightPadding: [0, 2]);
        var data = AttentionData.Random(new AttentionShape(2, 4, 2, 64, newLen, total), seed: 310, mask: mask);
        var full = FullAttnCall.Run(data, new FullAttnOptions { BlockSize = blockSize, TopK = topK, WantScores = false, WantSelected = false });
        CompareUnionWithDense(data, full.BlockIndices!, topK, blockSize, window: 5, mask);
    }

    [TestMethod]
    public void CoverageNotSize_DecidesDenseness_LastBlocksPlusWindowIsNotDense()
    {
        // K·bs + w ≥ T alone is not enough: selecting the last K blocks (all inside the window for the late
        // tokens) leaves the early keys out, and the union must then differ from dense attention.
        const int blockSize = 8, topK = 3, window = 16, total = 40;
        var shape = new AttentionShape(1, 2, 1, 64, 1, total);
        var data = AttentionData.Random(shape, seed: 320);
        var lastBlocks = Enumerable.Range(5 - topK, topK).ToArray();
        var sparse = UnionCall(data, lastBlocks, topK, blockSize, window, mask: null);
        var (output, _, _) = sparse.Run();
        Check.Close(sparse.ReferenceOutput(), output, AbsTol, 0, "union output vs float64 reference");
        var dense = FullAttnCall.Reference(data, new FullAttnOptions { BlockSize = blockSize, TopK = topK }).Output;
        Assert.IsTrue(Check.MaxAbsDiff(dense, output) > 1e-2, "the union over the last blocks must not be dense attention");
    }

    private static SparseAttnCall UnionCall(AttentionData data, int[] indices, int topK, int blockSize, int window, long[]? mask) => new()
    {
        Shape = data.Shape, Query = data.Query, Key = data.Key, Value = data.Value,
        PastKey = data.PastKey, PastValue = data.PastValue, PastLength = data.Shape.PastLength,
        BlockIndices = indices, TopK = topK, BlockSize = blockSize, Window = window, Mask = mask,
        Combine = CombineModes.Union, WindowCache = 0,
    };

    private static void CompareUnionWithDense(AttentionData data, int[] indices, int topK, int blockSize, int window, long[]? mask)
    {
        var (sparseOutput, presentKey, _) = UnionCall(data, indices, topK, blockSize, window, mask).Run();
        var dense = FullAttnCall.Run(data, new FullAttnOptions { BlockSize = blockSize, TopK = topK, WantIndices = false, WantScores = false, WantSelected = false });
        var reference = FullAttnCall.Reference(data, new FullAttnOptions { BlockSize = blockSize, TopK = topK });

        Check.Close(reference.Output, sparseOutput, AbsTol, 0, "union output vs float64 dense attention");
        Check.Close(dense.Output, sparseOutput, AbsTol, 0, "union output vs HySparseFullAttn output");
        Check.Close(dense.PresentKey, presentKey, 0, 0, "retrofit present_key vs HySparseFullAttn present_key");
    }
}
