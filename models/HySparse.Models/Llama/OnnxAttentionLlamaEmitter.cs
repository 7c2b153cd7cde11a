using HySparse.Onnx;
using HySparse.Graph;

namespace HySparse.Models.Llama;

/// <summary>
/// Attention as one standard ONNX <c>Attention</c> node per layer (opset 23), the form the opset-23
/// torch exporter gives <c>scaled_dot_product_attention</c>: the projections, head split and RoPE
/// are as in the decomposed export; Q/K/V go in as [B,H,S,D] or, with rank 3, merged back to
/// [B,S,H·D] with <c>q_num_heads</c>/<c>kv_num_heads</c>; the caches are the node's
/// <c>past_key</c>/<c>past_value</c> inputs and <c>present_key</c>/<c>present_value</c> outputs; the
/// mask is boolean or additive [B,1,S,T] from <c>attention_mask</c> and causality (GQA inside the op,
/// no repeat_kv), or <c>is_causal=1</c> alone.
/// </summary>
internal sealed class OnnxAttentionLlamaEmitter(LlamaWeights weights, DecomposedExportOptions decomposed, OnnxAttentionOptions options)
    : DecomposedLlamaEmitter(weights, decomposed)
{
    protected override IReadOnlyDictionary<string, long> Opsets { get; } = new Dictionary<string, long> { [""] = 23 };

    protected override bool NeedsAdditiveMask => options.Mask == OnnxAttentionMask.Additive;

    protected override string EmitAttention(int layer, string normed)
    {
        var c = Config;
        if (options.Rank is not (3 or 4)) throw new ArgumentException($"ONNX Attention takes rank 3 or 4 Q/K/V, not {options.Rank}");
        var projections = Projections(layer, normed);
        var query = Rotate(Heads(projections[0], c.Heads));
        var key = Rotate(Heads(projections[1], c.KvHeads));
        var value = Heads(projections[2], c.KvHeads);
        if (options.Rank == 3)
        {
            string Flat(string heads, int count) =>
                G.Op("Reshape", G.Op("Transpose", [heads], Attr.Ints("perm", 0, 2, 1, 3)), G.ConstInt64s(0, 0, count * c.HeadDim));
            (query, key, value) = (Flat(query, c.Heads), Flat(key, c.KvHeads), Flat(value, c.KvHeads));
        }
        var mask = options.Mask switch
        {
            OnnxAttentionMask.Boolean => Keep,
            OnnxAttentionMask.Additive => AdditiveMask,
            _ => "",
        };
        var inputs = new List<string> { query, key, value, mask };
        var outputs = new List<string?> { null };
        if (Options.KvCache)
        {
            inputs.AddRange([DecoderNames.PastKey(layer), DecoderNames.PastValue(layer)]);
            outputs.AddRange([DecoderNames.PresentKey(layer), DecoderNames.PresentValue(layer)]);
        }
        while (inputs[^1].Length == 0) inputs.RemoveAt(inputs.Count - 1);
        var attributes = new List<global::Onnx.AttributeProto> { Attr.Int("is_causal", options.Mask == OnnxAttentionMask.IsCausal ? 1 : 0) };
        if (options.Rank == 3) attributes.AddRange([Attr.Int("q_num_heads", c.Heads), Attr.Int("kv_num_heads", c.KvHeads)]);
        if (options.ExplicitScale) attributes.Add(Attr.Float("scale", 1f / MathF.Sqrt(c.HeadDim)));
        var context = G.Node("Attention", inputs, outputs, "", attributes.ToArray())[0];
        return options.Rank == 3 ? context : MergeHeads(context);
    }
}
