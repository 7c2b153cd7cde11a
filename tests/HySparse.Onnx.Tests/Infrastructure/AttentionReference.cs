namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>Sizes shared by both ops: batch, heads, head size, new tokens and total length.</summary>
public sealed record AttentionShape(int Batch, int NumHeads, int KvNumHeads, int HeadDim, int NewLength, int TotalLength)
{
    public int PastLength => TotalLength - NewLength;
    public int GroupSize => NumHeads / KvNumHeads;
    public int KvHeadOf(int queryHead) => queryHead / GroupSize;
}

/// <summary>
/// Independent float64 implementation of docs/ops.md, written for clarity (plain loops over every key,
/// explicit sets) rather than speed, and sharing nothing with the kernels. Query/output are BNSH
/// <c>[B, H_q, S, D]</c>; caches BNSH <c>[B, H_kv, length, D]</c>; masks <c>[B, T]</c>.
/// </summary>
public static class AttentionReference
{
    public sealed record FullResult(double[] Output, double[] BlockScores, int[] BlockIndices, double[] SelectedKey, double[] SelectedValue);

    /// <summary>Key position <paramref name="j"/> is valid for the new token at position <paramref name="t"/> of row <paramref name="b"/>.</summary>
    public static bool IsValidKey(long[]? mask, int totalLength, int b, int t, int j) =>
        j <= t && (mask is null || (mask[b * totalLength + t] == 1 && mask[b * totalLength + j] == 1));

    private static double Dot(double[] a, long aOffset, double[] b, long bOffset, int length)
    {
        double sum = 0;
        for (var d = 0; d < length; d++) sum += a[aOffset + d] * b[bOffset + d];
        return sum;
    }

    public static double ResolveScale(float scale, int headDim) => scale == 0 ? 1.0 / Math.Sqrt(headDim) : scale;

    /// <summary>HySparseFullAttn over <paramref name="keyCache"/>/<paramref name="valueCache"/> = past ++ new, <c>[B, H_kv, T, D]</c>.</summary>
    public static FullResult FullAttention(AttentionShape shape, double[] query, double[] keyCache, double[] valueCache,
                                           long[]? mask, double scale, int blockSize, int topK)
    {
        var (batch, hq, hkv, dim, newLen, total) = (shape.Batch, shape.NumHeads, shape.KvNumHeads, shape.HeadDim, shape.NewLength, shape.TotalLength);
        var numBlocks = (total + blockSize - 1) / blockSize;
        var output = new double[(long)batch * hq * newLen * dim];
        var groupScores = new double[(long)batch * hkv * newLen * numBlocks];
        var indices = new int[(long)batch * hkv * newLen * topK];

        for (var b = 0; b < batch; b++)
        for (var s = 0; s < newLen; s++)
        {
            var t = shape.PastLength + s;
            for (var h = 0; h < hq; h++)
            {
                var g = shape.KvHeadOf(h);
                var qOffset = (((long)b * hq + h) * newLen + s) * dim;
                var logits = new double[total];
                var valid = new bool[total];
                double max = double.NegativeInfinity;
                for (var j = 0; j < total; j++)
                {
                    valid[j] = IsValidKey(mask, total, b, t, j);
                    if (!valid[j]) continue;
                    logits[j] = scale * Dot(query, qOffset, keyCache, (((long)b * hkv + g) * total + j) * dim, dim);
                    max = Math.Max(max, logits[j]);
                }
                if (double.IsNegativeInfinity(max)) continue;  // padding token: output stays zero
                double sum = 0;
                for (var j = 0; j < total; j++) if (valid[j]) sum += Math.Exp(logits[j] - max);
                var lse = max + Math.Log(sum);
                var outOffset = qOffset;
                for (var j = 0; j < total; j++)
                {
                    if (!valid[j]) continue;
                    var p = Math.Exp(logits[j] - lse);
                    var vOffset = (((long)b * hkv + g) * total + j) * dim;
                    for (var d = 0; d < dim; d++) output[outOffset + d] += p * valueCache[vOffset + d];
                    var scoreIndex = (((long)b * hkv + g) * newLen + s) * numBlocks + j / blockSize;
                    groupScores[scoreIndex] = Math.Max(groupScores[scoreIndex], p);
                }
            }

            for (var g = 0; g < hkv; g++)
            {
                var row = (((long)b * hkv + g) * newLen + s);
                var scores = groupScores.AsSpan((int)(row * numBlocks), numBlocks).ToArray();
                var eligible = EligibleBlocks(shape, mask, blockSize, b, s);
                var chosen = TopKAscending(eligible, i => scores[i], topK);
                for (var k = 0; k < topK; k++) indices[row * topK + k] = k < chosen.Count ? chosen[k] : -1;
            }
        }
        return new FullResult(output, groupScores, indices,
                              Gather(shape, keyCache, indices, blockSize, topK), Gather(shape, valueCache, indices, blockSize, topK));
    }

