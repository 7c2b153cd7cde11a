namespace HySparse.Onnx.Tests;

/// <summary>
/// Checks of the float64 reference itself, without the native library: its dense part is compared with
/// ONNX Runtime's GroupQueryAttention elsewhere; here its sparse part is tied to its dense part through
/// identities of docs/ops.md, so a slip in either shows.
/// </summary>
[TestClass]
public sealed class ReferenceSelfTests
{
    [TestMethod]
    public void UnionCoveringEveryKey_EqualsDense_WithAnyOverlapAndPadding()
    {
        var mask = Masks.Padded(30, [3, 0], [0, 2]);
        var data = AttentionData.Random(new AttentionShape(2, 4, 2, 64, 8, 30), seed: 1, mask: mask);
        var dense = FullAttnCall.Reference(data, new FullAttnOptions { BlockSize = 4, TopK = 8 });
        // Every block selected: the window (w = 5) overlaps the selected blocks and must not count twice.
        var call = new SparseAttnCall
        {
            Shape = data.Shape, Query = data.Query, Key = data.Key, Value = data.Value, PastKey = data.PastKey,
            PastValue = data.PastValue, PastLength = data.Shape.PastLength, Mask = mask, TopK = 8, BlockSize = 4, Window = 5,
            BlockIndices = Enumerable.Range(0, 2 * 2 * 8).SelectMany(_ => Enumerable.Range(0, 8)).ToArray(),
        };
        Check.Close(dense.Output, call.ReferenceOutput(), 1e-12, 0, "union reference vs dense reference");
    }

    [TestMethod]
    public void GateWithSaturatedGates_IsOneBranch_AndZeroLogitsAverageBoth()
    {
        var shape = new AttentionShape(1, 2, 1, 64, 6, 20);
        var call = SparseScenarios.Random(shape, 2, SaSourceKind.OwnCache, CombineModes.Gate, 0, blockSize: 4, topK: 5, window: 3);
        // All 5 blocks selected: the SA branch is dense attention; the SWA branch is the 3-token window alone,
        // which the union reference gives when nothing is selected.
        call = call with { BlockIndices = Enumerable.Range(0, 6).SelectMany(_ => Enumerable.Range(0, 5)).ToArray() };
        var dense = FullAttnCall.Reference(new AttentionData(shape, call.Query, call.Key, call.Value, call.PastKey, call.PastValue, null),
                                           new FullAttnOptions { BlockSize = 4, TopK = 5 }).Output;
        var windowOnly = (call with { Combine = CombineModes.Union, BlockIndices = Enumerable.Repeat(-1, 30).ToArray() }).ReferenceOutput();
        Assert.IsTrue(Check.MaxAbsDiff(dense, windowOnly) > 0.05, "test setup: the two branches must differ");

        // Logits +50 / -50: σ is 1 / 0 to within 2e-22.
        double[] Gate(double sa, double swa) => Enumerable.Range(0, 6).SelectMany(_ => new[] { sa, sa, swa, swa }).ToArray();
        Check.Close(dense, (call with { Gate = Gate(50, -50) }).ReferenceOutput(), 1e-12, 0, "gate saturated on SA");
        Check.Close(windowOnly, (call with { Gate = Gate(-50, 50) }).ReferenceOutput(), 1e-12, 0, "gate saturated on SWA");
        // Absent gate: logits 0, weights ½ each.
        Check.Close(dense.Zip(windowOnly, (a, b) => (a + b) / 2).ToArray(), call.ReferenceOutput(), 1e-12, 0, "absent gate");
    }
}
