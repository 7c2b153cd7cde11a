using HySparse.Onnx;
using HySparse.Graph;
using HySparse.Models.Graph;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Models.Llama;

/// <summary>How a built decoder expresses attention.</summary>
public enum LlamaAttentionStyle
{
    /// <summary>
    /// As <c>torch.onnx.export</c> / Optimum emit it: head Reshape/Transpose, RoPE, Concat(past, new),
    /// GQA expansion, MatMul(Q, Kᵀ) → Div(√D) → Add(mask) → Softmax → MatMul(V).
    /// </summary>
    Decomposed,

    /// <summary>
    /// As the onnxruntime-genai model builder emits it: <c>com.microsoft.GroupQueryAttention</c> with
    /// RoPE inside (<c>do_rotary=1</c>) and separate past/present caches. Matches the decomposed model
    /// on batches without left padding (GroupQueryAttention assumes right padding). Variants:
    /// <see cref="GroupQueryAttentionOptions"/>.
    /// </summary>
    GroupQueryAttention,

    /// <summary>
    /// As ONNX Runtime's transformer optimiser fuses a decoder: <c>com.microsoft.RotaryEmbedding</c>
    /// on Q and K, then <c>com.microsoft.MultiHeadAttention</c> with <c>unidirectional=1</c>, a
    /// <c>key_padding_mask</c> from <c>attention_mask</c> and concatenated BNSH caches. Needs
    /// <see cref="LlamaConfig.Heads"/> = <see cref="LlamaConfig.KvHeads"/>; matches the decomposed model,
    /// left padding included.
    /// </summary>
    MultiHeadAttention,

    /// <summary>
    /// The standard ONNX <c>Attention</c> operator (opset 23) after head split and RoPE, with the
    /// caches as its <c>past_key</c>/<c>past_value</c> inputs and <c>present_key</c>/<c>present_value</c>
    /// outputs; variations in <see cref="OnnxAttentionOptions"/>.
    /// </summary>
    OnnxAttention,

    /// <summary>
    /// <c>com.microsoft.Attention</c> as ONNX Runtime's transformer optimiser fuses GPT-2 and
    /// onnxruntime-genai's <c>gpt2</c> type runs it: the op projects the normalised input with merged
    /// Q/K/V weights and a bias, attends with <c>unidirectional=1</c> and a raw 2-D <c>mask_index</c>,
    /// and caches keys and values together (<c>past_N</c> [2,B,H,P,D] → <c>present_N</c>). There is no
    /// RoPE (the op cannot rotate on the CPU): positions enter as GPT-2's learned position embeddings
    /// added to the token embeddings. Needs <see cref="LlamaConfig.Heads"/> = <see cref="LlamaConfig.KvHeads"/>;
    /// variations in <see cref="ContribAttentionOptions"/>.
    /// </summary>
    ContribAttention,
}

/// <summary>Variations of the <c>com.microsoft.Attention</c> style.</summary>
public sealed record ContribAttentionOptions
{
    /// <summary>
    /// A seeded Q/K/V projection bias [3·H·D] as the op's input 2 (GPT-2 has one); false leaves the input
    /// out, which the schema allows but ONNX Runtime 1.31's CPU kernel does not survive (the process
    /// crashes, checked here): such a model only runs converted.
    /// </summary>
    public bool ProjectionBias { get; init; } = true;
    /// <summary>
    /// <c>mask_index</c> = <c>Cast(attention_mask, int32)</c>, the raw [B, P+S] mask; false leaves it out
    /// (causal only: padding is not masked).
    /// </summary>
    public bool PaddingMask { get; init; } = true;
    /// <summary>
    /// Element type of the <c>attention_mask</c> graph input: int64 (cast to int32 for the op), int32
    /// (the op's <c>mask_index</c> itself) or float (cast to int32), the forms ONNX Runtime's GPT-2
    /// tools write.
    /// </summary>
    public DataType AttentionMaskType { get; init; } = DataType.Int64;
}

