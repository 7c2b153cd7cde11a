namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>Checks of HySparseFullAttn's <c>block_indices</c> against docs/ops.md "Selection".</summary>
public static class SelectionChecks
{
    /// <summary>
    /// A reference top-K boundary closer than this (in probability) is a near tie that float32 may break
    /// the other way; such rows are checked against the kernel's own float32 scores only.
    /// </summary>
    public const double NearTieMargin = 1e-5;

    /// <summary>
    /// Every row: entries in range, strictly ascending, then only −1; exactly <c>min(K, eligible)</c> entries,
    /// all eligible; equal to the top-K of the kernel's own <paramref name="kernelScores"/> (exact: ties
    /// are decided on the float32 scores as computed) when given; and equal to the float64 reference
    /// wherever the reference has no near tie at the boundary. Returns the number of rows compared
    /// with the reference, and asserts it is most of them so the check cannot quietly skip everything.
    /// </summary>
    public static int Verify(AttentionShape shape, long[]? mask, int blockSize, int topK, int[] indices,
                             double[]? kernelScores, AttentionReference.FullResult reference)
    {
        var numBlocks = (shape.TotalLength + blockSize - 1) / blockSize;
        int rows = 0, comparedWithReference = 0;
        for (var b = 0; b < shape.Batch; b++)
        for (var g = 0; g < shape.KvNumHeads; g++)
        for (var s = 0; s < shape.NewLength; s++)
        {
            rows++;
            var row = ((long)b * shape.KvNumHeads + g) * shape.NewLength + s;
            var where = $"block_indices row (b={b}, g={g}, s={s})";
            var actual = indices.AsSpan((int)(row * topK), topK).ToArray();
            var chosen = actual.TakeWhile(i => i >= 0).ToList();
            Assert.IsTrue(actual.Skip(chosen.Count).All(i => i == -1), $"{where}: [{string.Join(",", actual)}] has a block after -1 or a value below -1");
            Assert.IsTrue(chosen.All(i => i < numBlocks), $"{where}: [{string.Join(",", actual)}] has a block >= {numBlocks}");
            for (var k = 1; k < chosen.Count; k++)
                Assert.IsTrue(chosen[k - 1] < chosen[k], $"{where}: [{string.Join(",", actual)}] is not strictly ascending");

            var eligible = AttentionReference.EligibleBlocks(shape, mask, blockSize, b, s);
            Assert.AreEqual(Math.Min(topK, eligible.Count), chosen.Count, $"{where}: [{string.Join(",", actual)}] with {eligible.Count} eligible blocks");
            Assert.IsTrue(chosen.All(eligible.Contains), $"{where}: [{string.Join(",", actual)}] holds a block with no valid key");

            if (kernelScores is not null)
            {
                var own = AttentionReference.TopKAscending(eligible, i => (float)kernelScores[row * numBlocks + i], topK);
                CollectionAssert.AreEqual(own, chosen, $"{where}: not the top-{topK} of the op's own block_scores");
            }

            var refScores = eligible.Select(i => reference.BlockScores[row * numBlocks + i]).OrderDescending().ToArray();
            var nearTie = refScores.Length > topK && refScores[topK - 1] - refScores[topK] < NearTieMargin;
            if (nearTie) continue;
            comparedWithReference++;
            CollectionAssert.AreEqual(reference.BlockIndices.AsSpan((int)(row * topK), topK).ToArray(), actual,
                                      $"{where}: differs from the float64 reference top-{topK}");
        }
        Assert.IsTrue(comparedWithReference >= rows * 0.8, $"only {comparedWithReference} of {rows} rows were free of near ties");
        return comparedWithReference;
    }
}
