using HySparse.Models.Native;

namespace HySparse.Exporter.Tests;

/// <summary>
/// HySparse-native models from <see cref="HySparseModelBuilder"/> run in ONNX Runtime with the
/// HySparse CPU operators (combine=gate, KV sharing, window caches) and compute what the float64
/// reference computes, call after call.
/// </summary>
[TestClass]
[TestCategory(HySparseEquivalenceTests.NeedsOps)]
public sealed class NativeModelTests
{
    private const double Tolerance = 2e-4;

    // Two full layers that select (0 and 3), a last full layer that does not (5): K·bs + w = 3·4 + 6 =
    // 18 keys of a context that reaches 29, so the selection decides what the SA branch reads.
    private static HySparseNativeConfig Config(SparseGateKind gate = SparseGateKind.PerHead, bool sinks = true) => new()
    {
        Model = new LlamaConfig { Layers = 6, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 48, Vocab = 53, Seed = 5 },
        Layout = "FSSFSF", TopK = 3, BlockSize = 4, Window = 6, Gate = gate, Sinks = sinks,
    };

    // A prompt of 5 (shorter than the window), decode steps, a chunk of 12, more steps: 29 tokens.
    private static readonly int[] Schedule = [5, 1, 12, 1, 1, 7, 1, 1];
    private const int Batch = 2;
    private const int LeftPadding = 3;

    [TestMethod]
    [DataRow(SparseGateKind.PerHead, true)]
    [DataRow(SparseGateKind.PerChannel, true)]
    [DataRow(SparseGateKind.PerHead, false)]
    [DataRow(SparseGateKind.PerChannel, false)]
    public void KvCacheDecoderRunsTheModelAsTheReferenceComputesIt(SparseGateKind gate, bool sinks)
    {
        var config = Config(gate, sinks);
        var weights = HySparseNativeWeights.Generate(config);
        var (ids, mask) = Sequence(config, Schedule.Sum());
        var expected = ReferenceHySparseNative.Forward(weights, Batch, ids, mask);
        AssertSelectionIsRobust(expected);

        using var session = TestSessions.Open(HySparseModelBuilder.Build(weights).ToByteArray());
        using var decoder = new KvCacheDecoder(session, Batch);
        var total = Schedule.Sum();
        var vocab = config.Model.Vocab;
        var offset = 0;
        foreach (var chunk in Schedule)
        {
            var chunkIds = new long[Batch * chunk];
            var chunkMask = new long[Batch * chunk];
            for (var b = 0; b < Batch; b++)
                for (var i = 0; i < chunk; i++)
                {
                    chunkIds[b * chunk + i] = ids[b * total + offset + i];
                    chunkMask[b * chunk + i] = mask[b * total + offset + i];
                }
            var logits = decoder.Step(chunkIds, chunkMask);
            for (var b = 0; b < Batch; b++)
                for (var i = 0; i < chunk; i++)
                {
                    var want = expected.Logits.AsSpan((b * total + offset + i) * vocab, vocab).ToArray();
                    var got = logits.AsSpan((b * chunk + i) * vocab, vocab).ToArray().Select(v => (double)v).ToArray();
                    Close.Assert(want, got, Tolerance, $"logits (b={b}, position {offset + i})");
                }
            offset += chunk;

            var lengths = Enumerable.Range(0, config.Model.Layers)
                .SelectMany(l => Enumerable.Repeat((long)(config.IsFull(l) ? offset : Math.Min(offset, config.Window)), 2)).ToArray();
            CollectionAssert.AreEqual(lengths, decoder.CacheLengths.ToArray(), $"cache lengths after {offset} tokens");
            Assert.AreEqual(CacheBytes(config, offset), decoder.KvCacheBytes, $"KV bytes after {offset} tokens");
        }
    }

