using Google.Protobuf;
using HySparse.Exporter;
using HySparse.Exporter.Layout;
using HySparse.Models.Llama;
using Onnx;

namespace HySparse.Onnx.Tests;

/// <summary>
/// <see cref="KvCacheDecoder"/> on real decoders: carrying present caches back as past must give the
/// logits of one call over the whole sequence, for dense and converted models alike.
/// </summary>
[TestClass]
public sealed class KvCacheDecoderTests
{
    private static readonly LlamaConfig Config = new() { Layers = 4, Hidden = 64, Heads = 4, KvHeads = 2, HeadDim = 16, Ffn = 96, Vocab = 97, Seed = 7 };

    /// <summary>The test decoder as exported (decomposed attention, or another style).</summary>
    private static byte[] Source(LlamaAttentionStyle style = LlamaAttentionStyle.Decomposed) => LlamaModelBuilder.Build(Config, style).ToByteArray();

    /// <summary>
    /// <paramref name="model"/> converted to FSSF with K covering every block of these runs, so each
    /// hybrid is exact and comparable with itself in one call.
    /// </summary>
    private static byte[] Converted(byte[] model, HybridMode mode = HybridMode.Retrofit, bool kvBuffer = false) =>
        HybridConverter.Convert(ModelProto.Parser.ParseFrom(model), new ConversionOptions
        {
            Layout = LayoutSpec.FromLetters("FSSF"),
            Parameters = new HybridParameters { TopK = 8, BlockSize = 4, Window = 4, Mode = mode },
            KvBuffer = kvBuffer,
        }).Model.ToByteArray();

    [TestMethod]
    public void StepwiseDecodingEqualsOneCall_Dense() => StepwiseEqualsOneCall(Source(), registerOps: false);

    [TestMethod]
    public void StepwiseDecodingEqualsOneCall_Hybrid() => StepwiseEqualsOneCall(Converted(Source()), registerOps: true);

    [TestMethod]
    public void StepwiseDecodingEqualsOneCall_SharedBuffers()
    {
        // GroupQueryAttention source and its conversion (shared-buffer mode) on buffers of 30 positions.
        var genai = Source(LlamaAttentionStyle.GroupQueryAttention);
        StepwiseEqualsOneCall(genai, registerOps: false, bufferCapacity: 30);
        StepwiseEqualsOneCall(Converted(genai), registerOps: true, bufferCapacity: 30);
    }

    [TestMethod]
    public void ChunkedPrefillEqualsOneCall()
    {
        // Dense; retrofit FSSF; kv-sharing (window caches, chunks longer than the window); the GQA
        // source and its shared-buffer conversion; the dense model converted with --kv-buffer.
        var dense = Source();
        var genai = Source(LlamaAttentionStyle.GroupQueryAttention);
        ChunkedPrefillEqualsOneCall(dense, registerOps: false);
        ChunkedPrefillEqualsOneCall(Converted(dense), registerOps: true);
        ChunkedPrefillEqualsOneCall(Converted(dense, HybridMode.KvSharing), registerOps: true);
        ChunkedPrefillEqualsOneCall(genai, registerOps: false, bufferCapacity: 40);
        ChunkedPrefillEqualsOneCall(Converted(genai), registerOps: true, bufferCapacity: 40);
        ChunkedPrefillEqualsOneCall(Converted(dense, kvBuffer: true), registerOps: true, bufferCapacity: 40);
    }

