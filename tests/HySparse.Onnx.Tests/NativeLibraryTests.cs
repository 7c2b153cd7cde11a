namespace HySparse.Onnx.Tests;

[TestClass]
public sealed class NativeLibraryTests
{
    [TestMethod]
    public void ExplicitMissingPath_ThrowsListingThePath()
    {
        var missing = Path.Combine(Path.GetTempPath(), $"hysparse-missing-{Guid.NewGuid():N}", HySparseNativeLibrary.FileName);
        var exception = Assert.ThrowsExactly<HySparseLibraryNotFoundException>(() => HySparseNativeLibrary.Locate(missing));
        CollectionAssert.AreEqual(new[] { missing }, exception.SearchedPaths.ToArray());
        StringAssert.Contains(exception.Message, missing);
        StringAssert.Contains(exception.Message, HySparseNativeLibrary.PathEnvironmentVariable);

        using var options = new SessionOptions();
        var fromRegister = Assert.ThrowsExactly<HySparseLibraryNotFoundException>(() => options.RegisterHySparseOps(missing));
        StringAssert.Contains(fromRegister.Message, missing);
    }

    [TestMethod]
    public void BuildOutput_ShipsTheLibraryUnderRuntimes_AndLocateFindsIt()
    {
        var located = HySparseNativeLibrary.Locate();
        Assert.IsTrue(File.Exists(located), located);
        Assert.AreEqual(HySparseNativeLibrary.FileName, Path.GetFileName(located));
        // The first existing candidate wins, and every candidate is absolute.
        var firstExisting = HySparseNativeLibrary.SearchPaths().First(File.Exists);
        Assert.AreEqual(Path.GetFullPath(firstExisting), located);
        Assert.IsTrue(HySparseNativeLibrary.SearchPaths().All(Path.IsPathRooted));
        Assert.IsTrue(HySparseNativeLibrary.SearchPaths().Any(p => p.Contains(Path.Combine("runtimes", "linux-x64", "native"))));
    }

    [TestMethod]
    public void ExplicitExistingPath_IsReturnedAsAFullPath()
    {
        var located = HySparseNativeLibrary.Locate();
        var relative = Path.GetRelativePath(Environment.CurrentDirectory, located);
        Assert.AreEqual(located, HySparseNativeLibrary.Locate(relative));
    }

    [TestMethod]
    public void RegisterHySparseOps_LoadsTheLibraryIntoSessionOptions()
    {
        using var options = new SessionOptions();
        Assert.AreSame(options, options.RegisterHySparseOps());
        Assert.ThrowsExactly<ArgumentNullException>(() => SessionOptionsExtensions.RegisterHySparseOps(null!));
    }

    [TestMethod]
    public void RegisterHySparseOps_Twice_IsANoOp_WhereOrtItselfRefusesASecondRegistration()
    {
        var call = FullAttnCall.Build(AttentionData.Random(new AttentionShape(1, 4, 2, 64, 5, 16), seed: 950),
                                      new FullAttnOptions { BlockSize = 4, TopK = 2 });
        var model = call.BuildModel();

        using var options = new SessionOptions();
        options.RegisterHySparseOps();
        Assert.AreSame(options, options.RegisterHySparseOps());
        using (var session = new InferenceSession(model, options))
        {
            Assert.IsTrue(session.InputMetadata.ContainsKey("query"));
        }

        // The guard is what makes the second call harmless: ORT refuses the same domain registered twice.
        using var twice = new SessionOptions();
        twice.RegisterCustomOpLibrary(HySparseNativeLibrary.Locate());
        twice.RegisterCustomOpLibrary(HySparseNativeLibrary.Locate());
        Assert.ThrowsExactly<OnnxRuntimeException>(() => new InferenceSession(model, twice).Dispose());
    }

    [TestMethod]
    public void NotFound_NamesThePackagedRuntimeIdentifiers()
    {
        CollectionAssert.Contains(HySparseNativeLibrary.PackagedRuntimeIdentifiers.ToArray(), "linux-x64");
        Assert.AreEqual("linux-x64", HySparseNativeLibrary.PortableRuntimeIdentifier);
        var exception = new HySparseLibraryNotFoundException(["/nowhere/libhysparse_onnx.so"]);
        StringAssert.Contains(exception.Message, "/nowhere/libhysparse_onnx.so");
        StringAssert.Contains(exception.Message, "HySparse.Onnx package");
    }
}
