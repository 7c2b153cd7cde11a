using HySparse.Graph;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// Attention as torch.onnx.export and Optimum write it for decoders, with or without a KV cache:
/// <code>
/// [present_k = Concat(past_k, k_rot, axis=2)      present_v = Concat(past_v, v, axis=2)]
/// [repeat_kv: Unsqueeze → Expand → Reshape]       [repeat_kv]
/// scores = MatMul(q_rot, Transpose(K, [0,1,3,2])) → Div(√D) | Mul(1/√D)
///          (or constant Muls on the Q and Kᵀ operands, or folded into Q)
///          or MatMul(q, Transpose(k_heads, [0,2,3,1])) with k_heads the [B,S,H,D] head split (no cache)
/// probs  = Softmax(Add(scores, mask) | Where(cond, scores, −∞), axis=-1) [→ Cast] ;  out = MatMul(probs, V)
/// </code>
/// The anchor is the Softmax. The HySparse op takes q_rot, k_rot, v (BNSH) and the caches if any, and
/// produces <c>out</c> and the presents under their original names; the mask subgraph is replaced
/// by the op's own causal + padding masking from <c>attention_mask</c>, after the mask has been computed
/// on a probe batch and found to be exactly that (<see cref="MaskProbe"/>).
/// </summary>
public sealed class DecomposedAttentionPattern : IAttentionPattern
{
    /// <summary>Name of the padding-mask graph input the op is fed.</summary>
    public const string AttentionMaskInput = HySparse.Onnx.DecoderNames.AttentionMask;

    /// <inheritdoc />
    public AttentionStyle Style => AttentionStyle.Decomposed;

    /// <inheritdoc />
    public IEnumerable<NodeProto> Anchors(GraphIndex graph) =>
        // A Softmax whose output is multiplied by another activation is attention; one feeding a
        // router (TopK) or a classifier output is not.
        graph.Graph.Node.Where(n => n is { OpType: "Softmax", Domain: "" } && ThroughCast(graph, n.Output[0]) is var probabilities
            && graph.Consumers(probabilities).Any(c => c is { OpType: "MatMul", Domain: "" } && c.Input[0] == probabilities && graph.Constant(c.Input[1]) is null));

    /// <summary>
    /// torch exports <c>softmax(…, dtype=float32)</c> as Softmax → Cast: the tensor after such a Cast
    /// when it is the only reader, else <paramref name="tensor"/> itself.
    /// </summary>
    private static string ThroughCast(GraphIndex graph, string tensor) =>
        graph.Consumers(tensor) is [{ OpType: "Cast", Domain: "" } cast] && !graph.IsGraphOutput(tensor) ? cast.Output[0] : tensor;

    /// <inheritdoc />
    public AttentionMatch Match(GraphIndex graph, NodeProto anchor) => AttentionMatch.Catching(() => MatchLayer(graph, anchor));

