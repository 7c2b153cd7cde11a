namespace HySparse.Exporter.Tests;

/// <summary>
/// Decoders exported by torch.onnx.export (PyTorch 1.13), with the outputs torch computed for a
/// padded batch with a past: the converter meets the graphs a real exporter writes.
/// </summary>
[TestClass]
public sealed class TorchFixtureTests
{
    private sealed record Fixture(string Path, LlamaConfig Config, DecoderInputs Inputs, DecoderOutputs Expected);

    private static Fixture Load(string name)
    {
        var directory = System.IO.Path.Combine(AppContext.BaseDirectory, "fixtures", "torch");
        using var json = JsonDocument.Parse(File.ReadAllText(System.IO.Path.Combine(directory, $"{name}.expected.json")));
        var root = json.RootElement;
        var c = root.GetProperty("config");
        var config = new LlamaConfig
        {
            Layers = c.GetProperty("layers").GetInt32(), Hidden = c.GetProperty("hidden").GetInt32(),
            Heads = c.GetProperty("heads").GetInt32(), KvHeads = c.GetProperty("kv_heads").GetInt32(),
            HeadDim = c.GetProperty("head_dim").GetInt32(), Ffn = c.GetProperty("ffn").GetInt32(), Vocab = c.GetProperty("vocab").GetInt32(),
        };
        var inputs = root.GetProperty("inputs");
        var outputs = root.GetProperty("outputs");
        var ids = JsonArrays.Flatten(inputs.GetProperty(DecoderNames.InputIds));
        var batch = inputs.GetProperty(DecoderNames.InputIds).GetArrayLength();
        float[] Floats(JsonElement e) => JsonArrays.Flatten(e).Select(v => (float)v).ToArray();
        // An export without KV cache has no past inputs and no present outputs.
        var layers = inputs.TryGetProperty(DecoderNames.PastKey(0), out _) ? config.Layers : 0;
        return new Fixture(
            System.IO.Path.Combine(directory, $"{name}.onnx"),
            config,
            new DecoderInputs
            {
                Batch = batch,
                InputIds = ids.Select(v => (long)v).ToArray(),
                Mask = JsonArrays.Flatten(inputs.GetProperty(DecoderNames.AttentionMask)).Select(v => (long)v).ToArray(),
                PastKeys = Enumerable.Range(0, layers).Select(l => Floats(inputs.GetProperty(DecoderNames.PastKey(l)))).ToArray(),
                PastValues = Enumerable.Range(0, layers).Select(l => Floats(inputs.GetProperty(DecoderNames.PastValue(l)))).ToArray(),
            },
            new DecoderOutputs(
                JsonArrays.Flatten(outputs.GetProperty(DecoderNames.Logits)),
                Enumerable.Range(0, layers).Select(l => JsonArrays.Flatten(outputs.GetProperty(DecoderNames.PresentKey(l)))).ToArray(),
                Enumerable.Range(0, layers).Select(l => JsonArrays.Flatten(outputs.GetProperty(DecoderNames.PresentValue(l)))).ToArray()));
    }

    [TestMethod]
    [DataRow("tiny_llama_gqa")]
    [DataRow("tiny_llama_mha")]
    [DataRow("tiny_llama_where_gqa")]
    [DataRow("tiny_llama_where_nocache")]
    public void ExportedModelRunsAsTorchComputedIt(string name)
    {
        var fixture = Load(name);
        var actual = DecoderRunner.RunFile(fixture.Path, fixture.Config, fixture.Inputs);
        Close.Assert(fixture.Expected.Logits, actual.Logits, 1e-4, "logits");
        Assert.HasCount(fixture.Expected.PresentKeys.Length, actual.PresentKeys);
        if (actual.PresentKeys.Length > 0) Close.Assert(fixture.Expected.PresentKeys[^1], actual.PresentKeys[^1], 1e-4, "last present key");
    }

