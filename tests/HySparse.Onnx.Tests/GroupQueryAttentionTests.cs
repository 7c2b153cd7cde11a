namespace HySparse.Onnx.Tests;

/// <summary>
/// HySparseFullAttn against ONNX Runtime's own <c>com.microsoft.GroupQueryAttention</c> (CPU) on the
/// same inputs: query [B,S,H_q·D], key/value [B,S,H_kv·D], BNSH past/present, seqlens_k = T − 1 and
/// total_sequence_length = T, no padding. GQA is also checked against the float64 reference, which
/// validates the reference itself independently of the HySparse kernels.
/// </summary>
[TestClass]
public sealed class GroupQueryAttentionTests
{
    public static IEnumerable<object[]> Shapes =>
    [
        // batch, S, P, H_q, H_kv, D
        [1, 19, 0, 2, 1, 64],
        [2, 1, 40, 4, 2, 64],
        [1, 1, 70, 8, 8, 128],
        [2, 16, 0, 8, 2, 128],
        [1, 6, 21, 4, 1, 64],
    ];

    [TestMethod]
    [DynamicData(nameof(Shapes))]
    public void Float32_GqaMatchesReference_AndHySparseMatchesGqa(int batch, int newLen, int pastLen, int hq, int hkv, int dim) =>
        Compare(batch, newLen, pastLen, hq, hkv, dim, ElementType.Float32, absTol: 3e-5);

    [TestMethod]
    [DynamicData(nameof(Shapes))]
    public void Float16_GqaMatchesReference_AndHySparseMatchesGqa(int batch, int newLen, int pastLen, int hq, int hkv, int dim) =>
        Compare(batch, newLen, pastLen, hq, hkv, dim, ElementType.Float16, absTol: 2e-3);

    private static void Compare(int batch, int newLen, int pastLen, int hq, int hkv, int dim, ElementType type, double absTol)
    {
        var shape = new AttentionShape(batch, hq, hkv, dim, newLen, pastLen + newLen);
        var data = AttentionData.Random(shape, seed: 1000 + 7 * newLen + pastLen + hq, type);
        var options = new FullAttnOptions { Type = type, WantIndices = false, WantScores = false, WantSelected = false };
        var reference = FullAttnCall.Reference(data, options);

        var gqa = RunGroupQueryAttention(data, type);
        Check.Close(reference.Output, gqa.Output, absTol, 0, "GroupQueryAttention output vs float64 reference");
        Check.Close(data.KeyCache(), gqa.PresentKey, 0, 0, "GroupQueryAttention present_key vs past ++ key");

        var ours = FullAttnCall.Run(data, options);
        Check.Close(gqa.Output, ours.Output, absTol, 0, "HySparseFullAttn output vs GroupQueryAttention");
        Check.Close(gqa.PresentKey, ours.PresentKey, 0, 0, "present_key vs GroupQueryAttention");
        Check.Close(gqa.PresentValue, ours.PresentValue, 0, 0, "present_value vs GroupQueryAttention");
    }

    internal static FullAttnResult RunGroupQueryAttention(AttentionData data, ElementType type)
    {
        var sh = data.Shape;
        var (b, hq, hkv, d, s, t) = (sh.Batch, sh.NumHeads, sh.KvNumHeads, sh.HeadDim, sh.NewLength, sh.TotalLength);
        string[] inputs = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"];
        var call = new OpInvocation("GroupQueryAttention", OnnxModelFactory.MicrosoftDomain, inputs, ["output", "present_key", "present_value"]);
        call.Inputs["query"] = FullAttnCall.Qkv(data.Query, b, hq, s, d, threeD: true, type);
        call.Inputs["key"] = FullAttnCall.Qkv(data.Key, b, hkv, s, d, threeD: true, type);
        call.Inputs["value"] = FullAttnCall.Qkv(data.Value, b, hkv, s, d, threeD: true, type);
        if (data.PastKey is not null)
        {
            call.Inputs["past_key"] = new TestTensor(type, [b, hkv, sh.PastLength, d], data.PastKey);
            call.Inputs["past_value"] = new TestTensor(type, [b, hkv, sh.PastLength, d], data.PastValue!);
        }
        call.Inputs["seqlens_k"] = TestTensor.Int32s([b], Enumerable.Repeat(t - 1, b));
        call.Inputs["total_sequence_length"] = TestTensor.Int32s([], [t]);
        call.Outputs["output"] = new OutputRequest("output", type, [b, s, hq * d]);
        call.Outputs["present_key"] = new OutputRequest("present_key", type, [b, hkv, t, d]);
        call.Outputs["present_value"] = new OutputRequest("present_value", type, [b, hkv, t, d]);
        call.Attributes["num_heads"] = hq;
        call.Attributes["kv_num_heads"] = hkv;
        var results = call.Run();
        return new FullAttnResult(Layouts.BsnhToBnsh(results["output"].Data, b, hq, s, d),
                                  results["present_key"].Data, results["present_value"].Data, null, null, null, null);
    }
}
