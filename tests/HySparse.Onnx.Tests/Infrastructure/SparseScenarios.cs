namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>Where a generated sparse call's SA branch reads.</summary>
public enum SaSourceKind
{
    /// <summary>Retrofit: the layer's own full-length cache.</summary>
    OwnCache,
    /// <summary>KV sharing: <c>shared_key/value</c>, the preceding full layer's cache.</summary>
    Shared,
    /// <summary><c>selected_key/value</c> gathered by the full layer (plus the shared cache, which the op must then ignore for SA).</summary>
    Selected,
}

/// <summary>Builds random, contract-conforming HySparseSparseAttn calls.</summary>
public static class SparseScenarios
{
    /// <summary>
    /// Random block indices: per row a random number (0..K) of distinct blocks below <paramref name="numBlocks"/>,
    /// ascending, then −1. Blocks after the token's position are allowed (the op masks them).
    /// </summary>
    public static int[] RandomIndices(TensorRandom random, AttentionShape shape, int topK, int numBlocks)
    {
        var rows = shape.Batch * shape.KvNumHeads * shape.NewLength;
        var indices = new int[rows * topK];
        for (var row = 0; row < rows; row++)
        {
            var count = random.Next(Math.Min(topK, numBlocks) + 1);
            var blocks = Enumerable.Range(0, numBlocks).OrderBy(_ => random.Next(1 << 30)).Take(count).Order().ToArray();
            for (var k = 0; k < topK; k++) indices[row * topK + k] = k < blocks.Length ? blocks[k] : -1;
        }
        return indices;
    }

    public static SparseAttnCall Random(AttentionShape shape, int seed, SaSourceKind source, string combine, int windowCache,
                                       int blockSize, int topK, int window, bool threeD = true, bool withGate = false,
                                       bool gatePerChannel = false, bool withSinks = false, long[]? mask = null,
                                       ElementType type = ElementType.Float32)
    {
        var random = new TensorRandom(seed);
        double[] Draw(long count, double amplitude) => random.Uniform(count, amplitude, type);
        var (b, hq, hkv, d, s, t) = (shape.Batch, shape.NumHeads, shape.KvNumHeads, shape.HeadDim, shape.NewLength, shape.TotalLength);
        var pastOwn = windowCache == 1 ? Math.Min(window, t - s) : t - s;
        var numBlocks = (t + blockSize - 1) / blockSize;
        var indices = RandomIndices(random, shape, topK, numBlocks);

        double[]? sharedKey = null, sharedValue = null, selectedKey = null, selectedValue = null;
        if (source != SaSourceKind.OwnCache)
        {
            sharedKey = Draw((long)b * hkv * t * d, 1);
            sharedValue = Draw((long)b * hkv * t * d, 1);
        }
        if (source == SaSourceKind.Selected)
        {
            // Gathered from caches other than shared_key/value, so that reading the wrong source shows.
            selectedKey = AttentionReference.Gather(shape, Draw((long)b * hkv * t * d, 1), indices, blockSize, topK);
            selectedValue = AttentionReference.Gather(shape, Draw((long)b * hkv * t * d, 1), indices, blockSize, topK);
        }
        return new SparseAttnCall
        {
            Shape = shape,
            Query = Draw((long)b * hq * s * d, AttentionData.QueryAmplitude),
            Key = Draw((long)b * hkv * s * d, 1),
            Value = Draw((long)b * hkv * s * d, 1),
            PastKey = pastOwn > 0 ? Draw((long)b * hkv * pastOwn * d, 1) : null,
            PastValue = pastOwn > 0 ? Draw((long)b * hkv * pastOwn * d, 1) : null,
            PastLength = pastOwn,
            SharedKey = sharedKey,
            SharedValue = sharedValue,
            SelectedKey = selectedKey,
            SelectedValue = selectedValue,
            BlockIndices = indices,
            TopK = topK,
            Mask = mask,
            Gate = withGate ? Draw((long)b * s * 2 * hq * (gatePerChannel ? d : 1), 3) : null,
            GatePerChannel = gatePerChannel,
            Sinks = withSinks ? Draw((combine == CombineModes.Gate ? 2 : 1) * hq, 1.5) : null,
            Type = type,
            ThreeD = threeD,
            BlockSize = blockSize,
            Window = window,
            Combine = combine,
            WindowCache = windowCache,
        };
    }
}
