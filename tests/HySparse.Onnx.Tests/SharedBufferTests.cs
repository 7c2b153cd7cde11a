namespace HySparse.Onnx.Tests;

/// <summary>
/// Both ops in GroupQueryAttention's shared KV buffer mode (docs/ops.md "Shared KV buffer"): a batch of
/// three rows starts with a right-padded prompt of different lengths, then decodes (and takes one
/// chunk) with every row at its own length, each step fed the previous step's buffer. The buffer starts
/// as random values, so reading past a row's valid length shows.
/// </summary>
[TestClass]
public sealed class SharedBufferTests
{
    private const int Capacity = 48;
    private static readonly int[] PromptLengths = [9, 4, 13];
    /// <summary>Tokens per step after the prompt: decode steps, a chunk of three, more decode steps.</summary>
    private static readonly int[] LaterSteps = [1, 1, 3, 1, 1];

    /// <summary>GroupQueryAttention's CPU kernel takes S > 1 after the prompt only for batch 1, so it is compared on decode steps.</summary>
    private static readonly int[] DecodeSteps = [1, 1, 1, 1, 1];

    private static IEnumerable<SharedBufferStep> Steps(SharedBufferScenario scenario, int[]? laterSteps = null)
    {
        yield return scenario.Next(0, PromptLengths);
        foreach (var tokens in laterSteps ?? LaterSteps) yield return scenario.Next(tokens);
    }

    private static string At(SharedBufferStep step) =>
        $"step S={step.NewLength}, totals [{string.Join(", ", Enumerable.Range(0, step.Real.Length).Select(step.Total))}]";

    private static void AssertAll(IEnumerable<double> values, double expected, string what)
    {
        var wrong = values.Where(v => v != expected).Take(1).ToList();
        Assert.IsEmpty(wrong, $"{what}: found {wrong.FirstOrDefault()}, expected only {expected}");
    }

    [TestMethod]
    [DataRow(ElementType.Float32, false, 3e-5, DisplayName = "float32, present separate from past")]
    [DataRow(ElementType.Float32, true, 3e-5, DisplayName = "float32, present bound to past")]
    [DataRow(ElementType.Float16, false, 2e-3, DisplayName = "float16, present separate from past")]
    [DataRow(ElementType.Float16, true, 2e-3, DisplayName = "float16, present bound to past")]
    public void FullAttn_EqualsGroupQueryAttention(ElementType type, bool aliased, double absTol)
    {
        var sc = new SharedBufferScenario(3, 4, 2, 64, Capacity, seed: 1100 + (int)type, type);
        var options = new FullAttnOptions { Type = type, WantIndices = false, WantScores = false, WantSelected = false };
        var (oursKey, oursValue) = (sc.GarbageBuffer(), sc.GarbageBuffer());
        var (gqaKey, gqaValue) = (oursKey, oursValue);
        foreach (var step in Steps(sc, DecodeSteps))
        {
            var at = At(step);
            var gqa = SharedBufferCalls.Run(SharedBufferCalls.Full(step, gqaKey, gqaValue, options, groupQueryAttention: true), step, aliased: false);
            var ours = SharedBufferCalls.Run(SharedBufferCalls.Full(step, oursKey, oursValue, options), step, aliased);
            for (var b = 0; b < sc.Batch; b++)
            {
                var reference = FullAttnCall.Reference(step.RowData(b), options);
                var gqaRow = step.RowTokens(gqa.Output, sc.NumHeads, sc.HeadDim, b);
                Check.Close(reference.Output, gqaRow, absTol, 0, $"{at}: GroupQueryAttention row {b} vs float64 reference");
                Check.Close(gqaRow, step.RowTokens(ours.Output, sc.NumHeads, sc.HeadDim, b), absTol, 0, $"{at}: row {b} output vs GroupQueryAttention");
                var total = step.Total(b);
                foreach (var (stream, ourBuffer, gqaBuffer, name) in new[]
                         { (sc.Key, ours.PresentKey, gqa.PresentKey, "present_key"), (sc.Value, ours.PresentValue, gqa.PresentValue, "present_value") })
                {
                    var expected = sc.RowPrefix(stream, sc.KvNumHeads, b, total);
                    Check.Close(expected, sc.RowPrefix(gqaBuffer, sc.KvNumHeads, b, total), 0, 0, $"{at}: GroupQueryAttention {name} row {b}");
                    Check.Close(expected, sc.RowPrefix(ourBuffer, sc.KvNumHeads, b, total), 0, 0, $"{at}: {name} row {b}");
                }
            }
            AssertAll(step.PaddingValues(ours.Output, sc.NumHeads, sc.HeadDim), 0, $"{at}: output of padding tokens");
            (oursKey, oursValue, gqaKey, gqaValue) = (ours.PresentKey, ours.PresentValue, gqa.PresentKey, gqa.PresentValue);
        }
    }

