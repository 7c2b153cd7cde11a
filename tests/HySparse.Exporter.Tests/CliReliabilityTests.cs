using System.Diagnostics;
using Google.Protobuf;
using HySparse.Cli;
using HySparse.Models.Graph;
using HySparse.Onnx;
using Onnx;

namespace HySparse.Exporter.Tests;

/// <summary>
/// The defects of issue 14 that a careless user or a hostile file meets at the command line: the input
/// reached through another path, outputs that cannot be written, malformed models, interrupted writes.
/// None of them may end in "this is a bug" (exit 1), touch the input or leave a file behind.
/// </summary>
[TestClass]
public sealed class CliReliabilityTests
{
    private static (int Code, string Out, string Err) Run(params string[] args) => CliTests.Run(args);

    private static void AssertRefused(int expected, (int Code, string Out, string Err) result, string contains)
    {
        Assert.AreEqual(expected, result.Code, result.Err);
        var errors = result.Err.Split('\n').Where(l => l.StartsWith("hysparse: error: ", StringComparison.Ordinal)).ToList();
        Assert.HasCount(1, errors, result.Err);
        StringAssert.Contains(errors[0], contains);
        Assert.DoesNotContain("this is a bug", result.Err);
    }

    /// <summary>Writes llama.onnx and its conversion h.onnx; returns the dense model's path.</summary>
    private static string WriteConverted(ModelDirectory dir)
    {
        var dense = dir.WriteLlama();
        Assert.AreEqual(ExitCodes.Success, Run("convert", dense, "-o", dir.File("h.onnx"), "-q").Code);
        return dense;
    }

    // ---- 1. The input reached through another path is never overwritten --------------------------

    [TestMethod]
    public void ConvertRefusesTheInputReachedThroughASymlinkedFolder()
    {
        using var dir = new ModelDirectory();
        using var outer = new ModelDirectory();
        var input = dir.WriteLlama("A.onnx");
        var hash = ModelDirectory.Sha256(input);
        var alias = outer.File("alias");
        Directory.CreateSymbolicLink(alias, dir.Path);

        var result = Run("convert", input, "-o", Path.Combine(alias, "A.onnx"), "--overwrite", "-q");

        AssertRefused(ExitCodes.InvalidOutput, result, "is the input file");
        Assert.AreEqual(hash, ModelDirectory.Sha256(input), "the input is untouched");
        Assert.IsEmpty(dir.FilesExcept("A.onnx"));
    }

    [TestMethod]
    public void ConvertRefusesAHardLinkOrSymlinkToTheInput()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteLlama("A.onnx");
        var hash = ModelDirectory.Sha256(input);
        using (var ln = Process.Start("ln", [input, dir.File("hard.onnx")])) ln.WaitForExit();
        Assert.IsTrue(File.Exists(dir.File("hard.onnx")));
        File.CreateSymbolicLink(dir.File("soft.onnx"), input);

        foreach (var output in new[] { "hard.onnx", "soft.onnx" })
        {
            var result = Run("convert", input, "-o", dir.File(output), "--overwrite", "-q");
            AssertRefused(ExitCodes.InvalidOutput, result, "is the input file");
        }

