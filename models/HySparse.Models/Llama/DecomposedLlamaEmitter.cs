using HySparse.Onnx;
using HySparse.Graph;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Models.Llama;

/// <summary>
/// Attention as <c>torch.onnx.export</c> writes a Hugging Face Llama layer (opset 17): per-layer head
/// Reshape/Transpose, RoPE from shared cos/sin tables, <c>Concat(past, new)</c> on the sequence axis,
/// GQA expansion by Unsqueeze/Expand/Reshape after the concat (absent when H_q = H_kv), and
/// MatMul(Q, Kᵀ) → Div(√D) → Add(mask) → Softmax → MatMul(V). The additive mask is built once
/// from <c>attention_mask</c>: 0 where a key is causal and real, the float32 minimum elsewhere.
/// <see cref="DecomposedExportOptions"/> selects the variations real exports show (scale placement,
/// fused QKV by Split or Slices, Where instead of Add, keys transposed [0,2,3,1], no KV cache).
/// </summary>
internal class DecomposedLlamaEmitter(LlamaWeights weights, DecomposedExportOptions options) : LlamaEmitter(weights)
{
    private string _mask = "";

    /// <summary>RoPE tables [B,1,S,D] (for [B,H,S,D] heads).</summary>
    protected string Cos { get; private set; } = "";
    /// <summary>See <see cref="Cos"/>.</summary>
    protected string Sin { get; private set; } = "";
    /// <summary>Boolean [B,1,S,T]: key j is causal for new token s and real.</summary>
    protected string Keep { get; private set; } = "";
    /// <summary>Additive float [B,1,S,T]: 0 where <see cref="Keep"/>, the float32 minimum elsewhere.</summary>
    protected string AdditiveMask => _mask;
    /// <summary>The export variations.</summary>
    protected DecomposedExportOptions Options { get; } = options;

    protected override IReadOnlyDictionary<string, long> Opsets { get; } = new Dictionary<string, long> { [""] = 17 };

    protected override bool HasKvCache => Options.KvCache;

    /// <summary>Whether attention reads <see cref="AdditiveMask"/> (else it is not emitted: exports hold no dead mask).</summary>
    protected virtual bool NeedsAdditiveMask => Options.Mask == MaskStyle.Additive;

    protected override void EmitAttentionPrelude()
    {
        var c = Config;
        var newTokens = G.Op("Shape", [DecoderNames.InputIds], Attr.Int("start", 1), Attr.Int("end", 2));
        var total = G.Op("Shape", [DecoderNames.AttentionMask], Attr.Int("start", 1), Attr.Int("end", 2));
        var past = G.Op("Sub", total, newTokens);

        var positions = EmitPositionIds(newTokens);

        (Cos, Sin) = EmitRotaryTables(positions, headAxis: 1);

        // Key j is visible to new token s when j ≤ P + s and attention_mask[b, j] = 1.
        var queryPositions = G.Op("Range", G.Op("Squeeze", past, G.ConstInt64s(0)), G.Op("Squeeze", total, G.ConstInt64s(0)), G.ConstInt64(1));
        var keyPositions = G.Op("Range", G.ConstInt64(0), G.Op("Squeeze", total, G.ConstInt64s(0)), G.ConstInt64(1));
        var causal = G.Op("LessOrEqual", keyPositions, G.Op("Unsqueeze", queryPositions, G.ConstInt64s(1)));
        var real = G.Op("Cast", [G.Op("Unsqueeze", DecoderNames.AttentionMask, G.ConstInt64s(1, 2))], Attr.Int("to", (long)DataType.Bool));
        Keep = G.Op("And", causal, real);
        if (NeedsAdditiveMask) _mask = G.Op("Where", Keep, G.ConstFloat(0f), G.ConstFloat(float.MinValue));
    }