    [TestMethod]
    public void PresentCachesAndSelectionsAreTheReferences()
    {
        var config = Config(SparseGateKind.PerChannel);
        var weights = HySparseNativeWeights.Generate(config);
        var total = Schedule.Sum();
        var (ids, mask) = Sequence(config, total);
        var expected = ReferenceHySparseNative.Forward(weights, Batch, ids, mask);
        var c = config.Model;

        using var session = TestSessions.Open(HySparseModelBuilder.Build(weights, exposeBlockIndices: true).ToByteArray());
        var pasts = Enumerable.Range(0, 2 * c.Layers).Select(_ => (Data: Array.Empty<float>(), Length: 0)).ToArray();
        var offset = 0;
        foreach (var chunk in Schedule)
        {
            var end = offset + chunk;
            var run = RunCall(session, config, ids, mask, total, offset, end, pasts);
            for (var l = 0; l < c.Layers; l++)
            {
                // A full layer keeps every position; a sparse layer the last min(w, T) of its k′/v′.
                var from = config.IsFull(l) ? 0 : Math.Max(0, end - config.Window);
                Close.Assert(Slice(expected.Keys[l], c, total, from, end), run.Presents[2 * l].Select(v => (double)v).ToArray(), Tolerance, $"present.{l}.key after {end} tokens");
                Close.Assert(Slice(expected.Values[l], c, total, from, end), run.Presents[2 * l + 1].Select(v => (double)v).ToArray(), Tolerance, $"present.{l}.value after {end} tokens");
                if (expected.Selections[l] is { } selection)
                {
                    var want = new int[Batch * c.KvHeads * chunk * config.TopK];
                    for (var row = 0; row < Batch * c.KvHeads; row++)
                        Array.Copy(selection, (row * total + offset) * config.TopK, want, row * chunk * config.TopK, chunk * config.TopK);
                    CollectionAssert.AreEqual(want, run.BlockIndices[l], $"block indices of layer {l} for positions {offset}..{end - 1}");
                }
            }
            pasts = run.Presents.Select((p, i) => (p, run.PresentLengths[i])).ToArray();
            offset = end;
        }
    }

    [TestMethod]
    public void TheSelectionChangesTheResult()
    {
        // The comparison above can only catch a wrong selection if the selection matters: choosing
        // every block instead of the top 3 must move the logits far beyond the tolerance.
        var config = Config();
        var weights = HySparseNativeWeights.Generate(config);
        var (ids, mask) = Sequence(config, Schedule.Sum());
        var topK = ReferenceHySparseNative.Forward(weights, Batch, ids, mask);
        var everyBlock = ReferenceHySparseNative.Forward(weights, Batch, ids, mask, topK: (Schedule.Sum() + config.BlockSize - 1) / config.BlockSize);
        var largest = topK.Logits.Zip(everyBlock.Logits, (a, b) => Math.Abs(a - b)).Max();
        Assert.IsGreaterThan(100 * Tolerance, largest, $"largest logit change {largest}");
    }

    [TestMethod]
    public void ExternalDataModelRunsLikeTheEmbeddedOne()
    {
        var config = Config();
        var weights = HySparseNativeWeights.Generate(config);
        using var dir = new ModelDirectory();
        var model = HySparseModelBuilder.Build(weights);
        Assert.IsGreaterThan(0, ExternalData.MoveToFile(model, dir.Path, "native.onnx.data"));
        var path = dir.WriteModel("native.onnx", model);
        var (ids, mask) = Sequence(config, 9);

        using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        options.RegisterHySparseOps();
        using var fromFile = new InferenceSession(path, options);
        using var embedded = TestSessions.Open(HySparseModelBuilder.Build(weights).ToByteArray());
        using var fileDecoder = new KvCacheDecoder(fromFile, Batch);
        using var embeddedDecoder = new KvCacheDecoder(embedded, Batch);
        CollectionAssert.AreEqual(embeddedDecoder.Step(ids, mask), fileDecoder.Step(ids, mask));
    }

