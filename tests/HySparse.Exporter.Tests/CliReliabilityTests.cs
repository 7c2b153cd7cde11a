using System.Diagnostics;

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

    /// <summary>Runs the command with <paramref name="hook"/> called between the write of a temporary file in <paramref name="dir"/> and its rename.</summary>
    private static (int Code, string Out, string Err) RunWithHook(ModelDirectory dir, Action<string> hook, params string[] args)
    {
        ModelFile.BeforeRename = temporary => { if (temporary.StartsWith(dir.Path, StringComparison.Ordinal)) hook(temporary); };
        try
        {
            return Run(args);
        }
        finally
        {
            ModelFile.BeforeRename = null;
        }
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
    public void AnOutputFolderThatRefusesFilesExitsWithTheOutputCode()
    {
        // /sys refuses new files even to root: permission denied when the temporary file is created.
        if (!OperatingSystem.IsLinux() || !Directory.Exists("/sys/kernel")) Assert.Inconclusive("needs Linux sysfs");
        using var dir = new ModelDirectory();
        var result = Run("convert", dir.WriteLlama(), "-o", "/sys/kernel/hybrid.onnx", "-q");
        AssertRefused(ExitCodes.InvalidOutput, result, "cannot write '/sys/kernel/hybrid.onnx'");
    }

    [TestMethod]
    [DoNotParallelize]
    public void AFullOrReadOnlyFileSystemExitsWithTheOutputCode()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteLlama();
        foreach (var (options, expect) in new[] { ("size=16k", "No space left"), ("ro,size=1m", "Read-only") })
        {
            var mount = dir.File("mnt-" + options.Replace(',', '-').Replace('=', '-'));
            Directory.CreateDirectory(mount);
            if (!Mount(mount, options)) Assert.Inconclusive("mounting a tmpfs needs root (CAP_SYS_ADMIN)");
            try
            {
                var result = Run("convert", input, "-o", Path.Combine(mount, "h.onnx"), "-q");
                AssertRefused(ExitCodes.InvalidOutput, result, expect);
                Assert.IsEmpty(Directory.GetFiles(mount), "no temporary file is left on the full file system");
            }
            finally
            {
                using var umount = Process.Start("umount", [mount]);
                umount.WaitForExit();
            }
        }
    }

    private static bool Mount(string path, string options)
    {
        try
        {
            using var mount = Process.Start(new ProcessStartInfo("mount", ["-t", "tmpfs", "-o", options, "tmpfs", path]) { RedirectStandardError = true });
            mount!.WaitForExit();
            return mount.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }

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
    public void ConcurrentConversionsToOnePathHaveOneWinnerAndNoCrash()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteLlama();
        var output = dir.File("h.onnx");

        var results = Enumerable.Range(0, 4).AsParallel().WithDegreeOfParallelism(4).Select(_ => Run("convert", input, "-o", output, "-q")).ToList();

        foreach (var result in results)
            Assert.IsTrue(result.Code is ExitCodes.Success or ExitCodes.InvalidOutput, $"exit {result.Code}: {result.Err}");
        Assert.IsTrue(results.Any(r => r.Code == ExitCodes.Success));
        ModelFile.Load(output);
        Assert.IsEmpty(dir.FilesExcept("llama.onnx", "h.onnx"));
    }

    [TestMethod]
    [DoNotParallelize]
    public void AConversionThatLosesTheRaceForItsOutputExitsWithTheOutputCode()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteLlama();
        var output = dir.File("h.onnx");
        // Another writer creates the output after this conversion checked for it, before its rename.
        var result = RunWithHook(dir, _ => File.WriteAllText(output, "the winner"), "convert", input, "-o", output, "-q");
        AssertRefused(ExitCodes.InvalidOutput, result, "created by another process");
        Assert.AreEqual("the winner", File.ReadAllText(output));
        Assert.IsEmpty(dir.FilesExcept("llama.onnx", "h.onnx"));
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

    // ---- 5. Temporary files -------------------------------------------------------------------------

    [TestMethod]
    [DoNotParallelize]
    public void ASignalDuringTheWriteRemovesTheTemporaryFile()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteLlama();
        string? seen = null;
        // What the SIGINT/SIGTERM handlers do, at the moment the temporary file is complete.
        var result = RunWithHook(dir, temporary =>
        {
            seen = temporary;
            Assert.IsTrue(File.Exists(temporary));
            ModelFile.InterruptWrites();
        }, "convert", input, "-o", dir.File("h.onnx"), "-q");
        AssertRefused(ExitCodes.Interrupted, result, "interrupted");
        Assert.IsNotNull(seen);
        StringAssert.EndsWith(seen, $".{Environment.ProcessId}.tmp", "the temporary file names its process, so a later run can tell it is stale");
        Assert.IsEmpty(dir.FilesExcept("llama.onnx"), "neither the temporary file nor an output is left");
    }

    [TestMethod]
    public void ASigtermedConversionLeavesNoTemporaryFile()
    {
        // A real process and a real signal: the model is made large enough (~100 MB) that the write lasts.
        using var dir = new ModelDirectory();
        var model = ModelFile.Load(dir.WriteLlama());
        model.Graph.Initializer.Add(new TensorProto { Name = "ballast", DataType = (int)TensorProto.Types.DataType.Float, Dims = { 25_000_000 }, RawData = ByteString.CopyFrom(new byte[100_000_000]) });
        var input = dir.WriteModel("big.onnx", model);
        var cli = typeof(CliApp).Assembly.Location;
        if (!File.Exists(cli)) Assert.Inconclusive($"{cli} is not beside the tests");

        for (var attempt = 0; attempt < 3; attempt++)
        {
            using var process = Process.Start(new ProcessStartInfo("dotnet", [cli, "convert", input, "-o", dir.File("h.onnx"), "--overwrite", "-q"]) { RedirectStandardError = true, RedirectStandardOutput = true })!;
            var clock = Stopwatch.StartNew();
            string? temporary = null;
            while (temporary is null && !process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(60))
            {
                temporary = Directory.GetFiles(dir.Path, ".h.onnx.*.tmp").FirstOrDefault();
                if (temporary is null) Thread.Sleep(1);
            }
            if (temporary is null)
            {
                process.WaitForExit();
                continue;  // the write was over before it could be seen: try again
            }
            using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])) kill.WaitForExit();
            Assert.IsTrue(process.WaitForExit(60_000));
            Assert.IsFalse(File.Exists(temporary), $"{temporary} is left after SIGTERM (exit {process.ExitCode})");
            Assert.IsEmpty(dir.FilesExcept("llama.onnx", "big.onnx", "h.onnx"));
            return;
        }
        Assert.Inconclusive("the conversion always finished before its temporary file was seen");
    }

    [TestMethod]
    public void TemporaryFilesOfAKilledConversionAreRemovedByTheNextOne()
    {
        using var dir = new ModelDirectory();
        var input = dir.WriteLlama();
        // A process id above Linux's pid_max: certainly not running.
        var stale = dir.Write($".h.onnx.{Guid.NewGuid():N}.2147483647.tmp", new byte[100]);
        // The format of earlier versions (no process id): removed once untouched for ten minutes...
        var old = dir.Write($".h.onnx.{Guid.NewGuid():N}.tmp", new byte[100]);
        File.SetLastWriteTimeUtc(old, DateTime.UtcNow.AddHours(-1));
        // ...and left, but reported, while it may still be written.
        var recent = dir.Write($".h.onnx.{Guid.NewGuid():N}.tmp", new byte[100]);
        // Someone else's file that merely looks alike stays.
        var unrelated = dir.Write(".h.onnx.notes.tmp", new byte[1]);

        var result = Run("convert", input, "-o", dir.File("h.onnx"));

        Assert.AreEqual(ExitCodes.Success, result.Code, result.Err);
        Assert.IsFalse(File.Exists(stale));
        Assert.IsFalse(File.Exists(old));
        Assert.IsTrue(File.Exists(recent));
        Assert.IsTrue(File.Exists(unrelated));
        StringAssert.Contains(result.Err, $"removed {stale}");
        StringAssert.Contains(result.Err, $"removed {old}");
        StringAssert.Contains(result.Err, $"left {recent}");
    }
}
