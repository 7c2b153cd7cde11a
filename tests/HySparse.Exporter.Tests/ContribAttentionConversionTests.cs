namespace HySparse.Exporter.Tests;

/// <summary>
/// GPT-2 style decoders on com.microsoft.Attention (projection inside the op, combined past_N/present_N
/// caches, unidirectional, raw 2-D mask from attention_mask) converted to HySparse ops, run side by
/// side with the source in ONNX Runtime, whose CPU kernel runs com.microsoft.Attention.
/// </summary>
[TestClass]
public sealed class ContribAttentionConversionTests
{
    private static readonly LlamaConfig Config = new() { Layers = 4, Hidden = 32, Heads = 4, KvHeads = 4, HeadDim = 8, Ffn = 40, Vocab = 47, Seed = 31 };
    private const string AnchorOfLayer1 = "/model/layers.1/self_attn/Attention";

    private static ModelProto SourceModel(ContribAttentionOptions? options = null, LlamaConfig? config = null) =>
        LlamaModelBuilder.Build(config ?? Config, LlamaAttentionStyle.ContribAttention, contribAttention: options);

    [TestMethod]
    public void SourceModelIgnoresLeftPaddingAsItsMaskSays()
    {
        // The builder's model itself: ONNX Runtime's Attention kernel hides padded keys and the learned
        // positions start at the first real token, so a left-padded row computes what it computes alone.
        var model = SourceModel().ToByteArray();
        var padded = DecoderInputs.Random(Config, batch: 2, past: 0, newTokens: 9, leftPadding: [0, 4], seed: 5);
        var alone = new DecoderInputs
        {
            Batch = 1, InputIds = padded.InputIds[13..], Mask = [1, 1, 1, 1, 1],
            PastKeys = [.. Enumerable.Repeat(Array.Empty<float>(), Config.Layers)], PastValues = [.. Enumerable.Repeat(Array.Empty<float>(), Config.Layers)],
        };
        var batch = DecoderRunner.Run(model, Config, padded);
        var single = DecoderRunner.Run(model, Config, alone);
        Close.Assert(single.Logits, batch.Logits[((9 + 4) * Config.Vocab)..], 1e-4, "row 1's real tokens");
    }

