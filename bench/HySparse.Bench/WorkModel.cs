namespace HySparse.Bench;

/// <summary>Bytes a kernel must move and FLOPs it must do: the inputs of its floor.</summary>
/// <param name="Bytes">Compulsory memory traffic: every input byte the op needs read once, every output byte written once.</param>
/// <param name="Flops">Attention arithmetic: 4·D per (query head, attended key) pair.</param>
public sealed record Work(double Bytes, double Flops);

/// <summary>
/// The byte and FLOP counts behind every floor (docs/performance.md states the same formulas).
/// e is the element size (4 for float32, 2 for float16); one (query head, key) pair costs 2·D FLOPs for
/// q·k and 2·D for p·v; softmax, exponentials and the top-K selection are not counted. Writes are
/// charged at the read bandwidth. Under the concat cache convention present = past ++ new is an
/// output the op must write, so the copy is part of its compulsory traffic; with a shared in-place
/// buffer only the appended row is written.
/// </summary>
public static class WorkModel
{
    /// <summary>FLOPs of <paramref name="pairs"/> (query head, key) products at head size <paramref name="headDim"/>.</summary>
    public static double AttentionFlops(int headDim, double pairs) => 4.0 * headDim * pairs;

    /// <summary>
    /// Causal prefill of <paramref name="s"/> tokens with no past: read Q, K, V; write output and
    /// present K/V (and the int32 block indices when <paramref name="topK"/> &gt; 0).
    /// Pairs: H_q · S(S+1)/2.
    /// </summary>
    public static Work Prefill(AttentionShape shape, int e, long s, int topK)
    {
        double q = (double)s * shape.QueryHeads * shape.HeadDim * e;
        double kv = (double)s * shape.KvHeads * shape.HeadDim * e;
        double bytes = 2 * q + 2 * kv + 2 * kv + IndexBytes(shape, s, topK);
        return new Work(bytes, AttentionFlops(shape.HeadDim, shape.QueryHeads * (double)s * (s + 1) / 2));
    }

    /// <summary>
    /// One decode step at total length <paramref name="t"/> with separate past/present tensors
    /// (concat): read the T − 1 cached rows, write all T rows of present K/V. Pairs: H_q · T.
    /// </summary>
    public static Work DecodeConcat(AttentionShape shape, int e, long t, int topK)
    {
        double row = (double)shape.KvHeads * shape.HeadDim * e;  // one token of K (or V), all KV heads
        double bytes = TokenIo(shape, e) + 2 * row * (t - 1) + 2 * row * t + IndexBytes(shape, 1, topK);
        return new Work(bytes, AttentionFlops(shape.HeadDim, shape.QueryHeads * (double)t));
    }

    /// <summary>
    /// One decode step at total length <paramref name="t"/> with past and present aliased in one
    /// max-length buffer: read the T − 1 cached rows, write the new row only.
    /// </summary>
    public static Work DecodeShared(AttentionShape shape, int e, long t, int topK = 0)
    {
        double row = (double)shape.KvHeads * shape.HeadDim * e;
        return new Work(TokenIo(shape, e) + 2 * row * (t - 1) + 2 * row + IndexBytes(shape, 1, topK),
                        AttentionFlops(shape.HeadDim, shape.QueryHeads * (double)t));
    }

    /// <summary>
    /// Retrofit sparse decode with its own cache in a shared in-place buffer: read the attended rows
    /// (selected ∪ window) of K and V, write the new row.
    /// </summary>
    public static Work SparseInPlace(AttentionShape shape, int e, SparseSelection selection)
    {
        double headRow = (double)shape.HeadDim * e;
        double row = shape.KvHeads * headRow;
        double bytes = TokenIo(shape, e) + 2 * headRow * selection.Attended.Sum() + 2 * row + IndexBytes(shape, 1, selection.TopK);
        return new Work(bytes, SparseFlops(shape, selection));
    }

