using Google.Protobuf;
using HySparse.Exporter.Layout;
using HySparse.Models.Llama;
using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;

namespace HySparse.Exporter.Tests;

/// <summary>
/// <see cref="KvCacheDecoder"/> on real decoders: carrying present caches back as past must give the
/// logits of one call over the whole sequence, for dense and converted models alike.
/// </summary>
[TestClass]
public sealed class KvCacheDecoderTests
{
    private static readonly LlamaConfig Config = new() { Layers = 4, Hidden = 64, Heads = 4, KvHeads = 2, HeadDim = 16, Ffn = 96, Vocab = 97, Seed = 7 };

    [TestMethod]
    public void StepwiseDecodingEqualsOneCall_Dense() => StepwiseEqualsOneCall(LlamaModelBuilder.Build(Config).ToByteArray(), registerOps: false);

    [TestMethod]
    public void StepwiseDecodingEqualsOneCall_Hybrid()
    {
        // K covers every block, so the hybrid is exact and also comparable with itself in one call.
        using var dir = new ModelDirectory();
        File.WriteAllBytes(dir.File("dense.onnx"), LlamaModelBuilder.Build(Config).ToByteArray());
        var options = new ConversionOptions { Layout = LayoutSpec.FromPattern("FSSF"), Parameters = new HybridParameters { TopK = 8, BlockSize = 4, Window = 4 } };
        HybridConverter.ConvertFile(dir.File("dense.onnx"), dir.File("hybrid.onnx"), options, overwrite: false);
        StepwiseEqualsOneCall(File.ReadAllBytes(dir.File("hybrid.onnx")), registerOps: true);
    }

    [TestMethod]
    public void StepwiseDecodingEqualsOneCall_SharedBuffers()
    {
        // GroupQueryAttention source and its conversion (shared-buffer mode) on buffers of 30 positions.
        using var dir = new ModelDirectory();
        File.WriteAllBytes(dir.File("genai.onnx"), LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention).ToByteArray());
        var options = new ConversionOptions { Layout = LayoutSpec.FromPattern("FSSF"), Parameters = new HybridParameters { TopK = 8, BlockSize = 4, Window = 4 } };
        HybridConverter.ConvertFile(dir.File("genai.onnx"), dir.File("hybrid.onnx"), options, overwrite: false);
        StepwiseEqualsOneCall(File.ReadAllBytes(dir.File("genai.onnx")), registerOps: false, bufferCapacity: 30);
        StepwiseEqualsOneCall(File.ReadAllBytes(dir.File("hybrid.onnx")), registerOps: true, bufferCapacity: 30);
    }

    [TestMethod]
    public void SharedBuffersHoldTheirCapacityFromTheFirstStep()
    {
        using var session = TestSessions.Open(LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention).ToByteArray(), registerOps: false);
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
        using var session = TestSessions.Open(LlamaModelBuilder.Build(Config).ToByteArray(), registerOps: false);
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

    private static void StepwiseEqualsOneCall(byte[] model, bool registerOps, int? bufferCapacity = null)
    {
        using var session = TestSessions.Open(model, registerOps);
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
