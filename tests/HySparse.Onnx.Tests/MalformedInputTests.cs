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

    // Shared-buffer mode: B=2, capacity 16, a prompt of S=5 with rows of 5 and 3 real tokens; block size 4, K=2.
    private static SharedBufferStep SharedStep() =>
        new SharedBufferScenario(2, 4, 2, 64, 16, seed: 903, ElementType.Float32).Next(0, [5, 3]);

    private static OpInvocation ValidSharedFull()
    {
        var step = SharedStep();
        return SharedBufferCalls.Full(step, step.Scenario.GarbageBuffer(), step.Scenario.GarbageBuffer(),
                                      new FullAttnOptions { BlockSize = 4, TopK = 2 }).WithoutOutputShapes();
    }

    private static OpInvocation ValidSharedSparse()
    {
        var step = SharedStep();
        var sc = step.Scenario;
        return new SparseAttnCall
        {
            Shape = new AttentionShape(2, 4, 2, 64, 5, 16),
            Query = step.Query, Key = step.OwnKey, Value = step.OwnValue,
            PastKey = sc.GarbageBuffer(), PastValue = sc.GarbageBuffer(), PastLength = 16,
            SharedKey = sc.Key, SharedValue = sc.Value,
            // Block 0 holds the first token of every row, so [0, -1] is valid for every token.
            BlockIndices = Enumerable.Range(0, 2 * 2 * 5).SelectMany(_ => new[] { 0, -1 }).ToArray(), TopK = 2,
            Gate = step.Gate, Sinks = sc.Sinks, BlockSize = 4, Window = 6, Combine = CombineModes.Gate,
            SeqlensK = step.SeqlensK, TotalSequenceLength = step.TotalSequenceLength,
        }.Build().WithoutOutputShapes();
    }

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
        ValidSharedFull().Run();
        ValidSharedSparse().Run();
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
    [DataRow(FullAttn, Attributes.TopK, 0, DisplayName = "Full_TopKZero")]
    [DataRow(FullAttn, Attributes.BlockSize, 0, DisplayName = "Full_BlockSizeZero")]
    [DataRow(SparseAttn, Attributes.Combine, "foo", DisplayName = "Sparse_UnknownCombine")]
    [DataRow(SparseAttn, Attributes.WindowCache, 2, DisplayName = "Sparse_WindowCacheTwo")]
    [DataRow(SparseAttn, Attributes.Window, 0, DisplayName = "Sparse_WindowZero")]
    public void AttributeValueOutOfRangeIsRefused(string op, string attribute, object value) =>
        ExpectError(With(op == FullAttn ? ValidFull() : ValidSparse(), c => c.Attributes[attribute] = value), op, attribute);

    [TestMethod]
    public void Full_MissingNumHeads() =>
        ExpectError(With(ValidFull(), c => c.Attributes.Remove(Attributes.NumHeads)), FullAttn, Attributes.NumHeads);

    [TestMethod]
    public void Full_KeyTypeDiffersFromQuery() =>
        // One kernel is registered per element type, so ONNX Runtime itself rejects the node while building
        // the session ("no kernel def matches node inputs"): its message names the op and the node, not the input.
        ExpectError(With(ValidFull(), c => { c.Inputs["key"] = c.Inputs["key"].As(ElementType.Float16); }), FullAttn, "key", "full_layer");

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

    // ---- Shared-buffer mode (seqlens_k / total_sequence_length) ----------------------------------

    private static TestTensor Seqlens(params int[] values) => TestTensor.Int32s([values.Length], values);

    [TestMethod]
    public void SharedFull_SeqlensWithoutTotalSequenceLength() =>
        ExpectError(With(ValidSharedFull(), c => c.Inputs.Remove("total_sequence_length")), FullAttn, "total_sequence_length");

    [TestMethod]
    public void SharedSparse_TotalSequenceLengthWithoutSeqlens() =>
        ExpectError(With(ValidSharedSparse(), c => c.Inputs.Remove("seqlens_k")), SparseAttn, "seqlens_k");

    [TestMethod]
    public void SharedFull_RowLongerThanCapacity() =>
        // Row 0: seqlens_k 16 means 17 valid tokens in a buffer of 16.
        ExpectError(With(ValidSharedFull(), c => { c.Inputs["seqlens_k"] = Seqlens(16, 2); c.Inputs["total_sequence_length"] = TestTensor.Int32s([], [17]); }),
                    FullAttn, "seqlens_k");

    [TestMethod]
    public void SharedSparse_RowLongerThanCapacity() =>
        ExpectError(With(ValidSharedSparse(), c => { c.Inputs["seqlens_k"] = Seqlens(4, 20); c.Inputs["total_sequence_length"] = TestTensor.Int32s([], [21]); }),
                    SparseAttn, "seqlens_k");

    [TestMethod]
    public void SharedFull_NegativeSeqlens() =>
        ExpectError(With(ValidSharedFull(), c => { c.Inputs["seqlens_k"] = Seqlens(4, -1); c.Inputs["total_sequence_length"] = TestTensor.Int32s([], [5]); }),
                    FullAttn, "seqlens_k");

    [TestMethod]
    public void SharedFull_TotalSequenceLengthNotMaxPlusOne() =>
        ExpectError(With(ValidSharedFull(), c => c.Inputs["total_sequence_length"] = TestTensor.Int32s([], [7])), FullAttn, "total_sequence_length");

    [TestMethod]
    public void SharedSparse_TotalSequenceLengthNotMaxPlusOne() =>
        ExpectError(With(ValidSharedSparse(), c => c.Inputs["total_sequence_length"] = TestTensor.Int32s([1], [4])), SparseAttn, "total_sequence_length");

    [TestMethod]
    public void SharedFull_MaskGiven() =>
        ExpectError(With(ValidSharedFull(), c => c.Inputs["attention_mask"] = TestTensor.Int64s([2, 16], Enumerable.Repeat(1L, 32))),
                    FullAttn, "attention_mask");

    [TestMethod]
    public void SharedSparse_MaskGiven() =>
        ExpectError(With(ValidSharedSparse(), c => c.Inputs["attention_mask"] = TestTensor.Int64s([2, 16], Enumerable.Repeat(1L, 32))),
                    SparseAttn, "attention_mask");

    [TestMethod]
    public void SharedSparse_WindowCache() =>
        ExpectError(With(ValidSharedSparse(), c => c.Attributes[Attributes.WindowCache] = 1), SparseAttn, Attributes.WindowCache);

    [TestMethod]
    public void SharedFull_WithoutPastBuffer() =>
        ExpectError(With(ValidSharedFull(), c => { c.Inputs.Remove("past_key"); c.Inputs.Remove("past_value"); }), FullAttn, "past_key");

    [TestMethod]
    public void SharedFull_SeqlensOfWrongType() =>
        // The schema declares int32, so ONNX Runtime rejects the node when the session is built.
        ExpectError(With(ValidSharedFull(), c => c.Inputs["seqlens_k"] = TestTensor.Int64s([2], [4L, 2L])), FullAttn, "seqlens_k", "full_layer");

    [TestMethod]
    public void SharedFull_SeqlensOfWrongLength() =>
        ExpectError(With(ValidSharedFull(), c => c.Inputs["seqlens_k"] = Seqlens(4)), FullAttn, "seqlens_k");

    [TestMethod]
    public void SharedFull_TotalSequenceLengthOfTwoElements() =>
        ExpectError(With(ValidSharedFull(), c => c.Inputs["total_sequence_length"] = TestTensor.Int32s([2], [5, 5])), FullAttn, "total_sequence_length");

    [TestMethod]
    public void SharedSparse_SharedKeyOfOtherCapacity() =>
        ExpectError(With(ValidSharedSparse(), c => { c.Inputs["shared_key"] = Floats(2, 2, 12, 64); c.Inputs["shared_value"] = Floats(2, 2, 12, 64); }),
                    SparseAttn, "shared_key");

    [TestMethod]
    public void SharedSparse_BlockBeyondTheRowsLength()
    {
        // Row 1 holds 3 tokens: one block of 4. Block 2 exists in the buffer (16 positions) but not in the row.
        var call = ValidSharedSparse();
        var indices = call.Inputs["block_indices"].Data.ToArray();
        indices[(1 * 2 * 5 + 0) * 2] = 2;
        call.Inputs["block_indices"] = new TestTensor(ElementType.Int32, call.Inputs["block_indices"].Shape, indices);
        ExpectError(call, SparseAttn, "block_indices");
    }

    // ---- Attribute types and limits: refused when the session is created --------------------------

    private static void ExpectSessionError(OpInvocation call, string opName, params string[] named)
    {
        using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        options.RegisterHySparseOps();
        var model = call.BuildModel();
        var exception = Assert.ThrowsExactly<OnnxRuntimeException>(() => new InferenceSession(model, options).Dispose(),
                                                                 $"expected {opName} to refuse the node when the session is created");
        foreach (var text in named.Prepend(opName).Append($"'{call.NodeName}'"))
            StringAssert.Contains(exception.Message, text, "the message must name the op, the node and the attribute");
    }

    [TestMethod]
    // Issue 14: a float top_k used to become the default 16 silently.
    [DataRow(FullAttn, Attributes.TopK, 2.5f, "must be an int, got a float", DisplayName = "Full_TopKOfTypeFloat")]
    [DataRow(FullAttn, Attributes.BlockSize, "4", "got a string", DisplayName = "Full_BlockSizeOfTypeString")]
    [DataRow(FullAttn, Attributes.Scale, "0.125", "must be a float, got a string", DisplayName = "Full_ScaleOfTypeString")]
    [DataRow(FullAttn, Attributes.NumHeads, new long[] { 4 }, "must be an int", DisplayName = "Full_NumHeadsAsAList")]
    [DataRow(SparseAttn, Attributes.Combine, 1f, "must be a string, got a float", DisplayName = "Sparse_CombineOfTypeFloat")]
    [DataRow(SparseAttn, Attributes.Window, "6", "must be an int", DisplayName = "Sparse_WindowOfTypeString")]
    [DataRow(SparseAttn, Attributes.WindowCache, 1f, "must be an int", DisplayName = "Sparse_WindowCacheOfTypeFloat")]
    public void AttributeOfTheWrongTypeIsRefused(string op, string attribute, object value, string message) =>
        ExpectSessionError(With(op == FullAttn ? ValidFull() : ValidSparse(), c => c.Attributes[attribute] = value), op, attribute, message);

    [TestMethod]
    public void Full_TopKAboveTheLimit()
    {
        // Issue 14: top_k = 2^31 - 1 on a 5-token call asked ONNX Runtime for hundreds of GB.
        ExpectSessionError(With(ValidFull(), c => c.Attributes[Attributes.TopK] = int.MaxValue), FullAttn, Attributes.TopK, "<= 65536");
        ExpectSessionError(With(ValidFull(), c => c.Attributes[Attributes.TopK] = 65537), FullAttn, Attributes.TopK, "<= 65536");
    }

    [TestMethod]
    public void BlockSizeAboveTheLimit()
    {
        ExpectSessionError(With(ValidFull(), c => c.Attributes[Attributes.BlockSize] = 4097), FullAttn, Attributes.BlockSize, "<= 4096");
        ExpectSessionError(With(ValidSparse(), c => c.Attributes[Attributes.BlockSize] = 1 << 20), SparseAttn, Attributes.BlockSize, "<= 4096");
    }

    [TestMethod]
    public void Full_LargestTopKRunsWhenOnlyIndicesAreAsked()
    {
        // K = 65536 slots of which 4 hold blocks: block_indices [1, 2, 5, 65536] is fine.
        var call = FullAttnCall.Build(Data(), new FullAttnOptions { BlockSize = 4, TopK = 65536, WantScores = false, WantSelected = false });
        var indices = call.Run()["block_indices"];
        CollectionAssert.AreEqual(new long[] { 1, 2, 5, 65536 }, indices.Shape);
        Assert.AreEqual(-1, indices.Data[65535]);
    }

    [TestMethod]
    public void Full_SelectedOutputsBeyondTheElementLimitAreRefusedByName()
    {
        // selected_key would be [1, 2, 5, 65536*4096, 64]: refused at run time, before anything is allocated.
        var call = With(ValidFull(), c => { c.Attributes[Attributes.TopK] = 65536; c.Attributes[Attributes.BlockSize] = 4096; });
        var exception = Assert.ThrowsExactly<OnnxRuntimeException>(() => call.Run());
        foreach (var text in new[] { FullAttn, "'full_layer'", "selected_key", "[1, 2, 5, 268435456, 64]", "top_k 65536" })
            StringAssert.Contains(exception.Message, text);
    }

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
