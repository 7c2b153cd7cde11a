using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Recognition;

/// <summary>An attention formulation the converter knows how to find.</summary>
public enum AttentionStyle
{
    /// <summary>MatMul(Q,Kᵀ) → scale → Add(mask) or Where(mask) → Softmax → MatMul(V), as torch.onnx.export and Optimum emit it.</summary>
    Decomposed,
    /// <summary>The ONNX <c>Attention</c> operator (opset 23).</summary>
    Fused,
    /// <summary><c>com.microsoft.GroupQueryAttention</c> with a shared KV buffer, as the onnxruntime-genai model builder emits it.</summary>
    GroupQueryAttention,
    /// <summary><c>com.microsoft.MultiHeadAttention</c> with concatenated BNSH caches.</summary>
    MultiHeadAttention,
    /// <summary>
    /// <c>com.microsoft.Attention</c> (ONNX Runtime's transformer optimiser for GPT-2, onnxruntime-genai's
    /// <c>gpt2</c> type): QKV projection inside the op, one combined past/present cache per layer.
    /// </summary>
    ContribAttention,
}

/// <summary>
/// Keys and values cached together in one tensor [2,B,H,T,D] (index 0 keys, 1 values), as
/// <c>com.microsoft.Attention</c>'s <c>past</c> / <c>present</c>. The HySparse ops take separate caches:
/// the rewrite takes the two halves of <see cref="Past"/> apart in front of the op and stacks the op's
/// present key and value into <see cref="Present"/> after it, so the model's interface stays as it was.
/// </summary>
/// <param name="Past">The combined past cache graph input [2,B,H,P,D].</param>
/// <param name="Present">The combined present cache [2,B,H,P+S,D] the layer produces.</param>
public sealed record CombinedKvCache(string Past, string Present);

/// <summary>
/// GroupQueryAttention's shared KV buffer: the caches are buffers of fixed capacity whose valid length
/// per row comes from <c>seqlens_k</c>. The HySparse ops run in their shared-buffer mode on the same two
/// tensors (docs/ops.md, "Shared KV buffer").
/// </summary>
/// <param name="SeqlensK">int32 [B]: valid total length − 1 per row.</param>
/// <param name="TotalSequenceLength">int32 scalar: the largest valid total length.</param>
public sealed record SharedKvBuffer(string SeqlensK, string TotalSequenceLength);

/// <summary>RoPE a fused op applies inside itself, which the converter moves into a <c>com.microsoft.RotaryEmbedding</c> before the HySparse op.</summary>
/// <param name="CosCache">[max positions, R/2] cosine table.</param>
/// <param name="SinCache">[max positions, R/2] sine table.</param>
/// <param name="RotaryDim">R, the leading channels of each head that rotate (the rest pass through).</param>
/// <param name="Interleaved">Pairs are (x₀,x₁), (x₂,x₃)… instead of the two halves.</param>
/// <param name="SeqlensK">The op's <c>seqlens_k</c> (int32 [B], valid total length − 1), which the op
/// derives the rotation's positions from. Kept here rather than read from <see cref="AttentionLayer.Buffer"/>:
/// a KV-sharing conversion turns the buffers into concatenated caches but keeps the positions.</param>
public sealed record InternalRotary(string CosCache, string SinCache, int RotaryDim, bool Interleaved, string SeqlensK);

/// <summary>
/// How a fused op's query input becomes the HySparse op's query, key and value: split when Q, K and V
/// come packed in one tensor, rotated when the op applied RoPE itself. Positions for the rotation are
/// derived from <see cref="InternalRotary.SeqlensK"/> exactly as GroupQueryAttention derives them.
/// </summary>
/// <param name="PackedQkv">The query input is [B,S,(H_q + 2·H_kv)·D]; key and value are absent.</param>
/// <param name="Rotary">RoPE to apply to Q and K, or null.</param>
/// <param name="QkvBias">A [(H_q + 2·H_kv)·D] bias the op added to Q, K and V (in that order) before attending, or null.</param>
/// <param name="QkvWeights">
/// The op projected its input itself: packed QKV is <c>MatMul(query input, QkvWeights)</c> with weights
/// [hidden, (H_q + 2·H_kv)·D] (requires <paramref name="PackedQkv"/>); null when Q/K/V come projected.
/// </param>
public sealed record FusedInputs(bool PackedQkv, InternalRotary? Rotary, string? QkvBias = null, string? QkvWeights = null);

