using HySparse.Models.Graph;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Models.Llama;

/// <summary>
/// Attention as the onnxruntime-genai model builder writes it for CPU: one
/// <c>com.microsoft.GroupQueryAttention</c> per layer on 3-D Q/K/V [B,S,H·D], with RoPE inside the op
/// (<c>do_rotary=1</c>, cos/sin caches as initializers), separate past/present caches, and
/// <c>seqlens_k = ReduceSum(attention_mask) − 1</c> and <c>total_sequence_length</c> computed once from
/// the mask. GroupQueryAttention assumes right padding and takes positions from <c>seqlens_k</c>, so
/// this model matches the decomposed one on batches without left padding.
/// </summary>
internal sealed class GroupQueryAttentionLlamaEmitter(LlamaWeights weights, int rotaryPositions) : LlamaEmitter(weights)
{
    private string _seqlensK = "", _totalLength = "", _cos = "", _sin = "";

    protected override IReadOnlyDictionary<string, long> Opsets { get; } = new Dictionary<string, long> { [""] = 17, ["com.microsoft"] = 1 };

    protected override void EmitAttentionPrelude()
    {
        using (G.Scope("attn_mask_reformat/attn_mask_subgraph"))
        {
            var lengths = G.Op("ReduceSum", [LlamaNames.AttentionMask, G.ConstInt64s(1)], Attr.Int("keepdims", 0));
            _seqlensK = G.Op("Cast", [G.Op("Sub", lengths, G.ConstInt64(1))], Attr.Int("to", (long)DataType.Int32));
            var total = G.Op("Gather", [G.Op("Shape", LlamaNames.AttentionMask), G.ConstInt64(1)], Attr.Int("axis", 0));
            _totalLength = G.Op("Cast", [total], Attr.Int("to", (long)DataType.Int32));
        }
        var c = Config;
        var half = c.HeadDim / 2;
        var cos = new float[rotaryPositions * half];
        var sin = new float[rotaryPositions * half];
        for (var p = 0; p < rotaryPositions; p++)
            for (var i = 0; i < half; i++)
            {
                var angle = p * Math.Pow(c.RopeTheta, -2.0 * i / c.HeadDim);
                cos[p * half + i] = (float)Math.Cos(angle);
                sin[p * half + i] = (float)Math.Sin(angle);
            }
        _cos = G.AddInitializer("cos_cache", [rotaryPositions, half], cos);
        _sin = G.AddInitializer("sin_cache", [rotaryPositions, half], sin);
    }

    protected override string EmitAttention(int layer, string normed)
    {
        var c = Config;
        var w = Weights.Layers[layer];
        var prefix = $"model.layers.{layer}.attn";
        var query = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.q_proj.weight", [c.Hidden, c.Heads * c.HeadDim], w.Query));
        var key = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.k_proj.weight", [c.Hidden, c.KvHeads * c.HeadDim], w.Key));
        var value = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.v_proj.weight", [c.Hidden, c.KvHeads * c.HeadDim], w.Value));
        var outputs = G.Node("GroupQueryAttention",
            [query, key, value, LlamaNames.PastKey(layer), LlamaNames.PastValue(layer), _seqlensK, _totalLength, _cos, _sin],
            [null, LlamaNames.PresentKey(layer), LlamaNames.PresentValue(layer)], "com.microsoft",
            Attr.Int("num_heads", c.Heads), Attr.Int("kv_num_heads", c.KvHeads), Attr.Int("do_rotary", 1),
            Attr.Int("rotary_interleaved", 0), Attr.Int("local_window_size", -1));
        return outputs[0];
    }
}
