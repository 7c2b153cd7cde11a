namespace HySparse.Exporter.Tests;

/// <summary>
/// Spellings of attention that real exports use beyond Hugging Face's eager export, built from one
/// set of weights so each can be checked against the float64 reference and its conversion against it.
/// </summary>
/// <param name="Name">Name used in data rows.</param>
/// <param name="Style">Attention style.</param>
/// <param name="Decomposed">Decomposed-export options (also: with or without KV cache).</param>
/// <param name="OnnxAttention">ONNX Attention options, for that style.</param>
/// <param name="Mha">True when the variant needs H_q = H_kv.</param>
public sealed record ExportVariant(string Name, LlamaAttentionStyle Style, DecomposedExportOptions Decomposed, OnnxAttentionOptions? OnnxAttention = null, bool Mha = false)
{
    /// <summary>Whether the model has past/present cache inputs and outputs.</summary>
    public bool KvCache => Decomposed.KvCache;

    /// <summary>False when the export ignores padding (ONNX Attention with is_causal=1 and no mask).</summary>
    public bool MasksPadding => OnnxAttention?.Mask != OnnxAttentionMask.IsCausal;

    /// <summary>A 4-layer configuration fitting the variant.</summary>
    public LlamaConfig Config(ulong seed) =>
        new() { Layers = 4, Hidden = 32, Heads = 4, KvHeads = Mha ? 4 : 2, HeadDim = 8, Ffn = 48, Vocab = 53, Seed = seed };

    /// <summary>Builds the variant with <paramref name="weights"/>.</summary>
    public ModelProto Build(LlamaWeights weights) => LlamaModelBuilder.Build(weights, Style, Decomposed, onnxAttention: OnnxAttention);

    private static readonly DecomposedExportOptions NoCache = new() { KvCache = false };

    /// <summary>Every variant, by name.</summary>
    public static IReadOnlyDictionary<string, ExportVariant> All { get; } = new ExportVariant[]
    {
        new("where", LlamaAttentionStyle.Decomposed, new DecomposedExportOptions { Mask = MaskStyle.WhereOnScores }),
        new("where-sdpa-slices", LlamaAttentionStyle.Decomposed,
            new DecomposedExportOptions { Mask = MaskStyle.WhereOnScores, Scale = ScalePlacement.SplitOverQueryAndKey, FusedQkv = true, SplitBySlices = true }),
        new("fused-slices", LlamaAttentionStyle.Decomposed, new DecomposedExportOptions { FusedQkv = true, SplitBySlices = true, Scale = ScalePlacement.MultiplyScores }),
        new("no-cache", LlamaAttentionStyle.Decomposed, NoCache),
        new("no-cache-where-perm0231", LlamaAttentionStyle.Decomposed,
            NoCache with { Mask = MaskStyle.WhereOnScores, KeysFromHeadSplit = true }, Mha: true),
        new("onnx-attention-bool-4d", LlamaAttentionStyle.OnnxAttention, new DecomposedExportOptions(), new OnnxAttentionOptions()),
        new("onnx-attention-additive-3d", LlamaAttentionStyle.OnnxAttention, new DecomposedExportOptions(),
            new OnnxAttentionOptions { Rank = 3, Mask = OnnxAttentionMask.Additive, ExplicitScale = true }),
        new("onnx-attention-causal", LlamaAttentionStyle.OnnxAttention, new DecomposedExportOptions(), new OnnxAttentionOptions { Mask = OnnxAttentionMask.IsCausal, Rank = 3 }),
        new("onnx-attention-causal-no-cache", LlamaAttentionStyle.OnnxAttention, NoCache, new OnnxAttentionOptions { Mask = OnnxAttentionMask.IsCausal }),
        new("onnx-attention-bool-3d-no-cache", LlamaAttentionStyle.OnnxAttention, NoCache, new OnnxAttentionOptions { Rank = 3 }),
    }.ToDictionary(v => v.Name);

    /// <summary>Every variant's name, as test data.</summary>
    public static IEnumerable<object[]> Names => All.Keys.Select(name => new object[] { name });

    public override string ToString() => Name;
}