    [TestMethod]
    public void MetadataAndInterfaceAreThoseOfAConvertedKvSharingModel()
    {
        var config = Config(SparseGateKind.PerChannel, sinks: false);
        var model = HySparseModelBuilder.Build(config);
        var meta = model.MetadataProps.ToDictionary(p => p.Key, p => p.Value);

        Assert.AreEqual("1", meta[HybridMetadata.FormatVersion]);
        Assert.AreEqual("native", meta[HybridMetadata.Mode]);
        Assert.AreEqual("FSSFSF", meta[HybridMetadata.Layout]);
        Assert.AreEqual("0,3,5", meta[HybridMetadata.FullLayers]);
        Assert.AreEqual("3", meta[HybridMetadata.TopK]);
        Assert.AreEqual("4", meta[HybridMetadata.BlockSize]);
        Assert.AreEqual("6", meta[HybridMetadata.Window]);
        Assert.AreEqual(HySparseOps.CombineModes.Gate, meta[HybridMetadata.Combine]);
        Assert.AreEqual(HybridMetadata.ConcatenatedCache, meta[HybridMetadata.KvCache]);
        Assert.AreEqual("per_channel", meta[HybridMetadata.Gate]);
        Assert.AreEqual("0", meta[HybridMetadata.Sinks]);
        string[] windowCaches = [.. new[] { 1, 2, 4 }.SelectMany(l => new[] { DecoderNames.PastKey(l), DecoderNames.PastValue(l) }),
                                 .. new[] { 1, 2, 4 }.SelectMany(l => new[] { DecoderNames.PresentKey(l), DecoderNames.PresentValue(l) })];
        CollectionAssert.AreEqual(windowCaches, meta[HybridMetadata.WindowCaches].Split(','));

        // The window caches carry the converter's symbolic lengths.
        string LengthOf(IEnumerable<global::Onnx.ValueInfoProto> values, string name) => values.Single(v => v.Name == name).Type.TensorType.Shape.Dim[2].DimParam;
        Assert.AreEqual(LlamaModelBuilder.PastDim, LengthOf(model.Graph.Input, DecoderNames.PastKey(3)));
        Assert.AreEqual(HybridMetadata.PastWindowDim, LengthOf(model.Graph.Input, DecoderNames.PastKey(4)));
        Assert.AreEqual(LlamaModelBuilder.TotalDim, LengthOf(model.Graph.Output, DecoderNames.PresentValue(5)));
        Assert.AreEqual(HybridMetadata.PresentWindowDim, LengthOf(model.Graph.Output, DecoderNames.PresentValue(2)));

        var full = model.Graph.Node.Where(n => n.OpType == HySparseOps.FullAttn).ToList();
        var sparse = model.Graph.Node.Where(n => n.OpType == HySparseOps.SparseAttn).ToList();
        Assert.HasCount(3, full);
        Assert.HasCount(3, sparse);
        // Only full layers followed by a sparse layer select; the last one does no selection work.
        CollectionAssert.AreEqual(new[] { 4, 4, 3 }, full.Select(n => n.Output.Count).ToArray());
        foreach (var node in sparse)
        {
            Assert.AreEqual(HySparseOps.CombineModes.Gate, Attr.GetString(node, HySparseOps.Attributes.Combine));
            Assert.AreEqual(1L, Attr.GetInt(node, HySparseOps.Attributes.WindowCache, 0));
            Assert.HasCount(10, node.Input, "no sinks input without sinks");
        }
        // Layer 4's SA branch reads layer 3's cache and selection.
        CollectionAssert.AreEqual(new[] { DecoderNames.PresentKey(3), DecoderNames.PresentValue(3), full[1].Output[3] }, sparse[2].Input.Skip(5).Take(3).ToArray());
        ModelFile.Validate(model, "native");
    }