    [TestMethod]
    [DataRow(false, true, DisplayName = "present separate from past")]
    [DataRow(true, true, DisplayName = "present bound to past")]
    [DataRow(false, false, DisplayName = "4-D query/key/value")]
    public void FullAttn_SelectionEqualsConcatModeOnEachRow(bool aliased, bool threeD)
    {
        var sc = new SharedBufferScenario(3, 4, 2, 64, Capacity, seed: 1200, ElementType.Float32);
        var options = new FullAttnOptions { BlockSize = 8, TopK = 2, ThreeD = threeD };
        var (hkv, d, topK) = (sc.KvNumHeads, sc.HeadDim, options.TopK);
        var selectedWidth = topK * options.BlockSize * d;
        var nbCapacity = (Capacity + options.BlockSize - 1) / options.BlockSize;
        var (key, value) = (sc.GarbageBuffer(), sc.GarbageBuffer());
        foreach (var step in Steps(sc))
        {
            var at = At(step);
            var ours = SharedBufferCalls.Run(SharedBufferCalls.Full(step, key, value, options), step, aliased, threeD);
            var ourIndices = ours.BlockIndices!.Select(i => (double)i).ToArray();
            for (var b = 0; b < sc.Batch; b++)
            {
                var concat = FullAttnCall.Run(step.RowData(b), options);
                var real = step.Real[b];
                var nb = (step.Total(b) + options.BlockSize - 1) / options.BlockSize;
                Check.Close(concat.Output, step.RowTokens(ours.Output, sc.NumHeads, d, b), 0, 0, $"{at}: row {b} output vs concat mode");
                Check.Equal(concat.BlockIndices!, step.RowTokens(ourIndices, hkv, topK, b).Select(i => (int)i).ToArray(),
                            $"{at}: row {b} block_indices vs concat mode");
                // The buffer's block count is the capacity's: the row's blocks first, then zeros.
                var expectedScores = new double[hkv * real * nbCapacity];
                for (var r = 0; r < hkv * real; r++) Array.Copy(concat.BlockScores!, r * nb, expectedScores, r * nbCapacity, nb);
                Check.Close(expectedScores, step.RowTokens(ours.BlockScores!, hkv, nbCapacity, b), 0, 0, $"{at}: row {b} block_scores vs concat mode");
                Check.Close(concat.SelectedKey!, step.RowTokens(ours.SelectedKey!, hkv, selectedWidth, b), 0, 0, $"{at}: row {b} selected_key");
                Check.Close(concat.SelectedValue!, step.RowTokens(ours.SelectedValue!, hkv, selectedWidth, b), 0, 0, $"{at}: row {b} selected_value");
            }
            AssertAll(step.PaddingValues(ourIndices, hkv, topK), -1, $"{at}: block_indices of padding tokens");
            AssertAll(step.PaddingValues(ours.BlockScores!, hkv, nbCapacity), 0, $"{at}: block_scores of padding tokens");
            AssertAll(step.PaddingValues(ours.SelectedKey!, hkv, selectedWidth), 0, $"{at}: selected_key of padding tokens");
            AssertAll(step.PaddingValues(ours.Output, sc.NumHeads, d), 0, $"{at}: output of padding tokens");
            (key, value) = (ours.PresentKey, ours.PresentValue);
        }
    }

