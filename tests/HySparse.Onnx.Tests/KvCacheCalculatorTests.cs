namespace HySparse.Onnx.Tests;

[TestClass]
public sealed class KvCacheCalculatorTests
{
    [TestMethod]
    public void PaperLayout_80BLike_At32k_IsAbout9Point5TimesSmaller()
    {
        // 49 layers of which 5 are full, bf16, H_kv = 4, D = 128, w = 128 (the design brief's example).
        var hybrid = KvCacheCalculator.FromCounts(5, 44, kvNumHeads: 4, headDim: 128, elementBytes: 2, KvCacheMode.KvSharing, window: 128);

        // 2·4·128·2 = 2048 bytes per layer and token.
        Assert.AreEqual(2048L, hybrid.BytesPerLayerToken);
        // Hybrid: 2048 · (5·32768 + 44·128) = 2048 · 169472.
        Assert.AreEqual(2048L * 169_472, hybrid.BytesAt(32_768));
        // Dense: 2048 · 49 · 32768.
        Assert.AreEqual(2048L * 49 * 32_768, hybrid.DenseBytesAt(32_768));
        Assert.AreEqual(1_605_632.0 / 169_472.0, hybrid.CompressionRatioAt(32_768), 1e-12);
        Assert.AreEqual(9.5, hybrid.CompressionRatioAt(32_768), 0.05);
        // Per-token growth past the window: only the 5 full layers.
        Assert.AreEqual(2048L * 5, hybrid.BytesPerToken);
        Assert.AreEqual(2048L * 49, hybrid.DenseBytesPerToken);
    }

    [TestMethod]
    public void KvSharing_BelowTheWindow_EveryLayerGrows()
    {
        var layout = new KvCacheCalculator([LayerKind.Full, LayerKind.Sparse, LayerKind.Sparse, LayerKind.Full, LayerKind.Sparse],
                                           kvNumHeads: 2, headDim: 64, elementBytes: 4, KvCacheMode.KvSharing, window: 100);
        // 2·2·64·4 = 1024 bytes per layer-token; 2 full, 3 sparse.
        Assert.AreEqual(1024L, layout.BytesPerLayerToken);
        Assert.AreEqual(2, layout.FullLayerCount);
        Assert.AreEqual(3, layout.SparseLayerCount);
        Assert.AreEqual(1024L * 5 * 60, layout.BytesAt(60));             // T < w: like dense
        Assert.AreEqual(1.0, layout.CompressionRatioAt(60), 1e-15);
        Assert.AreEqual(1024L * 5 * 100, layout.BytesAt(100));           // T = w
        Assert.AreEqual(1024L * (2 * 1000 + 3 * 100), layout.BytesAt(1000));
        Assert.AreEqual(3L * 1024 * (2 * 1000 + 3 * 100), layout.BytesAt(1000, batchSize: 3));
        Assert.AreEqual(0L, layout.BytesAt(0));
        Assert.AreEqual(2L * 1000 + 3 * 100, layout.CachedTokensAt(1000));
    }

    [TestMethod]
    public void DenseAndRetrofit_KeepEveryLayersFullCache()
    {
        LayerKind[] layers = [LayerKind.Full, LayerKind.Sparse, LayerKind.Sparse, LayerKind.Sparse];
        foreach (var mode in new[] { KvCacheMode.Dense, KvCacheMode.Retrofit })
        {
            var layout = new KvCacheCalculator(layers, kvNumHeads: 8, headDim: 128, elementBytes: 2, mode, window: 128);
            Assert.AreEqual(2L * 8 * 128 * 2 * 4 * 16_384, layout.BytesAt(16_384), mode.ToString());
            Assert.AreEqual(layout.DenseBytesAt(16_384), layout.BytesAt(16_384), mode.ToString());
            Assert.AreEqual(1.0, layout.CompressionRatioAt(16_384), mode.ToString());
            Assert.AreEqual(2L * 8 * 128 * 2 * 4, layout.BytesPerToken, mode.ToString());
        }
    }

