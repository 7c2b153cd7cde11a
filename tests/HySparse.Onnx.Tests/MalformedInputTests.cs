using HySparse.Onnx.Tests.Infrastructure;
using Microsoft.ML.OnnxRuntime;
using static HySparse.Onnx.HySparseOps;

namespace HySparse.Onnx.Tests;

/// <summary>
/// Each case breaks exactly one rule of docs/ops.md on an otherwise valid call. The session must report
/// an <see cref="OnnxRuntimeException"/> (at creation or at run time) whose message names the op and the
/// offending input or attribute — and the process must survive to run the next case.
/// </summary>
[TestClass]
public sealed class MalformedInputTests
{
    // B=1, H_q=4, H_kv=2, D=64, S=5, P=11 (T=16), block size 4 (4 blocks), K=2.
    private static AttentionData Data() => AttentionData.Random(new AttentionShape(1, 4, 2, 64, 5, 16), seed: 900);

    private static OpInvocation ValidFull() =>
        FullAttnCall.Build(Data(), new FullAttnOptions { BlockSize = 4, TopK = 2 }).WithoutOutputShapes();

    private static SparseAttnCall ValidSparseCall(int windowCache = 1) =>
        SparseScenarios.Random(new AttentionShape(1, 4, 2, 64, 5, 16), 901, SaSourceKind.Shared, CombineModes.Gate, windowCache,
                               blockSize: 4, topK: 2, window: 6, withGate: true, withSinks: true);

    private static OpInvocation ValidSparse(int windowCache = 1) => ValidSparseCall(windowCache).Build().WithoutOutputShapes();

    private static TestTensor Floats(params long[] shape) =>
        new(ElementType.Float32, shape, new TensorRandom(902).Uniform(TestTensor.ElementCount(shape), 1));

    private static void ExpectError(OpInvocation call, string opName, params string[] named)
    {
        // ValidBaseCalls_Run shows the unbroken calls run, so the error comes from the one broken rule.
        var exception = Assert.ThrowsExactly<OnnxRuntimeException>(() => call.Run(), $"expected {opName} to reject the call ({string.Join(" / ", named)})");
        StringAssert.Contains(exception.Message, opName, "the message must name the op");
        Assert.IsTrue(named.Any(n => exception.Message.Contains(n, StringComparison.Ordinal)),
                      $"the message must name one of [{string.Join(", ", named)}]: {exception.Message}");
    }

    [TestMethod]
    public void ValidBaseCalls_Run()
    {
        ValidFull().Run();
        ValidSparse().Run();
        ValidSparse(windowCache: 0).Run();
    }

    // ---- HySparseFullAttn -------------------------------------------------------------------------

    [TestMethod]
    public void Full_QueryOfRank2() =>
        ExpectError(With(ValidFull(), c => c.Inputs["query"] = Floats(5, 256)), FullAttn, "query");

    [TestMethod]
    public void Full_QueryRank4_KeyRank3() =>
        ExpectError(With(ValidFull(), c => c.Inputs["query"] = Floats(1, 4, 5, 64)), FullAttn, "query", "key");

    [TestMethod]
    public void Full_KvHeadsDoNotDivideHeads() =>
        ExpectError(With(ValidFull(), c => { c.Attributes[Attributes.NumHeads] = 3; c.Inputs["query"] = Floats(1, 5, 192); }),
                    FullAttn, Attributes.KvNumHeads, Attributes.NumHeads);

    [TestMethod]
    public void Full_QueryWidthNotDivisibleByHeads() =>
        ExpectError(With(ValidFull(), c => c.Inputs["query"] = Floats(1, 5, 250)), FullAttn, "query");

    [TestMethod]
    public void Full_KeyHeadSizeDiffers() =>
        ExpectError(With(ValidFull(), c => { c.Inputs["key"] = Floats(1, 5, 2 * 32); c.Inputs["value"] = Floats(1, 5, 2 * 32); }),
                    FullAttn, "key");

    [TestMethod]
    public void Full_PastLengthsDiffer() =>
        ExpectError(With(ValidFull(), c => c.Inputs["past_value"] = Floats(1, 2, 10, 64)), FullAttn, "past_value", "past_key");