    [TestMethod]
    public void ChunkedPrefillOfPaddedRowsEqualsOneCallAndGreedyDecodingAgrees()
    {
        using var session = OrtRunner.OpenSession(Converted(Source()), registerHySparseOps: true);
        var rng = new Random(5);
        const int promptLen = 21;
        var prompt = Enumerable.Range(0, 2 * promptLen).Select(_ => (long)rng.Next(Config.Vocab)).ToArray();
        // Row 1 is left-padded by 6 tokens.
        var mask = Enumerable.Range(0, 2 * promptLen).Select(i => i >= promptLen && i < promptLen + 6 ? 0L : 1L).ToArray();

        using var whole = new KvCacheDecoder(session, batchSize: 2);
        var reference = whole.Step(prompt, mask);
        using var chunked = new KvCacheDecoder(session, batchSize: 2);
        var last = chunked.Prefill(prompt, chunkSize: 4, mask);
        Assert.AreEqual(2 * Config.Vocab, last.Length);
        for (var b = 0; b < 2; b++)
            for (var v = 0; v < Config.Vocab; v++)
            {
                var want = reference[(b * promptLen + promptLen - 1) * Config.Vocab + v];
                Assert.AreEqual(want, last[b * Config.Vocab + v], 2e-4 + 2e-4 * Math.Abs(want), $"row {b}, logit {v}");
            }
        Assert.AreEqual(promptLen, (int)chunked.Position);

        using var oneCall = new KvCacheDecoder(session, batchSize: 1);
        using var inChunks = new KvCacheDecoder(session, batchSize: 1);
        var first = prompt[..promptLen];
        CollectionAssert.AreEqual(oneCall.GenerateGreedy(first, 6), inChunks.GenerateGreedy(first, 6, prefillChunk: 5));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => inChunks.Prefill(first, 0));
        Assert.ThrowsExactly<ArgumentException>(() => inChunks.Prefill(first, 4, [1, 1]));
    }

    [TestMethod]
    public void SharedBuffersHoldTheirCapacityFromTheFirstStep()
    {
        using var session = OrtRunner.OpenSession(LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention).ToByteArray(), registerHySparseOps: false);
        using var decoder = new KvCacheDecoder(session, bufferCapacity: 8);
        var bufferBytes = 2L * Config.Layers * Config.KvHeads * 8 * Config.HeadDim * 4;
        Assert.AreEqual(bufferBytes, decoder.KvCacheBytes);
        decoder.Step([1, 2, 3, 4, 5]);
        decoder.Step([6]);
        Assert.AreEqual(6, decoder.Position);
        Assert.AreEqual(bufferBytes, decoder.KvCacheBytes);
        CollectionAssert.AreEqual(Enumerable.Repeat(8L, 2 * Config.Layers).ToArray(), decoder.CacheLengths.ToArray());
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => decoder.Step([7, 8, 9]));
        StringAssert.Contains(error.Message, "8 positions");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new KvCacheDecoder(session, bufferCapacity: 0));
    }

    [TestMethod]
    public void ReportsCacheBytesAndPosition()
    {
        using var session = OrtRunner.OpenSession(LlamaModelBuilder.Build(Config).ToByteArray(), registerHySparseOps: false);
        using var decoder = new KvCacheDecoder(session);
        Assert.AreEqual(2 * Config.Layers, decoder.CacheTensorCount);
        Assert.AreEqual(0, decoder.KvCacheBytes);
        decoder.Step([1, 2, 3, 4, 5]);
        decoder.Step([6]);
        Assert.AreEqual(6, decoder.Position);
        // 2 tensors per layer of [1, H_kv, 6, D] float32.
        Assert.AreEqual(2L * Config.Layers * Config.KvHeads * 6 * Config.HeadDim * 4, decoder.KvCacheBytes);
        CollectionAssert.AreEqual(Enumerable.Repeat(6L, 2 * Config.Layers).ToArray(), decoder.CacheLengths.ToArray());
        decoder.Reset();
        Assert.AreEqual(0, decoder.Position);
        Assert.ThrowsExactly<ArgumentException>(() => decoder.Step([1, 2, 3], [1, 1]));
        Assert.ThrowsExactly<ArgumentException>(() => new KvCacheDecoder(session, 1, ["no_such_output"]));
    }

    // Prefill in chunks of 1, 4, 7 (the last one shorter) and 16 (longer than the window) tokens against
    // the last token's logits of one Step over the 30-token prompt.
    private static void ChunkedPrefillEqualsOneCall(byte[] model, bool registerOps, int? bufferCapacity = null)
    {
        using var session = OrtRunner.OpenSession(model, registerOps);
        var rng = new Random(4);
        var tokens = Enumerable.Range(0, 30).Select(_ => (long)rng.Next(Config.Vocab)).ToArray();
        using var whole = new KvCacheDecoder(session, bufferCapacity: bufferCapacity);
        var reference = whole.Step(tokens).AsSpan((tokens.Length - 1) * Config.Vocab, Config.Vocab).ToArray();
        foreach (var chunk in new[] { 1, 4, 7, 16 })
        {
            using var chunked = new KvCacheDecoder(session, bufferCapacity: bufferCapacity);
            var last = chunked.Prefill(tokens, chunk);
            Assert.AreEqual(tokens.Length, (int)chunked.Position);
            for (var v = 0; v < Config.Vocab; v++)
                Assert.AreEqual(reference[v], last[v], 2e-4 + 2e-4 * Math.Abs(reference[v]), $"chunk {chunk}, logit {v}");
        }
    }

    private static void StepwiseEqualsOneCall(byte[] model, bool registerOps, int? bufferCapacity = null)
    {
        using var session = OrtRunner.OpenSession(model, registerOps);
        var rng = new Random(3);
        var tokens = Enumerable.Range(0, 23).Select(_ => (long)rng.Next(Config.Vocab)).ToArray();

        using var whole = new KvCacheDecoder(session, bufferCapacity: bufferCapacity);
        var reference = whole.Step(tokens);

        using var stepwise = new KvCacheDecoder(session, bufferCapacity: bufferCapacity);
        var chunks = new[] { 9, 1, 5, 1, 1, 6 };
        var offset = 0;
        foreach (var chunk in chunks)
        {
            var logits = stepwise.Step(tokens.AsSpan(offset, chunk));
            for (var i = 0; i < logits.Length; i++)
            {
                var want = reference[offset * Config.Vocab + i];
                Assert.AreEqual(want, logits[i], 2e-4 + 2e-4 * Math.Abs(want), $"token {offset + i / Config.Vocab}, logit {i % Config.Vocab}");
            }
            offset += chunk;
        }
        Assert.AreEqual(tokens.Length, (int)stepwise.Position);
    }
}

