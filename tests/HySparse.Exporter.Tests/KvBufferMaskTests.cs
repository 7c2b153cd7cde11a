using HySparse.Exporter.Rewrite;

namespace HySparse.Exporter.Tests;

/// <summary>
/// Issue 14, defect 2: a <c>--kv-buffer</c> model derives each row's length from <c>attention_mask</c>;
/// a mask it cannot honour (values other than 0/1, left padding) used to run and give wrong logits.
/// Now the run fails with an error that states the rule.
/// </summary>
[TestClass]
public sealed class KvBufferMaskTests
{
    private static readonly LlamaConfig Config = new() { Layers = 2, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 40, Vocab = 43, Seed = 23 };
    private const int Prompt = 6;

    private static InferenceSession Open()
    {
        var hybrid = HybridConverter.Convert(LlamaModelBuilder.Build(Config),
            new ConversionOptions { Layout = LayoutSpec.Ratio("1:1"), Parameters = new HybridParameters { TopK = 2, BlockSize = 4, Window = 3 }, KvBuffer = true }).Model;
        return TestSessions.Open(hybrid.ToByteArray(), registerOps: true);
    }

    private static long[] Run(long[] mask)
    {
        using var session = Open();
        using var decoder = new KvCacheDecoder(session, batchSize: 2, bufferCapacity: 16);
        var ids = Enumerable.Range(0, 2 * Prompt).Select(i => (long)(i % Config.Vocab)).ToArray();
        decoder.Step(ids, mask);
        return mask;
    }

    // A prompt of all real tokens, then one decode step whose new tokens carry this mask.
    private static void Decode(long[] newTokenMask)
    {
        using var session = Open();
        using var decoder = new KvCacheDecoder(session, batchSize: 2, bufferCapacity: 16);
        decoder.Step(Enumerable.Range(0, 2 * Prompt).Select(i => (long)(i % Config.Vocab)).ToArray());
        decoder.Step([7, 9], newTokenMask);
    }

    private static long[] Mask(params long[] second) => [.. Enumerable.Repeat(1L, Prompt), .. second];

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void RightPaddingRuns() => Run(Mask(1, 1, 1, 1, 0, 0));

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    [DataRow(new long[] { 1, 1, 2, 1, 1, 1 }, DisplayName = "a 2")]
    [DataRow(new long[] { 1, 1, 1, -1, 1, 1 }, DisplayName = "a -1")]
    [DataRow(new long[] { 0, 0, 1, 1, 1, 1 }, DisplayName = "left padding")]
    [DataRow(new long[] { 1, 1, 0, 1, 1, 1 }, DisplayName = "a hole")]
    public void AMaskTheBuffersCannotHonourIsRefusedAtRunTime(long[] second)
    {
        var error = Assert.ThrowsExactly<OnnxRuntimeException>(() => Run(Mask(second)));
        StringAssert.Contains(error.Message, KvBufferRewrite.MaskCheckNode);
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void DecodeStepsOfRealTokensRun() => Decode([1, 1]);

    /// <summary>
    /// A decode token marked 0 after a past: the buffers would put the row's next token over its last
    /// real one (the row's length is the mask's sum, and new tokens are written at its end), so the
    /// run is refused.
    /// </summary>
    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void ADecodeTokenMarkedPaddingIsRefused()
    {
        var error = Assert.ThrowsExactly<OnnxRuntimeException>(() => Decode([1, 0]));
        StringAssert.Contains(error.Message, KvBufferRewrite.MaskCheckNode);
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void AOneTokenPromptRuns()
    {
        using var session = Open();
        using var decoder = new KvCacheDecoder(session, batchSize: 2, bufferCapacity: 16);
        decoder.Step([3, 4], [1, 1]);
    }
}
