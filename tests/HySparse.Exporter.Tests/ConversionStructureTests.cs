namespace HySparse.Exporter.Tests;

/// <summary>What the converter finds in, and makes of, builder models.</summary>
[TestClass]
public sealed class ConversionStructureTests
{
    private static readonly LlamaConfig Gqa = new() { Layers = 6, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 48, Vocab = 41, Seed = 3 };

    [TestMethod]
    [DataRow(4, 2)]
    [DataRow(3, 3)]
    [DataRow(4, 1)]
    public void RecognisesEveryLayer(int heads, int kvHeads)
    {
        var config = Gqa with { Heads = heads, KvHeads = kvHeads };
        var analysis = HybridConverter.Analyse(LlamaModelBuilder.Build(config));

        Assert.IsEmpty(analysis.Failures, string.Join("; ", analysis.Failures));
        Assert.HasCount(config.Layers, analysis.Layers);
        for (var l = 0; l < config.Layers; l++)
        {
            var layer = analysis.Layers[l];
            Assert.AreEqual(AttentionStyle.Decomposed, layer.Style);
            Assert.AreEqual(l, layer.CacheIndex);
            Assert.AreEqual(heads, layer.NumHeads);
            Assert.AreEqual(kvHeads, layer.KvNumHeads);
            Assert.AreEqual(config.HeadDim, layer.HeadSize);
            Assert.AreEqual(1f / MathF.Sqrt(config.HeadDim), layer.Scale, 1e-7f);
            Assert.AreEqual(DecoderNames.PastKey(l), layer.PastKey);
            Assert.AreEqual(DecoderNames.PresentValue(l), layer.PresentValue);
            Assert.AreEqual(DecoderNames.AttentionMask, layer.AttentionMask);
            Assert.AreEqual($"/model/layers.{l}/self_attn/Softmax", layer.AnchorNode);
            // Expansion adds Unsqueeze/Expand/Reshape per K and V when heads are shared.
            Assert.HasCount(heads == kvHeads ? 8 : 14, layer.ReplacedNodes);
        }
    }

    [TestMethod]
    [DataRow(ScalePlacement.DivideScores, false)]
    [DataRow(ScalePlacement.MultiplyScores, false)]
    [DataRow(ScalePlacement.SplitOverQueryAndKey, false)]
    [DataRow(ScalePlacement.DivideScores, true)]
    [DataRow(ScalePlacement.SplitOverQueryAndKey, true)]
    public void RecognisesExportVariants(ScalePlacement placement, bool fusedQkv)
    {
        var model = LlamaModelBuilder.Build(Gqa, LlamaAttentionStyle.Decomposed, new DecomposedExportOptions { Scale = placement, FusedQkv = fusedQkv });
        var producers = model.Graph.Node.SelectMany(n => n.Output.Select(o => (o, n))).ToDictionary(p => p.o, p => p.n);

        var analysis = HybridConverter.Analyse(model);

        Assert.IsEmpty(analysis.Failures, string.Join("; ", analysis.Failures));
        Assert.HasCount(Gqa.Layers, analysis.Layers);
        foreach (var layer in analysis.Layers)
        {
            if (placement == ScalePlacement.SplitOverQueryAndKey)
            {
                // Q keeps its own D^-1/4 (the op reads the scaled Q); the key side's D^-1/4 becomes the attribute.
                Assert.AreEqual(MathF.Pow(8, -0.25f), layer.Scale, 1e-7f);
                Assert.AreEqual("Mul", producers[layer.Query].OpType);
            }
            else
            {
                Assert.AreEqual(1f / MathF.Sqrt(8), layer.Scale, 1e-7f);
                Assert.AreEqual("Add", producers[layer.Query].OpType, "Q is the RoPE output");
            }
        }
        var (converted, _) = HybridConverter.Convert(model, new ConversionOptions());
        Assert.AreEqual(Gqa.Layers, converted.Graph.Node.Count(n => n.Domain == "com.hysparse"));
        ModelFile.Validate(converted, "converted");
    }

