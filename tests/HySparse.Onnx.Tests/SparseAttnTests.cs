namespace HySparse.Onnx.Tests;

/// <summary>HySparseSparseAttn through ONNX Runtime against the float64 reference of docs/ops.md.</summary>
[TestClass]
public sealed class SparseAttnTests
{
    private const double AbsTol = 5e-5, RelTol = 1e-4;

    [TestMethod]
    // batch, S, T, H_q, H_kv, D, block size, top-K, window, SA source, window_cache, 3-D, seed
    [DataRow(1, 29, 29, 2, 1, 64, 8, 2, 6, SaSourceKind.OwnCache, 0, true, 1, DisplayName = "retrofit prefill T=29")]
    [DataRow(2, 1, 61, 4, 2, 64, 16, 2, 10, SaSourceKind.OwnCache, 0, false, 2, DisplayName = "retrofit decode B=2, 4-D")]
    [DataRow(1, 7, 40, 8, 2, 128, 8, 3, 9, SaSourceKind.Shared, 0, true, 3, DisplayName = "shared KV, full own cache, chunk")]
    [DataRow(1, 6, 53, 4, 4, 64, 8, 3, 12, SaSourceKind.Shared, 1, true, 4, DisplayName = "shared KV, window cache, chunk")]
    [DataRow(2, 1, 77, 8, 1, 64, 16, 2, 20, SaSourceKind.Shared, 1, false, 5, DisplayName = "shared KV, window cache, decode MQA")]
    [DataRow(1, 11, 35, 4, 2, 64, 4, 4, 7, SaSourceKind.Selected, 1, true, 6, DisplayName = "selected KV source, window cache")]
    [DataRow(1, 30, 30, 1, 1, 128, 8, 2, 40, SaSourceKind.Shared, 1, true, 7, DisplayName = "window longer than context")]
    [DataRow(1, 100, 100, 8, 2, 64, 16, 4, 24, SaSourceKind.OwnCache, 0, true, 8, DisplayName = "retrofit prefill S=100 (prefill tiles)")]
    [DataRow(2, 70, 230, 4, 2, 64, 16, 5, 40, SaSourceKind.Shared, 1, false, 9, DisplayName = "shared KV, window cache, 70 after a past")]
    public void Union_MatchesReference(int batch, int newLen, int total, int hq, int hkv, int dim, int blockSize, int topK, int window,
                                       SaSourceKind source, int windowCache, bool threeD, int seed)
    {
        foreach (var sinks in new[] { false, true })
        {
            var call = SparseScenarios.Random(new AttentionShape(batch, hq, hkv, dim, newLen, total), seed, source, CombineModes.Union,
                                              windowCache, blockSize, topK, window, threeD, withSinks: sinks);
            CompareWithReference(call, $"sinks={sinks}");
        }
    }

    [TestMethod]
    // batch, S, T, H_q, H_kv, D, block size, top-K, window, SA source, window_cache, per-channel gate, seed
    [DataRow(1, 17, 17, 4, 2, 64, 8, 2, 5, SaSourceKind.Shared, 1, false, 21, DisplayName = "gate per head, shared, prefill")]
    [DataRow(2, 5, 38, 2, 2, 128, 8, 3, 9, SaSourceKind.Shared, 1, true, 22, DisplayName = "gate per channel, shared, chunk, D=128")]
    [DataRow(1, 1, 90, 8, 4, 64, 16, 2, 16, SaSourceKind.Shared, 1, false, 23, DisplayName = "gate per head, decode")]
    [DataRow(1, 9, 44, 4, 1, 64, 8, 2, 6, SaSourceKind.Selected, 1, true, 24, DisplayName = "gate per channel, selected KV")]
    [DataRow(1, 12, 31, 2, 1, 64, 4, 3, 8, SaSourceKind.OwnCache, 0, false, 25, DisplayName = "gate, retrofit source")]
    [DataRow(2, 4, 23, 4, 2, 64, 8, 2, 7, SaSourceKind.Shared, 0, true, 26, DisplayName = "gate, shared, full own cache")]
    [DataRow(1, 96, 160, 6, 2, 64, 8, 6, 17, SaSourceKind.Shared, 0, true, 27, DisplayName = "gate per channel, shared, S=96 (prefill tiles)")]
    public void Gate_MatchesReference(int batch, int newLen, int total, int hq, int hkv, int dim, int blockSize, int topK, int window,
                                      SaSourceKind source, int windowCache, bool perChannel, int seed)
    {
        foreach (var (gate, sinks) in new[] { (true, true), (true, false), (false, true), (false, false) })
        {
            var call = SparseScenarios.Random(new AttentionShape(batch, hq, hkv, dim, newLen, total), seed, source, CombineModes.Gate,
                                              windowCache, blockSize, topK, window, threeD: seed % 2 == 0, withGate: gate,
                                              gatePerChannel: perChannel, withSinks: sinks);
            CompareWithReference(call, $"gate={gate}, sinks={sinks}");
        }
    }