    /// <summary>
    /// selected[b,g,s,k·bs+r,:] = cache[b,g,idx·bs+r,:] for idx = indices[b,g,s,k] ≥ 0 and idx·bs+r &lt; T; zero elsewhere.
    /// </summary>
    public static double[] Gather(AttentionShape shape, double[] cache, int[] indices, int blockSize, int topK)
    {
        var (dim, total) = (shape.HeadDim, shape.TotalLength);
        var rowsPerToken = topK * blockSize;
        var selected = new double[(long)shape.Batch * shape.KvNumHeads * shape.NewLength * rowsPerToken * dim];
        for (var b = 0; b < shape.Batch; b++)
        for (var g = 0; g < shape.KvNumHeads; g++)
        for (var s = 0; s < shape.NewLength; s++)
        {
            var row = ((long)b * shape.KvNumHeads + g) * shape.NewLength + s;
            for (var k = 0; k < topK; k++)
            {
                var block = indices[row * topK + k];
                if (block < 0) continue;
                for (var r = 0; r < blockSize && block * blockSize + r < total; r++)
                    Array.Copy(cache, (((long)b * shape.KvNumHeads + g) * total + block * blockSize + r) * dim,
                               selected, (row * rowsPerToken + k * blockSize + r) * dim, dim);
            }
        }
        return selected;
    }

    /// <summary>Blocks holding at least one valid key for new token <paramref name="s"/> of row <paramref name="b"/>.</summary>
    public static List<int> EligibleBlocks(AttentionShape shape, long[]? mask, int blockSize, int b, int s)
    {
        var t = shape.PastLength + s;
        var numBlocks = (shape.TotalLength + blockSize - 1) / blockSize;
        return Enumerable.Range(0, numBlocks)
            .Where(i => Enumerable.Range(i * blockSize, Math.Min(blockSize, shape.TotalLength - i * blockSize))
                                  .Any(j => IsValidKey(mask, shape.TotalLength, b, t, j)))
            .ToList();
    }

    /// <summary>
    /// The <c>min(K, |eligible|)</c> eligible blocks with the highest scores (lower index wins ties), in
    /// ascending block order.
    /// </summary>
    public static List<int> TopKAscending(IEnumerable<int> eligible, Func<int, double> score, int topK) =>
        eligible.OrderByDescending(score).ThenBy(i => i).Take(topK).OrderBy(i => i).ToList();

    /// <summary>Where the sparse op's SA branch reads (docs/ops.md "Where the SA branch reads").</summary>
    public abstract record SaSource;

    /// <summary>A full-length cache <c>[B, H_kv, T, D]</c>: the shared full-layer cache, or the own cache in retrofit.</summary>
    public sealed record FullLengthSource(double[] Key, double[] Value) : SaSource;

    /// <summary>Gathered blocks <c>[B, H_kv, S, K·bs, D]</c> from the full layer.</summary>
    public sealed record SelectedSource(double[] Key, double[] Value) : SaSource;

    public sealed record SparseInputs(
        AttentionShape Shape,
        double[] Query,
        double[] OwnKey,          // [B, H_kv, OwnLength, D]: positions [OwnStart, T)
        double[] OwnValue,
        int OwnStart,
        SaSource Source,
        int[] BlockIndices,       // [B, H_kv, S, K]
        int TopK,
        long[]? Mask,
        double[]? Gate,           // [B, S, 2·H_q] or [B, S, 2·H_q·D]
        bool GatePerChannel,
        double[]? Sinks,          // [2, H_q] or [1, H_q]
        double Scale,
        int BlockSize,
        int Window,
        bool UnionCombine);