    private static AttentionLayer MatchLayer(GraphIndex graph, NodeProto softmax)
    {
        var nodes = new List<NodeProto> { softmax };
        var probabilities = ThroughCast(graph, softmax.Output[0]);
        if (probabilities != softmax.Output[0])
        {
            var cast = graph.Producer(probabilities)!;
            if (Attr.GetInt(cast, "to", 0) is not ((long)DataType.Float or (long)DataType.Float16 or (long)DataType.Bfloat16))
                throw new PatternMismatch(cast, "attention probabilities are cast to a non-float type");
            nodes.Add(cast);
        }
        var users = graph.Consumers(probabilities);
        if (users is not [{ OpType: "MatMul", Domain: "" } valueMatMul] || graph.IsGraphOutput(probabilities))
            throw new PatternMismatch(softmax, $"attention probabilities feed {users.Count} node(s) or a graph output; expected only MatMul(probabilities, V)");
        nodes.Add(valueMatMul);
        var axis = Attr.GetInt(softmax, "axis", -1);
        if (axis is not (-1 or 3))
            throw new PatternMismatch(softmax, $"Softmax must normalise over keys (axis -1 or 3), not axis {axis}");

        var (scoresTensor, maskTensor, maskNode, meaning) = MaskedScores(graph, softmax);
        nodes.Add(maskNode);

        var (rawScores, scale) = ScaleFactors.Strip(graph, scoresTensor, nodes);
        if (graph.Producer(rawScores) is not { OpType: "MatMul", Domain: "" } scoreMatMul)
            throw new PatternMismatch(maskNode, $"attention scores '{rawScores}' are not MatMul(Q, Kᵀ) scaled by a constant");
        nodes.Add(scoreMatMul);
        var query = scoreMatMul.Input[0];

        // Keys: [scale] → Transpose(0,1,3,2) → [scale] → [repeat_kv] → [Concat(past, new)], or
        // [scale] → Transpose(0,2,3,1) straight from the [B,S,H,D] head split (no cache, no repeat).
        var (transposedKeys, keyScaleAfter) = ScaleFactors.Strip(graph, scoreMatMul.Input[1], nodes);
        if (graph.Producer(transposedKeys) is not { OpType: "Transpose", Domain: "" } transpose)
            throw new PatternMismatch(scoreMatMul, "keys reach MatMul(Q, Kᵀ) without a Transpose");
        var perm = Attr.GetInts(transpose, "perm");
        if (perm is not ([0, 1, 3, 2] or [0, 2, 3, 1]))
            throw new PatternMismatch(transpose, $"keys transposed with perm [{string.Join(", ", perm ?? [])}]; only [0, 1, 3, 2] on [B,H,T,D] keys or [0, 2, 3, 1] on [B,S,H,D] keys is supported");
        var keyIsBsnh = perm is [0, 2, 3, 1];
        nodes.Add(transpose);
        var (expandedKeys, keyScaleBefore) = ScaleFactors.Strip(graph, transpose.Input[0], nodes);
        var keyExpansion = keyIsBsnh ? new KvExpansion(expandedKeys, 1, []) : KvExpansion.Match(graph, expandedKeys);
        nodes.AddRange(keyExpansion.Nodes);
        var keyCache = CacheConcat.MatchOrNone(graph, keyExpansion.Source, transpose);
        if (keyCache is not null && keyIsBsnh)
            throw new PatternMismatch(transpose, "keys transposed with perm [0, 2, 3, 1] come from a cache Concat; that perm is only supported straight from the [B,S,H,D] head split");
        if (keyCache is not null) nodes.Add(keyCache.Node);

        var valueExpansion = KvExpansion.Match(graph, valueMatMul.Input[1]);
        nodes.AddRange(valueExpansion.Nodes);
        var valueCache = CacheConcat.MatchOrNone(graph, valueExpansion.Source, valueMatMul);
        if (valueCache is not null) nodes.Add(valueCache.Node);
        if (keyCache is null != valueCache is null)
            throw new PatternMismatch(valueMatMul, $"only the {(keyCache is null ? "values" : "keys")} come from a KV cache Concat; keys and values must both be cached or both not");
        if (keyExpansion.Nodes.Count > 0 != valueExpansion.Nodes.Count > 0
            || keyExpansion.GroupSize is { } k && valueExpansion.GroupSize is { } v && k != v)
            throw new PatternMismatch(valueMatMul, $"keys and values are not repeated alike (keys {keyExpansion.GroupSize?.ToString() ?? "?"}×, values {valueExpansion.GroupSize?.ToString() ?? "?"}×)");

        var (kvHeads, headSize, elementType) = keyCache is not null
            ? CacheGeometry(graph, keyCache, scoreMatMul)
            : UncachedGeometry(graph, keyExpansion.Source, valueExpansion.Source, keyIsBsnh, scoreMatMul);
        var groupSize = keyExpansion.Nodes.Count == 0 ? 1
            : keyExpansion.GroupSize ?? valueExpansion.GroupSize ?? GroupSizeFromHeadMerge(graph, valueMatMul, kvHeads, headSize);
        var padding = MaskSource(graph, maskTensor, maskNode);
        // The op masks causally and by attention_mask: the mask must be exactly that (an encoder's
        // padding-only mask, say, is not), so it is computed on a probe batch and checked.
        if (MaskProbe.CheckCausalPadding(graph, maskTensor, meaning, causalByFlag: false, cached: keyCache is not null) is { } notCausal)
            throw new PatternMismatch(maskNode, notCausal);
        RequireSelfContained(graph, nodes, new[] { valueMatMul.Output[0], keyCache?.Present, valueCache?.Present }.OfType<string>().ToList());

        return new AttentionLayer
        {
            Style = AttentionStyle.Decomposed,
            AnchorNode = AttentionMatch.NodeLabel(softmax),
            CacheIndex = keyCache?.LayerNumber(),
            Query = query,
            Key = keyCache?.New ?? keyExpansion.Source,
            KeyIsBsnh = keyIsBsnh,
            Value = valueCache?.New ?? valueExpansion.Source,
            Rank = 4,
            PastKey = keyCache?.Past,
            PastValue = valueCache?.Past,
            PresentKey = keyCache?.Present,
            PresentValue = valueCache?.Present,
            Output = valueMatMul.Output[0],
            AttentionMask = padding,
            Scale = (float)(scale * keyScaleAfter * keyScaleBefore),
            NumHeads = kvHeads * groupSize,
            KvNumHeads = kvHeads,
            HeadSize = headSize,
            ElementType = elementType,
            ReplacedNodes = nodes,
        };
    }