    [TestMethod]
    [DataRow(CombineModes.Union, 0, DisplayName = "union, retrofit")]
    [DataRow(CombineModes.Gate, 1, DisplayName = "gate, window cache")]
    public void PaddedBatch_LeftAndRightPadding_MatchesReference(string combine, int windowCache)
    {
        const int total = 41, newLen = 9;
        var mask = Masks.Padded(total, leftPadding: [6, 0], rightPadding: [0, 3]);
        var call = SparseScenarios.Random(new AttentionShape(2, 4, 2, 64, newLen, total), 31,
                                          windowCache == 1 ? SaSourceKind.Shared : SaSourceKind.OwnCache, combine, windowCache,
                                          blockSize: 8, topK: 3, window: 10, withGate: combine == CombineModes.Gate, withSinks: true, mask: mask);
        var output = CompareWithReference(call, "padded");
        // Row 1's last 3 new tokens are padding: zero output.
        for (var h = 0; h < 4; h++)
        for (var s = newLen - 3; s < newLen; s++)
        for (var d = 0; d < 64; d++)
            Assert.AreEqual(0.0, output[(((1L * 4 + h) * newLen) + s) * 64 + d], $"padding token s={s} head {h}");
    }

    [TestMethod]
    [DataRow(CombineModes.Gate, DisplayName = "gate")]
    [DataRow(CombineModes.Union, DisplayName = "union")]
    public void WindowCache_SelectedKvWithoutSharedKv_TakesTheTotalLengthFromTheMask(string combine)
    {
        // A decode-time offload graph passes only the gathered blocks; T = attention_mask.shape[1].
        const int total = 46, newLen = 3;
        var call = SparseScenarios.Random(new AttentionShape(2, 4, 2, 64, newLen, total), 51, SaSourceKind.Selected, combine, 1,
                                          blockSize: 8, topK: 3, window: 7, withGate: combine == CombineModes.Gate, withSinks: true,
                                          mask: Masks.Padded(total, leftPadding: [9, 0], rightPadding: [0, 1]));
        CompareWithReference(call with { SharedKey = null, SharedValue = null }, "selected only");
    }

    [TestMethod]
    [DataRow(CombineModes.Gate, DisplayName = "gate")]
    [DataRow(CombineModes.Union, DisplayName = "union")]
    public void ExplicitScale_IsUsed(string combine)
    {
        var call = SparseScenarios.Random(new AttentionShape(1, 4, 2, 64, 5, 27), 52, SaSourceKind.Shared, combine, 1,
                                          blockSize: 4, topK: 3, window: 6, withGate: combine == CombineModes.Gate, withSinks: true);
        CompareWithReference(call with { Scale = 0.31f }, "scale 0.31");
    }

    [TestMethod]
    public void Union_AllIndicesMinusOne_IsWindowAttention()
    {
        // Every row all -1: nothing is selected and the union is the sliding window alone.
        var shape = new AttentionShape(1, 2, 1, 64, 10, 34);
        var call = SparseScenarios.Random(shape, 41, SaSourceKind.OwnCache, CombineModes.Union, 0, 8, 2, 5);
        call = call with { BlockIndices = Enumerable.Repeat(-1, call.BlockIndices.Length).ToArray() };
        CompareWithReference(call, "no selected blocks");
    }

    internal static double[] CompareWithReference(SparseAttnCall call, string what, double absTol = AbsTol, double relTol = RelTol)
    {
        var (output, presentKey, presentValue) = call.Run();
        Check.Close(call.ReferenceOutput(), output, absTol, relTol, $"{what}: output");
        var (refKey, refValue) = call.ReferencePresent();
        Check.Close(refKey, presentKey, 0, 0, $"{what}: present_key");
        Check.Close(refValue, presentValue, 0, 0, $"{what}: present_value");
        return output;
    }
}