/// <summary>Variations among MultiHeadAttention exports.</summary>
public sealed record MultiHeadAttentionOptions
{
    /// <summary>
    /// A Q/K/V projection bias [3·H·D] as the op's input 3, which it adds before attending (as ONNX
    /// Runtime's fusion moves a projection's bias into the op). The values are drawn from the config's
    /// seed; the float64 Llama reference has no such bias.
    /// </summary>
    public bool ProjectionBias { get; init; }
}

/// <summary>Variations among GroupQueryAttention exports (the onnxruntime-genai model builder writes each).</summary>
public sealed record GroupQueryAttentionOptions
{
    /// <summary>
    /// RoPE inside the op (<c>do_rotary=1</c>, cos/sin caches as its inputs 7 and 8); when false,
    /// <c>com.microsoft.RotaryEmbedding</c> nodes rotate Q and K before it.
    /// </summary>
    public bool DoRotary { get; init; } = true;
    /// <summary>Rotate interleaved pairs (x₀,x₁), (x₂,x₃)… instead of the two halves of each head.</summary>
    public bool RotaryInterleaved { get; init; }
    /// <summary>
    /// One packed QKV tensor [B,S,(H_q + 2·H_kv)·D] as the op's query, key and value absent.
    /// Requires <see cref="DoRotary"/> (the rotation has to happen inside the op).
    /// </summary>
    public bool PackedQkv { get; init; }
    /// <summary>Rows of the cos/sin caches: the longest sequence the model can run (genai's context_length).</summary>
    public int RotaryPositions { get; init; } = LlamaModelBuilder.RotaryCacheLength;
    /// <summary>
    /// <c>position_ids</c> (int64 [B,S]) as a graph input feeding the <c>RotaryEmbedding</c> nodes, which
    /// genai's model builder emits for some models and genai then fills from the attention mask; without
    /// it the positions are computed from <c>attention_mask</c> in the graph. Requires
    /// <see cref="DoRotary"/> off: the op's own <c>position_ids</c> input (#9) is a different thing.
    /// </summary>
    public bool PositionIdsInput { get; init; }
    /// <summary>
    /// A float16 model with the interface of genai's CPU fp16 models: weights, KV caches and logits in
    /// float16, GroupQueryAttention and RotaryEmbedding computing in float16 on float16 Q/K/V; norms,
    /// MLP and projections compute in float32 behind Casts (<see cref="Float16Conversion"/>).
    /// </summary>
    public bool Float16 { get; init; }
}

/// <summary>How the masked positions are removed before the Softmax in a decomposed export.</summary>
public enum MaskStyle
{
    /// <summary><c>Add(scores, mask)</c> with an additive float mask (0 or the float minimum).</summary>
    Additive,
    /// <summary>
    /// <c>Where(keep, scores, float minimum)</c> on a boolean mask derived from <c>attention_mask</c>
    /// and causality, as newer torch exports write <c>masked_fill</c>.
    /// </summary>
    WhereOnScores,
}

/// <summary>How an ONNX <c>Attention</c> node is told which keys a query may see.</summary>
public enum OnnxAttentionMask
{
    /// <summary><c>attn_mask</c> = boolean [B,1,S,T] from <c>attention_mask</c> and causality; <c>is_causal=0</c>.</summary>
    Boolean,
    /// <summary><c>attn_mask</c> = additive float [B,1,S,T] (0 or the float minimum); <c>is_causal=0</c>.</summary>
    Additive,
    /// <summary>
    /// No <c>attn_mask</c>, <c>is_causal=1</c>: padding is ignored. With a past the causal mask is aligned
    /// to the bottom right (new token s sees keys up to P + s), without one Q and K have the same length.
    /// </summary>
    IsCausal,
}

