using HySparse.Onnx;
using HySparse.Graph;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Models.Llama;

/// <summary>
/// Attention as the onnxruntime-genai model builder writes it for CPU: one
/// <c>com.microsoft.GroupQueryAttention</c> per layer on 3-D Q/K/V [B,S,H·D] (or one packed QKV
/// tensor), with <c>seqlens_k = ReduceSum(attention_mask) − 1</c> and <c>total_sequence_length</c>
/// computed once from the mask. RoPE runs inside the op (<c>do_rotary=1</c>, cos/sin caches as
/// initializers) or, with <see cref="GroupQueryAttentionOptions.DoRotary"/> off, in
/// <c>com.microsoft.RotaryEmbedding</c> nodes before it on positions taken from the mask or, with
/// <see cref="GroupQueryAttentionOptions.PositionIdsInput"/>, from a <c>position_ids</c> graph input.
/// GroupQueryAttention assumes right padding and takes positions from <c>seqlens_k</c>, so this model
/// matches the decomposed one on batches without left padding.
/// </summary>
internal sealed class GroupQueryAttentionLlamaEmitter(LlamaWeights weights, int rotaryPositions, GroupQueryAttentionOptions options) : LlamaEmitter(weights)
{
    private string _seqlensK = "", _totalLength = "", _cos = "", _sin = "", _positions = "";

    protected override IReadOnlyDictionary<string, long> Opsets { get; } = new Dictionary<string, long> { [""] = 17, ["com.microsoft"] = 1 };

    protected override void EmitAttentionPrelude()
    {
        using (G.Scope("attn_mask_reformat/attn_mask_subgraph"))
        {
            var lengths = G.Op("ReduceSum", [DecoderNames.AttentionMask, G.ConstInt64s(1)], Attr.Int("keepdims", 0));
            _seqlensK = G.Op("Cast", [G.Op("Sub", lengths, G.ConstInt64(1))], Attr.Int("to", (long)DataType.Int32));
            var total = G.Op("Gather", [G.Op("Shape", DecoderNames.AttentionMask), G.ConstInt64(1)], Attr.Int("axis", 0));
            _totalLength = G.Op("Cast", [total], Attr.Int("to", (long)DataType.Int32));
        }
        (_cos, _sin) = AddRotaryCaches(rotaryPositions);
        if (options.PositionIdsInput)
            _positions = G.AddInput(DecoderNames.PositionIds, DataType.Int64, LlamaModelBuilder.BatchDim, LlamaModelBuilder.SequenceDim);
        else if (!options.DoRotary)
            using (G.Scope("rotary_emb"))
                _positions = EmitPositionIds(G.Op("Shape", [DecoderNames.InputIds], Attr.Int("start", 1), Attr.Int("end", 2)));
    }

    protected override string EmitAttention(int layer, string normed)
    {
        var c = Config;
        var w = Weights.Layers[layer];
        var prefix = $"model.layers.{layer}.attn";
        int qWidth = c.Heads * c.HeadDim, kvWidth = c.KvHeads * c.HeadDim;
        string query, key = "", value = "";
        if (options.PackedQkv)
        {
            query = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.qkv_proj.weight", [c.Hidden, qWidth + 2 * kvWidth], w.ConcatenatedQkv(c)));
        }
        else
        {
            query = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.q_proj.weight", [c.Hidden, qWidth], w.Query));
            key = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.k_proj.weight", [c.Hidden, kvWidth], w.Key));
            value = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.v_proj.weight", [c.Hidden, kvWidth], w.Value));
            if (!options.DoRotary)
            {
                query = Rotate(query, c.Heads);
                key = Rotate(key, c.KvHeads);
            }
        }
        var rotary = options.DoRotary ? new[] { _cos, _sin } : [];
        var outputs = G.Node("GroupQueryAttention",
            [query, key, value, DecoderNames.PastKey(layer), DecoderNames.PastValue(layer), _seqlensK, _totalLength, .. rotary],
            [null, DecoderNames.PresentKey(layer), DecoderNames.PresentValue(layer)], "com.microsoft",
            Attr.Int("num_heads", c.Heads), Attr.Int("kv_num_heads", c.KvHeads), Attr.Int("do_rotary", options.DoRotary ? 1 : 0),
            Attr.Int("rotary_interleaved", options.RotaryInterleaved ? 1 : 0), Attr.Int("local_window_size", -1));
        return outputs[0];
    }

    private string Rotate(string x, int heads) =>
        G.Node("RotaryEmbedding", [x, _positions, _cos, _sin], 1, "com.microsoft",
            Attr.Int("interleaved", options.RotaryInterleaved ? 1 : 0), Attr.Int("num_heads", heads), Attr.Int("rotary_embedding_dim", Config.HeadDim))[0];
}
