namespace HySparse.Exporter.Tests;

/// <summary>
/// <c>convert --kv-buffer</c>: concatenating decoders (present = Concat(past, new)) converted into
/// models that update fixed-capacity KV buffers in place, run against the original model.
/// </summary>
[TestClass]
public sealed class KvBufferConversionTests
{
    private static readonly LlamaConfig Config = new() { Layers = 4, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 16, Ffn = 40, Vocab = 43, Seed = 17 };

    /// <summary>Positions per cache buffer in these runs.</summary>
    private const int Capacity = 20;

    public static IEnumerable<object[]> ConcatStyles =>
        [[LlamaAttentionStyle.Decomposed], [LlamaAttentionStyle.MultiHeadAttention], [LlamaAttentionStyle.OnnxAttention]];

    private static ModelProto Convert(ModelProto source, HybridParameters parameters, string ratio = "1:1") =>
        HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio(ratio), Parameters = parameters, KvBuffer = true }).Model;

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DynamicData(nameof(ConcatStyles))]
    public void BufferedConversionEqualsTheConcatenatingOriginalWhenSelectionCoversEveryKey(LlamaAttentionStyle style)
    {
        // At most 20 positions in blocks of 4: K = 5 selects every block, so union attention is dense.
        // MultiHeadAttention has one head count for queries and keys.
        var config = style == LlamaAttentionStyle.MultiHeadAttention ? Config with { KvHeads = Config.Heads } : Config;
        var source = LlamaModelBuilder.Build(config, style);
        var hybrid = Convert(source, new HybridParameters { TopK = 5, BlockSize = 4, Window = 3 });

        var rng = new SplitMix64(99);
        // Batch 2 without padding, then batch 2 whose second prompt is right-padded by 3.
        foreach (var padding in new[] { new[] { 0, 0 }, new[] { 0, 3 } })
        {
            using var denseSession = TestSessions.Open(source.ToByteArray(), registerOps: false);
            using var hybridSession = TestSessions.Open(hybrid.ToByteArray(), registerOps: true);
            using var dense = new KvCacheDecoder(denseSession, batchSize: 2);
            using var buffered = new KvCacheDecoder(hybridSession, batchSize: 2, bufferCapacity: Capacity);
            const int prompt = 9;
            var ids = Tokens(rng, 2 * prompt);
            var mask = Enumerable.Range(0, 2 * prompt).Select(i => i % prompt < prompt - padding[i / prompt] ? 1L : 0L).ToArray();
            AssertRealLogitsEqual(dense.Step(ids, mask), buffered.Step(ids, mask), mask, $"prefill, padding {string.Join(",", padding)}");
            for (var step = 1; step <= 5; step++)
            {
                var next = Tokens(rng, 2);
                AssertRealLogitsEqual(dense.Step(next), buffered.Step(next), [1, 1], $"decode step {step}, padding {string.Join(",", padding)}");
            }
            Assert.AreEqual(4L * 2 * 2 * config.KvHeads * Capacity * Config.HeadDim * 4, buffered.KvCacheBytes, "the caches are the buffers, whatever the context");
        }
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void SmallTopKRunsAndWritesOnlyTheNewTokensIntoTheBoundBuffers()
    {
        var parameters = new HybridParameters { TopK = 1, BlockSize = 4, Window = 2 };
        var hybrid = Convert(LlamaModelBuilder.Build(Config, LlamaAttentionStyle.Decomposed), parameters, "1:3");
        using var session = TestSessions.Open(hybrid.ToByteArray(), registerOps: true);
        var rng = new SplitMix64(5);

        // Buffers poisoned with a sentinel, bound as past and present (IOBinding, as onnxruntime-genai
        // does). After a prompt of 12 and one decode step, positions [0, 13) are written, and every
        // position from 13 on must still hold the sentinel: the op wrote the new token into the buffer
        // it was given and copied nothing over the rest.
        const float sentinel = -12345.5f;
        var caches = session.InputMetadata.Keys.Where(n => n.StartsWith("past_key_values.", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList();
        var buffers = caches.ToDictionary(n => n, _ => Enumerable.Repeat(sentinel, 2 * Config.KvHeads * Capacity * Config.HeadDim).ToArray());
        var mask = new List<long>();
        float[]? logits = null;
        foreach (var chunk in new[] { 12, 1 })
        {
            var ids = Tokens(rng, 2 * chunk);
            var total = mask.Count / 2 + chunk;
            var newMask = Enumerable.Range(0, 2 * total).Select(_ => 1L).ToArray();
            using var binding = session.CreateIoBinding();
            using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [2, chunk]);
            using var maskValue = OrtValue.CreateTensorValueFromMemory(newMask, [2, total]);
            var positions = Enumerable.Range(0, 2 * chunk).Select(i => (long)(total - chunk + i % chunk)).ToArray();
            using var positionValue = OrtValue.CreateTensorValueFromMemory(positions, [2, chunk]);
            binding.BindInput("input_ids", idsValue);
            binding.BindInput("attention_mask", maskValue);
            if (session.InputMetadata.ContainsKey("position_ids")) binding.BindInput("position_ids", positionValue);
            var bound = new List<OrtValue>();
            foreach (var past in caches)
            {
                var value = OrtValue.CreateTensorValueFromMemory(buffers[past], [2, Config.KvHeads, Capacity, Config.HeadDim]);
                bound.Add(value);
                binding.BindInput(past, value);
                binding.BindOutput(past.Replace("past_key_values.", "present.", StringComparison.Ordinal), value);
            }
            binding.BindOutputToDevice("logits", OrtMemoryInfo.DefaultInstance);
            using var runOptions = new RunOptions();
            session.RunWithBinding(runOptions, binding);
            using var outputs = binding.GetOutputValues();
            logits = outputs[0].GetTensorDataAsSpan<float>().ToArray();
            foreach (var value in bound) value.Dispose();
            mask = [.. newMask];
        }
        Assert.IsTrue(logits!.All(float.IsFinite), "logits must be finite");
        foreach (var (name, buffer) in buffers)
            for (var row = 0; row < 2 * Config.KvHeads; row++)
                for (var j = 0; j < Capacity; j++)
                {
                    var at = (row * Capacity + j) * Config.HeadDim;
                    var written = buffer[at..(at + Config.HeadDim)].Count(v => v != sentinel);
                    if (j < 13) Assert.AreEqual(Config.HeadDim, written, $"{name}: row {row}, position {j} was not written in place");
                    else Assert.AreEqual(0, written, $"{name}: row {row}, position {j} beyond the 13 tokens was touched");
                }
    }

    [TestMethod]
    public void ConversionDerivesTheLengthsFromTheMaskAndDeclaresBuffers()
    {
        var source = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.Decomposed);
        var (hybrid, report) = HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1"), KvBuffer = true });

        foreach (var op in hybrid.Graph.Node.Where(n => n.Domain == HySparseOps.Domain))
        {
            var seqlensAt = op.OpType == HySparseOps.FullAttn ? 6 : 13;
            Assert.AreEqual("hysparse.kv_buffer.seqlens_k", op.Input[seqlensAt], op.Name);
            Assert.AreEqual("hysparse.kv_buffer.total_sequence_length", op.Input[seqlensAt + 1], op.Name);
            Assert.AreEqual("", op.Input[op.OpType == HySparseOps.FullAttn ? 5 : 8], "no attention_mask in shared-buffer mode");
        }
        Assert.IsFalse(hybrid.Graph.Node.Any(n => n.OpType == "Concat" && n.Input.Any(i => i.StartsWith("past_key_values.", StringComparison.Ordinal))));
        foreach (var cache in hybrid.Graph.Input.Where(i => i.Name.StartsWith("past_key_values.", StringComparison.Ordinal))
                     .Concat(hybrid.Graph.Output.Where(o => o.Name.StartsWith("present.", StringComparison.Ordinal))))
            Assert.AreEqual("max_sequence_length", cache.Type.TensorType.Shape.Dim[2].DimParam, cache.Name);
        var metadata = hybrid.MetadataProps.ToDictionary(p => p.Key, p => p.Value);
        Assert.AreEqual(HybridMetadata.SharedBufferCache, metadata[HybridMetadata.KvCache]);
        Assert.AreEqual("decomposed", metadata[HybridMetadata.SourceStyle]);
        StringAssert.Contains(report.InterfaceChanges, "right of the first prompt");
    }

    [TestMethod]
    public void KvSharingAndModelsWithoutCacheAreRefusedWithTheReason()
    {
        var sharing = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.Convert(LlamaModelBuilder.Build(Config, LlamaAttentionStyle.Decomposed),
            new ConversionOptions { KvBuffer = true, Parameters = new HybridParameters { Mode = HybridMode.KvSharing } }));
        Assert.AreEqual(ConversionError.UnconvertibleLayers, sharing.Error);
        StringAssert.Contains(sharing.Message, "--kv-sharing");
        StringAssert.Contains(sharing.Layers[0].Reason, "no window cache");

        var noCache = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.Convert(
            LlamaModelBuilder.Build(Config, LlamaAttentionStyle.Decomposed, new DecomposedExportOptions { KvCache = false }), new ConversionOptions { KvBuffer = true }));
        Assert.AreEqual(ConversionError.UnconvertibleLayers, noCache.Error);
        StringAssert.Contains(noCache.Layers[0].Reason, "no past/present KV cache");
    }

    [TestMethod]
    public void ANodeThatStillReadsAPastCacheIsRefused()
    {
        // A past length taken from the cache's shape (as some exports compute positions) would read the
        // capacity once the cache is a buffer.
        var model = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.Decomposed);
        var shape = new NodeProto { OpType = "Shape", Name = "/model/past_length/Shape" };
        shape.Input.Add("past_key_values.0.key");
        shape.Output.Add("past_shape");
        model.Graph.Node.Add(shape);
        model.Graph.Output.Add(new ValueInfoProto { Name = "past_shape", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Int64 } } });

        HybridConverter.Convert(model, new ConversionOptions());
        var error = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.Convert(model, new ConversionOptions { KvBuffer = true }));
        Assert.AreEqual("/model/past_length/Shape", error.Layers.Single().Node);
        StringAssert.Contains(error.Layers.Single().Reason, "reads past cache 'past_key_values.0.key'");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void CliConvertsPrintsTheInterfaceChangeVerifiesAndRefuses()
    {
        using var dir = new ModelDirectory();
        var model = dir.WriteModel("torch.onnx", LlamaModelBuilder.Build(Config, LlamaAttentionStyle.Decomposed));
        var converted = dir.File("torch.buffer.onnx");

        var convert = CliTests.Run("convert", model, "-o", converted, "--ratio", "1:1", "--top-k", "7", "--block-size", "4", "--kv-buffer", "-q");
        Assert.AreEqual(ExitCodes.Success, convert.Code, convert.Err);
        StringAssert.Contains(convert.Out, "model interface changed: the KV caches are buffers updated in place");
        StringAssert.Contains(convert.Out, "right of the first prompt");

        // 24 + 2 tokens in blocks of 4: K = 7 selects every block, so the conversion is exact.
        using (var json = CliTests.VerifyExact(model, converted, prompt: 24, steps: 2, batch: 2))
        {
            // Buffers of 26 positions: 4 layers × 2 caches × B=2 × H_kv=2 × 26 × D=16 × 4 bytes.
            Assert.AreEqual(4L * 2 * 2 * 2 * 26 * 16 * 4, json.RootElement.GetProperty("report").GetProperty("hybridKvBytes").GetInt64());
        }

        var refused = CliTests.Run("convert", model, "-o", dir.File("refused.onnx"), "--kv-buffer", "--kv-sharing");
        Assert.AreEqual(ExitCodes.Refused, refused.Code);
        StringAssert.Contains(refused.Err, "--kv-sharing");
        Assert.IsFalse(File.Exists(dir.File("refused.onnx")), "a refused conversion writes no file");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DataRow("tiny_llama_gqa")]
    [DataRow("tiny_llama_where_gqa")]
    [DataRow("tiny_llama_mha")]
    public void TorchExportsConvertedWithKvBufferVerifyExactly(string fixture)
    {
        using var dir = new ModelDirectory();
        var source = System.IO.Path.Combine(AppContext.BaseDirectory, "fixtures", "torch", $"{fixture}.onnx");
        var converted = dir.File($"{fixture}.buffer.onnx");
        // 20 + 3 tokens in blocks of 4: K = 6 selects every block.
        var convert = CliTests.Run("convert", source, "-o", converted, "--ratio", "1:1", "--top-k", "6", "--block-size", "4", "--kv-buffer", "-q");
        Assert.AreEqual(ExitCodes.Success, convert.Code, convert.Err);

        var verify = CliTests.Run("verify", source, converted, "--prompt", "20", "--steps", "3", "--batch", "2", "--json");
        Assert.AreEqual(ExitCodes.Success, verify.Code, verify.Err);
        using var json = JsonDocument.Parse(verify.Out);
        var report = json.RootElement.GetProperty("report");
        Assert.IsLessThan(1e-4, report.GetProperty("maxAbsError").GetDouble());
        Assert.AreEqual(1.0, report.GetProperty("top1Agreement").GetDouble());
    }

    private static long[] Tokens(SplitMix64 rng, int count) => Enumerable.Range(0, count).Select(_ => (long)rng.NextInt(Config.Vocab)).ToArray();

    /// <summary>The logits of the rows' real new tokens agree (padding tokens' logits mean nothing).</summary>
    private static void AssertRealLogitsEqual(float[] expected, float[] actual, long[] newTokenMask, string what)
    {
        Assert.HasCount(expected.Length, actual);
        for (var t = 0; t < newTokenMask.Length; t++)
        {
            if (newTokenMask[t] == 0) continue;
            for (var v = 0; v < Config.Vocab; v++)
            {
                var (want, got) = (expected[t * Config.Vocab + v], actual[t * Config.Vocab + v]);
                Assert.AreEqual(want, got, 1e-4 + 1e-4 * Math.Abs(want), $"{what}: token {t}, logit {v}");
            }
        }
    }
}