/// <summary>Each variant as built computes what the float64 reference computes.</summary>
[TestClass]
public sealed class ExportVariantModelTests
{
    [TestMethod]
    [DynamicData(nameof(ExportVariant.Names), typeof(ExportVariant))]
    public void VariantMatchesFloat64Reference(string name)
    {
        var variant = ExportVariant.All[name];
        var weights = LlamaWeights.Generate(variant.Config(seed: 17));
        var model = variant.Build(weights).ToByteArray();
        // Prefill with a past, decode, first call; without a cache, prefills of two lengths. The second row
        // is left-padded into its new tokens (not for an export that ignores padding).
        var calls = variant.KvCache ? new[] { (3, 5), (6, 1), (0, 4) } : [(0, 7), (0, 4)];
        foreach (var (past, newTokens) in calls)
        {
            var padding = variant.MasksPadding ? Math.Min(past + 2, past + newTokens - 1) : 0;
            var inputs = DecoderInputs.Random(weights.Config, batch: 2, past, newTokens, leftPadding: [0, padding], seed: (ulong)(past * 31 + newTokens));
            if (variant.Style == LlamaAttentionStyle.OnnxAttention)
            {
                // ONNX Attention leaves a query with no visible key implementation-defined (ONNX Runtime
                // does not spread it evenly as adding the float minimum does): compare real tokens.
                var expected = ReferenceLlama.Forward(weights, inputs.Batch, inputs.InputIds, inputs.Mask, inputs.PastKeys, inputs.PastValues);
                var actual = DecoderRunner.Run(model, weights.Config, inputs);
                if (!variant.KvCache) expected = expected with { PresentKeys = [], PresentValues = [] };
                Close.AssertRealTokens(inputs, weights.Config, expected, actual, 2e-4, $"{name} (P={past}, S={newTokens})");
            }
            else
            {
                ReferenceLlama.AssertModelMatches(model, weights, inputs, 2e-4, variant.KvCache);
            }
        }
    }
}

/// <summary>Each variant converts, and the converted model runs in ONNX Runtime with the HySparse operators.</summary>
[TestClass]
[TestCategory(HySparseEquivalenceTests.NeedsOps)]
public sealed class ExportVariantConversionTests
{
    /// <summary>The variant's export with seeded weights, and its conversion at <paramref name="ratio"/>.</summary>
    private static (ExportVariant Variant, LlamaWeights Weights, ModelProto Dense, ModelProto Hybrid, ConversionReport Report) Convert(
        string name, ulong seed, string ratio, HybridParameters parameters)
    {
        var variant = ExportVariant.All[name];
        var weights = LlamaWeights.Generate(variant.Config(seed: seed));
        var dense = variant.Build(weights);
        var (hybrid, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio(ratio), Parameters = parameters });
        return (variant, weights, dense, hybrid, report);
    }

    [TestMethod]
    [DynamicData(nameof(ExportVariant.Names), typeof(ExportVariant))]
    public void ConvertedEqualsDenseWhenTheSelectionCoversEveryKey(string name)
    {
        // T reaches 19 tokens: 5 blocks of 4, all selected (docs/ops.md: then union attention is dense).
        var (variant, weights, dense, hybrid, report) = Convert(name, seed: 23, "1:1", new HybridParameters { TopK = 5, BlockSize = 4, Window = 3 });
        Assert.HasCount(weights.Config.Layers, report.Layers);
        Assert.AreEqual("FSFF", report.Layout.Letters);

        foreach (var ((inputs, expected), (_, actual)) in Run(variant, dense).Zip(Run(variant, hybrid, withOps: true)))
            Close.AssertRealTokens(inputs, weights.Config, expected, actual, 1e-4, $"{name} at T={inputs.Total}");
    }

    [TestMethod]
    [DynamicData(nameof(ExportVariant.Names), typeof(ExportVariant))]
    public void SmallTopKRunsSparselyAndCachesMatchTheAccounting(string name)
    {
        var (variant, weights, dense, hybrid, report) = Convert(name, seed: 29, "1:2", new HybridParameters { TopK = 1, BlockSize = 4, Window = 4 });

        var (inputs, outputs) = Run(variant, hybrid, withOps: true)[^1];
        var denseOutputs = Run(variant, dense)[^1].Outputs;
        Assert.IsTrue(outputs.Logits.All(double.IsFinite), "logits must be finite");
        // 4 + 4 of up to 19 keys per sparse layer: the hybrid must really compute something else than dense.
        var largestChange = outputs.Logits.Zip(denseOutputs.Logits, (h, d) => Math.Abs(h - d)).Max();
        Assert.IsGreaterThan(1e-3, largestChange);
        if (!variant.KvCache)
        {
            Assert.IsEmpty(outputs.PresentKeys, "an export without KV cache keeps returning logits only");
            return;
        }
        var cacheElements = inputs.Batch * weights.Config.KvHeads * inputs.Total * weights.Config.HeadDim;
        for (var l = 0; l < weights.Config.Layers; l++)
        {
            Assert.HasCount(cacheElements, outputs.PresentKeys[l]);
            Assert.HasCount(cacheElements, outputs.PresentValues[l]);
        }
        var figures = report.KvAt([inputs.Total]).Single();
        Assert.AreEqual(outputs.PresentKeys.Sum(k => (long)k.Length) * 2 * 4 / inputs.Batch, figures.RetrofitCache);
    }

    [TestMethod]
    [DataRow("no-cache")]
    [DataRow("onnx-attention-bool-3d-no-cache")]
    public void KvSharingWithoutCacheEqualsDenseWhileTheWindowCoversThePrompt(string name)
    {
        var variant = ExportVariant.All[name];
        var dense = variant.Build(LlamaWeights.Generate(variant.Config(seed: 31)));
        // w = 19 ≥ T: every key a sparse layer sees is in its window, read from its own K/V.
        var parameters = new HybridParameters { TopK = 1, BlockSize = 4, Window = 19, Mode = HybridMode.KvSharing };
        var (hybrid, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio("1:3"), Parameters = parameters });
        Assert.AreEqual("FSSF", report.Layout.Letters);

        foreach (var ((inputs, expected), (_, actual)) in Run(variant, dense).Zip(Run(variant, hybrid, withOps: true)))
            Close.AssertRealTokens(inputs, variant.Config(0), expected, actual, 1e-4, $"{name} kv-sharing at T={inputs.Total}");
    }

    /// <summary>
    /// With a cache: prefill of 16 tokens (second row left-padded by 5) and three decode steps.
    /// Without: prefills of 19 and 9 tokens, the second row left-padded by 5.
    /// </summary>
    internal static List<(DecoderInputs Inputs, DecoderOutputs Outputs)> Run(ExportVariant variant, ModelProto model, bool withOps = false)
    {
        var config = variant.Config(seed: 0);
        Action<Microsoft.ML.OnnxRuntime.SessionOptions>? configure = withOps ? o => o.RegisterHySparseOps() : null;
        if (variant.KvCache) return DecoderRunner.PrefillThenDecode(model.ToByteArray(), config, decodeSteps: 3, configure);
        return [.. new[] { 19, 9 }.Select(length =>
        {
            var inputs = DecoderInputs.Random(config, batch: 2, past: 0, newTokens: length, leftPadding: [0, 5], seed: (ulong)length);
            return (inputs, DecoderRunner.Run(model.ToByteArray(), config, inputs, configure));
        })];
    }
}