    [TestMethod]
    public void ConvertsIntoWiredHySparseNodes()
    {
        var source = LlamaModelBuilder.Build(Gqa);
        var pristine = source.Clone();
        var options = new ConversionOptions { Layout = LayoutSpec.Ratio("1:2"), Parameters = new HybridParameters { TopK = 3, BlockSize = 4, Window = 5 } };

        var (model, report) = HybridConverter.Convert(source, options);

        Assert.AreEqual(pristine, source, "Convert must not modify its argument");
        Assert.AreEqual("FSSFSF", report.Layout.Letters);
        var graph = model.Graph;
        var producers = graph.Node.SelectMany(n => n.Output.Select(o => (o, n))).ToDictionary(p => p.o, p => p.n);
        var ops = graph.Node.Where(n => n.Domain == HySparseOps.Domain).ToList();
        CollectionAssert.AreEqual(
            new[] { HySparseOps.FullAttn, HySparseOps.SparseAttn, HySparseOps.SparseAttn, HySparseOps.FullAttn, HySparseOps.SparseAttn, HySparseOps.FullAttn },
            ops.Select(o => o.OpType).ToArray());
        Assert.IsFalse(graph.Node.Any(n => n.OpType is "Softmax" or "Expand" or "LessOrEqual" or "And"), "attention and mask nodes must be gone");

        for (var l = 0; l < Gqa.Layers; l++)
        {
            var op = ops[l];
            var scope = $"/model/layers.{l}/self_attn";
            Assert.AreEqual($"{scope}/{op.OpType}", op.Name);
            Assert.AreEqual(report.Layers[l].Node, op.Name);
            // Q and K come from the layer's RoPE (fused into RotaryEmbedding), V from its head Transpose.
            Assert.AreEqual($"{scope}/hysparse_rotary", producers[op.Input[0]].Name);
            Assert.AreEqual($"{scope}/hysparse_rotary_1", producers[op.Input[1]].Name);
            Assert.AreEqual("RotaryEmbedding", producers[op.Input[0]].OpType);
            Assert.AreEqual($"{scope}/Transpose_2", producers[op.Input[2]].Name);
            Assert.AreEqual(DecoderNames.PastKey(l), op.Input[3]);
            Assert.AreEqual(DecoderNames.PastValue(l), op.Input[4]);
            Assert.AreEqual(DecoderNames.PresentKey(l), op.Output[1]);
            Assert.AreEqual(DecoderNames.PresentValue(l), op.Output[2]);
            var reader = graph.Node.Single(n => n.Input.Contains(op.Output[0]));
            Assert.AreEqual($"{scope}/Transpose_4", reader.Name, "the head-merge Transpose must read the op's output");

            Assert.AreEqual(4L, Attr.GetInt(op, "num_heads", -1));
            Assert.AreEqual(2L, Attr.GetInt(op, "kv_num_heads", -1));
            Assert.AreEqual(1f / MathF.Sqrt(8), Attr.GetFloat(op, "scale", -1));
            Assert.AreEqual(4L, Attr.GetInt(op, "block_size", -1));
            if (op.OpType == HySparseOps.FullAttn)
            {
                Assert.HasCount(6, op.Input);
                Assert.AreEqual(DecoderNames.AttentionMask, op.Input[5]);
                Assert.AreEqual(3L, Attr.GetInt(op, "top_k", -1));
                Assert.HasCount(l == 5 ? 3 : 4, op.Output, "only a full layer followed by sparse layers selects blocks");
                Assert.HasCount(5, op.Attribute);
            }
            else
            {
                Assert.HasCount(9, op.Input);
                Assert.AreEqual("", op.Input[5]);
                Assert.AreEqual("", op.Input[6]);
                Assert.AreEqual(ops[l < 3 ? 0 : 3].Output[3], op.Input[7], "a sparse layer reads the preceding full layer's block_indices");
                Assert.AreEqual(DecoderNames.AttentionMask, op.Input[8]);
                Assert.AreEqual(5L, Attr.GetInt(op, "window", -1));
                Assert.AreEqual("union", Attr.GetString(op, "combine"));
                Assert.AreEqual(0L, Attr.GetInt(op, "window_cache", -1));
                Assert.HasCount(7, op.Attribute);
                Assert.AreEqual(l < 3 ? 0 : 3, report.Layers[l].OracleLayer);
            }
        }

        // The interface and the weights are untouched.
        CollectionAssert.AreEqual(pristine.Graph.Input.ToList(), graph.Input.ToList());
        CollectionAssert.AreEqual(pristine.Graph.Output.ToList(), graph.Output.ToList());
        CollectionAssert.AreEqual(pristine.Graph.Initializer.ToList(), graph.Initializer.ToList());
        Assert.IsTrue(model.OpsetImport.Any(o => o.Domain == "com.hysparse" && o.Version == 1));
        Assert.IsTrue(model.OpsetImport.Any(o => o.Domain == "" && o.Version == 17));

        // Every remaining node is still needed: the mask construction went with the layers it fed.
        var read = graph.Node.SelectMany(n => n.Input).Concat(graph.Output.Select(o => o.Name)).ToHashSet();
        var idle = graph.Node.Where(n => !n.Output.Any(read.Contains)).Select(n => n.Name).ToList();
        Assert.IsEmpty(idle, "nodes nothing reads: " + string.Join(", ", idle));
        ModelFile.Validate(model, "converted");

        var metadata = model.MetadataProps.ToDictionary(p => p.Key, p => p.Value);
        Assert.AreEqual("FSSFSF", metadata["hysparse.layout"]);
        Assert.AreEqual("0,3,5", metadata["hysparse.full_layers"]);
        Assert.AreEqual("3", metadata["hysparse.top_k"]);
        Assert.AreEqual("4", metadata["hysparse.block_size"]);
        Assert.AreEqual("5", metadata["hysparse.window"]);
        Assert.AreEqual("retrofit", metadata["hysparse.mode"]);
        Assert.AreEqual("union", metadata["hysparse.combine"]);
        Assert.AreEqual("decomposed", metadata["hysparse.source_attention"]);
        Assert.AreEqual("ratio 1:2", metadata["hysparse.layout_request"]);
    }