    /// <summary>
    /// Retrofit sparse decode (own full-length cache, concat): the cache copy dominates the bytes as in
    /// <see cref="DecodeConcat"/>; the arithmetic covers only the attended positions.
    /// </summary>
    public static Work SparseRetrofit(AttentionShape shape, int e, long t, SparseSelection selection)
    {
        double row = (double)shape.KvHeads * shape.HeadDim * e;
        double bytes = TokenIo(shape, e) + 2 * row * (t - 1) + 2 * row * t + IndexBytes(shape, 1, selection.TopK);
        return new Work(bytes, SparseFlops(shape, selection));
    }

    /// <summary>
    /// Shared-KV sparse decode with a window cache: read the selected rows that lie outside the window
    /// from the shared cache, read the past window, write the present window.
    /// </summary>
    public static Work SparseSharedKv(AttentionShape shape, int e, long t, int window, SparseSelection selection)
    {
        double headRow = (double)shape.HeadDim * e;  // one token of one KV head
        double selected = 2 * headRow * selection.SelectedOutsideWindow.Sum();
        double windowRows = 2 * headRow * shape.KvHeads * (Math.Min(window, t - 1) + Math.Min(window, t));
        return new Work(TokenIo(shape, e) + selected + windowRows + IndexBytes(shape, 1, selection.TopK), SparseFlops(shape, selection));
    }

    // Query in, output out, and the new token's K and V in.
    private static double TokenIo(AttentionShape shape, int e) =>
        2.0 * shape.QueryHeads * shape.HeadDim * e + 2.0 * shape.KvHeads * shape.HeadDim * e;

    private static double IndexBytes(AttentionShape shape, long tokens, int topK) => 4.0 * shape.KvHeads * tokens * topK;

    private static double SparseFlops(AttentionShape shape, SparseSelection selection) =>
        AttentionFlops(shape.HeadDim, (double)shape.QueryHeads / shape.KvHeads * selection.Attended.Sum());
}

/// <summary>
/// Block indices for one decode token (per KV head, K distinct blocks drawn uniformly from the
/// context, ascending, −1 padded) and the number of positions each KV head then attends.
/// </summary>
public sealed class SparseSelection
{
    /// <summary>int32 [H_kv, K] indices in the op's form.</summary>
    public int[] Indices { get; }

    /// <summary>K.</summary>
    public int TopK { get; }

    /// <summary>Per KV head: |selected ∪ window| positions the union softmax covers.</summary>
    public long[] Attended { get; }

    /// <summary>Per KV head: selected positions outside the window (read from the SA source).</summary>
    public long[] SelectedOutsideWindow { get; }

    /// <summary>Draws the selection for the last token of a context of <paramref name="totalLength"/>.</summary>
    public SparseSelection(int kvHeads, long totalLength, SparseParams p, Random rng)
    {
        TopK = p.TopK;
        long blocks = (totalLength + p.BlockSize - 1) / p.BlockSize;
        Indices = new int[kvHeads * p.TopK];
        Attended = new long[kvHeads];
        SelectedOutsideWindow = new long[kvHeads];
        long position = totalLength - 1;
        long windowStart = Math.Max(0, position - p.Window + 1);
        for (int g = 0; g < kvHeads; g++)
        {
            int[] chosen = Enumerable.Range(0, (int)blocks).ToArray();
            if (blocks > p.TopK)
            {
                rng.Shuffle(chosen);
                chosen = chosen[..p.TopK];
            }
            Array.Sort(chosen);
            for (int k = 0; k < p.TopK; k++) Indices[g * p.TopK + k] = k < chosen.Length ? chosen[k] : -1;

            long outside = 0;
            foreach (int block in chosen)
            {
                long first = (long)block * p.BlockSize, last = Math.Min(first + p.BlockSize - 1, position);
                // Rows of the block before the window start are the ones not already in the window.
                if (first < windowStart) outside += Math.Min(last, windowStart - 1) - first + 1;
            }
            SelectedOutsideWindow[g] = outside;
            Attended[g] = outside + (position - windowStart + 1);
        }
    }
}
