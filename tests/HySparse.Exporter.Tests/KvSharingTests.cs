namespace HySparse.Exporter.Tests;

/// <summary>
/// <c>--kv-sharing</c> conversions: sparse layers read the preceding full layer's present cache for
/// their selected blocks and keep only a window cache of their own.
/// </summary>
[TestClass]
public sealed class KvSharingTests
{
    private static readonly LlamaConfig Config = new() { Layers = 6, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 48, Vocab = 53, Seed = 21 };

    // Ratio 1:2 over 6 layers with the last made full: FSSFSF. Sparse layers 1 and 2 share layer 0's
    // cache, layer 4 shares layer 3's.
    private static readonly int[] SharedFrom = [-1, 0, 0, -1, 3, -1];
    private static readonly int[] SparseLayers = [1, 2, 4];

    // Chunks fed through KvCacheDecoder: a prefill, single tokens and a multi-token chunk (16 tokens).
    private static readonly int[] Chunks = [9, 1, 1, 3, 1, 1];

    private static (ModelProto Model, ConversionReport Report) Convert(LlamaWeights weights, int topK, int blockSize, int window, HybridMode mode = HybridMode.KvSharing) =>
        HybridConverter.Convert(LlamaModelBuilder.Build(weights), new ConversionOptions
        {
            Layout = LayoutSpec.Ratio("1:2"),
            Parameters = new HybridParameters { TopK = topK, BlockSize = blockSize, Window = window, Mode = mode },
        });

    [TestMethod]
    public void SparseLayersReadTheFullLayersCacheAndDeclareWindowCaches()
    {
        var (model, report) = Convert(LlamaWeights.Generate(Config), topK: 2, blockSize: 4, window: 5);

        ModelFile.Validate(model, "kv-sharing model");
        var ops = model.Graph.Node.Where(n => n.Domain == HySparseOps.Domain).ToList();
        Assert.HasCount(Config.Layers, ops);
        Assert.AreEqual("FSSFSF", report.Layout.Letters);
        var inputs = model.Graph.Input.ToDictionary(i => i.Name);
        var outputs = model.Graph.Output.ToDictionary(o => o.Name);
        for (var l = 0; l < Config.Layers; l++)
        {
            var op = ops[l];
            var sparse = SharedFrom[l] >= 0;
            Assert.AreEqual(sparse ? HySparseOps.SparseAttn : HySparseOps.FullAttn, op.OpType, $"layer {l}");
            if (sparse)
            {
                var oracle = ops[SharedFrom[l]];
                CollectionAssert.AreEqual(new[]
                {
                    DecoderNames.PastKey(l), DecoderNames.PastValue(l),
                    DecoderNames.PresentKey(SharedFrom[l]), DecoderNames.PresentValue(SharedFrom[l]),
                    oracle.Output[3], DecoderNames.AttentionMask,
                }, op.Input.Skip(3).ToArray(), $"layer {l} inputs 3..8");
                CollectionAssert.AreEqual(new[] { DecoderNames.PresentKey(l), DecoderNames.PresentValue(l) }, op.Output.Skip(1).ToArray());
                Assert.AreEqual(1, Attr.GetInt(op, HySparseOps.Attributes.WindowCache, -1), $"layer {l} window_cache");
                Assert.AreEqual(5, Attr.GetInt(op, HySparseOps.Attributes.Window, -1));
                Assert.AreEqual(HySparseOps.CombineModes.Union, op.Attribute.Single(a => a.Name == HySparseOps.Attributes.Combine).S.ToStringUtf8());
            }
            // Dimension 2 of the sparse layers' caches is their window; everything else as declared before.
            var (pastDim, presentDim) = sparse
                ? (HybridMetadata.PastWindowDim, HybridMetadata.PresentWindowDim)
                : (LlamaModelBuilder.PastDim, LlamaModelBuilder.TotalDim);
            foreach (var (info, symbol) in new[]
            {
                (inputs[DecoderNames.PastKey(l)], pastDim), (inputs[DecoderNames.PastValue(l)], pastDim),
                (outputs[DecoderNames.PresentKey(l)], presentDim), (outputs[DecoderNames.PresentValue(l)], presentDim),
            })
            {
                var dims = info.Type.TensorType.Shape.Dim;
                Assert.AreEqual(LlamaModelBuilder.BatchDim, dims[0].DimParam, info.Name);
                Assert.AreEqual(Config.KvHeads, dims[1].DimValue, info.Name);
                Assert.AreEqual(symbol, dims[2].DimParam, info.Name);
                Assert.AreEqual(Config.HeadDim, dims[3].DimValue, info.Name);
            }
        }

        string[] windowCaches =
        [
            .. SparseLayers.SelectMany(l => new[] { DecoderNames.PastKey(l), DecoderNames.PastValue(l) }),
            .. SparseLayers.SelectMany(l => new[] { DecoderNames.PresentKey(l), DecoderNames.PresentValue(l) }),
        ];
        CollectionAssert.AreEqual(windowCaches, report.WindowCaches.ToArray());
        var metadata = model.MetadataProps.ToDictionary(p => p.Key, p => p.Value);
        Assert.AreEqual("kv_sharing", metadata[HybridMetadata.Mode]);
        Assert.AreEqual(string.Join(",", windowCaches), metadata[HybridMetadata.WindowCaches]);
        StringAssert.Contains(metadata[HybridMetadata.InterfaceChanges], "3 sparse layer(s)");
        StringAssert.Contains(metadata[HybridMetadata.InterfaceChanges], HybridMetadata.PastWindowDim);
        Assert.AreEqual(report.InterfaceChanges, metadata[HybridMetadata.InterfaceChanges]);
    }

