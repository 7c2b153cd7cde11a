namespace HySparse.Exporter.Tests;

/// <summary>The builder's decomposed decoder computes what a float64 loop implementation computes.</summary>
[TestClass]
public sealed class DenseModelTests
{
    [TestMethod]
    [DataRow(4, 2, false, ScalePlacement.DivideScores, false, DisplayName = "GQA 4:2, untied head")]
    [DataRow(2, 2, true, ScalePlacement.DivideScores, false, DisplayName = "MHA, tied head")]
    [DataRow(6, 1, false, ScalePlacement.DivideScores, false, DisplayName = "MQA 6:1")]
    [DataRow(4, 2, false, ScalePlacement.MultiplyScores, true, DisplayName = "GQA 4:2, Mul scale, fused QKV")]
    [DataRow(4, 2, true, ScalePlacement.SplitOverQueryAndKey, false, DisplayName = "GQA 4:2, SDPA-style split scale")]
    public void DecomposedModelMatchesFloat64Reference(int heads, int kvHeads, bool tied, ScalePlacement scale, bool fusedQkv)
    {
        var config = new LlamaConfig { Layers = 2, Hidden = 24, Heads = heads, KvHeads = kvHeads, HeadDim = 8, Ffn = 40, Vocab = 37, Seed = 7, TiedEmbeddings = tied };
        var weights = LlamaWeights.Generate(config);
        var model = LlamaModelBuilder.Build(weights, LlamaAttentionStyle.Decomposed, new DecomposedExportOptions { Scale = scale, FusedQkv = fusedQkv }).ToByteArray();

        // Prefill-with-past and decode calls, the second batch row left-padded into its new tokens.
        foreach (var (past, newTokens) in new[] { (3, 5), (6, 1), (0, 4) })
        {
            var inputs = DecoderInputs.Random(config, batch: 2, past, newTokens, leftPadding: [0, Math.Min(past + 2, past + newTokens - 1)], seed: (ulong)(past * 31 + newTokens));
            ReferenceLlama.AssertModelMatches(model, weights, inputs, 2e-4);
        }
    }
}

/// <summary>Caches handed from call to call stay consistent with a from-scratch reference.</summary>
[TestClass]
public sealed class DenseDecodeTests
{
    [TestMethod]
    public void PresentsFedBackAsPastsMatchTheReferenceAtEveryStep()
    {
        var config = new LlamaConfig { Layers = 2, Hidden = 24, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 40, Vocab = 37, Seed = 9 };
        var weights = LlamaWeights.Generate(config);

        var runs = DecoderRunner.PrefillThenDecode(LlamaModelBuilder.Build(weights).ToByteArray(), config, decodeSteps: 3);

        Assert.HasCount(4, runs);
        foreach (var (inputs, actual) in runs)
        {
            var expected = ReferenceLlama.Forward(weights, inputs.Batch, inputs.InputIds, inputs.Mask, inputs.PastKeys, inputs.PastValues);
            Close.Assert(expected.Logits, actual.Logits, 2e-4, $"logits at T={inputs.Total}");
            Close.Assert(expected.PresentKeys[1], actual.PresentKeys[1], 2e-4, $"present.1.key at T={inputs.Total}");
        }
        Assert.AreEqual(19, runs[^1].Inputs.Total);
    }
}

/// <summary>Element-wise closeness with a message that names the first bad element.</summary>
public static class Close
{
    /// <summary>Compares the logits of new tokens whose own mask entry is 1 (padding rows are skipped).</summary>
    public static void AssertLogitsOfRealTokens(DecoderInputs inputs, int vocab, double[] expected, double[] actual, double tolerance, string what)
    {
        for (var b = 0; b < inputs.Batch; b++)
            for (var i = 0; i < inputs.NewTokens; i++)
            {
                if (inputs.Mask[b * inputs.Total + inputs.Past + i] == 0) continue;
                var offset = (b * inputs.NewTokens + i) * vocab;
                Assert(expected[offset..(offset + vocab)], actual[offset..(offset + vocab)], tolerance, $"{what} logits (b={b}, s={i})");
            }
    }

    /// <summary>
    /// Compares logits of real (unpadded) tokens and cache rows at real positions: a padding token's
    /// output is all zeros in the HySparse ops (docs/ops.md), an even spread in the decomposed graph and
    /// implementation-defined in ONNX Attention, so what later layers cache at padding positions
    /// legitimately differs; nothing real attends to those positions.
    /// </summary>
    public static void AssertRealTokens(DecoderInputs inputs, LlamaConfig config, DecoderOutputs expected, DecoderOutputs actual, double tolerance, string what)
    {
        int t = inputs.Total, d = config.HeadDim;
        AssertLogitsOfRealTokens(inputs, config.Vocab, expected.Logits, actual.Logits, tolerance, what);
        Microsoft.VisualStudio.TestTools.UnitTesting.Assert.HasCount(expected.PresentKeys.Length, actual.PresentKeys, $"{what}: present caches");
        for (var l = 0; l < expected.PresentKeys.Length; l++)
            for (var b = 0; b < inputs.Batch; b++)
                for (var g = 0; g < config.KvHeads; g++)
                    for (var j = 0; j < t; j++)
                    {
                        if (inputs.Mask[b * t + j] == 0) continue;
                        var offset = ((b * config.KvHeads + g) * t + j) * d;
                        Assert(expected.PresentKeys[l][offset..(offset + d)], actual.PresentKeys[l][offset..(offset + d)], tolerance, $"{what} present.{l}.key (b={b}, g={g}, j={j})");
                        Assert(expected.PresentValues[l][offset..(offset + d)], actual.PresentValues[l][offset..(offset + d)], tolerance, $"{what} present.{l}.value (b={b}, g={g}, j={j})");
                    }
    }

    public static void Assert(double[] expected, double[] actual, double tolerance, string what)
    {
        Microsoft.VisualStudio.TestTools.UnitTesting.Assert.AreEqual(expected.Length, actual.Length, $"{what}: element count");
        for (var i = 0; i < expected.Length; i++)
        {
            var allowed = tolerance * Math.Max(1, Math.Abs(expected[i]));
            if (!(Math.Abs(expected[i] - actual[i]) <= allowed))
                Microsoft.VisualStudio.TestTools.UnitTesting.Assert.Fail($"{what}[{i}]: expected {expected[i]:R}, got {actual[i]:R}");
        }
    }
}
