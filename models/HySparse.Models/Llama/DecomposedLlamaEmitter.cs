using HySparse.Models.Graph;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Models.Llama;

/// <summary>
/// Attention as <c>torch.onnx.export</c> writes a Hugging Face Llama layer (opset 17): per-layer head
/// Reshape/Transpose, RoPE from shared cos/sin tables, <c>Concat(past, new)</c> on the sequence axis,
/// GQA expansion by Unsqueeze/Expand/Reshape after the concat (absent when H_q = H_kv), and
/// MatMul(Q, Kᵀ) → Div(√D) → Add(mask) → Softmax → MatMul(V). The additive mask is built once
/// from <c>attention_mask</c>: 0 where a key is causal and real, the float32 minimum elsewhere.
/// </summary>
internal sealed class DecomposedLlamaEmitter(LlamaWeights weights, DecomposedExportOptions options) : LlamaEmitter(weights)
{
    private string _cos = "", _sin = "", _mask = "";

    protected override IReadOnlyDictionary<string, long> Opsets { get; } = new Dictionary<string, long> { [""] = 17 };

    protected override void EmitAttentionPrelude()
    {
        var c = Config;
        var newTokens = G.Op("Shape", [LlamaNames.InputIds], Attr.Int("start", 1), Attr.Int("end", 2));
        var total = G.Op("Shape", [LlamaNames.AttentionMask], Attr.Int("start", 1), Attr.Int("end", 2));
        var past = G.Op("Sub", total, newTokens);

        var positions = EmitPositionIds(newTokens);

        (_cos, _sin) = EmitRotaryTables(positions, headAxis: 1);

        // Key j is visible to new token s when j ≤ P + s and attention_mask[b, j] = 1.
        var queryPositions = G.Op("Range", G.Op("Squeeze", past, G.ConstInt64s(0)), G.Op("Squeeze", total, G.ConstInt64s(0)), G.ConstInt64(1));
        var keyPositions = G.Op("Range", G.ConstInt64(0), G.Op("Squeeze", total, G.ConstInt64s(0)), G.ConstInt64(1));
        var causal = G.Op("LessOrEqual", keyPositions, G.Op("Unsqueeze", queryPositions, G.ConstInt64s(1)));
        var real = G.Op("Cast", [G.Op("Unsqueeze", LlamaNames.AttentionMask, G.ConstInt64s(1, 2))], Attr.Int("to", (long)DataType.Bool));
        _mask = G.Op("Where", G.Op("And", causal, real), G.ConstFloat(0f), G.ConstFloat(float.MinValue));
    }

    protected override string EmitAttention(int layer, string normed)
    {
        var c = Config;
        var w = Weights.Layers[layer];
        var prefix = $"model.layers.{layer}.self_attn";
        int qWidth = c.Heads * c.HeadDim, kvWidth = c.KvHeads * c.HeadDim;
        string[] projections;
        if (options.FusedQkv)
        {
            var qkv = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.qkv_proj.weight", [c.Hidden, qWidth + 2 * kvWidth], w.ConcatenatedQkv(c)));
            projections = G.Node("Split", [qkv, G.ConstInt64s(qWidth, kvWidth, kvWidth)], 3, "", Attr.Int("axis", -1));
        }
        else
        {
            projections =
            [
                G.Op("MatMul", normed, G.AddInitializer($"{prefix}.q_proj.weight", [c.Hidden, qWidth], w.Query)),
                G.Op("MatMul", normed, G.AddInitializer($"{prefix}.k_proj.weight", [c.Hidden, kvWidth], w.Key)),
                G.Op("MatMul", normed, G.AddInitializer($"{prefix}.v_proj.weight", [c.Hidden, kvWidth], w.Value)),
            ];
        }
        string Heads(string flat, int heads) =>
            G.Op("Transpose", [G.Op("Reshape", flat, G.ConstInt64s(0, 0, heads, c.HeadDim))], Attr.Ints("perm", 0, 2, 1, 3));
        var query = Rotate(Heads(projections[0], c.Heads));
        var key = Rotate(Heads(projections[1], c.KvHeads));
        var value = Heads(projections[2], c.KvHeads);

        var presentKey = G.OpNamed(LlamaNames.PresentKey(layer), "Concat", [LlamaNames.PastKey(layer), key], Attr.Int("axis", 2));
        var presentValue = G.OpNamed(LlamaNames.PresentValue(layer), "Concat", [LlamaNames.PastValue(layer), value], Attr.Int("axis", 2));
        var keys = RepeatKv(presentKey);
        var values = RepeatKv(presentValue);

        var transposedKeys = G.Op("Transpose", [keys], Attr.Ints("perm", 0, 1, 3, 2));
        string scaled;
        switch (options.Scale)
        {
            case ScalePlacement.DivideScores:
                scaled = G.Op("Div", G.Op("MatMul", query, transposedKeys), G.ConstFloat(MathF.Sqrt(c.HeadDim)));
                break;
            case ScalePlacement.MultiplyScores:
                scaled = G.Op("Mul", G.Op("MatMul", query, transposedKeys), G.ConstFloat(1f / MathF.Sqrt(c.HeadDim)));
                break;
            default:
                var quarter = G.ConstFloat(MathF.Pow(c.HeadDim, -0.25f));
                scaled = G.Op("MatMul", G.Op("Mul", query, quarter), G.Op("Mul", transposedKeys, quarter));
                break;
        }
        var probabilities = G.Op("Softmax", [G.Op("Add", scaled, _mask)], Attr.Int("axis", -1));
        var context = G.Op("MatMul", probabilities, values);
        var merged = G.Op("Transpose", [context], Attr.Ints("perm", 0, 2, 1, 3));
        return G.Op("Reshape", merged, G.ConstInt64s(0, 0, c.Heads * c.HeadDim));
    }

    /// <summary>RoPE on [B,H,S,D].</summary>
    private string Rotate(string x) => RotateHalves(x, _cos, _sin);

    /// <summary>
    /// Hugging Face's repeat_kv: [B,H_kv,T,D] → [B,H_kv,n,T,D] → [B,H_q,T,D]; the identity (no nodes)
    /// when every query head has its own KV head.
    /// </summary>
    private string RepeatKv(string cache)
    {
        var c = Config;
        if (c.GroupSize == 1) return cache;
        var expanded = G.Op("Expand", G.Op("Unsqueeze", cache, G.ConstInt64s(2)), G.ConstInt64s(1, 1, c.GroupSize, 1, 1));
        return G.Op("Reshape", expanded, G.ConstInt64s(0, c.Heads, -1, c.HeadDim));
    }
}
