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

}