/// <summary>Variations of the ONNX <c>Attention</c> style.</summary>
public sealed record OnnxAttentionOptions
{
    /// <summary>4: Q/K/V [B,H,S,D]; 3: Q/K/V [B,S,H·D] with <c>q_num_heads</c>/<c>kv_num_heads</c>.</summary>
    public int Rank { get; init; } = 4;
    /// <summary>How masking is expressed.</summary>
    public OnnxAttentionMask Mask { get; init; } = OnnxAttentionMask.Boolean;
    /// <summary>Writes the <c>scale</c> attribute (1/√D) explicitly instead of relying on its default.</summary>
    public bool ExplicitScale { get; init; }
}

/// <summary>Where a decomposed export applies the 1/√D logit scale.</summary>
public enum ScalePlacement
{
    /// <summary><c>Div(Q·Kᵀ, √D)</c>, as Hugging Face's eager attention exports.</summary>
    DivideScores,
    /// <summary><c>Mul(Q·Kᵀ, 1/√D)</c>.</summary>
    MultiplyScores,
    /// <summary>
    /// <c>Mul(Q, D^-¼)</c> and <c>Mul(Kᵀ, D^-¼)</c> before the MatMul, as torch exports
    /// scaled_dot_product_attention (the scale split over both operands for range).
    /// </summary>
    SplitOverQueryAndKey,
}

/// <summary>Variations among real decomposed exports, so the converter is tested on more than one spelling.</summary>
public sealed record DecomposedExportOptions
{
    /// <summary>Where the logit scale goes.</summary>
    public ScalePlacement Scale { get; init; } = ScalePlacement.DivideScores;
    /// <summary>One fused QKV projection split by <c>Split</c>, instead of three MatMuls.</summary>
    public bool FusedQkv { get; init; }
    /// <summary>With <see cref="FusedQkv"/>: three <c>Slice</c>s on the last axis instead of one <c>Split</c>.</summary>
    public bool SplitBySlices { get; init; }
    /// <summary>How the mask is applied.</summary>
    public MaskStyle Mask { get; init; } = MaskStyle.Additive;
    /// <summary>
    /// Keys transposed with perm [0,2,3,1] straight from their [B,S,H,D] head split (RoPE applied in
    /// that layout), as BERT-style exports do; needs <see cref="KvCache"/> false and H_q = H_kv.
    /// </summary>
    public bool KeysFromHeadSplit { get; init; }
    /// <summary>
    /// False for an export without KV cache (prefill only): no <c>past_key_values.N.*</c> inputs and
    /// no <c>present.N.*</c> outputs, <c>attention_mask</c> covers just the new tokens. Also applies
    /// to the ONNX <c>Attention</c> style.
    /// </summary>
    public bool KvCache { get; init; } = true;
}

/// <summary>Builds Llama-style decoders as ONNX models.</summary>
public static class LlamaModelBuilder
{
    /// <summary>Positions the rotary cos/sin caches of fused styles cover.</summary>
    public const int RotaryCacheLength = 1024;

    /// <summary>Symbolic batch dimension.</summary>
    public const string BatchDim = "batch_size";
    /// <summary>Symbolic new-token dimension.</summary>
    public const string SequenceDim = "sequence_length";
    /// <summary>Symbolic cached-token dimension.</summary>
    public const string PastDim = "past_sequence_length";
    /// <summary>Symbolic past + new dimension.</summary>
    public const string TotalDim = "total_sequence_length";