    [TestMethod]
    public void FromCounts_PlacesFullLayersEvenlyStartingAtLayerZero()
    {
        var layout = KvCacheCalculator.FromCounts(2, 6, 1, 1, 1, KvCacheMode.KvSharing);
        CollectionAssert.AreEqual(
            new[] { LayerKind.Full, LayerKind.Sparse, LayerKind.Sparse, LayerKind.Sparse, LayerKind.Full, LayerKind.Sparse, LayerKind.Sparse, LayerKind.Sparse },
            layout.Layers.ToArray());
        Assert.AreEqual(3, KvCacheCalculator.FromCounts(3, 0, 1, 1, 1, KvCacheMode.Dense).FullLayerCount);
    }

    [TestMethod]
    public void InvalidArguments_AreRejectedWithTheParameterName()
    {
        LayerKind[] layers = [LayerKind.Full, LayerKind.Sparse];
        AssertThrows<ArgumentNullException>("layers", () => new KvCacheCalculator(null!, 1, 1, 1, KvCacheMode.Dense));
        AssertThrows<ArgumentException>("layers", () => new KvCacheCalculator([], 1, 1, 1, KvCacheMode.Dense));
        AssertThrows<ArgumentException>("layers", () => new KvCacheCalculator([(LayerKind)7], 1, 1, 1, KvCacheMode.Dense));
        AssertThrows<ArgumentOutOfRangeException>("kvNumHeads", () => new KvCacheCalculator(layers, 0, 1, 1, KvCacheMode.Dense));
        AssertThrows<ArgumentOutOfRangeException>("headDim", () => new KvCacheCalculator(layers, 1, 0, 1, KvCacheMode.Dense));
        AssertThrows<ArgumentOutOfRangeException>("elementBytes", () => new KvCacheCalculator(layers, 1, 1, 0, KvCacheMode.Dense));
        AssertThrows<ArgumentOutOfRangeException>("window", () => new KvCacheCalculator(layers, 1, 1, 1, KvCacheMode.KvSharing, window: 0));
        AssertThrows<ArgumentOutOfRangeException>("mode", () => new KvCacheCalculator(layers, 1, 1, 1, (KvCacheMode)42));
        var sparseFirst = AssertThrows<ArgumentException>("layers",
            () => new KvCacheCalculator([LayerKind.Sparse, LayerKind.Full], 1, 1, 1, KvCacheMode.KvSharing));
        StringAssert.Contains(sparseFirst.Message, "layer 0 is sparse");
        AssertThrows<ArgumentException>("fullLayers", () => KvCacheCalculator.FromCounts(0, 4, 1, 1, 1, KvCacheMode.KvSharing));
        AssertThrows<ArgumentOutOfRangeException>("sparseLayers", () => KvCacheCalculator.FromCounts(1, -1, 1, 1, 1, KvCacheMode.Dense));

        var layout = new KvCacheCalculator(layers, 1, 1, 1, KvCacheMode.KvSharing);
        AssertThrows<ArgumentOutOfRangeException>("contextLength", () => layout.BytesAt(-1));
        AssertThrows<ArgumentOutOfRangeException>("batchSize", () => layout.BytesAt(10, 0));
        AssertThrows<ArgumentOutOfRangeException>("contextLength", () => layout.CompressionRatioAt(0));
    }

    [TestMethod]
    public void ByteCountsThatDoNotFitIn64Bits_ThrowOverflow()
    {
        var huge = KvCacheCalculator.FromCounts(1000, 0, 1 << 20, 1 << 10, 8, KvCacheMode.Dense);
        Assert.ThrowsExactly<OverflowException>(() => huge.BytesAt(long.MaxValue / 2));
    }

    private static T AssertThrows<T>(string parameter, Action action) where T : ArgumentException
    {
        var exception = Assert.ThrowsExactly<T>(action);
        Assert.AreEqual(parameter, exception.ParamName);
        return exception;
    }
}