/// <summary>What the conversion of each variant writes, and what it refuses.</summary>
[TestClass]
public sealed class ExportVariantStructureTests
{
    private static ModelProto Build(string name, ulong seed = 3) => ExportVariant.All[name].Build(LlamaWeights.Generate(ExportVariant.All[name].Config(seed)));

    [TestMethod]
    [DataRow("where", "Where")]
    [DataRow("onnx-attention-bool-4d", "Attention")]
    public void MaskAndAttentionNodesAreReplaced(string name, string replacedOp)
    {
        var dense = Build(name);
        var (hybrid, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1") });

        Assert.AreEqual(name.StartsWith("onnx", StringComparison.Ordinal) ? AttentionStyle.Fused : AttentionStyle.Decomposed, report.Style);
        Assert.HasCount(4, hybrid.Graph.Node.Where(n => n.Domain == HySparse.Onnx.HySparseOps.Domain));
        Assert.IsFalse(hybrid.Graph.Node.Any(n => n.OpType is "Softmax" or "Attention"), "no dense attention may remain");
        // The mask construction fed only the replaced nodes, so it goes too.
        Assert.AreEqual(dense.Graph.Node.Count(n => n.OpType == replacedOp) - 4, hybrid.Graph.Node.Count(n => n.OpType == replacedOp));
        Assert.IsFalse(hybrid.Graph.Node.Any(n => n.OpType == "And"), "the boolean mask fed only the replaced nodes");
        var op = hybrid.Graph.Node.First(n => n.OpType == HySparse.Onnx.HySparseOps.FullAttn);
        Assert.AreEqual("past_key_values.0.key", op.Input[3]);
        Assert.AreEqual("attention_mask", op.Input[5]);
        CollectionAssert.AreEqual(new[] { "present.0.key", "present.0.value" }, op.Output.Skip(1).Take(2).ToArray());
    }

    [TestMethod]
    public void ExportWithoutCacheGetsOpsWithoutPastsAndUnreadPresents()
    {
        var dense = Build("no-cache-where-perm0231");
        var (hybrid, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1"), Parameters = new HybridParameters { Mode = HybridMode.KvSharing } });

        CollectionAssert.AreEqual(dense.Graph.Input.Select(i => i.Name).ToArray(), hybrid.Graph.Input.Select(i => i.Name).ToArray());
        CollectionAssert.AreEqual(new[] { "logits" }, hybrid.Graph.Output.Select(o => o.Name).ToArray());
        Assert.IsEmpty(report.WindowCaches, "no cache input or output changes");
        Assert.AreEqual("none", report.InterfaceChanges);
        var ops = hybrid.Graph.Node.Where(n => n.Domain == HySparse.Onnx.HySparseOps.Domain).ToList();
        var readers = hybrid.Graph.Node.SelectMany(n => n.Input).ToHashSet();
        foreach (var op in ops)
        {
            Assert.AreEqual("", op.Input[3], $"{op.Name} has no past_key");
            Assert.AreEqual("attention_mask", op.Input[op.OpType == HySparse.Onnx.HySparseOps.FullAttn ? 5 : 8]);
            // Keys transposed [0,2,3,1] from the head split reach the op through a Transpose to BNSH.
            var keyProducer = hybrid.Graph.Node.Single(n => n.Output.Contains(op.Input[1]));
            Assert.AreEqual("Transpose", keyProducer.OpType);
            CollectionAssert.AreEqual(new long[] { 0, 2, 1, 3 }, keyProducer.Attribute.Single().Ints.ToArray());
        }
        // A sparse layer with KV sharing reads its full layer's present; nothing else reads a present.
        var sparse = ops.First(o => o.OpType == HySparse.Onnx.HySparseOps.SparseAttn);
        Assert.AreEqual(ops[0].Output[1], sparse.Input[5]);
        Assert.IsFalse(readers.Contains(sparse.Output[1]));
    }

    [TestMethod]
    public void OnnxAttentionWithAPastButNoPresentOutputsGetsFreshPresentNames()
    {
        var model = Build("onnx-attention-bool-4d");
        foreach (var attention in model.Graph.Node.Where(n => n.OpType == "Attention"))
            while (attention.Output.Count > 1) attention.Output.RemoveAt(attention.Output.Count - 1);
        foreach (var present in model.Graph.Output.Where(o => o.Name.StartsWith("present.", StringComparison.Ordinal)).ToList())
            model.Graph.Output.Remove(present);

        var (hybrid, _) = HybridConverter.Convert(model, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1") });

        ModelFile.Validate(hybrid, "converted");
        var full = hybrid.Graph.Node.First(n => n.OpType == HySparse.Onnx.HySparseOps.FullAttn);
        Assert.AreEqual("past_key_values.0.key", full.Input[3]);
        CollectionAssert.AreEqual(new[] { "hysparse.layers.0.present_key", "hysparse.layers.0.present_value" }, full.Output.Skip(1).Take(2).ToArray());
    }

    [TestMethod]
    [DataRow("no-cache")]
    [DataRow("onnx-attention-bool-3d-no-cache")]
    public void InspectReportsTheGeometryOfAnExportWithoutCache(string name)
    {
        var dense = Build(name);
        var (hybrid, _) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1") });
        foreach (var model in new[] { dense, hybrid })
        {
            var report = ModelInspector.Inspect(model, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1") }, [64]);
            Assert.HasCount(4, report.Layers);
            Assert.IsTrue(report.Layers.All(l => l is { HeadSize: 8, KvNumHeads: 2, NumHeads: 4 }), string.Join("; ", report.Layers));
            // What a cache would cost: 64 tokens × 4 layers × K and V × 2 heads × 8 × 4 bytes.
            Assert.AreEqual(64L * 4 * 2 * 2 * 8 * 4, report.Kv.Single().DenseCache);
        }
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void VerifyComparesThePrefillOfAnExportWithoutCache()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteModel("dense.onnx", Build("no-cache"));
        HybridConverter.ConvertFile(input, dir.File("hybrid.onnx"),
            new ConversionOptions { Layout = LayoutSpec.Ratio("1:1"), Parameters = new HybridParameters { TopK = 4, BlockSize = 4, Window = 4 } });
        var messages = new List<string>();

        var report = ModelVerifier.Verify(input, dir.File("hybrid.onnx"), new VerifyOptions { PromptLength = 16, DecodeSteps = 4 }, messages.Add);

        Assert.HasCount(1, report.Steps, "prefill only");
        Assert.IsLessThan(1e-4, report.MaxAbsError, "4 blocks of 4 cover the 16-token prompt");
        Assert.AreEqual(1.0, report.Top1Agreement);
        Assert.IsTrue(messages.Any(m => m.Contains("no KV cache", StringComparison.Ordinal)), string.Join("\n", messages));
    }

    [TestMethod]
    [DataRow("where", "/model/layers.0/self_attn/Where", "not causal")]
    [DataRow("onnx-attention-bool-4d", "/model/layers.0/self_attn/Attention", "not causal")]
    [DataRow("no-cache", "/model/layers.0/self_attn/Add_2", "not causal")]
    [DataRow("no-cache-where-perm0231", "/model/layers.0/self_attn/Where", "not causal")]
    [DataRow("onnx-attention-bool-3d-no-cache", "/model/layers.0/self_attn/Attention", "not causal")]
    public void EncoderStylePaddingOnlyMaskIsRefused(string name, string node, string reason)
    {
        using var dir = new ModelDirectory();
        var model = Build(name);
        // And(causal, real) → And(real, real): every real key visible to every token, as a BERT-style
        // encoder masks. Converting that into a causal op would silently change the model.
        var and = model.Graph.Node.Single(n => n.OpType == "And");
        and.Input[0] = and.Input[1];
        var input = dir.WriteModel("encoder.onnx", model);

        var error = RefusalTests.Refuse(dir, input, ConversionError.UnconvertibleLayers);

        Assert.HasCount(4, error.Layers, "every layer reads the mask");
        Assert.AreEqual(node, error.Layers[0].Node);
        StringAssert.Contains(error.Layers[0].Reason, reason);
    }

    [TestMethod]
    public void PaddingOnlyMaskWithIsCausalConverts()
    {
        var model = Build("onnx-attention-bool-3d-no-cache");
        var and = model.Graph.Node.Single(n => n.OpType == "And");
        and.Input[0] = and.Input[1];
        foreach (var attention in model.Graph.Node.Where(n => n.OpType == "Attention"))
            attention.Attribute.Single(a => a.Name == "is_causal").I = 1;

        var (_, report) = HybridConverter.Convert(model, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1") });

        Assert.HasCount(4, report.Layers);
    }

    [TestMethod]
    public void MaskWithTheWrongPaddingIsRefused()
    {
        var model = Build("no-cache");
        // And(causal, Not(real)): causal, but real keys hidden and padding keys shown.
        var and = model.Graph.Node.Single(n => n.OpType == "And");
        var not = new NodeProto { OpType = "Not", Name = "/model/Not" };
        not.Input.Add(and.Input[1]);
        not.Output.Add("/model/Not_output_0");
        model.Graph.Node.Insert(model.Graph.Node.IndexOf(and), not);
        and.Input[1] = not.Output[0];

        var failures = HybridConverter.Analyse(model).Failures;

        Assert.HasCount(4, failures);
        StringAssert.Contains(failures[0].Reason, "hides key 0 of a probe row whose attention_mask is 1: it is not attention_mask's padding");
    }

    [TestMethod]
    [DataRow("softcap", "softcap = 50 caps the logits with tanh")]
    [DataRow("past-not-an-input", "is not a graph input")]
    [DataRow("no-mask", "bidirectional")]
    [DataRow("scores-output", "qk_matmul_output")]
    [DataRow("mask-not-from-input", "not computed from 'attention_mask'")]
    public void UnmappableOnnxAttentionIsRefusedNamingNodeAndReason(string mutation, string reason)
    {
        using var dir = new ModelDirectory();
        var model = Build("onnx-attention-bool-4d");
        var node = model.Graph.Node.Where(n => n.OpType == "Attention").ElementAt(2);
        switch (mutation)
        {
            case "softcap":
                node.Attribute.Add(HySparse.Graph.Attr.Float("softcap", 50f));
                break;
            case "past-not-an-input":
                // Reading another layer's present as its past: not a cache the op can be fed.
                node.Input[4] = model.Graph.Node.First(n => n.OpType == "Attention").Output[1];
                break;
            case "no-mask":
                node.Input[3] = "";
                break;
            case "scores-output":
                node.Output.Add("layer2_scores");
                model.Graph.Output.Add(HySparse.Models.Graph.GraphBuilder.ValueInfo("layer2_scores", TensorProto.Types.DataType.Float));
                break;
            case "mask-not-from-input":
                // A constant mask: it cannot be the padding mask of the batch.
                var constant = model.Graph.Node.First(n => n.OpType == "Constant").Output[0];
                node.Input[3] = constant;
                break;
        }
        var input = dir.WriteModel("attention.onnx", model);

        var error = RefusalTests.Refuse(dir, input, ConversionError.UnconvertibleLayers);

        var failure = error.Layers.Single();
        Assert.AreEqual(node.Name, failure.Node);
        StringAssert.Contains(failure.Reason, reason);
    }
}
