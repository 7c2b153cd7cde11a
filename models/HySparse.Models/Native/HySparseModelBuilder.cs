using HySparse.Graph;
using HySparse.Models.Graph;
using HySparse.Models.Llama;
using HySparse.Onnx;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Models.Native;

/// <summary>
/// Builds HySparse-native decoders (models trained as HySparse) as ONNX models around the
/// <c>com.hysparse</c> operators, with the interface of an exported decoder so that
/// <c>KvCacheDecoder</c>, <c>hysparse inspect</c> and the fidelity tool treat them like converted
/// models: inputs <c>input_ids</c>, <c>attention_mask</c>, <c>past_key_values.N.key|value</c>;
/// outputs <c>logits</c>, <c>present.N.key|value</c>. Full layers' caches grow with the sequence
/// (<c>total_sequence_length</c>); sparse layers keep window caches of at most w tokens
/// (<c>past_window_length</c> in, <c>present_window_length</c> out), which start empty like the others.
/// </summary>
/// <remarks>
/// Each layer projects Q/K/V as 3-D [B,S,H·D] tensors and applies RoPE on [B,S,H,D] (positions from
/// the mask, as Hugging Face derives them). A full layer is one <c>HySparseFullAttn</c>; when a
/// sparse layer follows it, it also emits <c>block_indices</c>. A sparse layer is one
/// <c>HySparseSparseAttn</c> with <c>combine=gate</c>, <c>window_cache=1</c>: its q′, its own k′/v′
/// and window cache, the preceding full layer's <c>present_*</c> as <c>shared_key/value</c> and that
/// layer's <c>block_indices</c>, the gate logits <c>MatMul(normed input, W_g) + b_g</c> and, when the
/// config has them, the sinks. The model's metadata (<c>hysparse.*</c>) records the layout and
/// parameters as the converter records them, with <c>hysparse.mode</c> = <c>native</c>.
/// </remarks>
public static class HySparseModelBuilder
{
    /// <summary>Name of the graph output that exposes full layer <paramref name="layer"/>'s block indices (see <see cref="Build(HySparseNativeWeights, bool)"/>).</summary>
    public static string BlockIndicesOutput(int layer) => $"block_indices.{layer}";

    /// <summary>Builds the decoder with the given weights.</summary>
    /// <param name="weights">The weights (and through them the configuration).</param>
    /// <param name="exposeBlockIndices">Also declare every selecting full layer's <c>block_indices</c>
    /// (int32 [B,H_kv,S,K]) as the graph output <see cref="BlockIndicesOutput"/>, to inspect what the oracle chose.</param>
    public static ModelProto Build(HySparseNativeWeights weights, bool exposeBlockIndices = false) =>
        new HySparseNativeEmitter(weights, exposeBlockIndices).EmitNative();

    /// <summary>Generates weights from <paramref name="config"/> and builds the decoder.</summary>
    public static ModelProto Build(HySparseNativeConfig config, bool exposeBlockIndices = false) =>
        Build(HySparseNativeWeights.Generate(config), exposeBlockIndices);

    /// <summary>The window caches of a native model: every sparse layer's past inputs, then its present outputs.</summary>
    public static IReadOnlyList<string> WindowCaches(HySparseNativeConfig config)
    {
        var sparse = Enumerable.Range(0, config.Model.Layers).Where(l => !config.IsFull(l)).ToList();
        return [.. sparse.SelectMany(l => new[] { DecoderNames.PastKey(l), DecoderNames.PastValue(l) }),
                .. sparse.SelectMany(l => new[] { DecoderNames.PresentKey(l), DecoderNames.PresentValue(l) })];
    }
}

