namespace HySparse.Exporter.Tests;

[TestClass]
public sealed class LayoutTests
{
    [TestMethod]
    [DataRow("FSSS", 8, false, "FSSSFSSF")]
    [DataRow("fsss", 8, true, "FSSSFSSS")]
    [DataRow("F", 3, false, "FFF")]
    [DataRow("FS", 5, false, "FSFSF")]
    [DataRow("FSSSSSSSSSSS", 12, false, "FSSSSSSSSSSF")]
    [DataRow("FSSSSSSSSSSS", 4, false, "FSSF")]
    [DataRow("FSSFS", 5, true, "FSSFS")]
    public void PatternRepeatsOverLayers(string pattern, int layers, bool sparseLast, string expected)
    {
        Assert.AreEqual(expected, LayoutSpec.FromLetters(pattern, sparseLast).Plan(layers).Letters);
    }

    [TestMethod]
    [DataRow("1:3", 8, "FSSSFSSF")]
    [DataRow(" 1 : 11 ", 12, "FSSSSSSSSSSF")]
    [DataRow("1:1", 4, "FSFF")]
    public void RatioIsOneFullThenNSparse(string ratio, int layers, string expected)
    {
        Assert.AreEqual(expected, LayoutSpec.Ratio(ratio).Plan(layers).Letters);
    }

    [TestMethod]
    public void FullLayerListIsExact()
    {
        var layout = LayoutSpec.FromFullLayers("8, 0,4").Plan(10);
        Assert.AreEqual("FSSSFSSSFF", layout.Letters);
        CollectionAssert.AreEqual(new[] { 0, 4, 8, 9 }, layout.FullLayers.ToArray());
        Assert.AreEqual(6, layout.SparseCount);
        Assert.AreEqual("FSSSFSSSFS", LayoutSpec.FromFullLayers("0,4,8", sparseLast: true).Plan(10).Letters);
    }

    [TestMethod]
    public void OracleIsTheNearestPrecedingFullLayer()
    {
        var layout = LayoutSpec.FromLetters("FSSFS").Plan(6);
        Assert.AreEqual("FSSFSF", layout.Letters);
        Assert.AreEqual(0, layout.OracleOf(1));
        Assert.AreEqual(0, layout.OracleOf(2));
        Assert.AreEqual(3, layout.OracleOf(4));
        Assert.ThrowsExactly<ArgumentException>(() => layout.OracleOf(3));
        Assert.IsTrue(layout.FeedsSparseLayers(0));
        Assert.IsTrue(layout.FeedsSparseLayers(3));
        Assert.IsFalse(layout.FeedsSparseLayers(5));
    }

    [TestMethod]
    [DataRow("", "empty")]
    [DataRow("SFFF", "layer 0 must be full")]
    [DataRow("FXS", "'X'")]
    [DataRow("F-S", "'-'")]
    public void InvalidPatternsAreRefused(string pattern, string because)
    {
        var error = Assert.ThrowsExactly<LayoutException>(() => LayoutSpec.FromLetters(pattern));
        StringAssert.Contains(error.Message, because);
    }

    [TestMethod]
    [DataRow("1:0", "no sparse layers")]
    [DataRow("2:3", "1:N")]
    [DataRow("1-3", "1:N")]
    [DataRow("1:x", "1:N")]
    [DataRow("1:-2", "1:N")]
    public void InvalidRatiosAreRefused(string ratio, string because)
    {
        var error = Assert.ThrowsExactly<LayoutException>(() => LayoutSpec.Ratio(ratio));
        StringAssert.Contains(error.Message, because);
    }

    [TestMethod]
    [DataRow("1,2", "omits layer 0")]
    [DataRow("0,0", "twice")]
    [DataRow("0,x", "'x'")]
    [DataRow("0,-1", "'-1'")]
    [DataRow("", "''")]
    public void InvalidFullLayerListsAreRefused(string list, string because)
    {
        var error = Assert.ThrowsExactly<LayoutException>(() => LayoutSpec.FromFullLayers(list));
        StringAssert.Contains(error.Message, because);
    }

    [TestMethod]
    public void FullLayerBeyondTheModelIsRefusedWhenPlanned()
    {
        var error = Assert.ThrowsExactly<LayoutException>(() => LayoutSpec.FromFullLayers("0,9").Plan(8));
        StringAssert.Contains(error.Message, "0 to 7");
    }

    [TestMethod]
    [DataRow(0, 64, 128, "top-k")]
    [DataRow(16, 0, 128, "block size")]
    [DataRow(16, 64, -1, "window")]
    public void ParametersBelowOneAreRefused(int topK, int blockSize, int window, string because)
    {
        var error = Assert.ThrowsExactly<HybridParametersException>(() => new HybridParameters { TopK = topK, BlockSize = blockSize, Window = window }.Validate());
        StringAssert.Contains(error.Message, because);
    }
}
