namespace HySparse.Exporter.Tests;

/// <summary>The onnxruntime-genai style decoder (com.microsoft.GroupQueryAttention) and its variants.</summary>
[TestClass]
public sealed class GroupQueryAttentionModelTests
{
    [TestMethod]
    [DataRow(4, 2, true, false, false)]
    [DataRow(3, 3, true, false, false)]
    [DataRow(4, 2, false, false, false, DisplayName = "RoPE in RotaryEmbedding nodes before the op")]
    [DataRow(4, 2, false, false, true, DisplayName = "RoPE in RotaryEmbedding nodes on a position_ids input")]
    [DataRow(4, 1, true, true, false, DisplayName = "packed QKV")]
    public void GroupQueryAttentionModelMatchesFloat64Reference(int heads, int kvHeads, bool doRotary, bool packed, bool positionIds)
    {
        var config = new LlamaConfig { Layers = 2, Hidden = 32, Heads = heads, KvHeads = kvHeads, HeadDim = 16, Ffn = 40, Vocab = 37, Seed = 17 };
        var weights = LlamaWeights.Generate(config);
        var model = LlamaModelBuilder.Build(weights, LlamaAttentionStyle.GroupQueryAttention,
            groupQuery: new GroupQueryAttentionOptions { DoRotary = doRotary, PackedQkv = packed, PositionIdsInput = positionIds }).ToByteArray();

        // Prompt, decode, and a chunk after a past: no left padding, which GroupQueryAttention does not model.
        // (Its CPU kernel also wants the head size to be a multiple of 16, and batch 1 for a chunk after a past.)
        foreach (var (batch, past, newTokens) in new[] { (2, 0, 5), (2, 5, 1), (1, 3, 4) })
        {
            var inputs = DecoderInputs.Random(config, batch, past, newTokens, leftPadding: new int[batch], seed: (ulong)(past * 13 + newTokens));
            ReferenceLlama.AssertModelMatches(model, weights, inputs, 2e-4);
        }
    }

    [TestMethod]
    public void PackedQkvWithoutInternalRotary_AndPositionIdsWithIt_AreRefusedByTheBuilder()
    {
        var config = new LlamaConfig { Layers = 1, Hidden = 16, Heads = 2, KvHeads = 1, HeadDim = 8, Ffn = 16, Vocab = 11 };
        var error = Assert.ThrowsExactly<ArgumentException>(() =>
            LlamaModelBuilder.Build(config, LlamaAttentionStyle.GroupQueryAttention, groupQuery: new GroupQueryAttentionOptions { PackedQkv = true, DoRotary = false }));
        StringAssert.Contains(error.Message, "DoRotary");
        error = Assert.ThrowsExactly<ArgumentException>(() =>
            LlamaModelBuilder.Build(config, LlamaAttentionStyle.GroupQueryAttention, groupQuery: new GroupQueryAttentionOptions { PositionIdsInput = true }));
        StringAssert.Contains(error.Message, "DoRotary off");
    }
}