    /// <summary>
    /// Builds the decoder with the given weights. Inputs: <c>input_ids</c> int64 [B,S],
    /// <c>attention_mask</c> int64 [B,P+S], <c>past_key_values.N.key|value</c> float [B,H_kv,P,D];
    /// outputs: <c>logits</c> [B,S,V], <c>present.N.key|value</c> [B,H_kv,P+S,D].
    /// </summary>
    /// <param name="weights">The weights (and through them the configuration).</param>
    /// <param name="style">How attention is written.</param>
    /// <param name="decomposed">Variations of the decomposed style (default: Hugging Face eager export); its <c>KvCache</c> also applies to ONNX Attention.</param>
    /// <param name="groupQuery">Variations of the GroupQueryAttention style (default: separate Q/K/V, RoPE inside the op).</param>
    /// <param name="multiHead">Variations of the MultiHeadAttention style (default: no bias inside the op).</param>
    /// <param name="onnxAttention">Variations of the ONNX Attention style.</param>
    /// <param name="contribAttention">Variations of the com.microsoft.Attention style (default: bias and padding mask).</param>
    public static ModelProto Build(LlamaWeights weights, LlamaAttentionStyle style = LlamaAttentionStyle.Decomposed, DecomposedExportOptions? decomposed = null,
        GroupQueryAttentionOptions? groupQuery = null, MultiHeadAttentionOptions? multiHead = null, OnnxAttentionOptions? onnxAttention = null,
        ContribAttentionOptions? contribAttention = null) => style switch
    {
        LlamaAttentionStyle.Decomposed => new DecomposedLlamaEmitter(weights, decomposed ?? new DecomposedExportOptions()).Emit(),
        LlamaAttentionStyle.GroupQueryAttention => GroupQuery(weights, CheckedGroupQuery(groupQuery ?? new GroupQueryAttentionOptions())),
        LlamaAttentionStyle.MultiHeadAttention => new MultiHeadAttentionLlamaEmitter(weights, RotaryCacheLength, multiHead ?? new MultiHeadAttentionOptions()).Emit(),
        LlamaAttentionStyle.OnnxAttention => new OnnxAttentionLlamaEmitter(weights, decomposed ?? new DecomposedExportOptions(), onnxAttention ?? new OnnxAttentionOptions()).Emit(),
        LlamaAttentionStyle.ContribAttention => new ContribAttentionLlamaEmitter(weights, RotaryCacheLength, contribAttention ?? new ContribAttentionOptions()).Emit(),
        _ => throw new ArgumentOutOfRangeException(nameof(style), style, "unknown attention style"),
    };

    /// <summary>Generates weights from <paramref name="config"/> and builds the decoder.</summary>
    public static ModelProto Build(LlamaConfig config, LlamaAttentionStyle style = LlamaAttentionStyle.Decomposed, DecomposedExportOptions? decomposed = null,
        GroupQueryAttentionOptions? groupQuery = null, MultiHeadAttentionOptions? multiHead = null, OnnxAttentionOptions? onnxAttention = null,
        ContribAttentionOptions? contribAttention = null) =>
        Build(LlamaWeights.Generate(config), style, decomposed, groupQuery, multiHead, onnxAttention, contribAttention);

    private static ModelProto GroupQuery(LlamaWeights weights, GroupQueryAttentionOptions options)
    {
        var model = new GroupQueryAttentionLlamaEmitter(weights, options.RotaryPositions, options).Emit();
        return options.Float16 ? Float16Conversion.Convert(model) : model;
    }

    private static GroupQueryAttentionOptions CheckedGroupQuery(GroupQueryAttentionOptions options) =>
        options.PackedQkv && !options.DoRotary
            ? throw new ArgumentException("a packed QKV GroupQueryAttention export rotates inside the op: PackedQkv needs DoRotary")
            : options.PositionIdsInput && options.DoRotary
            ? throw new ArgumentException("position_ids feed RotaryEmbedding nodes before the op: PositionIdsInput needs DoRotary off")
            : options;
}

/// <summary>
/// The parts every attention style shares: embedding, RMSNorm, SwiGLU, residuals, LM head, the KV
/// cache inputs and outputs. A style supplies the attention block.
/// </summary>
internal abstract class LlamaEmitter
{
    protected LlamaEmitter(LlamaWeights weights, string graphName = "llama_decoder")
    {
        Weights = weights;
        Config = weights.Config;
        G = new GraphBuilder(graphName);
    }

    protected LlamaWeights Weights { get; }
    protected LlamaConfig Config { get; }
    protected GraphBuilder G { get; }

    /// <summary>Default-domain opset and any others the style needs.</summary>
    protected abstract IReadOnlyDictionary<string, long> Opsets { get; }

