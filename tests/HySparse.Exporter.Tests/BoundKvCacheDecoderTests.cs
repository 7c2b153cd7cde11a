using Google.Protobuf;
using HySparse.Exporter.Layout;
using HySparse.Models.Llama;
using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;

namespace HySparse.Exporter.Tests;

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
        return HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.FromPattern("FSSF"), Parameters = parameters }).Model.ToByteArray();
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DataRow("dense")]
    [DataRow("retrofit")]
    [DataRow("kv-sharing")]
    public void BoundStepsEqualOrdinarySteps(string kind)
    {
        using var session = TestSessions.Open(Model(kind), registerOps: kind != "dense");
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
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void ACacheLoadedFromAnEarlierRunContinuesLikeIt()
    {
        using var session = TestSessions.Open(Model("kv-sharing"), registerOps: true);
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
        using var session = TestSessions.Open(Model("dense"), registerOps: false);
        using var bound = new KvCacheDecoder(session, boundCapacity: 4);
        bound.Step([1, 2, 3]);
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => bound.Step([4, 5]));
        StringAssert.Contains(error.Message, "do not fit the bound caches of 4 positions");
        Assert.ThrowsExactly<ArgumentException>(() => new KvCacheDecoder(session, bufferCapacity: 4, boundCapacity: 4));
    }
}
