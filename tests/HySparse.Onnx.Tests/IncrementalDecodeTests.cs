namespace HySparse.Onnx.Tests;

/// <summary>
/// Prefill followed by chunks and single-token decode steps, each step fed the previous step's present
/// caches, must give the same outputs, selections and final caches as one prefill over the whole sequence.
/// </summary>
[TestClass]
public sealed class IncrementalDecodeTests
{
    private const double AbsTol = 3e-5;

    /// <summary>Tokens per call: a prefill, a chunk, decode steps, another chunk, more decode steps (33 tokens).</summary>
    private static readonly int[] Steps = [17, 4, 1, 1, 1, 6, 1, 1, 1];

    private sealed record Sequence(int Batch, int NumHeads, int KvNumHeads, int HeadDim, int Total, double[] Query, double[] Key,
                                   double[] Value, double[] OwnKey, double[] OwnValue, double[] Gate, double[] Sinks, long[]? Mask)
    {
        public AttentionShape Shape(int newLen, int total) => new(Batch, NumHeads, KvNumHeads, HeadDim, newLen, total);
        public double[] Q(int start, int len) => Layouts.SliceSeq(Query, Total, start, len, Batch, NumHeads, HeadDim);
        public double[] Kv(double[] x, int start, int len) => Layouts.SliceSeq(x, Total, start, len, Batch, KvNumHeads, HeadDim);
        public long[]? MaskUpTo(int end) => Mask is null ? null : Layouts.SliceColumns(Mask, Batch, Total, 0, end);
        public double[] GateRows(int start, int len) => Layouts.SliceAxis2(Gate, Batch, Total, 2 * NumHeads, start, len);
    }

    private static Sequence RandomSequence(int batch, int hq, int hkv, int dim, int seed, long[]? mask)
    {
        var total = Steps.Sum();
        var random = new TensorRandom(seed);
        long Count(int heads) => (long)batch * heads * total * dim;
        return new Sequence(batch, hq, hkv, dim, total,
            random.Uniform(Count(hq), AttentionData.QueryAmplitude, ElementType.Float32),
            random.Uniform(Count(hkv), 1, ElementType.Float32), random.Uniform(Count(hkv), 1, ElementType.Float32),
            random.Uniform(Count(hkv), 1, ElementType.Float32), random.Uniform(Count(hkv), 1, ElementType.Float32),
            random.Uniform((long)batch * total * 2 * hq, 3, ElementType.Float32), random.Uniform(2 * hq, 1.5, ElementType.Float32), mask);
    }

    [TestMethod]
    [DataRow(1, 4, 2, 64, false, DisplayName = "B=1, GQA 4:2")]
    [DataRow(2, 2, 1, 128, true, DisplayName = "B=2 left-padded, D=128")]
    public void FullAttn_StepByStep_EqualsOnePrefill(int batch, int hq, int hkv, int dim, bool padded)
    {
        const int blockSize = 8, topK = 2;
        var seq = RandomSequence(batch, hq, hkv, dim, 600 + dim, padded ? Masks.Padded(Steps.Sum(), [0, 5], [0, 0]) : null);
        var options = new FullAttnOptions { BlockSize = blockSize, TopK = topK, WantSelected = false };
        var whole = RunFull(seq, 0, seq.Total, null, null, options);
        var nbTotal = (seq.Total + blockSize - 1) / blockSize;

        double[]? pastKey = null, pastValue = null;
        var position = 0;
        foreach (var step in Steps)
        {
            var at = $"step [{position}, {position + step})";
            var part = RunFull(seq, position, step, pastKey, pastValue, options);
            var outer = batch * hq;
            Check.Close(Layouts.SliceAxis2(whole.Output, outer, seq.Total, dim, position, step), part.Output, AbsTol, 0, $"{at}: output");

            var nb = (position + step + blockSize - 1) / blockSize;
            var rows = batch * hkv;
            var wholeScores = Layouts.SliceAxis2(whole.BlockScores!, rows, seq.Total, nbTotal, position, step);
            var wholeIndices = Layouts.SliceAxis2(whole.BlockIndices!.Select(i => (double)i).ToArray(), rows, seq.Total, topK, position, step);
            for (var r = 0; r < rows * step; r++)
            {
                for (var i = 0; i < nbTotal; i++)
                {
                    // Blocks past the step's end hold no valid key of its tokens: score 0 in the one-shot run.
                    var expected = wholeScores[r * nbTotal + i];
                    if (i >= nb) { Assert.AreEqual(0.0, expected, $"{at}: one-shot score of future block {i}"); continue; }
                    Assert.AreEqual(expected, part.BlockScores![r * nb + i], 1e-6, $"{at}: block_scores row {r} block {i}");
                }
                CollectionAssert.AreEqual(wholeIndices.Skip(r * topK).Take(topK).Select(v => (int)v).ToArray(),
                                          part.BlockIndices!.Skip(r * topK).Take(topK).ToArray(), $"{at}: block_indices row {r}");
            }
            (pastKey, pastValue) = (part.PresentKey, part.PresentValue);
            position += step;
        }
        CollectionAssert.AreEqual(whole.PresentKey, pastKey, "final present_key");
        CollectionAssert.AreEqual(whole.PresentValue, pastValue, "final present_value");
    }