    /// <summary>Element type of the <c>attention_mask</c> graph input (int64 unless the style says otherwise).</summary>
    protected virtual DataType AttentionMaskType => DataType.Int64;

    /// <summary>False for an export without KV cache inputs and outputs.</summary>
    protected virtual bool HasKvCache => true;

    /// <summary>Emits what all layers' attention shares (positions, rotary tables, masks).</summary>
    protected abstract void EmitAttentionPrelude();

    /// <summary>
    /// Emits layer <paramref name="layer"/>'s attention on the normalised input [B,S,hidden], writing the
    /// caches to the layer's present outputs; returns the heads' concatenated output [B,S,H_q·D].
    /// </summary>
    protected abstract string EmitAttention(int layer, string normed);

    /// <summary>Symbolic length of layer <paramref name="layer"/>'s past cache input (a window cache declares its own).</summary>
    protected virtual Dim PastCacheLength(int layer) => LlamaModelBuilder.PastDim;

    /// <summary>Symbolic length of layer <paramref name="layer"/>'s present cache output.</summary>
    protected virtual Dim PresentCacheLength(int layer) => LlamaModelBuilder.TotalDim;

    /// <summary>Declares graph outputs a style adds after the caches (none by default).</summary>
    protected virtual void AddExtraOutputs()
    {
    }

    /// <summary>Declares the KV cache graph inputs: <c>past_key_values.N.key|value</c> [B,H_kv,P,D] by default.</summary>
    protected virtual void AddCacheInputs()
    {
        var c = Config;
        for (var l = 0; l < c.Layers; l++)
        {
            G.AddInput(DecoderNames.PastKey(l), DataType.Float, LlamaModelBuilder.BatchDim, c.KvHeads, PastCacheLength(l), c.HeadDim);
            G.AddInput(DecoderNames.PastValue(l), DataType.Float, LlamaModelBuilder.BatchDim, c.KvHeads, PastCacheLength(l), c.HeadDim);
        }
    }

    /// <summary>Declares the KV cache graph outputs: <c>present.N.key|value</c> [B,H_kv,P+S,D] by default.</summary>
    protected virtual void AddCacheOutputs()
    {
        var c = Config;
        for (var l = 0; l < c.Layers; l++)
        {
            G.AddOutput(DecoderNames.PresentKey(l), DataType.Float, LlamaModelBuilder.BatchDim, c.KvHeads, PresentCacheLength(l), c.HeadDim);
            G.AddOutput(DecoderNames.PresentValue(l), DataType.Float, LlamaModelBuilder.BatchDim, c.KvHeads, PresentCacheLength(l), c.HeadDim);
        }
    }

    /// <summary>What the style adds to the token embeddings [B,S,hidden] before the first layer (nothing by default: RoPE acts inside attention).</summary>
    protected virtual string EmbedPositions(string embeddings) => embeddings;

    /// <summary>Refuses a config with grouped KV heads for <paramref name="op"/>, which has one head count for queries and keys.</summary>
    protected void RequireOneHeadCount(string op)
    {
        if (Config.Heads != Config.KvHeads)
            throw new ArgumentException($"{op} has one head count for queries and keys; the config has {Config.Heads} query and {Config.KvHeads} KV heads");
    }

    /// <summary>
    /// <paramref name="size"/> values in [-<paramref name="range"/>, <paramref name="range"/>) drawn from
    /// the config's seed and <paramref name="stream"/>, so a seed names one model.
    /// </summary>
    protected float[] SeededValues(ulong stream, int size, float range)
    {
        var rng = new SplitMix64(Config.Seed * 1_000_003UL + stream);
        return Enumerable.Range(0, size).Select(_ => rng.NextSymmetric(range)).ToArray();
    }