    [TestMethod]
    [DataRow("tiny_llama_gqa")]
    [DataRow("tiny_llama_mha")]
    [DataRow("tiny_llama_where_gqa")]
    [DataRow("tiny_llama_where_nocache")]
    public void EveryExportedLayerIsRecognisedAndConverted(string name)
    {
        var fixture = Load(name);
        var source = ModelFile.Load(fixture.Path);

        var analysis = HybridConverter.Analyse(source);

        Assert.IsEmpty(analysis.Failures, string.Join("; ", analysis.Failures));
        Assert.HasCount(fixture.Config.Layers, analysis.Layers);
        foreach (var layer in analysis.Layers)
        {
            Assert.AreEqual(fixture.Config.Heads, layer.NumHeads);
            Assert.AreEqual(fixture.Config.KvHeads, layer.KvNumHeads);
            Assert.AreEqual(fixture.Config.HeadDim, layer.HeadSize);
            Assert.AreEqual(1f / MathF.Sqrt(fixture.Config.HeadDim), layer.Scale, 1e-7f);
        }

        var (converted, report) = HybridConverter.Convert(source, new ConversionOptions { Layout = LayoutSpec.Ratio("1:3") });

        Assert.AreEqual("FSSF", report.Layout.Letters);
        Assert.AreEqual(4, converted.Graph.Node.Count(n => n.Domain == HySparseOps.Domain));
        // torch's RoPE (halves sliced at x.shape[-1] // 2 computed in the graph) becomes RotaryEmbedding,
        // except where the keys are rotated on the [B,S,H,D] head split (the export without cache).
        var rotatedOnHeadSplit = name == "tiny_llama_where_nocache";
        Assert.AreEqual(rotatedOnHeadSplit ? 0 : 2 * fixture.Config.Layers, report.FusedRotaries, string.Join("; ", report.RotariesLeftDecomposed));
        Assert.AreEqual(report.FusedRotaries, converted.Graph.Node.Count(n => n.OpType == "RotaryEmbedding"));
        Assert.IsFalse(converted.Graph.Node.Any(n => n.OpType is "Softmax" or "Expand"));
        CollectionAssert.AreEqual(source.Graph.Input.ToList(), converted.Graph.Input.ToList());
        CollectionAssert.AreEqual(source.Graph.Output.ToList(), converted.Graph.Output.ToList());
        ModelFile.Validate(converted, name);
        // The runtime shape computations of the replaced expansions and the mask go with them.
        var read = converted.Graph.Node.SelectMany(n => n.Input).Concat(converted.Graph.Output.Select(o => o.Name)).ToHashSet();
        var idle = converted.Graph.Node.Where(n => !n.Output.Any(read.Contains)).Select(n => n.Name).ToList();
        Assert.IsEmpty(idle, string.Join(", ", idle));
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DataRow("tiny_llama_gqa")]
    [DataRow("tiny_llama_where_gqa")]
    [DataRow("tiny_llama_where_nocache")]
    public void ConvertedExportComputesWhatTorchComputedOnRealTokens(string name)
    {
        var fixture = Load(name);
        // T = 7 in 4 blocks of 2, all of them selected (K ≥ nb): the union is every key, so dense.
        var options = new ConversionOptions { Layout = LayoutSpec.Ratio("1:3"), Parameters = new HybridParameters { TopK = 4, BlockSize = 2, Window = 2 } };
        var (converted, _) = HybridConverter.Convert(ModelFile.Load(fixture.Path), options);

        var actual = DecoderRunner.Run(converted.ToByteArray(), fixture.Config, fixture.Inputs, o => o.RegisterHySparseOps());

        Close.AssertRealTokens(fixture.Inputs, fixture.Config, fixture.Expected, actual, 1e-4, $"converted {name}");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DataRow("tiny_llama_gqa")]
    [DataRow("tiny_llama_mha")]
    [DataRow("tiny_llama_where_gqa")]
    public void KvSharingExportWithAWindowCoveringTheContextComputesWhatTorchComputed(string name)
    {
        var fixture = Load(name);
        // w = T: a window cache holds min(w, P) = P tokens, so torch's past feeds it as it is, and every
        // key is read from the layer's own cache: kv-sharing is exactly dense here.
        var total = fixture.Inputs.Total;
        var options = new ConversionOptions
        {
            Layout = LayoutSpec.Ratio("1:3"),
            Parameters = new HybridParameters { TopK = 1, BlockSize = 2, Window = total, Mode = HybridMode.KvSharing },
        };
        var (converted, report) = HybridConverter.Convert(ModelFile.Load(fixture.Path), options);
        Assert.AreEqual("FSSF", report.Layout.Letters);
        CollectionAssert.AreEqual(new[] { DecoderNames.PastKey(1), DecoderNames.PastValue(1), DecoderNames.PastKey(2), DecoderNames.PastValue(2),
            DecoderNames.PresentKey(1), DecoderNames.PresentValue(1), DecoderNames.PresentKey(2), DecoderNames.PresentValue(2) }, report.WindowCaches.ToArray());

        var actual = DecoderRunner.Run(converted.ToByteArray(), fixture.Config, fixture.Inputs, o => o.RegisterHySparseOps());

        Close.AssertLogitsOfRealTokens(fixture.Inputs, fixture.Config.Vocab, fixture.Expected.Logits, actual.Logits, 1e-4, $"{name} kv-sharing");
        Assert.HasCount(fixture.Expected.PresentKeys[1].Length, actual.PresentKeys[1], "a window of T tokens holds the whole cache");
    }

    [TestMethod]
    public void InspectSaysWhenAnExportHasNoKvCache()
    {
        var directory = System.IO.Path.Combine(AppContext.BaseDirectory, "fixtures", "torch");

        var without = CliTests.Run("inspect", System.IO.Path.Combine(directory, "tiny_llama_where_nocache.onnx"));
        var with = CliTests.Run("inspect", System.IO.Path.Combine(directory, "tiny_llama_where_gqa.onnx"));

        Assert.AreEqual(0, without.Code, without.Err);
        StringAssert.Contains(without.Out, "KV cache   none: this export has no past/present caches");
        Assert.AreEqual(0, with.Code, with.Err);
        Assert.DoesNotContain("no past/present caches", with.Out);
        StringAssert.Contains(with.Out, "per token (dense)");
    }
}
