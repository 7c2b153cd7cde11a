namespace HySparse.Onnx.Tests;

/// <summary>
/// float16 storage with float32 arithmetic. Stated tolerances: on the same (half-representable) inputs
/// a float16 output differs from the float64 reference by at most 1e-3 (one rounding of a value below 1
/// to half costs ≤ 4.9e-4) and block scores by 1e-5 (they are float32 from identical inputs); on
/// float32 inputs rounded to half, float16 outputs stay within 4e-3 of the float32 op's outputs.
/// </summary>
[TestClass]
public sealed class Float16Tests
{
    private const double HalfVsReference = 1e-3, HalfVsFloat = 4e-3;

    [TestMethod]
    [DataRow(1, 23, 0, 4, 2, 64, true, DisplayName = "prefill 3-D")]
    [DataRow(2, 1, 47, 8, 1, 128, false, DisplayName = "decode 4-D D=128")]
    [DataRow(1, 6, 30, 2, 2, 64, true, DisplayName = "chunk")]
    public void FullAttn_Float16_MatchesReference_AndFloat32(int batch, int newLen, int pastLen, int hq, int hkv, int dim, bool threeD)
    {
        var shape = new AttentionShape(batch, hq, hkv, dim, newLen, pastLen + newLen);
        var data32 = AttentionData.Random(shape, seed: 500 + newLen);
        var options = new FullAttnOptions { BlockSize = 8, TopK = 3, ThreeD = threeD };

        var half = FullAttnTests.CompareWithReference(data32.As(ElementType.Float16), options with { Type = ElementType.Float16 },
                                                      outputAbsTol: HalfVsReference, outputRelTol: 0);
        var single = FullAttnCall.Run(data32, options);
        var diff = Check.MaxAbsDiff(single.Output, half.Output);
        Assert.IsTrue(diff <= HalfVsFloat, $"float16 output differs from float32 by {diff:E3} > {HalfVsFloat:E1}");
        Check.Close(single.BlockScores!, half.BlockScores!, 2e-3, 0, "float16 block_scores vs float32");
    }

    [TestMethod]
    [DataRow(CombineModes.Gate, SaSourceKind.Shared, 1, DisplayName = "gate, shared, window cache")]
    [DataRow(CombineModes.Union, SaSourceKind.OwnCache, 0, DisplayName = "union, retrofit")]
    [DataRow(CombineModes.Gate, SaSourceKind.Selected, 1, DisplayName = "gate, selected KV")]
    public void SparseAttn_Float16_MatchesReference_AndFloat32(string combine, SaSourceKind source, int windowCache)
    {
        var shape = new AttentionShape(2, 4, 2, 64, 7, 37);
        var call32 = SparseScenarios.Random(shape, 510, source, combine, windowCache, blockSize: 8, topK: 2, window: 9,
                                            withGate: combine == CombineModes.Gate, gatePerChannel: true, withSinks: true);
        var call16 = Rounded(call32);
        var half = SparseAttnTests.CompareWithReference(call16, "float16", HalfVsReference, 0);
        var (single, _, _) = call32.Run();
        var diff = Check.MaxAbsDiff(single, half);
        Assert.IsTrue(diff <= HalfVsFloat, $"float16 output differs from float32 by {diff:E3} > {HalfVsFloat:E1}");
    }

    private static SparseAttnCall Rounded(SparseAttnCall c)
    {
        double[]? R(double[]? x) => x?.Select(v => TestTensor.RoundTo(ElementType.Float16, v)).ToArray();
        return c with
        {
            Type = ElementType.Float16, Query = R(c.Query)!, Key = R(c.Key)!, Value = R(c.Value)!, PastKey = R(c.PastKey),
            PastValue = R(c.PastValue), SharedKey = R(c.SharedKey), SharedValue = R(c.SharedValue), Gate = R(c.Gate),
            Sinks = R(c.Sinks), SelectedKey = R(c.SelectedKey), SelectedValue = R(c.SelectedValue),
        };
    }
}
