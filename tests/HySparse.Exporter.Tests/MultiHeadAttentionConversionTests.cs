namespace HySparse.Exporter.Tests;

/// <summary>
/// Decoders fused into com.microsoft.MultiHeadAttention (concatenated caches, unidirectional, key
/// padding mask from attention_mask) converted to HySparse ops, run side by side with the source.
/// </summary>
[TestClass]
public sealed class MultiHeadAttentionConversionTests
{
    private static readonly LlamaConfig Config = new() { Layers = 4, Hidden = 32, Heads = 4, KvHeads = 4, HeadDim = 8, Ffn = 40, Vocab = 47, Seed = 23 };

    [TestMethod]
    public void MultiHeadAttentionModelMatchesFloat64ReferenceWithLeftPadding()
    {
        var weights = LlamaWeights.Generate(Config);
        var model = LlamaModelBuilder.Build(weights, LlamaAttentionStyle.MultiHeadAttention).ToByteArray();
        // Padding tokens' own outputs differ (the reference spreads them evenly, as the dense graph does);
        // rows without padding and decode after a padded prefix are compared in full.
        foreach (var (batch, past, newTokens, padding) in new[] { (2, 0, 6, new[] { 0, 0 }), (2, 5, 1, new[] { 0, 3 }), (1, 4, 3, new[] { 2 }) })
        {
            var inputs = DecoderInputs.Random(Config, batch, past, newTokens, padding, seed: (ulong)(past * 7 + newTokens));
            ReferenceLlama.AssertModelMatches(model, weights, inputs, 2e-4);
        }
    }