    [TestMethod]
    [DataRow(CombineModes.Union, SaSourceKind.OwnCache, false, DisplayName = "union, retrofit (own buffer)")]
    [DataRow(CombineModes.Union, SaSourceKind.OwnCache, true, DisplayName = "union, retrofit, present bound to past")]
    [DataRow(CombineModes.Union, SaSourceKind.Shared, false, DisplayName = "union, shared_key")]
    [DataRow(CombineModes.Gate, SaSourceKind.Shared, true, DisplayName = "gate, shared_key, present bound to past")]
    [DataRow(CombineModes.Gate, SaSourceKind.Selected, false, DisplayName = "gate, selected_key")]
    public void SparseAttn_EqualsOrdinaryModeOnEachRow(string combine, SaSourceKind source, bool aliased)
    {
        const int blockSize = 8, topK = 2, window = 6;
        var sc = new SharedBufferScenario(3, 4, 2, 64, Capacity, seed: 1300 + (int)source, ElementType.Float32);
        var (hq, hkv, d) = (sc.NumHeads, sc.KvNumHeads, sc.HeadDim);
        var gated = combine == CombineModes.Gate;
        var selectedWidth = topK * blockSize * d;
        var fullOptions = new FullAttnOptions { BlockSize = blockSize, TopK = topK, WantScores = false, WantSelected = source == SaSourceKind.Selected };
        var (fullKey, fullValue, ownKey, ownValue) = (sc.GarbageBuffer(), sc.GarbageBuffer(), sc.GarbageBuffer(), sc.GarbageBuffer());
        foreach (var step in Steps(sc))
        {
            var at = At(step);
            var full = SharedBufferCalls.Run(SharedBufferCalls.Full(step, fullKey, fullValue, fullOptions), step, aliased: false);
            var call = new SparseAttnCall
            {
                Shape = new AttentionShape(sc.Batch, hq, hkv, d, step.NewLength, Capacity),
                Query = step.Query, Key = step.OwnKey, Value = step.OwnValue,
                PastKey = ownKey, PastValue = ownValue, PastLength = Capacity,
                SharedKey = source == SaSourceKind.Shared ? full.PresentKey : null,
                SharedValue = source == SaSourceKind.Shared ? full.PresentValue : null,
                SelectedKey = full.SelectedKey, SelectedValue = full.SelectedValue,
                BlockIndices = full.BlockIndices!, TopK = topK,
                Gate = gated ? step.Gate : null, Sinks = gated ? sc.Sinks : sc.Sinks[..hq],
                BlockSize = blockSize, Window = window, Combine = combine,
                SeqlensK = step.SeqlensK, TotalSequenceLength = step.TotalSequenceLength,
            };
            var results = aliased ? AliasedRunner.Run(call.Build()) : call.Build().Run();
            var output = Layouts.BsnhToBnsh(results["output"].Data, sc.Batch, hq, step.NewLength, d);
            var fullIndices = full.BlockIndices!.Select(i => (double)i).ToArray();
            for (var b = 0; b < sc.Batch; b++)
            {
                var (past, total) = (step.Past[b], step.Total(b));
                var rowCall = new SparseAttnCall
                {
                    Shape = new AttentionShape(1, hq, hkv, d, step.Real[b], total),
                    Query = step.RowTokens(step.Query, hq, d, b),
                    Key = step.RowTokens(step.OwnKey, hkv, d, b), Value = step.RowTokens(step.OwnValue, hkv, d, b),
                    PastKey = past > 0 ? sc.RowPrefix(sc.OwnKey, hkv, b, past) : null,
                    PastValue = past > 0 ? sc.RowPrefix(sc.OwnValue, hkv, b, past) : null,
                    PastLength = past,
                    SharedKey = source == SaSourceKind.Shared ? sc.RowPrefix(sc.Key, hkv, b, total) : null,
                    SharedValue = source == SaSourceKind.Shared ? sc.RowPrefix(sc.Value, hkv, b, total) : null,
                    SelectedKey = full.SelectedKey is null ? null : step.RowTokens(full.SelectedKey, hkv, selectedWidth, b),
                    SelectedValue = full.SelectedValue is null ? null : step.RowTokens(full.SelectedValue, hkv, selectedWidth, b),
                    BlockIndices = step.RowTokens(fullIndices, hkv, topK, b).Select(i => (int)i).ToArray(), TopK = topK,
                    Gate = gated ? step.RowTokens(step.Gate, 1, 2 * hq, b) : null, Sinks = call.Sinks,
                    BlockSize = blockSize, Window = window, Combine = combine,
                };
                var (rowOutput, _, _) = rowCall.Run();
                var ourRow = step.RowTokens(output, hq, d, b);
                Check.Close(rowOutput, ourRow, 0, 0, $"{at}: row {b} output vs ordinary mode on the row's prefix");
                Check.Close(rowCall.ReferenceOutput(), ourRow, 3e-5, 0, $"{at}: row {b} output vs float64 reference");
                Check.Close(sc.RowPrefix(sc.OwnKey, hkv, b, total), sc.RowPrefix(results["present_key"].Data, hkv, b, total), 0, 0, $"{at}: present_key row {b}");
                Check.Close(sc.RowPrefix(sc.OwnValue, hkv, b, total), sc.RowPrefix(results["present_value"].Data, hkv, b, total), 0, 0, $"{at}: present_value row {b}");
            }
            AssertAll(step.PaddingValues(output, hq, d), 0, $"{at}: output of padding tokens");
            (fullKey, fullValue) = (full.PresentKey, full.PresentValue);
            (ownKey, ownValue) = (results["present_key"].Data, results["present_value"].Data);
        }
    }
}