/// <summary>
/// <see cref="KvCacheDecoder"/>'s bound mode (caches, ids, mask and logits preallocated and bound through
/// IOBinding, present → past by swapping buffers) against its ordinary mode on the same models and
/// tokens: dense, retrofit and KV-sharing conversions (window caches), batches with padding, chunks of
/// several tokens, and caches loaded from an earlier run.
/// </summary>
[TestClass]
public sealed class BoundKvCacheDecoderTests
{
    private static readonly LlamaConfig Config = new() { Layers = 4, Hidden = 64, Heads = 4, KvHeads = 2, HeadDim = 16, Ffn = 96, Vocab = 97, Seed = 11 };

    private static byte[] Model(string kind)
    {
        var dense = LlamaModelBuilder.Build(Config);
        if (kind == "dense") return dense.ToByteArray();
        // K 2 of 4-token blocks + w 5: at 40 tokens the sparse layers read a fraction of the context, and
        // with KV sharing their window caches stop at 5 positions.
        var parameters = new HybridParameters { TopK = 2, BlockSize = 4, Window = 5, Mode = kind == "kv-sharing" ? HybridMode.KvSharing : HybridMode.Retrofit };
        return HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.FromLetters("FSSF"), Parameters = parameters }).Model.ToByteArray();
    }

    [TestMethod]
    [DataRow("dense")]
    [DataRow("retrofit")]
    [DataRow("kv-sharing")]
    public void BoundStepsEqualOrdinarySteps(string kind)
    {
        using var session = OrtRunner.OpenSession(Model(kind), registerHySparseOps: kind != "dense");
        var rng = new Random(5);
        // Batch 2: the second row's prompt right-padded by 3, then chunks of 1, 4 and 1 tokens.
        var chunks = new[] { 12, 1, 4, 1, 1 };
        var total = chunks.Sum();
        var tokens = Enumerable.Range(0, 2 * total).Select(_ => (long)rng.Next(Config.Vocab)).ToArray();
        using var ordinary = new KvCacheDecoder(session, batchSize: 2);
        using var bound = new KvCacheDecoder(session, batchSize: 2, boundCapacity: total);
        var offset = 0;
        foreach (var chunk in chunks)
        {
            var ids = Enumerable.Range(0, 2).SelectMany(b => tokens.AsSpan(b * total + offset, chunk).ToArray()).ToArray();
            long[] mask = offset == 0 ? [.. Enumerable.Repeat(1L, chunk), .. Enumerable.Range(0, chunk).Select(i => i < chunk - 3 ? 1L : 0L)] : [];
            var want = ordinary.Step(ids, mask);
            var got = bound.Step(ids, mask);
            Assert.HasCount(want.Length, got);
            for (var i = 0; i < want.Length; i++)
                Assert.AreEqual(want[i], got[i], 1e-5 + 1e-5 * Math.Abs(want[i]), $"{kind}: chunk at {offset}, logit {i}");
            CollectionAssert.AreEqual(ordinary.CacheLengths.ToArray(), bound.CacheLengths.ToArray(), $"{kind}: cache lengths after {offset + chunk}");
            Assert.AreEqual(ordinary.KvCacheBytes, bound.KvCacheBytes);
            offset += chunk;
        }
        Assert.AreEqual(total, (int)bound.Position);
        if (kind == "kv-sharing") Assert.Contains(5L, bound.CacheLengths, "window caches stop at w");

        // Reset and again: the same logits from the same buffers.
        bound.Reset();
        var first = bound.Step(Enumerable.Range(0, 2).SelectMany(b => tokens.AsSpan(b * total, 3).ToArray()).ToArray()).ToArray();
        ordinary.Reset();
        var again = ordinary.Step(Enumerable.Range(0, 2).SelectMany(b => tokens.AsSpan(b * total, 3).ToArray()).ToArray());
        for (var i = 0; i < again.Length; i++) Assert.AreEqual(again[i], first[i], 1e-5 + 1e-5 * Math.Abs(again[i]));
    }

    [TestMethod]
    public void ACacheLoadedFromAnEarlierRunContinuesLikeIt()
    {
        using var session = OrtRunner.OpenSession(Model("kv-sharing"), registerHySparseOps: true);
        var rng = new Random(6);
        var prompt = Enumerable.Range(0, 20).Select(_ => (long)rng.Next(Config.Vocab)).ToArray();
        using var ordinary = new KvCacheDecoder(session, extraOutputs: session.OutputNames.Where(n => n.StartsWith(DecoderNames.PresentPrefix, StringComparison.Ordinal)));
        ordinary.Step(prompt);
        // The presents of the prompt, read back per cache, row and head.
        var presents = session.OutputNames.Where(n => n.StartsWith(DecoderNames.PresentPrefix, StringComparison.Ordinal))
            .ToDictionary(n => DecoderNames.PastPrefix + n[DecoderNames.PresentPrefix.Length..], n => (ordinary.ExtraOutput(n).GetTensorDataAsSpan<float>().ToArray(), ordinary.ExtraOutput(n).GetTensorTypeAndShape().Shape));
        using var bound = new KvCacheDecoder(session, boundCapacity: 32);
        bound.LoadCache(prompt.Length, (past, row, head, first, rows) =>
        {
            var (data, shape) = presents[past];
            var length = shape[2];
            Assert.AreEqual(prompt.Length - length, first, $"{past}: a window cache gets the last positions");
            data.AsSpan((int)((row * shape[1] + head) * length * shape[3]), rows.Length).CopyTo(rows);
        });
        foreach (var token in new long[] { 3, 50, 7 })
        {
            var want = ordinary.Step([token]);
            var got = bound.Step([token]);
            for (var i = 0; i < want.Length; i++) Assert.AreEqual(want[i], got[i], 1e-5 + 1e-5 * Math.Abs(want[i]), $"logit {i}");
        }
        Assert.ThrowsExactly<InvalidOperationException>(() => ordinary.LoadCache(1, (_, _, _, _, _) => { }));
    }

    [TestMethod]
    public void RefusesWhatItCannotHold()
    {
        using var session = OrtRunner.OpenSession(Model("dense"), registerHySparseOps: false);
        using var bound = new KvCacheDecoder(session, boundCapacity: 4);
        bound.Step([1, 2, 3]);
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => bound.Step([4, 5]));
        StringAssert.Contains(error.Message, "do not fit the bound caches of 4 positions");
        Assert.ThrowsExactly<ArgumentException>(() => new KvCacheDecoder(session, bufferCapacity: 4, boundCapacity: 4));
    }
}