    /// <summary>
    /// The masked scores before the Softmax: <c>Add(scores, mask)</c> in either operand order, or
    /// <c>Where(condition, scores, fill)</c> / <c>Where(condition, fill, scores)</c> with a large negative
    /// constant fill (−∞, the float minimum, −10⁴ …), as newer torch exports write <c>masked_fill</c>.
    /// Returns the scores, the tensor that carries the mask (the additive mask or the condition) and the node.
    /// </summary>
    private static (string Scores, string Mask, NodeProto Node, MaskMeaning Meaning) MaskedScores(GraphIndex graph, NodeProto softmax)
    {
        switch (graph.Producer(softmax.Input[0]))
        {
            case { OpType: "Add", Domain: "" } add:
            {
                var (first, second) = (LeadsToMatMul(graph, add.Input[0]), LeadsToMatMul(graph, add.Input[1]));
                if (first == second)
                    throw new PatternMismatch(add, "cannot tell the attention scores from the mask among the Add's operands");
                return first ? (add.Input[0], add.Input[1], add, MaskMeaning.Additive) : (add.Input[1], add.Input[0], add, MaskMeaning.Additive);
            }
            case { OpType: "Where", Domain: "" } where:
            {
                var (first, second) = (LeadsToMatMul(graph, where.Input[1]), LeadsToMatMul(graph, where.Input[2]));
                if (first == second)
                    throw new PatternMismatch(where, "cannot tell the attention scores from the fill value among the Where's branches");
                var fill = first ? where.Input[2] : where.Input[1];
                if (graph.ScalarConstant(fill) is not { } value || !(value <= MaskedLogitBound))
                    throw new PatternMismatch(where, $"Where fills masked scores with '{fill}', not a constant at or below {MaskedLogitBound:G} (a masked position must get no weight)");
                return (first ? where.Input[1] : where.Input[2], where.Input[0], where, first ? MaskMeaning.TrueKeeps : MaskMeaning.TrueHides);
            }
            default:
                throw new PatternMismatch(softmax, "no mask before Softmax (neither Add(scores, mask) nor Where(mask, scores, −∞)); an unmasked attention is not causal and cannot become a HySparse layer");
        }
    }

    /// <summary>
    /// The largest fill value accepted as "masked": exports use −∞, the float minimum or −10⁴ (old
    /// BERT-style exports), after which exp(fill − max) is 0 in float32 for any realistic logits.
    /// </summary>
    private const double MaskedLogitBound = -1e4;

    /// <summary>
    /// H_kv, D and element type of an uncached layer from its head splits: the keys' (their Reshape
    /// states H_kv and D) or else the values', and the type of the weights they are projected with.
    /// </summary>
    private static (int KvHeads, int HeadSize, DataType Type) UncachedGeometry(GraphIndex graph, string keys, string values, bool keyIsBsnh, NodeProto user)
    {
        var split = HeadSplit.Find(graph, keys) ?? HeadSplit.Find(graph, values)
            ?? throw new PatternMismatch(user, $"without a KV cache the head count and size come from the head split, but neither '{keys}' nor '{values}' is Reshape(x, [.., .., H, D]) with constant H and D");
        if (HeadSplit.Find(graph, keys) is { } keySplit && keySplit.Bnsh == keyIsBsnh)
            throw new PatternMismatch(user, $"keys '{keys}' are {(keySplit.Bnsh ? "[B,H,S,D]" : "[B,S,H,D]")}, which the Transpose before MatMul(Q, Kᵀ) does not expect");
        var type = Upstream.FloatType(graph, values)
            ?? throw new PatternMismatch(user, $"cannot tell the element type of '{values}': no floating-point weight or input feeds it");
        return (split.Heads, split.HeadSize, type);
    }

    /// <summary>
    /// True when <paramref name="tensor"/> is a MatMul output, possibly scaled (by anything: whether
    /// the scale is usable is checked later, with its own reason).
    /// </summary>
    private static bool LeadsToMatMul(GraphIndex graph, string tensor)
    {
        for (var depth = 0; depth < 3 && graph.Producer(tensor) is { Domain: "" } node; depth++)
        {
            if (node.OpType == "MatMul") return true;
            if (node.OpType is not ("Mul" or "Div")) return false;
            tensor = node.OpType == "Mul" && graph.Constant(node.Input[0]) is not null ? node.Input[1] : node.Input[0];
        }
        return false;
    }