/// <summary>The attention blocks of a native model; the rest of the decoder is the Llama one.</summary>
internal sealed class HySparseNativeEmitter(HySparseNativeWeights weights, bool exposeBlockIndices)
    : LlamaEmitter(weights.Base, "hysparse_native_decoder")
{
    private readonly HySparseNativeConfig _native = weights.Config;
    private string _cos = "", _sin = "";
    private string _sharedKey = "", _sharedValue = "", _blockIndices = "";

    protected override IReadOnlyDictionary<string, long> Opsets { get; } =
        new Dictionary<string, long> { [""] = 17, [HySparseOps.Domain] = HySparseOps.DomainVersion };

    public ModelProto EmitNative()
    {
        var model = Emit();
        model.ProducerName = "HySparse.Models (HySparse-native builder)";
        var c = _native;
        void Meta(string key, string value) => model.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
        Meta(HybridMetadata.FormatVersion, "1");
        Meta(HybridMetadata.Mode, HybridMetadata.NativeMode);
        Meta(HybridMetadata.Layout, c.Layout);
        Meta(HybridMetadata.FullLayers, string.Join(",", c.FullLayers));
        Meta(HybridMetadata.TopK, c.TopK.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Meta(HybridMetadata.BlockSize, c.BlockSize.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Meta(HybridMetadata.Window, c.Window.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Meta(HybridMetadata.Combine, HySparseOps.CombineModes.Gate);
        Meta(HybridMetadata.WindowCaches, string.Join(",", HySparseModelBuilder.WindowCaches(c)));
        Meta(HybridMetadata.KvCache, HybridMetadata.ConcatenatedCache);
        Meta(HybridMetadata.Gate, c.Gate == SparseGateKind.PerHead ? HybridMetadata.PerHeadGate : HybridMetadata.PerChannelGate);
        Meta(HybridMetadata.Sinks, c.Sinks ? "1" : "0");
        return model;
    }

    protected override Dim PastCacheLength(int layer) =>
        _native.IsFull(layer) ? LlamaModelBuilder.PastDim : HybridMetadata.PastWindowDim;

    protected override Dim PresentCacheLength(int layer) =>
        _native.IsFull(layer) ? LlamaModelBuilder.TotalDim : HybridMetadata.PresentWindowDim;

    protected override void EmitAttentionPrelude()
    {
        var positions = EmitPositionIds(G.Op("Shape", [DecoderNames.InputIds], Attr.Int("start", 1), Attr.Int("end", 2)));
        // [B,S,1,D]: broadcast over the heads of a [B,S,H,D] view of the 3-D projections.
        (_cos, _sin) = EmitRotaryTables(positions, headAxis: 2);
    }

    protected override string EmitAttention(int layer, string normed)
    {
        var c = Config;
        var w = Weights.Layers[layer];
        var prefix = $"model.layers.{layer}.self_attn";
        int qWidth = c.Heads * c.HeadDim, kvWidth = c.KvHeads * c.HeadDim;
        var query = Rotate(G.Op("MatMul", normed, G.AddInitializer($"{prefix}.q_proj.weight", [c.Hidden, qWidth], w.Query)), c.Heads);
        var key = Rotate(G.Op("MatMul", normed, G.AddInitializer($"{prefix}.k_proj.weight", [c.Hidden, kvWidth], w.Key)), c.KvHeads);
        var value = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.v_proj.weight", [c.Hidden, kvWidth], w.Value));
        var common = new[]
        {
            Attr.Int(HySparseOps.Attributes.NumHeads, c.Heads), Attr.Int(HySparseOps.Attributes.KvNumHeads, c.KvHeads),
            Attr.Float(HySparseOps.Attributes.Scale, 1f / MathF.Sqrt(c.HeadDim)), Attr.Int(HySparseOps.Attributes.BlockSize, _native.BlockSize),
        };

        if (_native.IsFull(layer))
        {
            var selects = _native.FeedsSparseLayer(layer);
            string?[] outputs = selects
                ? [null, DecoderNames.PresentKey(layer), DecoderNames.PresentValue(layer), exposeBlockIndices ? HySparseModelBuilder.BlockIndicesOutput(layer) : null]
                : [null, DecoderNames.PresentKey(layer), DecoderNames.PresentValue(layer)];
            var results = G.Node(HySparseOps.FullAttn,
                [query, key, value, DecoderNames.PastKey(layer), DecoderNames.PastValue(layer), DecoderNames.AttentionMask],
                outputs, HySparseOps.Domain, [.. common, Attr.Int(HySparseOps.Attributes.TopK, _native.TopK)]);
            (_sharedKey, _sharedValue, _blockIndices) = (results[1], results[2], selects ? results[3] : "");
            return results[0];
        }

        var sparse = weights.Sparse[layer]!;
        var gate = G.Op("Add",
            G.Op("MatMul", normed, G.AddInitializer($"{prefix}.gate_proj.weight", [c.Hidden, _native.GateWidth], sparse.Gate)),
            G.AddInitializer($"{prefix}.gate_proj.bias", [_native.GateWidth], sparse.GateBias));
        List<string> inputs = [query, key, value, DecoderNames.PastKey(layer), DecoderNames.PastValue(layer), _sharedKey, _sharedValue, _blockIndices,
            DecoderNames.AttentionMask, gate];
        if (sparse.Sinks is { } sinks) inputs.Add(G.AddInitializer($"{prefix}.sinks", [2, c.Heads], sinks));
        return G.Node(HySparseOps.SparseAttn, inputs,
            [null, DecoderNames.PresentKey(layer), DecoderNames.PresentValue(layer)], HySparseOps.Domain,
            [.. common, Attr.Int(HySparseOps.Attributes.Window, _native.Window),
             Attr.String(HySparseOps.Attributes.Combine, HySparseOps.CombineModes.Gate), Attr.Int(HySparseOps.Attributes.WindowCache, 1)])[0];
    }

    protected override void AddExtraOutputs()
    {
        if (!exposeBlockIndices) return;
        for (var l = 0; l < Config.Layers; l++)
            if (_native.FeedsSparseLayer(l))
                G.AddOutput(HySparseModelBuilder.BlockIndicesOutput(l), DataType.Int32,
                    LlamaModelBuilder.BatchDim, Config.KvHeads, LlamaModelBuilder.SequenceDim, _native.TopK);
    }

    /// <summary>RoPE on a 3-D [B,S,H·D] projection: viewed as [B,S,H,D], x·cos + rotate_half(x)·sin, back to 3-D.</summary>
    private string Rotate(string flat, int heads)
    {
        var x = G.Op("Reshape", flat, G.ConstInt64s(0, 0, heads, Config.HeadDim));
        return G.Op("Reshape", RotateHalves(x, _cos, _sin), G.ConstInt64s(0, 0, heads * Config.HeadDim));
    }
}