    /// <summary>HySparseSparseAttn output, BNSH <c>[B, H_q, S, D]</c>.</summary>
    public static double[] SparseAttention(SparseInputs x)
    {
        var shape = x.Shape;
        var (batch, hq, hkv, dim, newLen, total) = (shape.Batch, shape.NumHeads, shape.KvNumHeads, shape.HeadDim, shape.NewLength, shape.TotalLength);
        var ownLength = total - x.OwnStart;
        var output = new double[(long)batch * hq * newLen * dim];

        for (var b = 0; b < batch; b++)
        for (var s = 0; s < newLen; s++)
        for (var h = 0; h < hq; h++)
        {
            var t = shape.PastLength + s;
            var g = shape.KvHeadOf(h);
            var row = ((long)b * hkv + g) * newLen + s;
            var selectedBlocks = Enumerable.Range(0, x.TopK).Select(k => x.BlockIndices[row * x.TopK + k]).Where(i => i >= 0).ToList();
            var qOffset = (((long)b * hq + h) * newLen + s) * dim;

            long OwnOffset(int j)
            {
                if (j < x.OwnStart) throw new InvalidOperationException($"position {j} is not in the own cache (starts at {x.OwnStart})");
                return (((long)b * hkv + g) * ownLength + (j - x.OwnStart)) * dim;
            }
            (double[] Key, double[] Value, long Offset) SaKeyValue(int j) => x.Source switch
            {
                FullLengthSource f => (f.Key, f.Value, (((long)b * hkv + g) * total + j) * dim),
                SelectedSource sel => (sel.Key, sel.Value,
                    (row * x.TopK * x.BlockSize + selectedBlocks.IndexOf(j / x.BlockSize) * x.BlockSize + j % x.BlockSize) * dim),
                _ => throw new InvalidOperationException(),
            };
            var window = Enumerable.Range(0, total).Where(j => IsValidKey(x.Mask, total, b, t, j) && j > t - x.Window).ToList();
            var selected = Enumerable.Range(0, total).Where(j => IsValidKey(x.Mask, total, b, t, j) && selectedBlocks.Contains(j / x.BlockSize)).ToList();

            // One softmax over the given keys, each read from (Key, Value, Offset); an optional sink in the denominator.
            double[] Softmax(List<(double[] Key, double[] Value, long Offset)> keys, double? sink)
            {
                var result = new double[dim];
                if (keys.Count == 0) return result;
                var logits = keys.Select(k => x.Scale * Dot(x.Query, qOffset, k.Key, k.Offset, dim)).ToArray();
                var max = Math.Max(logits.Max(), sink ?? double.NegativeInfinity);
                var denominator = logits.Sum(l => Math.Exp(l - max)) + (sink is { } z ? Math.Exp(z - max) : 0);
                for (var i = 0; i < keys.Count; i++)
                {
                    var p = Math.Exp(logits[i] - max) / denominator;
                    for (var d = 0; d < dim; d++) result[d] += p * keys[i].Value[keys[i].Offset + d];
                }
                return result;
            }
            var ownKeys = (List<int> positions) => positions.Select(j => (x.OwnKey, x.OwnValue, OwnOffset(j))).ToList();

            double[] o;
            if (x.UnionCombine)
            {
                var union = window.Union(selected).Distinct().OrderBy(j => j)
                    .Select(j => window.Contains(j) ? (x.OwnKey, x.OwnValue, OwnOffset(j)) : SaKeyValue(j)).ToList();
                o = Softmax(union, x.Sinks?[h]);
            }
            else
            {
                var oSa = Softmax(selected.Select(SaKeyValue).ToList(), x.Sinks?[h]);
                var oSwa = Softmax(ownKeys(window), x.Sinks?[hq + h]);
                o = new double[dim];
                for (var d = 0; d < dim; d++)
                {
                    double gSa = 0, gSwa = 0;
                    if (x.Gate is { } gate)
                    {
                        var gateRow = ((long)b * newLen + s) * (x.GatePerChannel ? 2L * hq * dim : 2L * hq);
                        gSa = x.GatePerChannel ? gate[gateRow + h * dim + d] : gate[gateRow + h];
                        gSwa = x.GatePerChannel ? gate[gateRow + (long)hq * dim + h * dim + d] : gate[gateRow + hq + h];
                    }
                    o[d] = Sigmoid(gSa) * oSa[d] + Sigmoid(gSwa) * oSwa[d];
                }
            }
            Array.Copy(o, 0, output, qOffset, dim);
        }
        return output;
    }

    private static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));
}