    protected override string EmitAttention(int layer, string normed)
    {
        var c = Config;
        if (Options.KeysFromHeadSplit && (Options.KvCache || c.GroupSize != 1))
            throw new ArgumentException("keys transposed [0,2,3,1] from the head split need an export without KV cache and H_q = H_kv");
        var projections = Projections(layer, normed);
        var query = Rotate(Heads(projections[0], c.Heads));
        string transposedKeys, values;
        if (Options.KeysFromHeadSplit)
        {
            // RoPE on [B,S,H,D] needs the tables broadcast over heads at axis 2.
            var split = G.Op("Reshape", projections[1], G.ConstInt64s(0, 0, c.KvHeads, c.HeadDim));
            var rotated = RotateHalves(split, G.Op("Transpose", [Cos], Attr.Ints("perm", 0, 2, 1, 3)), G.Op("Transpose", [Sin], Attr.Ints("perm", 0, 2, 1, 3)));
            transposedKeys = G.Op("Transpose", [rotated], Attr.Ints("perm", 0, 2, 3, 1));
            values = Heads(projections[2], c.KvHeads);
        }
        else
        {
            var key = Rotate(Heads(projections[1], c.KvHeads));
            var (keys, cachedValues) = Cached(layer, key, Heads(projections[2], c.KvHeads));
            transposedKeys = G.Op("Transpose", [RepeatKv(keys)], Attr.Ints("perm", 0, 1, 3, 2));
            values = RepeatKv(cachedValues);
        }

        string scaled;
        switch (Options.Scale)
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
        var masked = Options.Mask == MaskStyle.WhereOnScores
            ? G.Op("Where", Keep, scaled, G.ConstFloat(float.MinValue))
            : G.Op("Add", scaled, _mask);
        var probabilities = G.Op("Softmax", [masked], Attr.Int("axis", -1));
        return MergeHeads(G.Op("MatMul", probabilities, values));
    }

    /// <summary>Q, K and V projections [B,S,H·D]: three MatMuls, or one fused MatMul split by Split or Slices.</summary>
    protected string[] Projections(int layer, string normed)
    {
        var c = Config;
        var w = Weights.Layers[layer];
        var prefix = $"model.layers.{layer}.self_attn";
        int qWidth = c.Heads * c.HeadDim, kvWidth = c.KvHeads * c.HeadDim;
        if (!Options.FusedQkv)
        {
            return
            [
                G.Op("MatMul", normed, G.AddInitializer($"{prefix}.q_proj.weight", [c.Hidden, qWidth], w.Query)),
                G.Op("MatMul", normed, G.AddInitializer($"{prefix}.k_proj.weight", [c.Hidden, kvWidth], w.Key)),
                G.Op("MatMul", normed, G.AddInitializer($"{prefix}.v_proj.weight", [c.Hidden, kvWidth], w.Value)),
            ];
        }
        var width = qWidth + 2 * kvWidth;
        var qkv = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.qkv_proj.weight", [c.Hidden, width], w.ConcatenatedQkv(c)));
        if (!Options.SplitBySlices)
            return G.Node("Split", [qkv, G.ConstInt64s(qWidth, kvWidth, kvWidth)], 3, "", Attr.Int("axis", -1));
        string Columns(long start, long end) => G.Op("Slice", qkv, G.ConstInt64s(start), G.ConstInt64s(end), G.ConstInt64s(-1));
        return [Columns(0, qWidth), Columns(qWidth, qWidth + kvWidth), Columns(qWidth + kvWidth, width)];
    }

    /// <summary>[B,S,H·D] → [B,H,S,D].</summary>
    protected string Heads(string flat, int heads) =>
        G.Op("Transpose", [G.Op("Reshape", flat, G.ConstInt64s(0, 0, heads, Config.HeadDim))], Attr.Ints("perm", 0, 2, 1, 3));

    /// <summary>[B,H_q,S,D] → [B,S,H_q·D].</summary>
    protected string MergeHeads(string context) =>
        G.Op("Reshape", G.Op("Transpose", [context], Attr.Ints("perm", 0, 2, 1, 3)), G.ConstInt64s(0, 0, Config.Heads * Config.HeadDim));

    /// <summary>
    /// The keys and values attention reads: <c>Concat(past, new)</c> written to the layer's present
    /// outputs, or this call's own with no KV cache.
    /// </summary>
    private (string Keys, string Values) Cached(int layer, string key, string value) => Options.KvCache
        ? (G.OpNamed(DecoderNames.PresentKey(layer), "Concat", [DecoderNames.PastKey(layer), key], Attr.Int("axis", 2)),
           G.OpNamed(DecoderNames.PresentValue(layer), "Concat", [DecoderNames.PastValue(layer), value], Attr.Int("axis", 2)))
        : (key, value);

    /// <summary>RoPE on [B,H,S,D].</summary>
    protected string Rotate(string x) => RotateHalves(x, Cos, Sin);

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