    public ModelProto Emit()
    {
        var c = Config;
        G.AddInput(DecoderNames.InputIds, DataType.Int64, LlamaModelBuilder.BatchDim, LlamaModelBuilder.SequenceDim);
        G.AddInput(DecoderNames.AttentionMask, AttentionMaskType, LlamaModelBuilder.BatchDim, LlamaModelBuilder.TotalDim);
        if (HasKvCache) AddCacheInputs();

        var embedding = G.AddInitializer("model.embed_tokens.weight", [c.Vocab, c.Hidden], Weights.Embedding);
        string x;
        using (G.Scope("model/embed_tokens")) x = G.Op("Gather", [embedding, DecoderNames.InputIds], Attr.Int("axis", 0));
        using (G.Scope("model"))
        {
            EmitAttentionPrelude();
            x = EmbedPositions(x);
        }

        for (var l = 0; l < c.Layers; l++)
        {
            var w = Weights.Layers[l];
            var prefix = $"model.layers.{l}";
            using var layerScope = G.Scope($"model/layers.{l}");
            string normed;
            using (G.Scope("input_layernorm")) normed = RmsNorm(x, G.AddInitializer($"{prefix}.input_layernorm.weight", [c.Hidden], w.InputNorm));
            using (G.Scope("self_attn"))
            {
                var heads = EmitAttention(l, normed);
                var projected = G.Op("MatMul", heads, G.AddInitializer($"{prefix}.self_attn.o_proj.weight", [c.Heads * c.HeadDim, c.Hidden], w.Output));
                x = G.Op("Add", x, projected);
            }
            using (G.Scope("post_attention_layernorm")) normed = RmsNorm(x, G.AddInitializer($"{prefix}.post_attention_layernorm.weight", [c.Hidden], w.PostAttentionNorm));
            using (G.Scope("mlp"))
            {
                var gate = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.mlp.gate_proj.weight", [c.Hidden, c.Ffn], w.Gate));
                var up = G.Op("MatMul", normed, G.AddInitializer($"{prefix}.mlp.up_proj.weight", [c.Hidden, c.Ffn], w.Up));
                // SiLU as torch exports it: x · sigmoid(x).
                var silu = G.Op("Mul", gate, G.Op("Sigmoid", gate));
                var down = G.Op("MatMul", G.Op("Mul", silu, up), G.AddInitializer($"{prefix}.mlp.down_proj.weight", [c.Ffn, c.Hidden], w.Down));
                x = G.Op("Add", x, down);
            }
        }

        string final;
        using (G.Scope("model/norm")) final = RmsNorm(x, G.AddInitializer("model.norm.weight", [c.Hidden], Weights.FinalNorm));
        using (G.Scope("lm_head"))
        {
            var head = Weights.LmHead is { } lmHead
                ? G.AddInitializer("lm_head.weight", [c.Hidden, c.Vocab], lmHead)
                : G.Op("Transpose", [embedding], Attr.Ints("perm", 1, 0));
            G.OpNamed(DecoderNames.Logits, "MatMul", [final, head]);
        }

        G.AddOutput(DecoderNames.Logits, DataType.Float, LlamaModelBuilder.BatchDim, LlamaModelBuilder.SequenceDim, c.Vocab);
        if (HasKvCache) AddCacheOutputs();
        AddExtraOutputs();
        return G.BuildModel(Opsets, irVersion: 8, producer: "HySparse.Models");
    }

    /// <summary>
    /// Positions as Hugging Face derives them from the mask, int64 [B,S]: cumsum − 1 with padding slots
    /// set to 1, then the last S columns (the new tokens). <paramref name="newTokens"/> is S as a
    /// one-element int64 vector; <paramref name="mask"/> the int64 mask (default: the graph input).
    /// </summary>
    protected string EmitPositionIds(string newTokens, string mask = DecoderNames.AttentionMask)
    {
        var cumulative = G.Op("CumSum", mask, G.ConstInt64(1));
        var positionsAll = G.Op("Where",
            G.Op("Equal", mask, G.ConstInt64(0)), G.ConstInt64(1), G.Op("Sub", cumulative, G.ConstInt64(1)));
        return G.Op("Slice", positionsAll, G.Op("Neg", newTokens), G.ConstInt64s(long.MaxValue), G.ConstInt64s(1));
    }

