using HySparse.Onnx;
using HySparse.Graph;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Models.Llama;

/// <summary>
/// Attention as ONNX Runtime's transformer optimiser fuses a decoder without grouped KV heads: RoPE in
/// <c>com.microsoft.RotaryEmbedding</c> nodes on positions taken from the mask as Hugging Face derives
/// them, then one <c>com.microsoft.MultiHeadAttention</c> per layer on 3-D Q/K/V with
/// <c>unidirectional=1</c>, <c>key_padding_mask = Cast(attention_mask, int32)</c> and BNSH
/// past/present caches that it concatenates; optionally a projection bias inside the op
/// (<see cref="MultiHeadAttentionOptions"/>). Needs H_q = H_kv (MultiHeadAttention has one head count).
/// </summary>
internal sealed class MultiHeadAttentionLlamaEmitter : LlamaEmitter
{
    private readonly int _rotaryPositions;
    private readonly MultiHeadAttentionOptions _options;
    private string _cos = "", _sin = "", _positions = "", _keyPaddingMask = "";

    public MultiHeadAttentionLlamaEmitter(LlamaWeights weights, int rotaryPositions, MultiHeadAttentionOptions options) : base(weights)
    {
        RequireOneHeadCount("MultiHeadAttention");
        _rotaryPositions = rotaryPositions;
        _options = options;
    }

    protected override IReadOnlyDictionary<string, long> Opsets { get; } = new Dictionary<string, long> { [""] = 17, ["com.microsoft"] = 1 };

    protected override void EmitAttentionPrelude()
    {
        (_cos, _sin) = AddRotaryCaches(_rotaryPositions);
        using (G.Scope("rotary_emb"))
            _positions = EmitPositionIds(G.Op("Shape", [DecoderNames.InputIds], Attr.Int("start", 1), Attr.Int("end", 2)));
        _keyPaddingMask = G.Op("Cast", [DecoderNames.AttentionMask], Attr.Int("to", (long)DataType.Int32));
    }

    protected override string EmitAttention(int layer, string normed)
    {
        var c = Config;
        var w = Weights.Layers[layer];
        var prefix = $"model.layers.{layer}.attn";
        var width = c.Heads * c.HeadDim;
        string Rotate(string x) => G.Node("RotaryEmbedding", [x, _positions, _cos, _sin], 1, "com.microsoft")[0];
        var query = Rotate(G.Op("MatMul", normed, G.AddInitializer($"{prefix}.q_proj.weight", [c.Hidden, width], w.Query)));
        var key = Rotate(G.Op("MatMul", normed, G.AddInitializer($"{prefix}.k_proj.weight", [c.Hidden, width], w.Key)));
        var value = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.v_proj.weight", [c.Hidden, width], w.Value));
        var bias = _options.ProjectionBias ? G.AddInitializer($"{prefix}.qkv_bias", [3 * width], SeededValues((ulong)layer, 3 * width, 0.5f)) : "";
        var outputs = G.Node("MultiHeadAttention",
            [query, key, value, bias, _keyPaddingMask, "", DecoderNames.PastKey(layer), DecoderNames.PastValue(layer)],
            [null, DecoderNames.PresentKey(layer), DecoderNames.PresentValue(layer)], "com.microsoft",
            Attr.Int("num_heads", c.Heads), Attr.Int("unidirectional", 1));
        return outputs[0];
    }
}
