using HySparse.Onnx;
using HySparse.Graph;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Models.Llama;

/// <summary>
/// Attention as ONNX Runtime's transformer optimiser fuses GPT-2 (and onnxruntime-genai's <c>gpt2</c>
/// type runs it): one <c>com.microsoft.Attention</c> per layer on the normalised input [B,S,hidden] with
/// merged Q/K/V weights [hidden, 3·H·D] and optionally a bias, <c>unidirectional=1</c>,
/// <c>mask_index</c> = <c>attention_mask</c> as int32 (cast from int64 or float, or the input itself), and combined caches <c>past_N</c> [2,B,H,P,D] →
/// <c>present_N</c> [2,B,H,P+S,D]. The op has no RoPE on the CPU, so positions enter as GPT-2 does it:
/// learned position embeddings (seeded) gathered at positions taken from the mask as Hugging Face derives
/// them and added to the token embeddings. The rest of the decoder (RMSNorm, SwiGLU) is the Llama one;
/// needs H_q = H_kv (the op has one head count).
/// </summary>
internal sealed class ContribAttentionLlamaEmitter : LlamaEmitter
{
    /// <summary>Seed stream of the position table, apart from the per-layer bias streams (0..layers−1).</summary>
    private const ulong PositionTableStream = 1UL << 32;

    private readonly int _positions;
    private readonly ContribAttentionOptions _options;
    private string _positionIds = "", _maskIndex = "";

    public ContribAttentionLlamaEmitter(LlamaWeights weights, int positions, ContribAttentionOptions options) : base(weights, "gpt2_style_decoder")
    {
        RequireOneHeadCount("com.microsoft.Attention");
        _positions = positions;
        _options = options;
    }

    protected override IReadOnlyDictionary<string, long> Opsets { get; } = new Dictionary<string, long> { [""] = 17, ["com.microsoft"] = 1 };

    protected override DataType AttentionMaskType => _options.AttentionMaskType is DataType.Int64 or DataType.Int32 or DataType.Float
        ? _options.AttentionMaskType
        : throw new ArgumentException($"attention_mask of type {_options.AttentionMaskType} is not one the GPT-2 tools write (int64, int32, float)");

    protected override void EmitAttentionPrelude()
    {
        string As(DataType type) => AttentionMaskType == type ? DecoderNames.AttentionMask : G.Op("Cast", [DecoderNames.AttentionMask], Attr.Int("to", (long)type));
        using (G.Scope("position_ids"))
            _positionIds = EmitPositionIds(G.Op("Shape", [DecoderNames.InputIds], Attr.Int("start", 1), Attr.Int("end", 2)), As(DataType.Int64));
        if (_options.PaddingMask) _maskIndex = As(DataType.Int32);
    }

    protected override string EmbedPositions(string embeddings)
    {
        var table = G.AddInitializer("model.embed_positions.weight", [_positions, Config.Hidden], SeededValues(PositionTableStream, _positions * Config.Hidden, 1f));
        using (G.Scope("embed_positions")) return G.Op("Add", embeddings, G.Op("Gather", [table, _positionIds], Attr.Int("axis", 0)));
    }

    protected override string EmitAttention(int layer, string normed)
    {
        var c = Config;
        var prefix = $"model.layers.{layer}.attn";
        var width = 3 * c.Heads * c.HeadDim;
        var weights = G.AddInitializer($"{prefix}.c_attn.weight", [c.Hidden, width], Weights.Layers[layer].ConcatenatedQkv(c));
        var bias = _options.ProjectionBias ? G.AddInitializer($"{prefix}.c_attn.bias", [width], SeededValues((ulong)layer, width, 0.5f)) : "";
        var outputs = G.Node("Attention", [normed, weights, bias, _maskIndex, DecoderNames.CombinedPast(layer)],
            [null, DecoderNames.CombinedPresent(layer)], "com.microsoft", Attr.Int("num_heads", c.Heads), Attr.Int("unidirectional", 1));
        return outputs[0];
    }

    protected override void AddCacheInputs()
    {
        for (var l = 0; l < Config.Layers; l++)
            G.AddInput(DecoderNames.CombinedPast(l), DataType.Float, 2, LlamaModelBuilder.BatchDim, Config.Heads, LlamaModelBuilder.PastDim, Config.HeadDim);
    }

    protected override void AddCacheOutputs()
    {
        for (var l = 0; l < Config.Layers; l++)
            G.AddOutput(DecoderNames.CombinedPresent(l), DataType.Float, 2, LlamaModelBuilder.BatchDim, Config.Heads, LlamaModelBuilder.TotalDim, Config.HeadDim);
    }
}