        Assert.AreEqual(hash, ModelDirectory.Sha256(input));
        Assert.IsEmpty(dir.FilesExcept("A.onnx", "hard.onnx", "soft.onnx"));
        Assert.IsTrue(FileIdentity.Same(Path.Combine(dir.Path, ".", "A.onnx"), dir.File("hard.onnx")));
        Assert.IsFalse(FileIdentity.Same(input, dir.File("missing.onnx")));
    }

    // ---- 4. Ordinary failures get their documented exit code ---------------------------------------

    [TestMethod]
    public void AMissingOrFolderInputIsAnInvalidModelNotACrash()
    {
        using var dir = new ModelDirectory();
        // Without -q the progress line used to ask for the missing file's length and crash.
        AssertRefused(ExitCodes.InvalidModel, Run("convert", dir.File("missing.onnx"), "-o", dir.File("h.onnx")), "no such file");
        AssertRefused(ExitCodes.InvalidModel, Run("inspect", dir.File("missing.onnx")), "missing.onnx");
        Assert.IsEmpty(dir.FilesExcept());
    }

    [TestMethod]
    public void VerifyValidatesItsSecondModelToo()
    {
        using var dir = new ModelDirectory();
        var dense = WriteConverted(dir);
        var bytes = File.ReadAllBytes(dir.File("h.onnx"));
        var truncated = dir.Write("truncated.onnx", bytes[..(bytes.Length / 2)]);

        AssertRefused(ExitCodes.InvalidModel, Run("verify", dense, truncated, "-q"), "truncated.onnx");
    }

    [TestMethod]
    public void AModelWithADuplicatedGraphInputIsRefusedAsInvalid()
    {
        using var dir = new ModelDirectory();
        var model = ModelFile.Load(dir.WriteLlama());
        model.Graph.Input.Add(model.Graph.Input[0].Clone());
        var duplicated = dir.WriteModel("dup.onnx", model);

        foreach (var args in new[] { new[] { "inspect", duplicated }, ["convert", duplicated, "-o", dir.File("h.onnx"), "-q"], ["verify", duplicated, duplicated, "-q"] })
            AssertRefused(ExitCodes.InvalidModel, Run(args), $"graph input '{model.Graph.Input[0].Name}' is declared twice");
        Assert.IsFalse(File.Exists(dir.File("h.onnx")));
    }

    [TestMethod]
    public void HySparseNodesOfUnknownTypesOrAttributesAreRefusedAsInvalid()
    {
        using var dir = new ModelDirectory();
        var dense = WriteConverted(dir);
        string Mutant(string name, Action<NodeProto> change)
        {
            var model = ModelFile.Load(dir.File("h.onnx"));
            change(model.Graph.Node.First(n => n.OpType == HySparseOps.FullAttn));
            return dir.WriteModel(name, model);
        }

        var unknownOp = Mutant("op.onnx", n => n.OpType = "HySparseMysteryAttn");
        AssertRefused(ExitCodes.InvalidModel, Run("inspect", unknownOp), "'HySparseMysteryAttn'");
        AssertRefused(ExitCodes.InvalidModel, Run("verify", dense, unknownOp, "-q"), "'HySparseMysteryAttn'");

        // ONNX Runtime cannot list a node's attributes to the op, so a misspelt one is caught when the model is read.
        var misspelt = Mutant("attr.onnx", n => n.Attribute.Add(Attr.Int("topk", 4)));
        AssertRefused(ExitCodes.InvalidModel, Run("inspect", misspelt), "unknown attribute 'topk'");
        var wrongType = Mutant("type.onnx", n => { n.Attribute.Remove(n.Attribute.First(a => a.Name == HySparseOps.Attributes.TopK)); n.Attribute.Add(Attr.Float(HySparseOps.Attributes.TopK, 2.5f)); });
        AssertRefused(ExitCodes.InvalidModel, Run("verify", dense, wrongType, "-q"), "'top_k' must be int, got float");
    }

    [TestMethod]
    public void AModelOnnxRuntimeRefusesIsAnInvalidModelNotACrash()
    {
        using var dir = new ModelDirectory();
        var dense = WriteConverted(dir);
        var model = ModelFile.Load(dir.File("h.onnx"));
        var full = model.Graph.Node.First(n => n.OpType == HySparseOps.FullAttn);
        full.Attribute.First(a => a.Name == HySparseOps.Attributes.TopK).I = 100_000;
        var refused = dir.WriteModel("big-k.onnx", model);

        AssertRefused(ExitCodes.InvalidModel, Run("verify", dense, refused, "-q"), "ONNX Runtime cannot load");
    }

    [TestMethod]
    public void ConvertRefusesExternalDataOutsideTheModelsFolder()
    {
        using var dir = new ModelDirectory();
        var model = ModelFile.Load(dir.WriteLlama());
        var weight = model.Graph.Initializer.First(i => i.RawData.Length >= 1024);
        ExternalData.PointTo(weight, "../../etc/passwd", 0, weight.RawData.Length);
        var escaping = dir.WriteModel("escaping.onnx", model);

        AssertRefused(ExitCodes.InvalidModel, Run("convert", escaping, "-o", dir.File("h.onnx"), "-q"), "'../../etc/passwd'");
        AssertRefused(ExitCodes.InvalidModel, Run("verify", escaping, escaping, "-q"), "not a file inside the model's folder");
        Assert.IsFalse(File.Exists(dir.File("h.onnx")));
        foreach (var location in new[] { "/abs/data", "a/../../data", "..", "", "a/.." }) Assert.IsTrue(ModelFile.EscapesModelFolder(location), location);
        foreach (var location in new[] { "data.bin", "sub/data.bin", "./data.bin", "sub/../data.bin" }) Assert.IsFalse(ModelFile.EscapesModelFolder(location), location);
    }

    [TestMethod]
    public void TopKAndBlockSizeBeyondTheOperatorsLimitsAreUsageErrors()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteLlama();
        AssertRefused(ExitCodes.Usage, Run("convert", input, "-o", dir.File("h.onnx"), "--top-k", "65537"), "at most 65536");
        AssertRefused(ExitCodes.Usage, Run("convert", input, "-o", dir.File("h.onnx"), "--block-size", "8192"), "at most 4096");
        Assert.IsEmpty(dir.FilesExcept("llama.onnx"));
    }

}