    [TestMethod]
    public void BuilderRefusesGroupedKvHeads()
    {
        var error = Assert.ThrowsExactly<ArgumentException>(() => LlamaModelBuilder.Build(Config with { KvHeads = 2 }, LlamaAttentionStyle.MultiHeadAttention));
        StringAssert.Contains(error.Message, "one head count");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DataRow(5, 4, 3, false, DisplayName = "every block selected (K·B ≥ T), small window")]
    [DataRow(1, 4, 19, false, DisplayName = "window covers the context (w ≥ T), one block")]
    [DataRow(5, 4, 3, true, DisplayName = "every block selected, projection bias inside the op")]
    public void ConvertedModelEqualsTheSourceWhenSelectionAndWindowCoverTheContext(int topK, int blockSize, int window, bool bias)
    {
        var parameters = new HybridParameters { TopK = topK, BlockSize = blockSize, Window = window };
        var source = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.MultiHeadAttention, multiHead: new MultiHeadAttentionOptions { ProjectionBias = bias });
        var (hybrid, report) = HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio("1:2"), Parameters = parameters });
        Assert.AreEqual(AttentionStyle.MultiHeadAttention, report.Style);
        AssertConvertedEqualsSource(source, hybrid, Config);
    }

    /// <summary>
    /// A 16-token prefill with the second row left-padded by 5, then three decode steps, of
    /// <paramref name="source"/> and <paramref name="hybrid"/>: real tokens' logits and caches agree.
    /// </summary>
    internal static void AssertConvertedEqualsSource(ModelProto source, ModelProto hybrid, LlamaConfig config)
    {
        var expected = DecoderRunner.PrefillThenDecode(source.ToByteArray(), config, decodeSteps: 3);
        var actual = DecoderRunner.PrefillThenDecode(hybrid.ToByteArray(), config, decodeSteps: 3, o => o.RegisterHySparseOps());
        for (var step = 0; step < expected.Count; step++)
            Close.AssertRealTokens(expected[step].Inputs, config, expected[step].Outputs, actual[step].Outputs, 1e-4, $"step {step}");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void SmallTopKRunsAndMatchesTheKvAccounting()
    {
        var hybrid = AssertSmallTopKChangesTheResultAndMatchesTheKvAccounting(LlamaModelBuilder.Build(Config, LlamaAttentionStyle.MultiHeadAttention), Config, "multiheadattention");
        Assert.AreEqual(HybridMetadata.ConcatenatedCache, hybrid.MetadataProps.Single(p => p.Key == HybridMetadata.KvCache).Value);
    }

    /// <summary>
    /// Converts <paramref name="source"/> at K = 1, B = 4, w = 4 (1:2) and runs both as in
    /// <see cref="AssertConvertedEqualsSource"/>: the sparse layers' 8 of 19 keys must change the last
    /// logits, every cache keeps the whole sequence (retrofit), and the caches the model returned are
    /// what the KV accounting and <c>inspect</c> say. Returns the converted model.
    /// </summary>
    internal static ModelProto AssertSmallTopKChangesTheResultAndMatchesTheKvAccounting(ModelProto source, LlamaConfig config, string sourceStyle)
    {
        var parameters = new HybridParameters { TopK = 1, BlockSize = 4, Window = 4 };
        var (hybrid, report) = HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio("1:2"), Parameters = parameters });

        var dense = DecoderRunner.PrefillThenDecode(source.ToByteArray(), config, decodeSteps: 3);
        var runs = DecoderRunner.PrefillThenDecode(hybrid.ToByteArray(), config, decodeSteps: 3, o => o.RegisterHySparseOps());

        var (inputs, outputs) = runs[^1];
        Assert.IsTrue(outputs.Logits.All(double.IsFinite), "logits must be finite");
        var largestChange = outputs.Logits.Zip(dense[^1].Outputs.Logits, (h, d) => Math.Abs(h - d)).Max();
        Assert.IsGreaterThan(1e-3, largestChange, "4 + 4 of 19 keys per sparse layer must change the result");
        var cacheElements = inputs.Batch * config.KvHeads * inputs.Total * config.HeadDim;
        foreach (var cache in outputs.PresentKeys.Concat(outputs.PresentValues)) Assert.HasCount(cacheElements, cache);
        GroupQueryAttentionConversionTests.AssertKvAccounting(hybrid, report, outputs, inputs.Batch, inputs.Total, sourceStyle);
        return hybrid;
    }

    [TestMethod]
    public void ConversionFeedsTheMaskTheKeyPaddingMaskWasCastFrom()
    {
        var (hybrid, _) = HybridConverter.Convert(LlamaModelBuilder.Build(Config, LlamaAttentionStyle.MultiHeadAttention), new ConversionOptions());
        var nodes = hybrid.Graph.Node;

        Assert.IsFalse(nodes.Any(n => n.OpType == "MultiHeadAttention"));
        Assert.IsFalse(nodes.Any(n => n.OpType == "Cast" && n.Input[0] == DecoderNames.AttentionMask), "the int32 cast of the mask is no longer needed");
        Assert.AreEqual(8, nodes.Count(n => n.OpType == "RotaryEmbedding"), "the source's own RoPE nodes stay");
        foreach (var op in nodes.Where(n => n.Domain == HySparseOps.Domain))
            Assert.AreEqual(DecoderNames.AttentionMask, op.Input[op.OpType == HySparseOps.FullAttn ? 5 : 8], op.Name);
    }

    [TestMethod]
    public void AProjectionBiasInsideTheOpIsAddedInFrontOfTheHySparseOp()
    {
        var source = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.MultiHeadAttention, multiHead: new MultiHeadAttentionOptions { ProjectionBias = true });
        var (hybrid, _) = HybridConverter.Convert(source, new ConversionOptions());
        var nodes = hybrid.Graph.Node;

        var op = nodes.First(n => n.Domain == HySparseOps.Domain);
        var producers = op.Input.Take(3).Select(input => nodes.Single(n => n.Output.Contains(input))).ToList();
        Assert.IsTrue(producers.All(p => p.OpType == "Add"), string.Join(", ", producers.Select(p => p.OpType)));
        var split = nodes.Single(n => n.Output.Contains(producers[0].Input[1]));
        Assert.AreEqual("Split", split.OpType);
        Assert.AreEqual("model.layers.0.attn.qkv_bias", split.Input[0]);
        CollectionAssert.AreEqual(new[] { split.Output[0], split.Output[1], split.Output[2] }, producers.Select(p => p.Input[1]).ToArray());
    }

    /// <summary>A change the ops cannot follow, and the words the refusal must use.</summary>
    public static IEnumerable<object[]> Unconvertible =>
    [
        ["not causal", (Action<NodeProto>)(n => n.Attribute.Remove(n.Attribute.Single(a => a.Name == "unidirectional"))), "not causal"],
        ["unidirectional=0", (Action<NodeProto>)(n => n.Attribute.Single(a => a.Name == "unidirectional").I = 0), "not causal"],
        ["attention_bias", (Action<NodeProto>)(n => n.Input[5] = "cos_cache"), "'attention_bias'"],
        ["mask lengths", (Action<NodeProto>)(n => n.Input[4] = "input_ids"), "key_padding_mask"],
        ["mask_filter_value", (Action<NodeProto>)(n => n.Attribute.Add(Attr.Float("mask_filter_value", -1f))), "mask_filter_value"],
        ["output_qk", (Action<NodeProto>)(n => n.Output.Add("scores")), "'output_qk'"],
        ["no past", (Action<NodeProto>)(n => { n.Input.RemoveAt(7); n.Input.RemoveAt(6); }), "past_key"],
    ];

    [TestMethod]
    [DynamicData(nameof(Unconvertible))]
    public void WhatTheOpsCannotExpressIsRefusedNamingNodeAndReason(string what, Action<NodeProto> change, string reason)
    {
        var model = LlamaModelBuilder.Build(Config with { Layers = 2 }, LlamaAttentionStyle.MultiHeadAttention);
        change(model.Graph.Node.Where(n => n.OpType == "MultiHeadAttention").ElementAt(1));

        GroupQueryAttentionConversionTests.AssertRefusedAt(model, "/model/layers.1/self_attn/MultiHeadAttention", "com.microsoft.MultiHeadAttention", reason, what);
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void CliConvertsInspectsAndVerifiesInRetrofitAndWithKvSharing()
    {
        using var dir = new ModelDirectory();
        var (convertOutput, _, shared) = AssertCliConversionsVerify(dir, dir.WriteModel("mha.onnx", SourceModel()));
        StringAssert.Contains(convertOutput, "multiheadattention");

        var inspect = CliTests.Run("inspect", shared);
        Assert.AreEqual(ExitCodes.Success, inspect.Code, inspect.Err);
        StringAssert.Contains(inspect.Out, "window caches");
    }

    /// <summary>
    /// <c>hysparse convert</c>s <paramref name="model"/> with every block selected (K = 7, B = 4, w = 4)
    /// and with KV sharing over a window that covers the context (w = 26), and checks with
    /// <c>hysparse verify</c> that both give the source's logits on a batch of 2 × (24 + 2) tokens.
    /// Returns the first conversion's JSON output and the two converted files.
    /// </summary>
    internal static (string ConvertOutput, string Exact, string Shared) AssertCliConversionsVerify(ModelDirectory dir, string model)
    {
        var exact = dir.File("exact.onnx");
        var shared = dir.File("shared.onnx");
        var convert = CliTests.Run("convert", model, "-o", exact, "--top-k", "7", "--block-size", "4", "--window", "4", "--json");
        Assert.AreEqual(ExitCodes.Success, convert.Code, convert.Err);
        // With KV sharing the union equals dense attention when the window covers the context (w ≥ T).
        Assert.AreEqual(ExitCodes.Success, CliTests.Run("convert", model, "-o", shared, "--kv-sharing", "--window", "26", "-q").Code);

        foreach (var converted in new[] { exact, shared })
        {
            // 24 + 2 tokens in blocks of 4: K = 7 selects every block (and w = 26 covers them all).
            var verify = CliTests.Run("verify", model, converted, "--prompt", "24", "--steps", "2", "--batch", "2", "--json");
            Assert.AreEqual(ExitCodes.Success, verify.Code, verify.Err);
            using var json = JsonDocument.Parse(verify.Out);
            var report = json.RootElement.GetProperty("report");
            Assert.IsLessThan(1e-4, report.GetProperty("maxAbsError").GetDouble(), converted);
            Assert.AreEqual(1.0, report.GetProperty("top1Agreement").GetDouble(), converted);
        }
        return (convert.Out, exact, shared);
    }

    private static ModelProto SourceModel() => LlamaModelBuilder.Build(Config, LlamaAttentionStyle.MultiHeadAttention);
}