    [TestMethod]
    public void ConvertedModelRoundTripsThroughProtobuf()
    {
        var (model, _) = HybridConverter.Convert(LlamaModelBuilder.Build(Gqa with { Layers = 2 }), new ConversionOptions());
        var reparsed = ModelProto.Parser.ParseFrom(model.ToByteArray());
        Assert.AreEqual(model, reparsed);
        Assert.IsTrue(HybridConverter.IsConverted(reparsed));
    }

    [TestMethod]
    public void LayerWithAnOutsideReaderIsReportedNotLeftDense()
    {
        var model = LlamaModelBuilder.Build(Gqa with { Layers = 3 });
        // Expose layer 1's scaled scores: the subgraph can no longer be replaced as a whole.
        model.Graph.Output.Add(GraphBuilder.ValueInfo("/model/layers.1/self_attn/Div_output_0", TensorProto.Types.DataType.Float));

        var error = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.Convert(model, new ConversionOptions()));

        Assert.AreEqual(ConversionError.UnconvertibleLayers, error.Error);
        var failure = error.Layers.Single();
        Assert.AreEqual("/model/layers.1/self_attn/Div", failure.Node);
        StringAssert.Contains(failure.Reason, "graph output");
        StringAssert.Contains(error.Message, "/model/layers.1/self_attn/Div");
    }

    [TestMethod]
    [DataRow("where-fill-not-negative", "/model/layers.0/self_attn/Add_2", "not a constant at or below -10000")]
    [DataRow("softmax-axis", "/model/layers.0/self_attn/Softmax", "axis 1")]
    [DataRow("keys-bshd-after-cache", "/model/layers.0/self_attn/Transpose_3", "computed from the 4-D input 'past_key_values.0.key' but not by Concat(past, new)")]
    [DataRow("keys-other-perm", "/model/layers.0/self_attn/Transpose_3", "[0, 3, 1, 2]")]
    [DataRow("scale-not-constant", "/model/layers.0/self_attn/Add_2", "not MatMul(Q, Kᵀ) scaled by a constant")]
    [DataRow("mask-not-from-input", "/model/layers.0/self_attn/Add_2", "not computed from 'attention_mask'")]
    public void UnsupportedSpellingsAreReportedWithTheirReason(string mutation, string node, string reason)
    {
        var model = LlamaModelBuilder.Build(Gqa with { Layers = 1 });
        var graph = model.Graph;
        NodeProto Named(string name) => graph.Node.Single(n => n.Name == name);
        var scope = "/model/layers.0/self_attn";
        var maskAdd = Named($"{scope}/Add_2");
        switch (mutation)
        {
            case "where-fill-not-negative":
                // Where(keep, scores, 0): masked keys would still get weight.
                var keep = graph.Node.Single(n => n.OpType == "And").Output[0];
                var zero = graph.Node.Single(n => n.OpType == "Where" && n.Input[0] == keep).Input[1];
                maskAdd.OpType = "Where";
                maskAdd.Input.Clear();
                maskAdd.Input.AddRange([keep, $"{scope}/Div_output_0", zero]);
                break;
            case "softmax-axis":
                Named($"{scope}/Softmax").Attribute.Single().I = 1;
                break;
            case "keys-bshd-after-cache":
                // [0, 2, 3, 1] is only right on a [B,S,H,D] head split; here it would transpose the cached keys.
                Named($"{scope}/Transpose_3").Attribute.Single().Ints[1] = 2;
                Named($"{scope}/Transpose_3").Attribute.Single().Ints[2] = 3;
                Named($"{scope}/Transpose_3").Attribute.Single().Ints[3] = 1;
                break;
            case "keys-other-perm":
                Named($"{scope}/Transpose_3").Attribute.Single().Ints.Clear();
                Named($"{scope}/Transpose_3").Attribute.Single().Ints.AddRange([0, 3, 1, 2]);
                break;
            case "scale-not-constant":
                // Divide by a value computed at run time (older exports take √D from Shape).
                Named($"{scope}/Div").Input[1] = Named("/model/layers.0/input_layernorm/Sqrt").Output[0];
                break;
            case "mask-not-from-input":
                // An additive mask that is a constant zero: nothing ties it to attention_mask.
                maskAdd.Input[1] = Named($"{scope}/Div").Input[1];
                break;
        }

        var analysis = HybridConverter.Analyse(model);

        Assert.IsEmpty(analysis.Layers);
        var failure = analysis.Failures.Single();
        Assert.AreEqual(node, failure.Node);
        StringAssert.Contains(failure.Reason, reason);
    }

    [TestMethod]
    public void LayersSharingACacheAreBothRefused()
    {
        // Without GQA expansion the values MatMul reads the cache Concat directly, whose output each op keeps.
        var model = LlamaModelBuilder.Build(Gqa with { Layers = 3, Heads = 2, KvHeads = 2 });
        // Layer 2 reads layer 1's value cache (cross-layer KV sharing): neither can be replaced alone.
        var layer2ValueMatMul = model.Graph.Node.Single(n => n.Name == "/model/layers.2/self_attn/MatMul_4");
        layer2ValueMatMul.Input[1] = model.Graph.Node.Single(n => n.Name == "/model/layers.1/self_attn/MatMul_4").Input[1];

        var analysis = HybridConverter.Analyse(model);

        Assert.HasCount(1, analysis.Layers, "layer 0 still matches");
        CollectionAssert.AreEquivalent(
            new[] { "/model/layers.1/self_attn/Softmax", "/model/layers.2/self_attn/Softmax" },
            analysis.Failures.Select(f => f.Node).ToArray(), string.Join("; ", analysis.Failures));
        Assert.IsTrue(analysis.Failures.All(f => f.Reason.Contains("shares node '/model/layers.1/self_attn/Concat_3'")), string.Join("; ", analysis.Failures.Select(f => f.Reason)));
    }

    [TestMethod]
    public void SoftmaxIntoAWeightIsNotAttention()
    {
        // A classifier head: Softmax(x·W1)·W2. No attention, so nothing to report either.
        var g = new GraphBuilder("head");
        g.AddInput("x", TensorProto.Types.DataType.Float, "batch", 2);
        var w1 = g.AddInitializer("w1", [2, 2], [1, 2, 3, 4]);
        var w2 = g.AddInitializer("w2", [2, 2], [0.5f, -1, 1, 0.25f]);
        g.OpNamed("y", "MatMul", [g.Op("Softmax", [g.Op("MatMul", "x", w1)], Attr.Int("axis", -1)), w2]);
        g.AddOutput("y", TensorProto.Types.DataType.Float, "batch", 2);
        var model = g.BuildModel(new Dictionary<string, long> { [""] = 17 }, 8, "test");

        var analysis = HybridConverter.Analyse(model);

        Assert.IsEmpty(analysis.Layers);
        Assert.IsEmpty(analysis.Failures);
        Assert.AreEqual(ConversionError.NoAttention, Assert.ThrowsExactly<ConversionException>(() => HybridConverter.Convert(model, new ConversionOptions())).Error);
    }

    [TestMethod]
    public void ScaleConstantMayBeTheFirstMulOperand()
    {
        var model = LlamaModelBuilder.Build(Gqa with { Layers = 1 }, LlamaAttentionStyle.Decomposed, new DecomposedExportOptions { Scale = ScalePlacement.MultiplyScores });
        var mul = model.Graph.Node.Single(n => n.Name == "/model/layers.0/self_attn/Mul_4");
        Assert.AreEqual("/model/layers.0/self_attn/MatMul_3_output_0", mul.Input[0], "Mul_4 scales Q·Kᵀ");
        (mul.Input[0], mul.Input[1]) = (mul.Input[1], mul.Input[0]);

        var layer = HybridConverter.Analyse(model).Layers.Single();

        Assert.AreEqual(1f / MathF.Sqrt(8), layer.Scale, 1e-7f);
    }

    [TestMethod]
    public void ScaleFoldedIntoQueryIsKeptAsScaleOne()
    {
        var model = LlamaModelBuilder.Build(Gqa with { Layers = 1 });
        // Without the Div the graph computes softmax(Q·Kᵀ + mask): whatever scale Q carries is already in it.
        var graph = model.Graph;
        var div = graph.Node.Single(n => n.Name == "/model/layers.0/self_attn/Div");
        var matmul = graph.Node.Single(n => n.Name == "/model/layers.0/self_attn/MatMul_3");
        var add = graph.Node.Single(n => n.OpType == "Add" && n.Input.Contains(div.Output[0]));
        add.Input[add.Input.IndexOf(div.Output[0])] = matmul.Output[0];
        graph.Node.Remove(div);

        var layer = HybridConverter.Analyse(model).Layers.Single();

        Assert.AreEqual(1f, layer.Scale);
        Assert.AreEqual(matmul.Input[0], layer.Query);
    }
}