    [TestMethod]
    [DataRow(CombineModes.Gate, 1, false, DisplayName = "gate, shared KV, window cache (native)")]
    [DataRow(CombineModes.Gate, 1, true, DisplayName = "gate, shared KV, window cache, B=2 left-padded")]
    [DataRow(CombineModes.Union, 1, false, DisplayName = "union, shared KV, window cache")]
    [DataRow(CombineModes.Union, 0, false, DisplayName = "union, retrofit (own full cache)")]
    public void FullThenSparse_StepByStep_EqualsOnePrefill(string combine, int windowCache, bool padded)
    {
        const int blockSize = 4, topK = 2, window = 6;
        var batch = padded ? 2 : 1;
        var seq = RandomSequence(batch, 4, 2, 64, 700 + windowCache, padded ? Masks.Padded(Steps.Sum(), [0, 3], [0, 0]) : null);
        var fullOptions = new FullAttnOptions { BlockSize = blockSize, TopK = topK, WantScores = false, WantSelected = false };
        var shared = windowCache == 1;

        var wholeFull = RunFull(seq, 0, seq.Total, null, null, fullOptions);
        var wholeCall = SparseStep(seq, 0, seq.Total, null, null, wholeFull, combine, windowCache, shared, blockSize, topK, window);
        var (wholeOutput, wholePresentKey, wholePresentValue) = wholeCall.Run();
        Check.Close(wholeCall.ReferenceOutput(), wholeOutput, AbsTol, 0, "one-shot sparse output vs float64 reference");

        double[]? fullPastKey = null, fullPastValue = null, ownPastKey = null, ownPastValue = null;
        var position = 0;
        foreach (var step in Steps)
        {
            var at = $"step [{position}, {position + step})";
            var full = RunFull(seq, position, step, fullPastKey, fullPastValue, fullOptions);
            var call = SparseStep(seq, position, step, ownPastKey, ownPastValue, full, combine, windowCache, shared, blockSize, topK, window);
            var (output, presentKey, presentValue) = call.Run();
            Check.Close(Layouts.SliceAxis2(wholeOutput, batch * 4, seq.Total, 64, position, step), output, AbsTol, 0, $"{at}: sparse output");

            var ownEnd = position + step;
            var kept = windowCache == 1 ? Math.Min(window, ownEnd) : ownEnd;
            CollectionAssert.AreEqual(seq.Kv(seq.OwnKey, ownEnd - kept, kept), presentKey, $"{at}: sparse present_key");
            (fullPastKey, fullPastValue, ownPastKey, ownPastValue) = (full.PresentKey, full.PresentValue, presentKey, presentValue);
            position += step;
        }
        CollectionAssert.AreEqual(wholePresentKey, ownPastKey, "final sparse present_key");
        CollectionAssert.AreEqual(wholePresentValue, ownPastValue, "final sparse present_value");
    }

    private static FullAttnResult RunFull(Sequence seq, int start, int len, double[]? pastKey, double[]? pastValue, FullAttnOptions options)
    {
        var data = new AttentionData(seq.Shape(len, start + len), seq.Q(start, len), seq.Kv(seq.Key, start, len), seq.Kv(seq.Value, start, len),
                                     pastKey, pastValue, seq.MaskUpTo(start + len));
        return FullAttnCall.Run(data, options);
    }

    private static SparseAttnCall SparseStep(Sequence seq, int start, int len, double[]? ownPastKey, double[]? ownPastValue, FullAttnResult full,
                                             string combine, int windowCache, bool shared, int blockSize, int topK, int window) => new()
    {
        Shape = seq.Shape(len, start + len),
        Query = seq.Q(start, len),
        Key = seq.Kv(seq.OwnKey, start, len),
        Value = seq.Kv(seq.OwnValue, start, len),
        PastKey = ownPastKey,
        PastValue = ownPastValue,
        PastLength = ownPastKey is null ? 0 : ownPastKey.Length / (seq.Batch * seq.KvNumHeads * seq.HeadDim),
        SharedKey = shared ? full.PresentKey : null,
        SharedValue = shared ? full.PresentValue : null,
        BlockIndices = full.BlockIndices!,
        TopK = topK,
        Mask = seq.MaskUpTo(start + len),
        Gate = combine == CombineModes.Gate ? seq.GateRows(start, len) : null,
        Sinks = combine == CombineModes.Gate ? seq.Sinks : seq.Sinks[..seq.NumHeads],
        BlockSize = blockSize,
        Window = window,
        Combine = combine,
        WindowCache = windowCache,
    };
}