    [TestMethod]
    public void RefusesASparseLayerWhoseCacheDiffersFromTheSharedOne()
    {
        // Layer 1 declares a float16 cache while layer 0, whose cache it would read, is float32.
        var model = LlamaModelBuilder.Build(Config);
        foreach (var input in model.Graph.Input.Where(i => i.Name == DecoderNames.PastKey(1) || i.Name == DecoderNames.PastValue(1)))
            input.Type.TensorType.ElemType = (int)TensorProto.Types.DataType.Float16;
        var before = model.ToByteArray();
        var options = new ConversionOptions { Layout = LayoutSpec.Ratio("1:2"), Parameters = new HybridParameters { Mode = HybridMode.KvSharing } };

        var refusal = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.ConvertInPlace(model, options));

        Assert.AreEqual(ConversionError.UnconvertibleLayers, refusal.Error);
        var layer = refusal.Layers.Single();
        Assert.AreEqual("/model/layers.1/self_attn/Softmax", layer.Node);
        StringAssert.Contains(layer.Reason, "full layer 0");
        StringAssert.Contains(layer.Reason, "float16");
        CollectionAssert.AreEqual(before, model.ToByteArray(), "a refused model is left unchanged");
        // Retrofit reads no other layer's cache, so the same model converts.
        HybridConverter.Convert(model, options with { Parameters = new HybridParameters() });
    }

    [TestMethod]
    public void RetrofitKeepsTheInterfaceAndSaysSo()
    {
        var dense = LlamaModelBuilder.Build(Config);
        var (model, report) = Convert(LlamaWeights.Generate(Config), topK: 2, blockSize: 4, window: 5, HybridMode.Retrofit);

        var metadata = model.MetadataProps.ToDictionary(p => p.Key, p => p.Value);
        Assert.AreEqual("retrofit", metadata[HybridMetadata.Mode]);
        Assert.AreEqual("none", metadata[HybridMetadata.InterfaceChanges]);
        Assert.IsFalse(metadata.ContainsKey(HybridMetadata.WindowCaches));
        Assert.IsEmpty(report.WindowCaches);
        CollectionAssert.AreEqual(dense.Graph.Input.ToArray(), model.Graph.Input.ToArray());
        CollectionAssert.AreEqual(dense.Graph.Output.ToArray(), model.Graph.Output.ToArray());
        foreach (var op in model.Graph.Node.Where(n => n.OpType == HySparseOps.SparseAttn))
        {
            Assert.AreEqual(0, Attr.GetInt(op, HySparseOps.Attributes.WindowCache, -1));
            Assert.AreEqual("", op.Input[5], "no shared_key in retrofit");
        }
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void PaddedPrefillMatchesTheSharedKvReference()
    {
        // 16 tokens in blocks of 4: K = 4 selects every block, so a sparse layer attends to every
        // earlier key: the last 5 from its own K/V, the rest from the full layer's.
        const int window = 5;
        var weights = LlamaWeights.Generate(Config);
        var (model, _) = Convert(weights, topK: 4, blockSize: 4, window: window);
        var inputs = DecoderInputs.Random(Config, batch: 2, past: 0, newTokens: 16, leftPadding: [0, 5], seed: 8);

        var actual = DecoderRunner.Run(model.ToByteArray(), Config, inputs, o => o.RegisterHySparseOps());
        var expected = ReferenceLlama.Forward(weights, inputs.Batch, inputs.InputIds, inputs.Mask, inputs.PastKeys, inputs.PastValues,
            new SharedKvReference(SharedFrom, window));

        Close.AssertLogitsOfRealTokens(inputs, Config.Vocab, expected.Logits, actual.Logits, 1e-4, "prefill");
        for (var l = 0; l < Config.Layers; l++)
        {
            // A sparse layer's present holds the last `window` rows of what the dense cache would hold.
            var kept = SharedFrom[l] >= 0 ? window : inputs.Total;
            AssertCacheRows(inputs, expected.PresentKeys[l], actual.PresentKeys[l], kept, $"present.{l}.key");
            AssertCacheRows(inputs, expected.PresentValues[l], actual.PresentValues[l], kept, $"present.{l}.value");
        }
        var dense = ReferenceLlama.Forward(weights, inputs.Batch, inputs.InputIds, inputs.Mask, inputs.PastKeys, inputs.PastValues);
        var change = dense.Logits.Zip(actual.Logits, (d, a) => Math.Abs(d - a)).Max();
        Assert.IsGreaterThan(1e-3, change, "keys outside the window come from another layer's K/V, so the logits must move");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void DecodingKeepsWindowCachesAndMatchesTheSharedKvReference()
    {
        // Two rows, the second left-padded by 3 in the prefill: window caches count positions, padding
        // included, and the mask keeps padding out of both the window and the shared cache.
        const int window = 5, batch = 2, padding = 3;
        var weights = LlamaWeights.Generate(Config);
        var (model, report) = Convert(weights, topK: 4, blockSize: 4, window: window);
        var length = Chunks.Sum();
        var tokens = RandomTokens(batch * length, seed: 4);
        var mask = Enumerable.Range(0, batch * length).Select(i => i / length == 1 && i % length < padding ? 0L : 1L).ToArray();
        // Causal, so one call over the whole sequence gives every position's logits.
        var expected = ReferenceLlama.Forward(weights, batch, tokens, mask, NoPast(), NoPast(), new SharedKvReference(SharedFrom, window)).Logits;
        var calculator = new KvCacheCalculator(report.Layout.Kinds, Config.KvHeads, Config.HeadDim, 4, KvCacheMode.KvSharing, window);

        using var session = TestSessions.Open(model.ToByteArray(), registerOps: true);
        using var decoder = new KvCacheDecoder(session, batch);
        var caches = session.InputNames.Where(n => n.StartsWith("past_key_values.", StringComparison.Ordinal)).ToArray();
        var offset = 0;
        foreach (var chunk in Chunks)
        {
            long[] Rows(long[] values) => Enumerable.Range(0, batch).SelectMany(b => values.Skip(b * length + offset).Take(chunk)).ToArray();
            var logits = decoder.Step(Rows(tokens), Rows(mask));
            for (var b = 0; b < batch; b++)
                for (var i = 0; i < chunk; i++)
                {
                    var position = offset + i;
                    if (mask[b * length + position] == 0) continue;
                    var want = expected[((b * length + position) * Config.Vocab)..((b * length + position + 1) * Config.Vocab)];
                    var got = logits[((b * chunk + i) * Config.Vocab)..((b * chunk + i + 1) * Config.Vocab)].Select(v => (double)v).ToArray();
                    Close.Assert(want, got, 1e-4, $"row {b}, position {position}");
                }
            offset += chunk;

            var lengths = decoder.CacheLengths;
            for (var i = 0; i < caches.Length; i++)
            {
                var sparse = SharedFrom[int.Parse(caches[i].Split('.')[1])] >= 0;
                Assert.AreEqual(sparse ? Math.Min(window, offset) : offset, lengths[i], $"{caches[i]} after {offset} tokens");
            }
            Assert.AreEqual(calculator.BytesAt(offset, batch), decoder.KvCacheBytes, $"KV bytes after {offset} tokens");
        }
        Assert.IsLessThan(calculator.DenseBytesAt(offset, batch), decoder.KvCacheBytes);
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void WindowCoveringTheContextEqualsDense()
    {
        // w ≥ T: every key is in the window and read from the layer's own cache; the shared cache
        // and the one selected block change nothing.
        var weights = LlamaWeights.Generate(Config);
        var (model, _) = Convert(weights, topK: 1, blockSize: 4, window: Chunks.Sum());
        var tokens = RandomTokens(Chunks.Sum(), seed: 5);

        using var denseSession = TestSessions.Open(LlamaModelBuilder.Build(weights).ToByteArray(), registerOps: false);
        using var sharedSession = TestSessions.Open(model.ToByteArray(), registerOps: true);
        using var dense = new KvCacheDecoder(denseSession);
        using var shared = new KvCacheDecoder(sharedSession);
        var offset = 0;
        foreach (var chunk in Chunks)
        {
            var want = dense.Step(tokens.AsSpan(offset, chunk)).Select(v => (double)v).ToArray();
            var got = shared.Step(tokens.AsSpan(offset, chunk)).Select(v => (double)v).ToArray();
            Close.Assert(want, got, 1e-4, $"tokens {offset}..{offset + chunk - 1}");
            offset += chunk;
            CollectionAssert.AreEqual(dense.CacheLengths.ToArray(), shared.CacheLengths.ToArray());
        }
    }

    /// <summary>Compares the last <paramref name="kept"/> positions of each row at real (unmasked) positions.</summary>
    private static void AssertCacheRows(DecoderInputs inputs, double[] full, double[] actual, int kept, string what)
    {
        int t = inputs.Total, d = Config.HeadDim;
        Assert.HasCount(inputs.Batch * Config.KvHeads * kept * d, actual, $"{what}: a cache of {kept} tokens");
        for (var b = 0; b < inputs.Batch; b++)
            for (var g = 0; g < Config.KvHeads; g++)
                for (var r = 0; r < kept; r++)
                {
                    var j = t - kept + r;
                    if (inputs.Mask[b * t + j] == 0) continue;
                    var want = ((b * Config.KvHeads + g) * t + j) * d;
                    var got = ((b * Config.KvHeads + g) * kept + r) * d;
                    Close.Assert(full[want..(want + d)], actual[got..(got + d)], 1e-4, $"{what} (b={b}, g={g}, position {j})");
                }
    }

    private static long[] RandomTokens(int count, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => (long)rng.Next(Config.Vocab)).ToArray();
    }

    private static float[][] NoPast() => Enumerable.Range(0, Config.Layers).Select(_ => Array.Empty<float>()).ToArray();
}