    [TestMethod]
    public void Full_PastKeyWithoutPastValue() =>
        ExpectError(With(ValidFull(), c => c.Inputs.Remove("past_value")), FullAttn, "past_value");

    [TestMethod]
    public void Full_PastBatchDiffers() =>
        ExpectError(With(ValidFull(), c => { c.Inputs["past_key"] = Floats(2, 2, 11, 64); c.Inputs["past_value"] = Floats(2, 2, 11, 64); }),
                    FullAttn, "past_key");

    [TestMethod]
    public void Full_MaskLengthDiffersFromTotal() =>
        ExpectError(With(ValidFull(), c => c.Inputs["attention_mask"] = TestTensor.Int64s([1, 17], Enumerable.Repeat(1L, 17))),
                    FullAttn, "attention_mask");

    [TestMethod]
    public void Full_MaskValueNotZeroOrOne() =>
        ExpectError(With(ValidFull(), c => c.Inputs["attention_mask"] = TestTensor.Int64s([1, 16], Enumerable.Repeat(1L, 15).Append(2))),
                    FullAttn, "attention_mask");

    [TestMethod]
    public void Full_TopKZero() =>
        ExpectError(With(ValidFull(), c => c.Attributes[Attributes.TopK] = 0), FullAttn, Attributes.TopK);

    [TestMethod]
    public void Full_BlockSizeZero() =>
        ExpectError(With(ValidFull(), c => c.Attributes[Attributes.BlockSize] = 0), FullAttn, Attributes.BlockSize);

    [TestMethod]
    public void Full_MissingNumHeads() =>
        ExpectError(With(ValidFull(), c => c.Attributes.Remove(Attributes.NumHeads)), FullAttn, Attributes.NumHeads);

    [TestMethod]
    public void Full_KeyTypeDiffersFromQuery() =>
        ExpectError(With(ValidFull(), c => { c.Inputs["key"] = c.Inputs["key"].As(ElementType.Float16); }), FullAttn, "key", "type");

    // ---- HySparseSparseAttn -----------------------------------------------------------------------

    [TestMethod]
    [DataRow(new[] { 4, -1 }, DisplayName = "index = number of blocks")]
    [DataRow(new[] { 2, 1 }, DisplayName = "descending")]
    [DataRow(new[] { 1, 1 }, DisplayName = "repeated")]
    [DataRow(new[] { -1, 2 }, DisplayName = "block after -1")]
    [DataRow(new[] { -2, -1 }, DisplayName = "below -1")]
    [DataRow(new[] { 0, 1000000 }, DisplayName = "far out of range")]
    public void Sparse_BadBlockIndicesRow(int[] badRow)
    {
        var call = ValidSparse();
        var indices = call.Inputs["block_indices"].Data.ToArray();
        // Break row (b=0, g=1, s=3) only; every other row stays valid.
        var row = (1 * 5 + 3) * 2;
        indices[row] = badRow[0];
        indices[row + 1] = badRow[1];
        call.Inputs["block_indices"] = new TestTensor(ElementType.Int32, call.Inputs["block_indices"].Shape, indices);
        ExpectError(call, SparseAttn, "block_indices");
    }

    [TestMethod]
    public void Sparse_BlockIndicesForOtherTokenCount() =>
        ExpectError(With(ValidSparse(), c => c.Inputs["block_indices"] = TestTensor.Int32s([1, 2, 4, 2], Enumerable.Repeat(-1, 16))),
                    SparseAttn, "block_indices");

    [TestMethod]
    public void Sparse_UnknownCombine() =>
        ExpectError(With(ValidSparse(), c => c.Attributes[Attributes.Combine] = "foo"), SparseAttn, Attributes.Combine);

    [TestMethod]
    public void Sparse_WindowCacheTwo() =>
        ExpectError(With(ValidSparse(), c => c.Attributes[Attributes.WindowCache] = 2), SparseAttn, Attributes.WindowCache);

    [TestMethod]
    public void Sparse_WindowZero() =>
        ExpectError(With(ValidSparse(), c => c.Attributes[Attributes.Window] = 0), SparseAttn, Attributes.Window);

