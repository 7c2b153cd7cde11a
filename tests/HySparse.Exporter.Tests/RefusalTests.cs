namespace HySparse.Exporter.Tests;

/// <summary>Refused conversions write nothing and leave the input as it was.</summary>
[TestClass]
public sealed class RefusalTests
{
    internal static ConversionException Refuse(ModelDirectory dir, string input, ConversionError expected, ConversionOptions? options = null)
    {
        var before = ModelDirectory.Sha256(input);
        var existing = Directory.GetFiles(dir.Path).Select(Path.GetFileName).ToArray();
        var error = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.ConvertFile(input, dir.File("out.onnx"), options ?? new ConversionOptions()));
        Assert.AreEqual(expected, error.Error, error.Message);
        Assert.IsFalse(File.Exists(dir.File("out.onnx")), "a refused conversion must not write its output");
        Assert.IsEmpty(dir.FilesExcept(existing!), "no temporary files may be left behind");
        Assert.AreEqual(before, ModelDirectory.Sha256(input), "the input file must not change");
        return error;
    }

    [TestMethod]
    [DataRow(0.1)]
    [DataRow(0.5)]
    [DataRow(0.97)]
    [DataRow(0.9999)]
    public void TruncatedModelIsRefused(double kept)
    {
        using var dir = new ModelDirectory();
        var bytes = File.ReadAllBytes(dir.WriteLlama("full.onnx"));
        var input = dir.Write("truncated.onnx", bytes[..(int)(bytes.Length * kept)]);
        var error = Refuse(dir, input, ConversionError.InvalidModel);
        StringAssert.Contains(error.Message, "truncated.onnx");
    }

    [TestMethod]
    public void ModelCutBeforeItsOpsetImportIsRefused()
    {
        using var dir = new ModelDirectory();
        // Ending exactly after the graph field parses cleanly as protobuf: completeness checks must catch it.
        var model = LlamaModelBuilder.Build(new LlamaConfig { Layers = 1, Hidden = 16, Heads = 2, KvHeads = 1, HeadDim = 8, Ffn = 16, Vocab = 11 });
        model.OpsetImport.Clear();
        var error = Refuse(dir, dir.WriteModel("cut.onnx", model), ConversionError.InvalidModel);
        StringAssert.Contains(error.Message, "not an ONNX model");
    }

    [TestMethod]
    public void TextFileIsRefused()
    {
        using var dir = new ModelDirectory();
        Refuse(dir, dir.Write("notes.onnx", "this is a text file, not a model\n"u8.ToArray()), ConversionError.InvalidModel);
    }

    [TestMethod]
    public void RandomBytesAreRefused()
    {
        using var dir = new ModelDirectory();
        var rng = new SplitMix64(5);
        var bytes = new byte[4096];
        for (var i = 0; i < bytes.Length; i++) bytes[i] = (byte)rng.NextUInt64();
        Refuse(dir, dir.Write("noise.onnx", bytes), ConversionError.InvalidModel);
    }

    [TestMethod]
    public void EmptyAndMissingFilesAreRefused()
    {
        using var dir = new ModelDirectory();
        StringAssert.Contains(Refuse(dir, dir.Write("empty.onnx", []), ConversionError.InvalidModel).Message, "empty");
        var missing = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.ConvertFile(dir.File("absent.onnx"), dir.File("out.onnx"), new ConversionOptions()));
        Assert.AreEqual(ConversionError.InvalidModel, missing.Error);
        Assert.IsFalse(File.Exists(dir.File("out.onnx")));
    }

    [TestMethod]
    public void ModelWithoutAttentionIsRefused()
    {
        using var dir = new ModelDirectory();
        StringAssert.Contains(Refuse(dir, dir.WriteMlp(), ConversionError.NoAttention).Message, "no attention");
    }

    [TestMethod]
    public void AlreadyConvertedModelIsRefused()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteLlama();
        HybridConverter.ConvertFile(input, dir.File("hybrid.onnx"), new ConversionOptions());
        var error = Refuse(dir, dir.File("hybrid.onnx"), ConversionError.AlreadyConverted);
        StringAssert.Contains(error.Message, "already converted");
    }

    [TestMethod]
    public void LayoutThatDoesNotFitIsRefused()
    {
        using var dir = new ModelDirectory();
        var error = Assert.ThrowsExactly<LayoutException>(() =>
            HybridConverter.ConvertFile(dir.WriteLlama(), dir.File("out.onnx"), new ConversionOptions { Layout = LayoutSpec.FromFullLayers("0,6") }));
        StringAssert.Contains(error.Message, "full layer 6 does not exist");
        Assert.IsFalse(File.Exists(dir.File("out.onnx")));
    }

    [TestMethod]
    public void UnconvertibleLayerIsRefusedWithItsNode()
    {
        using var dir = new ModelDirectory();
        var model = LlamaModelBuilder.Build(new LlamaConfig { Layers = 2, Hidden = 16, Heads = 2, KvHeads = 1, HeadDim = 8, Ffn = 16, Vocab = 11 });
        model.Graph.Output.Add(GraphBuilder.ValueInfo("/model/layers.0/self_attn/Softmax_output_0", TensorProto.Types.DataType.Float));
        var error = Refuse(dir, dir.WriteModel("probe.onnx", model), ConversionError.UnconvertibleLayers);
        Assert.AreEqual("/model/layers.0/self_attn/Softmax", error.Layers.Single().Node);
    }

    [TestMethod]
    public void OutputPathsThatWouldLoseDataAreRefused()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteLlama();
        var hash = ModelDirectory.Sha256(input);

        var same = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.ConvertFile(input, input, new ConversionOptions(), overwrite: true));
        Assert.AreEqual(ConversionError.InvalidOutput, same.Error);

        var existing = dir.Write("out.onnx", [1, 2, 3]);
        var exists = Assert.ThrowsExactly<ConversionException>(() => HybridConverter.ConvertFile(input, existing, new ConversionOptions()));
        Assert.AreEqual(ConversionError.InvalidOutput, exists.Error);
        CollectionAssert.AreEqual(new byte[] { 1, 2, 3 }, File.ReadAllBytes(existing));

        HybridConverter.ConvertFile(input, existing, new ConversionOptions(), overwrite: true);
        Assert.IsTrue(HybridConverter.IsConverted(ModelFile.Load(existing)));
        Assert.AreEqual(hash, ModelDirectory.Sha256(input));
        Assert.IsEmpty(dir.FilesExcept("llama.onnx", "out.onnx"));
    }

    [TestMethod]
    public void SuccessfulConversionLeavesInputUnchangedAndWritesALoadableModel()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteLlama();
        var hash = ModelDirectory.Sha256(input);

        var report = HybridConverter.ConvertFile(input, dir.File("hybrid.onnx"), new ConversionOptions { Layout = LayoutSpec.FromLetters("FS") });

        Assert.AreEqual(hash, ModelDirectory.Sha256(input));
        Assert.AreEqual("FSFF", report.Layout.Letters);
        var written = ModelFile.Load(dir.File("hybrid.onnx"));
        Assert.AreEqual("FSFF", written.MetadataProps.Single(p => p.Key == "hysparse.layout").Value);
        Assert.IsEmpty(dir.FilesExcept("llama.onnx", "hybrid.onnx"));
    }
}