/// <summary>
/// One recognised attention layer, reduced to what the HySparse operators need: the tensors that
/// become the op's inputs and outputs, the head geometry, and the nodes the op replaces.
/// </summary>
public sealed record AttentionLayer
{
    /// <summary>How the layer was written.</summary>
    public required AttentionStyle Style { get; init; }
    /// <summary>Name of the node that anchors the match (reported to users).</summary>
    public required string AnchorNode { get; init; }
    /// <summary>The layer number in the cache names (<c>past_key_values.N</c>), when they follow that convention.</summary>
    public int? CacheIndex { get; init; }
    /// <summary>
    /// Query after RoPE, [B,H_q,S,D] (rank 4) or [B,S,H_q·D] (rank 3); for a fused op that rotates or
    /// takes packed QKV itself, the op's query input as it is (see <see cref="Inputs"/>).
    /// </summary>
    public required string Query { get; init; }
    /// <summary>This call's keys after RoPE, same rank as <see cref="Query"/> (empty when <see cref="Inputs"/> says Q/K/V are packed in <see cref="Query"/>).</summary>
    public required string Key { get; init; }
    /// <summary>This call's values.</summary>
    public required string Value { get; init; }
    /// <summary>Rank of query, key and value (3 or 4).</summary>
    public required int Rank { get; init; }
    /// <summary>
    /// True when <see cref="Key"/> is [B,S,H_kv,D] (a head split not yet transposed, as exports that
    /// transpose keys with perm [0,2,3,1] have it): the rewrite feeds the op its BNSH transpose.
    /// </summary>
    public bool KeyIsBsnh { get; init; }
    /// <summary>Past key cache graph input [B,H_kv,P,D]; null when the export has no KV cache or keeps it in <see cref="Combined"/>.</summary>
    public required string? PastKey { get; init; }
    /// <summary>Past value cache graph input; null when the export has no KV cache.</summary>
    public required string? PastValue { get; init; }
    /// <summary>
    /// Present key cache tensor (kept as the op's output name); null when the source produces none
    /// (no KV cache): the op's required present outputs then get fresh names nothing reads.
    /// </summary>
    public required string? PresentKey { get; init; }
    /// <summary>Present value cache tensor; null when the source produces none.</summary>
    public required string? PresentValue { get; init; }
    /// <summary>
    /// Keys and values cached in one tensor each for past and present (then <see cref="PastKey"/>,
    /// <see cref="PastValue"/>, <see cref="PresentKey"/> and <see cref="PresentValue"/> are null), or null.
    /// </summary>
    public CombinedKvCache? Combined { get; init; }
    /// <summary>True when the layer reads and writes a KV cache, separate or combined.</summary>
    public bool HasKvCache => PastKey is not null || Combined is not null;
    /// <summary>Attention output tensor (kept as the op's output name), layout of <see cref="Query"/>.</summary>
    public required string Output { get; init; }
    /// <summary>
    /// The [B,P+S] padding mask graph input the layer's mask derives from, or null (causal only). int64
    /// (what the ops take) except for fused operators' masks, which may be int32, float or float16 0/1
    /// masks: the rewrite then feeds the ops one shared Cast of it to int64.
    /// </summary>
    public string? AttentionMask { get; init; }
    /// <summary>Logit scale the layer applies to Q·Kᵀ (1 when it is folded into Q).</summary>
    public required float Scale { get; init; }
    /// <summary>Query heads H_q.</summary>
    public required int NumHeads { get; init; }
    /// <summary>Key/value heads H_kv.</summary>
    public required int KvNumHeads { get; init; }
    /// <summary>Head size D.</summary>
    public required int HeadSize { get; init; }
    /// <summary>Element type of the caches.</summary>
    public required DataType ElementType { get; init; }
    /// <summary>Shared-buffer caches (GroupQueryAttention), or null for concatenated caches (present = past ++ new).</summary>
    public SharedKvBuffer? Buffer { get; init; }
    /// <summary>Splitting and rotation to insert before the op (fused styles), or null when Q/K/V are ready as they are.</summary>
    public FusedInputs? Inputs { get; init; }
    /// <summary>Nodes the HySparse op replaces (their other outputs are used nowhere else).</summary>
    public required IReadOnlyList<NodeProto> ReplacedNodes { get; init; }
}

/// <summary>An attention-like subgraph the converter found but cannot convert.</summary>
/// <param name="Node">Name of the node the problem was found at.</param>
/// <param name="Reason">Why the layer cannot be converted, in a sentence.</param>
public sealed record UnconvertibleLayer(string Node, string Reason)
{
    /// <inheritdoc />
    public override string ToString() => $"{Node}: {Reason}";
}

/// <summary>Outcome of matching one anchor: a layer, or the reason it is not one.</summary>
public sealed class AttentionMatch
{
    private AttentionMatch(AttentionLayer? layer, UnconvertibleLayer? failure)
    {
        Layer = layer;
        Failure = failure;
    }

    /// <summary>The recognised layer, or null on failure.</summary>
    public AttentionLayer? Layer { get; }
    /// <summary>The failure, or null on success.</summary>
    public UnconvertibleLayer? Failure { get; }

    /// <summary>A successful match.</summary>
    public static AttentionMatch Success(AttentionLayer layer) => new(layer, null);
    /// <summary>Runs a pattern's matcher, turning a <see cref="PatternMismatch"/> it raises into a failure.</summary>
    internal static AttentionMatch Catching(Func<AttentionLayer> match)
    {
        try
        {
            return Success(match());
        }
        catch (PatternMismatch mismatch)
        {
            return Fail(mismatch.Node, mismatch.Message);
        }
    }

    /// <summary>A failed match at <paramref name="node"/>.</summary>
    public static AttentionMatch Fail(NodeProto node, string reason) => new(null, new UnconvertibleLayer(NodeLabel(node), reason));

    /// <summary>The node's name, or its type and first output when it has no name.</summary>
    public static string NodeLabel(NodeProto node) =>
        node.Name.Length > 0 ? node.Name : $"{node.OpType} -> {node.Output.FirstOrDefault()}";
}

/// <summary>Raised inside a pattern to abandon a match with a reason; never escapes the recogniser.</summary>
internal sealed class PatternMismatch(NodeProto node, string reason) : Exception(reason)
{
    public NodeProto Node { get; } = node;
}