    [TestMethod]
    public void Sparse_GateWithUnionCombine() =>
        ExpectError(With(ValidSparse(), c => { c.Attributes[Attributes.Combine] = CombineModes.Union; c.Inputs.Remove("sinks"); }),
                    SparseAttn, "gate");

    [TestMethod]
    public void Sparse_GateOfWrongWidth() =>
        ExpectError(With(ValidSparse(), c => c.Inputs["gate"] = Floats(1, 5, 7)), SparseAttn, "gate");

    [TestMethod]
    public void Sparse_SinksShapedForUnionInGateMode() =>
        ExpectError(With(ValidSparse(), c => c.Inputs["sinks"] = Floats(1, 4)), SparseAttn, "sinks");

    [TestMethod]
    public void Sparse_SharedKeyWithoutSharedValue() =>
        ExpectError(With(ValidSparse(), c => c.Inputs.Remove("shared_value")), SparseAttn, "shared_value");

    [TestMethod]
    public void Sparse_SelectedKeyWithoutSelectedValue() =>
        ExpectError(With(ValidSparse(), c => c.Inputs["selected_key"] = Floats(1, 2, 5, 8, 64)), SparseAttn, "selected_value");

    [TestMethod]
    public void Sparse_SelectedKeyRowsNotTopKTimesBlockSize() =>
        ExpectError(With(ValidSparse(), c => { c.Inputs["selected_key"] = Floats(1, 2, 5, 7, 64); c.Inputs["selected_value"] = Floats(1, 2, 5, 7, 64); }),
                    SparseAttn, "selected_key");

    [TestMethod]
    public void Sparse_WindowCachePastLongerThanWindow() =>
        // window_cache = 1, T = 16, S = 5: the own past must hold min(w, T − S) = 6 tokens, not 8.
        ExpectError(With(ValidSparse(), c => { c.Inputs["past_key"] = Floats(1, 2, 8, 64); c.Inputs["past_value"] = Floats(1, 2, 8, 64); }),
                    SparseAttn, "past_key");

    [TestMethod]
    public void Sparse_RetrofitPastDisagreesWithSharedLength() =>
        // window_cache = 0 with shared KV of length 16 and S = 5: the own past must hold 11 tokens.
        ExpectError(With(ValidSparse(windowCache: 0), c => { c.Inputs["past_key"] = Floats(1, 2, 9, 64); c.Inputs["past_value"] = Floats(1, 2, 9, 64); }),
                    SparseAttn, "past_key", "shared_key");

    [TestMethod]
    public void Sparse_WindowCacheWithoutSharedKey() =>
        ExpectError(With(ValidSparse(), c => { c.Inputs.Remove("shared_key"); c.Inputs.Remove("shared_value"); }),
                    SparseAttn, "shared_key", Attributes.WindowCache);

    [TestMethod]
    public void Sparse_KvHeadsDoNotDivideHeads() =>
        ExpectError(With(ValidSparse(), c => c.Attributes[Attributes.KvNumHeads] = 3), SparseAttn, Attributes.KvNumHeads, Attributes.NumHeads);

    [TestMethod]
    public void Sparse_SharedKeyOfOtherHeadSize() =>
        ExpectError(With(ValidSparse(), c => { c.Inputs["shared_key"] = Floats(1, 2, 16, 32); c.Inputs["shared_value"] = Floats(1, 2, 16, 32); }),
                    SparseAttn, "shared_key");

    [TestMethod]
    public void Sparse_MissingBlockIndices() =>
        ExpectError(With(ValidSparse(), c => c.Inputs.Remove("block_indices")), SparseAttn, "block_indices");

    [TestMethod]
    public void ProcessSurvivesManyRejectedCalls()
    {
        for (var i = 0; i < 20; i++)
            Assert.ThrowsExactly<OnnxRuntimeException>(() => With(ValidSparse(), c => c.Attributes[Attributes.Combine] = $"bad{i}").Run());
        ValidSparse().Run();
    }

    private static OpInvocation With(OpInvocation call, Action<OpInvocation> change)
    {
        change(call);
        return call;
    }
}