    /// <summary>
    /// When the expansion shape is computed at run time, the query head count comes from the
    /// head merge after the attention: Transpose(0,2,1,3) → Reshape to [.., .., H_q·D] whose last
    /// entry is a constant even when the others are gathered from shapes.
    /// </summary>
    private static int GroupSizeFromHeadMerge(GraphIndex graph, NodeProto valueMatMul, int kvHeads, int headSize)
    {
        if (graph.Consumers(valueMatMul.Output[0]) is [{ OpType: "Transpose", Domain: "" } transpose]
            && Attr.GetInts(transpose, "perm") is [0, 2, 1, 3]
            && graph.Consumers(transpose.Output[0]) is [{ OpType: "Reshape", Domain: "" } reshape]
            && graph.PartialIntVector(reshape.Input[1]) is [_, _, { } width]
            && width % ((long)kvHeads * headSize) == 0 && width > 0)
            return checked((int)(width / ((long)kvHeads * headSize)));
        throw new PatternMismatch(valueMatMul,
            "the GQA expansion shape is computed at run time and the head merge after the attention does not state the query width; cannot tell how many query heads share a KV head");
    }

    /// <summary>H_kv, D and element type from the past cache's declared shape [B,H_kv,P,D].</summary>
    private static (int KvHeads, int HeadSize, DataType Type) CacheGeometry(GraphIndex graph, CacheConcat cache, NodeProto user)
    {
        var tensorType = graph.GraphInput(cache.Past)?.Type?.TensorType;
        var dims = tensorType?.Shape?.Dim;
        if (dims is not { Count: 4 } || dims[1].DimValue < 1 || dims[3].DimValue < 1)
            throw new PatternMismatch(user, $"past cache '{cache.Past}' does not declare a 4-D shape with fixed head count and head size");
        return (checked((int)dims[1].DimValue), checked((int)dims[3].DimValue), (DataType)tensorType!.ElemType);
    }

    /// <summary>
    /// The padding mask graph input the additive mask is computed from. The op rebuilds the causal
    /// part itself; a mask computed from anything else could mean something the op cannot express.
    /// </summary>
    internal static string? MaskSource(GraphIndex graph, string mask, NodeProto maskAdd)
    {
        var input = graph.GraphInput(AttentionMaskInput);
        if (input is null)
        {
            if (Upstream.GraphInputs(graph, mask).FirstOrDefault() is { } other)
                throw new PatternMismatch(maskAdd, $"the mask depends on the values of graph input '{other}' but there is no '{AttentionMaskInput}' input to give the op");
            return null;
        }
        var type = input.Type?.TensorType;
        if (type is null || (DataType)type.ElemType != DataType.Int64 || type.Shape?.Dim.Count != 2)
            throw new PatternMismatch(maskAdd, $"'{AttentionMaskInput}' must be int64 [batch, total length] to feed the op directly");
        if (!Upstream.GraphInputs(graph, mask).Contains(AttentionMaskInput))
            throw new PatternMismatch(maskAdd, $"the mask is not computed from '{AttentionMaskInput}'");
        return AttentionMaskInput;
    }

    /// <summary>
    /// Every tensor the matched nodes produce, except <paramref name="kept"/>, must be used only inside
    /// the match: removing the nodes must not starve anything else.
    /// </summary>
    private static void RequireSelfContained(GraphIndex graph, List<NodeProto> nodes, IReadOnlyCollection<string> kept)
    {
        var members = new HashSet<NodeProto>(nodes, ReferenceEqualityComparer.Instance);
        if (members.Count != nodes.Count) throw new PatternMismatch(nodes[0], "the attention subgraph matched a node twice");
        foreach (var node in nodes)
            foreach (var output in node.Output.Where(o => o.Length > 0 && !kept.Contains(o)))
            {
                if (graph.IsGraphOutput(output))
                    throw new PatternMismatch(node, $"intermediate attention tensor '{output}' is a graph output");
                if (graph.Consumers(output).FirstOrDefault(c => !members.Contains(c)) is { } outsider)
                    throw new PatternMismatch(node, $"intermediate attention tensor '{output}' is also used by '{AttentionMatch.NodeLabel(outsider)}'");
            }
    }
}
