namespace HySparse.Exporter.Tests;

/// <summary>
/// onnxruntime-genai style models (com.microsoft.GroupQueryAttention on a shared KV buffer) converted
/// to HySparse ops in shared-buffer mode, run side by side with the source in ONNX Runtime.
/// </summary>
[TestClass]
public sealed class GroupQueryAttentionConversionTests
{
    // Head size 32: partial rotary needs a cos cache width that is a multiple of 8 below D/2.
    private static readonly LlamaConfig Config = new() { Layers = 4, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 32, Ffn = 40, Vocab = 43, Seed = 31 };

    /// <summary>Positions per cache buffer in these runs.</summary>
    private const int Capacity = 24;

    public static IEnumerable<object[]> Variants =>
    [
        [new GroupQueryAttentionOptions()],
        [new GroupQueryAttentionOptions { DoRotary = false }],
        [new GroupQueryAttentionOptions { PackedQkv = true }],
        [new GroupQueryAttentionOptions { PackedQkv = true, RotaryInterleaved = true }],
    ];

    public static string VariantName(System.Reflection.MethodInfo method, object?[]? data) =>
        $"{method.Name}({(data![0] is GroupQueryAttentionOptions o ? $"rotary {(o.DoRotary ? "inside" : "outside")}{(o.RotaryInterleaved ? " interleaved" : "")}, {(o.PackedQkv ? "packed" : "separate")} QKV" : "?")})";

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DynamicData(nameof(Variants), DynamicDataDisplayName = nameof(VariantName))]
    public void ConvertedModelEqualsTheSourceWhenSelectionCoversEveryKey(GroupQueryAttentionOptions variant)
    {
        // At most 24 valid positions in blocks of 4: K = 6 selects every block, so union attention is dense.
        var parameters = new HybridParameters { TopK = 6, BlockSize = 4, Window = 3 };
        var source = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention, groupQuery: variant);
        var (hybrid, report) = HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1"), Parameters = parameters });
        Assert.AreEqual(AttentionStyle.GroupQueryAttention, report.Style);

        foreach (var (name, chunks, padding) in Scenarios)
        {
            var expected = BufferedRun(source.ToByteArray(), chunks, padding, withOps: false);
            var actual = BufferedRun(hybrid.ToByteArray(), chunks, padding, withOps: true);
            for (var step = 0; step < expected.Count; step++)
                AssertSameOnValidPositions(expected[step].Inputs, expected[step].Outputs, actual[step].Outputs, 1e-4, $"{name}, call {step}");
        }
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void PartialRotaryAndAnExplicitScaleAreCarriedOver()
    {
        // cos/sin caches of width D/4 rotate the first D/2 channels of each head (as phi-style models
        // do) and leave the rest; scale 0.2 instead of 1/√D.
        var source = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention);
        foreach (var table in new[] { "cos_cache", "sin_cache" })
        {
            var cache = source.Graph.Initializer.Single(i => i.Name == table);
            var (positions, half) = ((int)cache.Dims[0], (int)cache.Dims[1]);
            var full = Tensors.ReadFloats(cache);
            var narrow = Enumerable.Range(0, positions).SelectMany(p => full.Skip(p * half).Take(half / 2)).ToArray();
            source.Graph.Initializer.Remove(cache);
            source.Graph.Initializer.Add(Tensors.Float(table, [positions, half / 2], narrow));
        }
        foreach (var node in source.Graph.Node.Where(n => n.OpType == "GroupQueryAttention")) node.Attribute.Add(Attr.Float("scale", 0.2f));
        var (hybrid, _) = HybridConverter.Convert(source, new ConversionOptions
        {
            Layout = LayoutSpec.Ratio("1:1"),
            Parameters = new HybridParameters { TopK = 6, BlockSize = 4, Window = 3 },
        });
        var rotary = hybrid.Graph.Node.First(n => n.OpType == "RotaryEmbedding");
        Assert.AreEqual(Config.HeadDim / 2, Attr.GetInt(rotary, "rotary_embedding_dim", 0));

        var (name, chunks, padding) = Scenarios[0];
        var expected = BufferedRun(source.ToByteArray(), chunks, padding, withOps: false);
        var actual = BufferedRun(hybrid.ToByteArray(), chunks, padding, withOps: true);
        for (var step = 0; step < expected.Count; step++)
            AssertSameOnValidPositions(expected[step].Inputs, expected[step].Outputs, actual[step].Outputs, 1e-4, $"{name}, call {step}");
    }

    /// <summary>
    /// Two rows, the second right-padded by 3 in the prompt, then three decode steps (which write the
    /// second row's new tokens over its padding slots); and one row with a chunk after the prompt
    /// (GroupQueryAttention takes several new tokens after a past only for batch 1).
    /// </summary>
    private static readonly (string Name, int[] Chunks, int[] Padding)[] Scenarios =
    [
        ("padded batch of 2", [9, 1, 1, 1], [0, 3]),
        ("prompt, chunk, decode", [5, 4, 1, 1], [0]),
    ];

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void SmallTopKRunsKeepsTheBuffersAndMatchesTheKvAccounting()
    {
        var parameters = new HybridParameters { TopK = 1, BlockSize = 4, Window = 2 };
        var source = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention);
        var (hybrid, report) = HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio("1:3"), Parameters = parameters });
        Assert.AreEqual("FSSF", report.Layout.Letters);

        var dense = BufferedRun(source.ToByteArray(), [12, 1, 1], [0, 2], withOps: false);
        var runs = BufferedRun(hybrid.ToByteArray(), [12, 1, 1], [0, 2], withOps: true);

        var (inputs, outputs) = runs[^1];
        Assert.IsTrue(outputs.Logits.All(double.IsFinite), "logits must be finite");
        // 4 + 2 of 14 keys per sparse layer: the hybrid really computes something else than dense.
        var largestChange = outputs.Logits.Zip(dense[^1].Outputs.Logits, (h, d) => Math.Abs(h - d)).Max();
        Assert.IsGreaterThan(1e-3, largestChange);
        // The full layer is exact: its caches agree with the source's on every valid position.
        AssertCacheRowsEqual(inputs, dense[^1].Outputs, outputs, 0, 1e-4, "full layer 0");
        // Every layer's present is its buffer: [B, H_kv, C, D] whatever the context.
        var bufferElements = inputs.Batch * Config.KvHeads * Capacity * Config.HeadDim;
        foreach (var cache in outputs.PresentKeys.Concat(outputs.PresentValues)) Assert.HasCount(bufferElements, cache);
        // Retrofit keeps every layer's cache: at context C the formula gives what the buffers hold.
        AssertKvAccounting(hybrid, report, outputs, inputs.Batch, Capacity, "groupqueryattention");
    }

    /// <summary>
    /// The retrofit KV figure at <paramref name="context"/> equals the bytes of the caches a float32 run
    /// returned (per sequence), and <c>inspect</c> on the converted model reads back the same figures.
    /// </summary>
    internal static void AssertKvAccounting(ModelProto hybrid, ConversionReport report, DecoderOutputs outputs, int batch, long context, string sourceStyle)
    {
        var figures = report.KvAt([context]).Single();
        Assert.AreEqual(outputs.PresentKeys.Concat(outputs.PresentValues).Sum(k => (long)k.Length) * 4 / batch, figures.RetrofitCache);
        var inspected = ModelInspector.Inspect(hybrid, new ConversionOptions(), [context]);
        Assert.IsTrue(inspected.Converted);
        Assert.AreEqual(figures, inspected.Kv.Single());
        Assert.AreEqual(sourceStyle, inspected.SourceStyle);
    }

    [TestMethod]
    public void ConversionReplacesEveryOperatorAndDeclaresThePresentsAsBuffers()
    {
        var source = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention, groupQuery: new GroupQueryAttentionOptions { PackedQkv = true });
        var (hybrid, report) = HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1") });
        var nodes = hybrid.Graph.Node;

        Assert.IsFalse(nodes.Any(n => n.OpType == "GroupQueryAttention"));
        Assert.AreEqual(4, nodes.Count(n => n.OpType == "Split"), "packed QKV is split once per layer");
        Assert.AreEqual(8, nodes.Count(n => n.OpType == "RotaryEmbedding" && n.Domain == "com.microsoft"), "Q and K of every layer are rotated");
        Assert.AreEqual(1, nodes.Count(n => n.OpType == "Range"), "positions are built once and shared by the layers");
        foreach (var op in nodes.Where(n => n.Domain == HySparseOps.Domain))
        {
            var seqlensAt = op.OpType == HySparseOps.FullAttn ? 6 : 13;
            Assert.AreEqual(seqlensAt + 2, op.Input.Count, op.Name);
            StringAssert.Contains(op.Input[seqlensAt], "attn_mask_subgraph", "seqlens_k is the source's");
            Assert.AreEqual("", op.Input[5 + (op.OpType == HySparseOps.FullAttn ? 0 : 3)], "no attention_mask in shared-buffer mode");
            Assert.AreEqual(1f / MathF.Sqrt(32), op.Attribute.Single(a => a.Name == HySparseOps.Attributes.Scale).F);
        }
        foreach (var present in hybrid.Graph.Output.Where(o => o.Name.StartsWith("present.", StringComparison.Ordinal)))
            Assert.AreEqual(LlamaModelBuilder.PastDim, present.Type.TensorType.Shape.Dim[2].DimParam, present.Name);
        var metadata = hybrid.MetadataProps.ToDictionary(p => p.Key, p => p.Value);
        Assert.AreEqual(HybridMetadata.SharedBufferCache, metadata[HybridMetadata.KvCache]);
        StringAssert.Contains(report.InterfaceChanges, "shared buffers");
    }

    /// <summary>An attribute or input value the ops cannot compute exactly, and the words the refusal must use.</summary>
    public static IEnumerable<object[]> Unconvertible =>
    [
        ["local_window_size", (Action<NodeProto>)(n => SetInt(n, "local_window_size", 16)), "sliding-window"],
        ["softcap", (Action<NodeProto>)(n => n.Attribute.Add(Attr.Float("softcap", 30f))), "soft-capping"],
        ["smooth_softmax", (Action<NodeProto>)(n => n.Attribute.Add(Attr.Int("smooth_softmax", 1))), "softmax sink"],
        ["k_quant_type", (Action<NodeProto>)(n => n.Attribute.Add(Attr.String("k_quant_type", "PER_TENSOR"))), "quantized"],
        ["unknown attribute", (Action<NodeProto>)(n => n.Attribute.Add(Attr.Int("future_switch", 1))), "'future_switch'"],
        ["head_sink", (Action<NodeProto>)(n => SetInput(n, 11, "cos_cache")), "'head_sink'"],
        ["attention_bias", (Action<NodeProto>)(n => SetInput(n, 10, "cos_cache")), "'attention_bias'"],
        ["position_ids", (Action<NodeProto>)(n => SetInput(n, 9, "input_ids")), "'position_ids'"],
        ["output_qk", (Action<NodeProto>)(n => n.Output.Add("scores")), "'output_qk'"],
    ];

    [TestMethod]
    [DynamicData(nameof(Unconvertible))]
    public void WhatTheOpsCannotExpressIsRefusedNamingNodeAndReason(string what, Action<NodeProto> change, string reason)
    {
        var model = LlamaModelBuilder.Build(Config with { Layers = 2 }, LlamaAttentionStyle.GroupQueryAttention);
        var layer1 = model.Graph.Node.Where(n => n.OpType == "GroupQueryAttention").ElementAt(1);
        change(layer1);

        AssertRefusedAt(model, "/model/layers.1/self_attn/GroupQueryAttention", "com.microsoft.GroupQueryAttention", reason, what);
    }

    /// <summary>Conversion of <paramref name="model"/> fails for exactly the layer at <paramref name="node"/>, with a reason naming the operator and saying <paramref name="reason"/>.</summary>
    internal static void AssertRefusedAt(ModelProto model, string node, string opName, string reason, string what)
    {
        var error = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.Convert(model, new ConversionOptions()), what);
        Assert.AreEqual(ConversionError.UnconvertibleLayers, error.Error);
        var failure = error.Layers.Single();
        Assert.AreEqual(node, failure.Node);
        StringAssert.Contains(failure.Reason, opName);
        StringAssert.Contains(failure.Reason, reason);
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DynamicData(nameof(Variants), DynamicDataDisplayName = nameof(VariantName))]
    public void KvSharingTurnsSharedBuffersIntoConcatenatedCaches_WithWindowCachesForSparseLayers(GroupQueryAttentionOptions variant)
    {
        var model = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention, groupQuery: variant);
        var options = new ConversionOptions
        {
            Layout = LayoutSpec.Ratio("1:3", false),
            Parameters = new HybridParameters { TopK = 2, BlockSize = 4, Window = 6, Mode = HybridMode.KvSharing },
        };
        var (converted, report) = HybridConverter.Convert(model, options);
        Assert.AreEqual(HybridMetadata.ConcatenatedCache, report.Metadata[HybridMetadata.KvCache]);
        StringAssert.StartsWith(report.InterfaceChanges, "the shared KV buffers become concatenated caches");
        Assert.AreEqual(8, report.WindowCaches.Count);
        // The ops read lengths from the mask, not from seqlens_k / total_sequence_length.
        var ops = converted.Graph.Node.Where(n => n.Domain == HySparseOps.Domain).ToList();
        Assert.IsTrue(ops.All(n => n.Input.Contains("attention_mask")));
        Assert.IsFalse(ops.Any(n => n.Input.Count > 13 && n.Input[13].Length > 0), "a sparse op still reads seqlens_k");

        // Run as a concatenating decoder, 3 chunks: the full layers' (0 and 3: FSSF) caches grow, the sparse layers' stay at the window.
        using var session = TestSessions.Open(converted.ToByteArray());
        using var decoder = new KvCacheDecoder(session, batchSize: 2);
        var random = new Random(5);
        long[] Tokens(int n) => Enumerable.Range(0, 2 * n).Select(_ => (long)random.Next(1, Config.Vocab)).ToArray();
        foreach (var n in new[] { 9, 1, 3 })
        {
            var logits = decoder.Step(Tokens(n));
            Assert.IsTrue(logits.All(float.IsFinite));
        }
        CollectionAssert.AreEqual(new long[] { 13, 13, 6, 6, 6, 6, 13, 13 }, decoder.CacheLengths.ToArray());

    }

    [TestMethod]
    public void KvSharingOfSharedBuffersIsRefusedWithoutAnAttentionMaskInput()
    {
        var model = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention);
        // The same model with its mask input under another name: the lengths cannot be tied to it.
        foreach (var node in model.Graph.Node)
            for (var i = 0; i < node.Input.Count; i++)
                if (node.Input[i] == "attention_mask") node.Input[i] = "mask";
        model.Graph.Input.Single(i => i.Name == "attention_mask").Name = "mask";
        var options = new ConversionOptions { Parameters = new HybridParameters { Mode = HybridMode.KvSharing } };

        var error = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.Convert(model, options));

        Assert.AreEqual(ConversionError.UnconvertibleLayers, error.Error);
        Assert.HasCount(4, error.Layers);
        StringAssert.Contains(error.Layers[0].Reason, "'attention_mask' graph input");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void CliConvertsInspectsAndVerifiesASharedBufferModel()
    {
        using var dir = new ModelDirectory();
        var model = dir.WriteModel("genai.onnx", LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention));
        var converted = dir.File("genai.hysparse.onnx");

        var convert = CliTests.Run("convert", model, "-o", converted, "--ratio", "1:1", "--top-k", "7", "--block-size", "4", "--window", "4", "--json");
        Assert.AreEqual(ExitCodes.Success, convert.Code, convert.Err);
        using (var json = JsonDocument.Parse(convert.Out))
            StringAssert.Contains(json.RootElement.GetRawText(), "groupqueryattention");

        var text = CliTests.Run("convert", model, "-o", dir.File("text.onnx"), "-q");
        Assert.AreEqual(ExitCodes.Success, text.Code, text.Err);
        StringAssert.Contains(text.Out, "model interface changed: the KV caches are shared buffers only");

        var inspect = CliTests.Run("inspect", converted, "--context", "26");
        Assert.AreEqual(ExitCodes.Success, inspect.Code, inspect.Err);
        StringAssert.Contains(inspect.Out, "hybrid layout FSFF");
        // --kv-sharing projects and converts (the buffers become concatenated caches).
        var projected = CliTests.Run("inspect", model, "--kv-sharing");
        Assert.AreEqual(ExitCodes.Success, projected.Code, projected.Err);
        StringAssert.Contains(projected.Out, "with layout");
        var shared = CliTests.Run("convert", model, "-o", dir.File("shared.onnx"), "--kv-sharing", "-q");
        Assert.AreEqual(ExitCodes.Success, shared.Code, shared.Err);
        StringAssert.Contains(shared.Out, "concatenated caches");

        // 24 + 2 tokens in blocks of 4: K = 7 selects every block, so the conversion is exact.
        using var verified = CliTests.VerifyExact(model, converted, prompt: 24, steps: 2, batch: 2);
        var report = verified.RootElement.GetProperty("report");
        // Both models hold buffers of 26 positions: 4 layers × 2 caches × B=2 × H_kv=2 × 26 × D=32 × 4 bytes.
        Assert.AreEqual(4L * 2 * 2 * 2 * 26 * 32 * 4, report.GetProperty("hybridKvBytes").GetInt64());
        Assert.AreEqual(report.GetProperty("denseKvBytes").GetInt64(), report.GetProperty("hybridKvBytes").GetInt64());
    }

    private static void SetInt(NodeProto node, string name, long value) => node.Attribute.Single(a => a.Name == name).I = value;

    private static void SetInput(NodeProto node, int index, string tensor)
    {
        while (node.Input.Count <= index) node.Input.Add("");
        node.Input[index] = tensor;
    }

    /// <summary>
    /// Runs <paramref name="chunks"/> calls on KV buffers of <see cref="Capacity"/> positions that start
    /// as random values (never valid, so never read), feeding each call's presents back. The first
    /// call's row b ends with <paramref name="padding"/>[b] padding tokens (right padding, the only
    /// kind GroupQueryAttention models); later calls append real tokens.
    /// </summary>
    private static List<(DecoderInputs Inputs, DecoderOutputs Outputs)> BufferedRun(byte[] model, int[] chunks, int[] padding, bool withOps)
    {
        var batch = padding.Length;
        var rng = new SplitMix64(1234);
        float[] Garbage()
        {
            var buffer = new float[batch * Config.KvHeads * Capacity * Config.HeadDim];
            for (var i = 0; i < buffer.Length; i++) buffer[i] = rng.NextSymmetric(3f);
            return buffer;
        }
        var pastKeys = Enumerable.Range(0, Config.Layers).Select(_ => Garbage()).ToArray();
        var pastValues = Enumerable.Range(0, Config.Layers).Select(_ => Garbage()).ToArray();
        var mask = new long[batch * 0];
        var runs = new List<(DecoderInputs, DecoderOutputs)>();
        var total = 0;
        foreach (var chunk in chunks)
        {
            var newTotal = total + chunk;
            var newMask = new long[batch * newTotal];
            for (var b = 0; b < batch; b++)
                for (var j = 0; j < newTotal; j++)
                    newMask[b * newTotal + j] = j < total ? mask[b * total + j] : runs.Count == 0 && j >= chunk - padding[b] ? 0 : 1;
            var ids = new long[batch * chunk];
            for (var i = 0; i < ids.Length; i++) ids[i] = rng.NextInt(Config.Vocab);
            var inputs = new DecoderInputs { Batch = batch, InputIds = ids, Mask = newMask, Capacity = Capacity, PastKeys = pastKeys, PastValues = pastValues };
            var outputs = DecoderRunner.Run(model, Config, inputs, withOps ? o => o.RegisterHySparseOps() : null);
            runs.Add((inputs, outputs));
            pastKeys = outputs.PresentKeys.Select(k => k.Select(v => (float)v).ToArray()).ToArray();
            pastValues = outputs.PresentValues.Select(k => k.Select(v => (float)v).ToArray()).ToArray();
            (mask, total) = (newMask, newTotal);
        }
        return runs;
    }

    /// <summary>Logits of real new tokens, and every layer's buffer on each row's valid positions after the call.</summary>
    private static void AssertSameOnValidPositions(DecoderInputs inputs, DecoderOutputs expected, DecoderOutputs actual, double tolerance, string what)
    {
        Close.AssertLogitsOfRealTokens(inputs, Config.Vocab, expected.Logits, actual.Logits, tolerance, what);
        for (var l = 0; l < Config.Layers; l++) AssertCacheRowsEqual(inputs, expected, actual, l, tolerance, what);
    }

    /// <summary>Layer <paramref name="layer"/>'s buffers on positions [0, total_b) of each row, total_b the row's real tokens.</summary>
    private static void AssertCacheRowsEqual(DecoderInputs inputs, DecoderOutputs expected, DecoderOutputs actual, int layer, double tolerance, string what)
    {
        var d = Config.HeadDim;
        for (var b = 0; b < inputs.Batch; b++)
        {
            var valid = (int)inputs.Mask.Skip(b * inputs.Total).Take(inputs.Total).Sum();
            for (var g = 0; g < Config.KvHeads; g++)
                for (var j = 0; j < valid; j++)
                {
                    var offset = ((b * Config.KvHeads + g) * Capacity + j) * d;
                    Close.Assert(expected.PresentKeys[layer][offset..(offset + d)], actual.PresentKeys[layer][offset..(offset + d)], tolerance, $"{what} present.{layer}.key (b={b}, g={g}, j={j})");
                    Close.Assert(expected.PresentValues[layer][offset..(offset + d)], actual.PresentValues[layer][offset..(offset + d)], tolerance, $"{what} present.{layer}.value (b={b}, g={g}, j={j})");
                }
        }
    }
}