    [TestMethod]
    public void InvalidConfigurationsAreRefusedByName()
    {
        var good = Config();
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => HySparseModelBuilder.Build(good with { Layout = "SFFSFF" })).Message, "layer 0 must be full");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => HySparseModelBuilder.Build(good with { Layout = "FSS" })).Message, "one letter per layer");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => HySparseModelBuilder.Build(good with { Layout = "FSXFSF" })).Message, "'F' (full) and 'S'");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => HySparseModelBuilder.Build(good with { Window = 0 })).Message, "Window");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => HySparseModelBuilder.Build(good with { TopK = 0 })).Message, "TopK");
        Assert.AreEqual("FSSFSF", HySparseNativeConfig.LayoutOf(6, 0, 3, 5));
        Assert.AreEqual(3, good.SharedFrom(4));
    }

    [TestMethod]
    public void TheLlamaPartOfTheWeightsIsTheLlamaBuildersOwn()
    {
        // Same seed, same Llama weights: a native model and a dense model of one config differ only in attention.
        var config = Config();
        var native = HySparseNativeWeights.Generate(config);
        var dense = LlamaWeights.Generate(config.Model);
        CollectionAssert.AreEqual(dense.Embedding, native.Base.Embedding);
        CollectionAssert.AreEqual(dense.Layers[4].Query, native.Base.Layers[4].Query);
        Assert.IsNull(native.Sparse[0]);
        Assert.IsNotNull(native.Sparse[1]);
        Assert.HasCount(config.Model.Hidden * 2 * config.Model.Heads, native.Sparse[1]!.Gate);
        Assert.HasCount(2 * config.Model.Heads, native.Sparse[1]!.Sinks!);
        Assert.IsTrue(native.Sparse[1]!.Sinks!.Distinct().Count() > 1, "sinks are drawn, not constant");
    }

    /// <summary>B·2·H_kv·D·4·(L_full·T + L_sparse·min(T, w)) for float32 caches.</summary>
    private static long CacheBytes(HySparseNativeConfig config, int tokens)
    {
        var c = config.Model;
        var full = config.FullLayers.Count;
        var sparse = c.Layers - full;
        var formula = (long)Batch * 2 * c.KvHeads * c.HeadDim * 4 * (full * tokens + sparse * Math.Min(tokens, config.Window));
        var calculator = new KvCacheCalculator(Enumerable.Range(0, c.Layers).Select(l => config.IsFull(l) ? LayerKind.Full : LayerKind.Sparse),
            c.KvHeads, c.HeadDim, 4, KvCacheMode.KvSharing, config.Window);
        Assert.AreEqual(formula, calculator.BytesAt(tokens, Batch), "the library's calculator agrees with the formula");
        return formula;
    }

    private static void AssertSelectionIsRobust(NativeReferenceOutputs expected) =>
        // A near-tie at the top-K boundary could flip under float32 rounding; the seeds are chosen so
        // none is near, and this says so if a change of sizes ever makes one.
        Assert.IsGreaterThan(1e-4, expected.SelectionMargin, "a top-K choice is a near-tie; pick another seed");

    /// <summary>Random ids [B,T]; row 1 has its first <see cref="LeftPadding"/> tokens masked.</summary>
    private static (long[] Ids, long[] Mask) Sequence(HySparseNativeConfig config, int total)
    {
        var rng = new SplitMix64(17);
        var ids = new long[Batch * total];
        var mask = new long[Batch * total];
        for (var b = 0; b < Batch; b++)
            for (var j = 0; j < total; j++)
            {
                ids[b * total + j] = rng.NextInt(config.Model.Vocab);
                mask[b * total + j] = b == 1 && j < LeftPadding ? 0 : 1;
            }
        return (ids, mask);
    }

    /// <summary>Positions [from, to) of a [B,H_kv,T,D] reference cache.</summary>
    private static double[] Slice(double[] cache, LlamaConfig c, int total, int from, int to)
    {
        var length = to - from;
        var result = new double[Batch * c.KvHeads * length * c.HeadDim];
        for (var row = 0; row < Batch * c.KvHeads; row++)
            Array.Copy(cache, (row * total + from) * c.HeadDim, result, row * length * c.HeadDim, length * c.HeadDim);
        return result;
    }

    private sealed record CallOutputs(float[][] Presents, int[] PresentLengths, Dictionary<int, int[]> BlockIndices);

    /// <summary>One model call on positions [offset, end) of the sequence, with the given pasts; returns presents and exposed block indices.</summary>
    private static CallOutputs RunCall(InferenceSession session, HySparseNativeConfig config, long[] ids, long[] mask, int total, int offset, int end, (float[] Data, int Length)[] pasts)
    {
        var c = config.Model;
        var chunk = end - offset;
        var chunkIds = new long[Batch * chunk];
        var prefixMask = new long[Batch * end];
        for (var b = 0; b < Batch; b++)
        {
            Array.Copy(ids, b * total + offset, chunkIds, b * chunk, chunk);
            Array.Copy(mask, b * total, prefixMask, b * end, end);
        }
        var names = new List<string> { DecoderNames.InputIds, DecoderNames.AttentionMask };
        var values = new List<OrtValue>
        {
            OrtValue.CreateTensorValueFromMemory(chunkIds, [Batch, chunk]),
            OrtValue.CreateTensorValueFromMemory(prefixMask, [Batch, end]),
        };
        for (var i = 0; i < 2 * c.Layers; i++)
        {
            names.Add(i % 2 == 0 ? DecoderNames.PastKey(i / 2) : DecoderNames.PastValue(i / 2));
            long[] shape = [Batch, c.KvHeads, pasts[i].Length, c.HeadDim];
            // An empty cache has no memory to pin: let ONNX Runtime allocate the zero-length tensor.
            values.Add(pasts[i].Length == 0
                ? OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Float, shape)
                : OrtValue.CreateTensorValueFromMemory(pasts[i].Data, shape));
        }
        var selecting = Enumerable.Range(0, c.Layers).Where(config.FeedsSparseLayer).ToList();
        var outputNames = Enumerable.Range(0, c.Layers).SelectMany(l => new[] { DecoderNames.PresentKey(l), DecoderNames.PresentValue(l) })
            .Concat(selecting.Select(HySparseModelBuilder.BlockIndicesOutput)).ToList();
        try
        {
            using var runOptions = new RunOptions();
            using var results = session.Run(runOptions, names, values, outputNames);
            var presents = Enumerable.Range(0, 2 * c.Layers).Select(i => results[i].GetTensorDataAsSpan<float>().ToArray()).ToArray();
            var lengths = Enumerable.Range(0, 2 * c.Layers).Select(i => (int)results[i].GetTensorTypeAndShape().Shape[2]).ToArray();
            var indices = selecting.Select((l, i) => (l, results[2 * c.Layers + i].GetTensorDataAsSpan<int>().ToArray())).ToDictionary(p => p.l, p => p.Item2);
            return new CallOutputs(presents, lengths, indices);
        }
        finally
        {
            foreach (var value in values) value.Dispose();
        }
    }
}