    /// <summary>
    /// The cos/sin tables ONNX Runtime's rotary operators read, [positions, D/2] each, as initializers
    /// <c>cos_cache</c> and <c>sin_cache</c>: entry (p, i) is cos/sin of p·θ^(−2i/D).
    /// </summary>
    protected (string Cos, string Sin) AddRotaryCaches(int positions)
    {
        var c = Config;
        var half = c.HeadDim / 2;
        var cos = new float[positions * half];
        var sin = new float[positions * half];
        for (var p = 0; p < positions; p++)
            for (var i = 0; i < half; i++)
            {
                var angle = p * Math.Pow(c.RopeTheta, -2.0 * i / c.HeadDim);
                cos[p * half + i] = (float)Math.Cos(angle);
                sin[p * half + i] = (float)Math.Sin(angle);
            }
        return (G.AddInitializer("cos_cache", [positions, half], cos), G.AddInitializer("sin_cache", [positions, half], sin));
    }

    /// <summary>
    /// Hugging Face's RoPE tables from int64 positions [B,S]: cos/sin of position·θ^(−2i/D), the D/2
    /// angles repeated once ([B,S,D]), unsqueezed at <paramref name="headAxis"/> so they broadcast over
    /// the heads of [B,H,S,D] (axis 1) or [B,S,H,D] (axis 2).
    /// </summary>
    protected (string Cos, string Sin) EmitRotaryTables(string positions, long headAxis)
    {
        var c = Config;
        var inverseFrequency = new float[c.HeadDim / 2];
        for (var i = 0; i < inverseFrequency.Length; i++) inverseFrequency[i] = (float)Math.Pow(c.RopeTheta, -2.0 * i / c.HeadDim);
        using (G.Scope("rotary_emb"))
        {
            var invFreq = G.AddInitializer("model.rotary_emb.inv_freq", [inverseFrequency.Length], inverseFrequency);
            var angles = G.Op("Mul",
                G.Op("Unsqueeze", G.Op("Cast", [positions], Attr.Int("to", (long)DataType.Float)), G.ConstInt64s(2)), invFreq);
            var doubled = G.Op("Concat", [angles, angles], Attr.Int("axis", -1));
            return (G.Op("Unsqueeze", G.Op("Cos", doubled), G.ConstInt64s(headAxis)), G.Op("Unsqueeze", G.Op("Sin", doubled), G.ConstInt64s(headAxis)));
        }
    }

    /// <summary>RoPE on the last axis of a 4-D tensor: x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁].</summary>
    protected string RotateHalves(string x, string cos, string sin)
    {
        var half = Config.HeadDim / 2;
        var first = G.Op("Slice", x, G.ConstInt64s(0), G.ConstInt64s(half), G.ConstInt64s(3));
        var second = G.Op("Slice", x, G.ConstInt64s(half), G.ConstInt64s(long.MaxValue), G.ConstInt64s(3));
        var rotated = G.Op("Concat", [G.Op("Neg", second), first], Attr.Int("axis", -1));
        return G.Op("Add", G.Op("Mul", x, cos), G.Op("Mul", rotated, sin));
    }

    /// <summary>RMSNorm as torch exports it: x · 1/√(mean(x²) + ε) · w.</summary>
    protected string RmsNorm(string x, string weight)
    {
        var square = G.Op("Pow", x, G.ConstFloat(2f));
        // Opset 18 moved ReduceMean's axes from an attribute to an input.
        var meanSquare = Opsets[""] >= 18
            ? G.Op("ReduceMean", [square, G.ConstInt64s(-1)], Attr.Int("keepdims", 1))
            : G.Op("ReduceMean", [square], Attr.Ints("axes", -1), Attr.Int("keepdims", 1));
        var inverseRms = G.Op("Div", G.ConstFloat(1f), G.Op("Sqrt", G.Op("Add", meanSquare, G.ConstFloat(Config.RmsEpsilon))));
        return G.Op("Mul", weight, G.Op("Mul", x, inverseRms));
    }
}
