namespace HySparse.Exporter.Tests;

/// <summary>Models whose weights live in an external data file beside them.</summary>
[TestClass]
public sealed class ExternalDataTests
{
    private static readonly LlamaConfig Config = new() { Layers = 3, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 48, Vocab = 41, Seed = 13 };

    private static string WriteExternal(ModelDirectory dir, out int moved)
    {
        var model = LlamaModelBuilder.Build(Config);
        moved = ExternalData.MoveToFile(model, dir.Path, "llama.onnx.data");
        return dir.WriteModel("llama.onnx", model);
    }

    [TestMethod]
    public void ExternalDataModelComputesWhatTheEmbeddedOneComputes()
    {
        using var dir = new ModelDirectory();
        var path = WriteExternal(dir, out var moved);
        Assert.AreEqual(Config.Layers * 7 + 2, moved, "projections, FFN matrices, embedding and LM head go out; norm weights stay");
        var inputs = DecoderInputs.Random(Config, batch: 1, past: 2, newTokens: 3, leftPadding: [0], seed: 4);

        var external = DecoderRunner.RunFile(path, Config, inputs);
        var embedded = DecoderRunner.Run(LlamaModelBuilder.Build(Config).ToByteArray(), Config, inputs);

        CollectionAssert.AreEqual(embedded.Logits, external.Logits);
    }

    [TestMethod]
    public void ConversionKeepsExternalReferencesAndNeverTouchesTheData()
    {
        using var dir = new ModelDirectory();
        var input = WriteExternal(dir, out _);
        var dataHash = ModelDirectory.Sha256(dir.File("llama.onnx.data"));
        var source = ModelFile.Load(input);

        HybridConverter.ConvertFile(input, dir.File("hybrid.onnx"), new ConversionOptions());

        var converted = ModelFile.Load(dir.File("hybrid.onnx"));
        CollectionAssert.AreEqual(source.Graph.Initializer.ToList(), converted.Graph.Initializer.ToList());
        Assert.AreEqual(dataHash, ModelDirectory.Sha256(dir.File("llama.onnx.data")));
        Assert.IsTrue(converted.Graph.Initializer.Count(Tensors.IsExternal) > Config.Layers * 7, "weights stay external");
        // The rewrite drops the mask subgraph and adds a few nodes: the file cannot have grown by the weights.
        Assert.IsLessThan(new FileInfo(input).Length, new FileInfo(dir.File("hybrid.onnx")).Length);
    }

    [TestMethod]
    public void ConversionIntoAnotherDirectoryIsRefused()
    {
        using var dir = new ModelDirectory();
        using var elsewhere = new ModelDirectory();
        var input = WriteExternal(dir, out _);

        var error = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.ConvertFile(input, elsewhere.File("hybrid.onnx"), new ConversionOptions()));

        Assert.AreEqual(ConversionError.UnsupportedExternalData, error.Error);
        Assert.IsEmpty(Directory.GetFiles(elsewhere.Path));
    }
}