    [TestMethod]
    public void BuilderRefusesGroupedKvHeads()
    {
        var error = Assert.ThrowsExactly<ArgumentException>(() => SourceModel(config: Config with { KvHeads = 2 }));
        StringAssert.Contains(error.Message, "one head count");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DataRow(5, 4, 3, true, true, DisplayName = "every block selected (K·B ≥ T), small window")]
    [DataRow(1, 4, 19, true, true, DisplayName = "window covers the context (w ≥ T), one block")]
    [DataRow(5, 4, 3, false, true, DisplayName = "every block selected, no projection bias")]
    [DataRow(5, 4, 3, true, false, DisplayName = "every block selected, no mask_index (causal only)")]
    public void ConvertedModelEqualsTheSourceWhenSelectionAndWindowCoverTheContext(int topK, int blockSize, int window, bool bias, bool mask)
    {
        var parameters = new HybridParameters { TopK = topK, BlockSize = blockSize, Window = window };
        var source = SourceModel(new ContribAttentionOptions { ProjectionBias = bias, PaddingMask = mask });
        var (hybrid, report) = HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio("1:2"), Parameters = parameters });
        Assert.AreEqual(AttentionStyle.ContribAttention, report.Style);
        // ONNX Runtime 1.31's CPU Attention kernel crashes the process when the optional bias is
        // omitted, so a model without one is compared with the same model given a zero bias.
        var reference = bias ? source : WithZeroBias(SourceModel(new ContribAttentionOptions { PaddingMask = mask }));
        MultiHeadAttentionConversionTests.AssertConvertedEqualsSource(reference, hybrid, Config);
    }

    private static ModelProto WithZeroBias(ModelProto model)
    {
        var initializers = model.Graph.Initializer;
        for (var i = 0; i < initializers.Count; i++)
            if (initializers[i].Name.EndsWith(".c_attn.bias", StringComparison.Ordinal))
                initializers[i] = Tensors.Float(initializers[i].Name, [.. initializers[i].Dims], new float[initializers[i].Dims[0]]);
        return model;
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DataRow(TensorProto.Types.DataType.Int32, DisplayName = "int32 attention_mask, the op's mask_index itself")]
    [DataRow(TensorProto.Types.DataType.Float, DisplayName = "float attention_mask cast to int32")]
    public void AnInt32OrFloatMaskReachesTheOpsThroughOneSharedCastAndConverts(TensorProto.Types.DataType maskType)
    {
        var source = SourceModel(new ContribAttentionOptions { AttentionMaskType = maskType });
        var (hybrid, _) = HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio("1:2"), Parameters = new HybridParameters { TopK = 5, BlockSize = 4, Window = 3 } });

        var cast = hybrid.Graph.Node.Single(n => n.OpType == "Cast" && n.Output[0].StartsWith("hysparse.", StringComparison.Ordinal));
        Assert.AreEqual(DecoderNames.AttentionMask, cast.Input[0]);
        Assert.AreEqual((long)TensorProto.Types.DataType.Int64, cast.Attribute.Single(a => a.Name == "to").I);
        foreach (var op in hybrid.Graph.Node.Where(n => n.Domain == HySparseOps.Domain))
            Assert.AreEqual(cast.Output[0], op.Input[op.OpType == HySparseOps.FullAttn ? 5 : 8], op.Name);
        Assert.AreEqual(maskType, (TensorProto.Types.DataType)hybrid.Graph.Input.Single(i => i.Name == DecoderNames.AttentionMask).Type.TensorType.ElemType, "interface unchanged");
        MultiHeadAttentionConversionTests.AssertConvertedEqualsSource(source, hybrid, Config);
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void KvSharingWithAWindowOverTheContextEqualsTheSourceAndKeepsCombinedWindowCaches()
    {
        var parameters = new HybridParameters { TopK = 1, BlockSize = 4, Window = 19, Mode = HybridMode.KvSharing };
        var source = SourceModel();
        var (hybrid, report) = HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio("1:2"), Parameters = parameters });

        // Layout 1:2 over 4 layers, last full: FSSF. The sparse layers' combined caches are window caches.
        CollectionAssert.AreEqual(new[] { "past_1", "past_2", "present_1", "present_2" }, report.WindowCaches.ToArray());
        StringAssert.Contains(report.InterfaceChanges, "of the 2 sparse layer(s)");
        foreach (var name in new[] { "past_1", "present_2" })
        {
            var declared = hybrid.Graph.Input.Concat(hybrid.Graph.Output).Single(v => v.Name == name).Type.TensorType.Shape.Dim;
            Assert.HasCount(5, declared);
            StringAssert.Contains(declared[3].DimParam, "window_length", name);
        }

        // w = 19 ≥ T: every key is in the window, read from the layer's own cache, so this is the source.
        var expected = DecoderRunner.PrefillThenDecode(source.ToByteArray(), Config, decodeSteps: 3);
        var actual = DecoderRunner.PrefillThenDecode(hybrid.ToByteArray(), Config, decodeSteps: 3, o => o.RegisterHySparseOps());
        for (var step = 0; step < expected.Count; step++)
            Close.AssertLogitsOfRealTokens(expected[step].Inputs, Config.Vocab, expected[step].Outputs.Logits, actual[step].Outputs.Logits, 1e-4, $"step {step}");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void SmallTopKRunsAndMatchesTheKvAccounting() =>
        MultiHeadAttentionConversionTests.AssertSmallTopKChangesTheResultAndMatchesTheKvAccounting(SourceModel(), Config, "contribattention");

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void KvCacheDecoderCarriesCombinedCachesAndTheSparseLayersKeepOnlyTheirWindow()
    {
        var parameters = new HybridParameters { TopK = 2, BlockSize = 4, Window = 6, Mode = HybridMode.KvSharing };
        var (hybrid, report) = HybridConverter.Convert(SourceModel(), new ConversionOptions { Layout = LayoutSpec.Ratio("1:2"), Parameters = parameters });
        using var session = TestSessions.Open(hybrid.ToByteArray());
        using var decoder = new KvCacheDecoder(session, batchSize: 2);
        Assert.AreEqual(Config.Layers, decoder.CacheTensorCount, "one combined cache per layer");

        decoder.Step(Enumerable.Range(0, 24).Select(i => (long)(i % Config.Vocab)).ToArray());
        for (var step = 0; step < 3; step++) decoder.Step([3, 5]);

        // FSSF at T = 15: full layers keep every token, sparse layers the last w = 6.
        CollectionAssert.AreEqual(new long[] { 15, 6, 6, 15 }, decoder.CacheLengths.ToArray());
        Assert.AreEqual(2 * report.KvAt([15]).Single().KvSharingCache, decoder.KvCacheBytes);
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void CliConvertsAndVerifiesInRetrofitAndWithKvSharing()
    {
        using var dir = new ModelDirectory();
        var (convertOutput, _, _) = MultiHeadAttentionConversionTests.AssertCliConversionsVerify(dir, dir.WriteModel("gpt2.onnx", SourceModel()));
        StringAssert.Contains(convertOutput, "contribattention");
    }

    [TestMethod]
    public void ConversionRebuildsProjectionAndCombinedCachesAroundTheOpAndKeepsTheInterface()
    {
        var source = SourceModel();
        var (hybrid, report) = HybridConverter.Convert(source, new ConversionOptions());
        var nodes = hybrid.Graph.Node;
        NodeProto ProducerOf(string tensor) => nodes.Single(n => n.Output.Contains(tensor));
        var graph = new HySparse.Graph.GraphIndex(hybrid.Graph);

        Assert.IsFalse(nodes.Any(n => n.OpType == "Attention"));
        Assert.IsFalse(nodes.Any(n => n.OpType == "Cast" && n.Input[0] == DecoderNames.AttentionMask), "the int32 mask_index is no longer needed");
        CollectionAssert.AreEqual(source.Graph.Input.Select(i => i.ToString()).ToArray(), hybrid.Graph.Input.Select(i => i.ToString()).ToArray(), "inputs unchanged");
        CollectionAssert.AreEqual(source.Graph.Output.Select(o => o.ToString()).ToArray(), hybrid.Graph.Output.Select(o => o.ToString()).ToArray(), "outputs unchanged");
        CollectionAssert.AreEqual(new int?[] { 0, 1, 2, 3 }, report.Layers.Select(l => l.CacheIndex).ToArray());

        var ops = nodes.Where(n => n.Domain == HySparseOps.Domain).ToList();
        Assert.HasCount(4, ops);
        for (var layer = 0; layer < ops.Count; layer++)
        {
            var op = ops[layer];
            // Q, K, V: Split(Add(MatMul(normed input, c_attn.weight), c_attn.bias)).
            var split = ProducerOf(op.Input[0]);
            Assert.AreEqual("Split", split.OpType);
            CollectionAssert.AreEqual(split.Output.ToArray(), op.Input.Take(3).ToArray());
            var biasAdd = ProducerOf(split.Input[0]);
            Assert.AreEqual("Add", biasAdd.OpType);
            Assert.AreEqual($"model.layers.{layer}.attn.c_attn.bias", biasAdd.Input[1]);
            var projection = ProducerOf(biasAdd.Input[0]);
            Assert.AreEqual("MatMul", projection.OpType);
            Assert.AreEqual($"model.layers.{layer}.attn.c_attn.weight", projection.Input[1]);

            // The past halves: Gather(past_N, 0 | 1, axis 0).
            foreach (var (input, index) in new[] { (3, 0L), (4, 1L) })
            {
                var gather = ProducerOf(op.Input[input]);
                Assert.AreEqual("Gather", gather.OpType);
                Assert.AreEqual(DecoderNames.CombinedPast(layer), gather.Input[0]);
                CollectionAssert.AreEqual(new[] { index }, graph.IntConstant(gather.Input[1]));
            }
            Assert.AreEqual(DecoderNames.AttentionMask, op.Input[op.OpType == HySparseOps.FullAttn ? 5 : 8], op.Name);

            // present_N = Concat(Unsqueeze(present key), Unsqueeze(present value)) on axis 0.
            var concat = ProducerOf(DecoderNames.CombinedPresent(layer));
            Assert.AreEqual("Concat", concat.OpType);
            Assert.AreEqual(0, concat.Attribute.Single(a => a.Name == "axis").I);
            CollectionAssert.AreEqual(new[] { op.Output[1], op.Output[2] }, concat.Input.Select(i => ProducerOf(i)).Select(u => u.Input[0]).ToArray());
        }
        Assert.AreEqual("contribattention", hybrid.MetadataProps.Single(p => p.Key == HybridMetadata.SourceStyle).Value);
        Assert.AreEqual("none", report.InterfaceChanges);
    }

    [TestMethod]
    public void WithoutABiasTheProjectionFeedsTheSplitDirectly()
    {
        var (hybrid, _) = HybridConverter.Convert(SourceModel(new ContribAttentionOptions { ProjectionBias = false }), new ConversionOptions());
        var nodes = hybrid.Graph.Node;
        var op = nodes.First(n => n.Domain == HySparseOps.Domain);
        var split = nodes.Single(n => n.Output.Contains(op.Input[0]));
        Assert.AreEqual("MatMul", nodes.Single(n => n.Output.Contains(split.Input[0])).OpType);
    }

    /// <summary>A change the ops cannot follow, and the words the refusal must use.</summary>
    public static IEnumerable<object[]> Unconvertible =>
    [
        ["not causal", (Action<NodeProto>)(n => n.Attribute.Remove(n.Attribute.Single(a => a.Name == "unidirectional"))), "not causal"],
        ["unidirectional=0", (Action<NodeProto>)(n => n.Attribute.Single(a => a.Name == "unidirectional").I = 0), "not causal"],
        ["attention_bias", (Action<NodeProto>)(n => n.Input.Add("model.embed_tokens.weight")), "'attention_bias'"],
        ["past_sequence_length", (Action<NodeProto>)(n => n.Input.AddRange(["", DecoderNames.AttentionMask])), "'past_sequence_length'"],
        ["mask from an int64 input without a Cast", (Action<NodeProto>)(n => n.Input[3] = DecoderNames.InputIds), "mask_index"],
        ["mask computed, not a graph input", (Action<NodeProto>)(n => n.Input[3] = n.Input[0]), "mask_index"],
        ["do_rotary", (Action<NodeProto>)(n => n.Attribute.Add(Attr.Int("do_rotary", 1))), "rotary"],
        ["unequal qkv_hidden_sizes", (Action<NodeProto>)(n => n.Attribute.Add(Attr.Ints("qkv_hidden_sizes", 32, 32, 16))), "qkv_hidden_sizes"],
        ["past_present_share_buffer", (Action<NodeProto>)(n => n.Attribute.Add(Attr.Int("past_present_share_buffer", 1))), "past_present_share_buffer"],
        ["mask_filter_value", (Action<NodeProto>)(n => n.Attribute.Add(Attr.Float("mask_filter_value", -1f))), "mask_filter_value"],
        ["unknown attribute", (Action<NodeProto>)(n => n.Attribute.Add(Attr.Int("future_flag", 1))), "future_flag"],
        ["no past", (Action<NodeProto>)(n => n.Input.RemoveAt(4)), "'past'"],
        ["weights of another width", (Action<NodeProto>)(n => n.Input[1] = "model.layers.1.mlp.gate_proj.weight"), "expected [hidden, 96]"],
        ["bias of another width", (Action<NodeProto>)(n => n.Input[2] = "model.layers.1.input_layernorm.weight"), "expected [96]"],
        ["past not [2,B,H,P,D]", (Action<NodeProto>)(n => n.Input[4] = DecoderNames.AttentionMask), "5-D shape [2, B, H, length, D]"],
        ["past not a graph input", (Action<NodeProto>)(n => n.Input[4] = n.Input[0]), "is not a graph input"],
    ];

    [TestMethod]
    [DynamicData(nameof(Unconvertible))]
    public void WhatTheOpsCannotExpressIsRefusedNamingNodeAndReason(string what, Action<NodeProto> change, string reason)
    {
        var model = SourceModel(config: Config with { Layers = 2 });
        change(model.Graph.Node.Where(n => n.OpType == "Attention").ElementAt(1));

        GroupQueryAttentionConversionTests.AssertRefusedAt(model, AnchorOfLayer1, "com.microsoft.Attention", reason, what);
    }

    [TestMethod]
    public void ARefusedFileConversionWritesNothing()
    {
        using var dir = new ModelDirectory();
        var model = SourceModel();
        model.Graph.Node.First(n => n.OpType == "Attention").Attribute.Single(a => a.Name == "unidirectional").I = 0;
        var input = dir.WriteModel("gpt2.onnx", model);

        var error = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.ConvertFile(input, dir.File("out.onnx"), new ConversionOptions()));

        Assert.AreEqual(ConversionError.UnconvertibleLayers, error.Error);
        Assert.IsFalse(File.Exists(dir.File("out.onnx")), "a refused conversion must not write its output");
    }

    [TestMethod]
    public void KvBufferIsRefusedForCombinedCachesWithTheReason()
    {
        var error = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.Convert(SourceModel(), new ConversionOptions { KvBuffer = true }));

        Assert.AreEqual(ConversionError.UnconvertibleLayers, error.Error);
        Assert.HasCount(4, error.Layers);
        StringAssert.Contains(error.Layers[0].Reason, "combined past/present cache 'past_0'");
    }

    [TestMethod]
    public void InspectReportsTheStyleAndTheKvFiguresOfTheCombinedCaches()
    {
        using var dir = new ModelDirectory();
        var model = dir.WriteModel("gpt2.onnx", SourceModel());
        var converted = dir.File("gpt2.hysparse.onnx");

        var dense = CliTests.Run("inspect", model);
        Assert.AreEqual(ExitCodes.Success, dense.Code, dense.Err);
        StringAssert.Contains(dense.Out, "contribattention");
        var inspected = ModelInspector.Inspect(SourceModel(), new ConversionOptions(), [64]);
        Assert.AreEqual("contribattention", inspected.SourceStyle);
        Assert.IsTrue(inspected.Layers.All(l => l.HasKvCache && l.HeadSize == Config.HeadDim && l.KvNumHeads == Config.Heads));
        // 4 layers × 2 (K and V) × 4 heads × 8 × 4 bytes per token.
        Assert.AreEqual(64L * 4 * 2 * 4 * 8 * 4, inspected.Kv.Single().DenseCache);

        var convert = CliTests.Run("convert", model, "-o", converted, "--ratio", "1:3", "-q");
        Assert.AreEqual(ExitCodes.Success, convert.Code, convert.Err);
        var after = CliTests.Run("inspect", converted);
        Assert.AreEqual(ExitCodes.Success, after.Code, after.Err);
        StringAssert.Contains(after.Out, "contribattention");
        var reread = ModelInspector.Inspect(ModelFile.Load(converted), new ConversionOptions(), [64]);
        Assert.AreEqual(inspected.Kv.Single().DenseCache, reread.Kv.Single().DenseCache, "the converted model's geometry is read through the Gather of its combined past");
    }
}
