using Google.Protobuf;
using HySparse.Models.Llama;

namespace HySparse.Exporter.Tests;

/// <summary>The onnxruntime-genai style decoder (com.microsoft.GroupQueryAttention).</summary>
[TestClass]
public sealed class GroupQueryAttentionModelTests
{
    [TestMethod]
    [DataRow(4, 2)]
    [DataRow(3, 3)]
    public void GroupQueryAttentionModelMatchesFloat64Reference(int heads, int kvHeads)
    {
        var config = new LlamaConfig { Layers = 2, Hidden = 32, Heads = heads, KvHeads = kvHeads, HeadDim = 16, Ffn = 40, Vocab = 37, Seed = 17 };
        var weights = LlamaWeights.Generate(config);
        var model = LlamaModelBuilder.Build(weights, LlamaAttentionStyle.GroupQueryAttention).ToByteArray();

        // Prompt, decode, and a chunk after a past: no left padding, which GroupQueryAttention does not model.
        // (Its CPU kernel also wants the head size to be a multiple of 16, and batch 1 for a chunk after a past.)
        foreach (var (batch, past, newTokens) in new[] { (2, 0, 5), (2, 5, 1), (1, 3, 4) })
        {
            var inputs = DecoderInputs.Random(config, batch, past, newTokens, leftPadding: new int[batch], seed: (ulong)(past * 13 + newTokens));
            ReferenceLlama.AssertModelMatches(model, weights, inputs, 2e-4);
        }
    }

    [TestMethod]
    public void ConversionIsRefusedPerLayerWithTheReason()
    {
        using var dir = new ModelDirectory();
        var config = new LlamaConfig { Layers = 3, Hidden = 16, Heads = 2, KvHeads = 1, HeadDim = 8, Ffn = 16, Vocab = 11 };
        var input = dir.WriteModel("genai.onnx", LlamaModelBuilder.Build(config, LlamaAttentionStyle.GroupQueryAttention));

        var error = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.ConvertFile(input, dir.File("out.onnx"), new ConversionOptions()));

        Assert.AreEqual(ConversionError.UnconvertibleLayers, error.Error);
        CollectionAssert.AreEqual(
            new[] { "/model/layers.0/self_attn/GroupQueryAttention", "/model/layers.1/self_attn/GroupQueryAttention", "/model/layers.2/self_attn/GroupQueryAttention" },
            error.Layers.Select(l => l.Node).ToArray());
        StringAssert.Contains(error.Layers[0].Reason, "GroupQueryAttention");
        Assert.IsFalse(File.Exists(dir.File("out.onnx")));
    }
}
