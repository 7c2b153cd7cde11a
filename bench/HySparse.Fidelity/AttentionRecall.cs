using Google.Protobuf;
using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;
using Onnx;

namespace HySparse.Fidelity;

/// <summary>The oracle's attention recall of one sparse layer.</summary>
/// <param name="Layer">Layer number (0-based, as in <c>present.N.key</c>).</param>
/// <param name="Context">Tokens per window.</param>
/// <param name="Windows">Windows of validation text it was measured on.</param>
/// <param name="Recall">Mean over windows, heads and query positions of the layer's dense attention
/// probability that falls inside the selected blocks ∪ the window.</param>
/// <param name="Coverage">Mean share of the causal keys inside the selected blocks ∪ the window: the
/// recall a layer whose attention is uniform would have (recall well above it means the oracle finds
/// where the layer looks).</param>
/// <param name="SaGate">Mean σ(gate) of the SA branch (selected blocks) over heads, positions and windows,
/// for a <c>combine="gate"</c> layer (the native model); NaN for a layer without gates. A native layer
/// whose SA gate stays near 0 barely uses its selection, whatever its recall.</param>
/// <param name="WindowGate">Mean σ(gate) of the sliding-window branch, like <paramref name="SaGate"/>.</param>
public sealed record LayerRecall(int Layer, int Context, int Windows, double Recall, double Coverage,
    double SaGate = double.NaN, double WindowGate = double.NaN);

/// <summary>Recall and key coverage of one layer on one batch (see <see cref="LayerRecall"/>).</summary>
public readonly record struct RecallStats(double Recall, double Coverage);

/// <summary>The attributes of a <c>HySparseSparseAttn</c> node that decide which keys it reads.</summary>
/// <param name="NumHeads">Query heads H_q.</param>
/// <param name="KvHeads">Key/value heads H_kv (query head h reads KV head h / (H_q / H_kv)).</param>
/// <param name="Scale">Logit scale; 0 means 1/√D.</param>
/// <param name="BlockSize">Tokens per key block.</param>
/// <param name="Window">Sliding-window tokens (positions t − w &lt; j ≤ t).</param>
public sealed record SparseLayerSpec(int NumHeads, int KvHeads, double Scale, int BlockSize, int Window);

/// <summary>A sparse layer of an instrumented model: the graph outputs that expose what it reads.</summary>
/// <param name="Layer">Layer number.</param>
/// <param name="Query">The node's query input (post-RoPE).</param>
/// <param name="Key">The keys the layer's dense attention would read: its own new keys (retrofit), or the
/// shared full layer's new keys (KV sharing, native) — both the whole cache after a prefill from empty.</param>
/// <param name="BlockIndices">The oracle's selection the node consumes.</param>
/// <param name="Spec">The node's attributes.</param>
/// <param name="Gate">The node's gate logits (<c>combine="gate"</c> with a gate input), or null.</param>
public sealed record RecallLayer(int Layer, string Query, string Key, string BlockIndices, SparseLayerSpec Spec, string? Gate = null)
{
    /// <summary>The layer's mean recall over the batch in these outputs of one prefill.</summary>
    public RecallStats Measure(OrtValue query, OrtValue key, OrtValue blockIndices) =>
        AttentionRecall.Mean(Spec, query.GetTensorDataAsSpan<float>(), query.GetTensorTypeAndShape().Shape,
            key.GetTensorDataAsSpan<float>(), key.GetTensorTypeAndShape().Shape,
            blockIndices.GetTensorDataAsSpan<int>(), blockIndices.GetTensorTypeAndShape().Shape);
}

/// <summary>
/// Attention recall: for a sparse layer, the fraction of its own dense attention probability (softmax
/// over every causal key, in float64, with the op's scale) that falls inside the blocks the oracle
/// selected for it ∪ its sliding window, averaged over heads and query positions. The part it misses is
/// what the layer's sparse attention cannot see.
/// </summary>
public static class AttentionRecall
{
    /// <summary>
    /// Adds graph outputs for every selecting sparse layer's query, keys and block indices (see
    /// <see cref="RecallLayer"/>). Sparse layers whose block indices no <c>HySparseFullAttn</c> computes
    /// (the sliding-window baseline's empty selection) are left out.
    /// </summary>
    public static (byte[] Model, IReadOnlyList<RecallLayer> Layers) Instrument(byte[] serialized)
    {
        var model = ModelProto.Parser.ParseFrom(serialized);
        var fullByIndices = new Dictionary<string, NodeProto>();
        var fullByPresentKey = new Dictionary<string, NodeProto>();
        foreach (var node in model.Graph.Node.Where(n => n.Domain == HySparseOps.Domain && n.OpType == HySparseOps.FullAttn))
        {
            if (node.Output.Count > 3 && node.Output[3].Length > 0) fullByIndices[node.Output[3]] = node;
            fullByPresentKey[node.Output[1]] = node;
        }
        var layers = new List<RecallLayer>();
        var attention = model.Graph.Node.Where(n => n.Domain == HySparseOps.Domain && n.OpType is HySparseOps.FullAttn or HySparseOps.SparseAttn).ToList();
        foreach (var node in attention.Where(n => n.OpType == HySparseOps.SparseAttn))
        {
            if (!fullByIndices.ContainsKey(node.Input[7])) continue;
            var shared = node.Input.Count > 5 && node.Input[5].Length > 0;
            // With a prefill from empty caches, a present cache is exactly the new keys of that call.
            var key = shared
                ? (fullByPresentKey.TryGetValue(node.Input[5], out var full) ? full.Input[1]
                    : throw new InvalidDataException($"node '{node.Name}' shares keys '{node.Input[5]}' that no HySparseFullAttn produces"))
                : node.Input[1];
            var spec = new SparseLayerSpec((int)Int(node, HySparseOps.Attributes.NumHeads, 0), (int)Int(node, HySparseOps.Attributes.KvNumHeads, 0),
                node.Attribute.FirstOrDefault(a => a.Name == HySparseOps.Attributes.Scale)?.F ?? 0,
                (int)Int(node, HySparseOps.Attributes.BlockSize, 64), (int)Int(node, HySparseOps.Attributes.Window, 128));
            var gated = node.Attribute.FirstOrDefault(a => a.Name == HySparseOps.Attributes.Combine)?.S.ToStringUtf8() == HySparseOps.CombineModes.Gate;
            var gate = gated && node.Input.Count > 9 && node.Input[9].Length > 0 ? node.Input[9] : null;
            layers.Add(new RecallLayer(LayerNumber(node, attention.IndexOf(node)), node.Input[0], key, node.Input[7], spec, gate));
        }
        var declared = model.Graph.Output.Select(o => o.Name).ToHashSet();
        foreach (var l in layers)
        {
            var outputs = new List<(string, TensorProto.Types.DataType)> { (l.Query, TensorProto.Types.DataType.Float), (l.Key, TensorProto.Types.DataType.Float), (l.BlockIndices, TensorProto.Types.DataType.Int32) };
            if (l.Gate is not null) outputs.Add((l.Gate, TensorProto.Types.DataType.Float));
            foreach (var (name, type) in outputs)
                if (declared.Add(name))
                    model.Graph.Output.Add(new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type } } });
        }
        return (model.ToByteArray(), layers);
    }

    /// <summary>
    /// Mean recall over batch rows, query heads and query positions. <paramref name="query"/> is
    /// [B, S, H_q·D] or [B, H_q, S, D]; <paramref name="key"/> of the same rank, [B, T, H_kv·D] or
    /// [B, H_kv, T, D] with T ≥ S (the new tokens are the last S positions); <paramref name="blockIndices"/>
    /// int32 [B, H_kv, S, K] as docs/ops.md defines it (−1 = empty slot). Every key is valid (no padding).
    /// Also returns the mean share of the causal keys inside selected ∪ window.
    /// </summary>
    public static RecallStats Mean(SparseLayerSpec spec, ReadOnlySpan<float> query, ReadOnlySpan<long> queryShape,
        ReadOnlySpan<float> key, ReadOnlySpan<long> keyShape, ReadOnlySpan<int> blockIndices, ReadOnlySpan<long> indexShape)
    {
        var bnsh = queryShape.Length == 4;
        if (!bnsh && queryShape.Length != 3 || keyShape.Length != queryShape.Length || indexShape.Length != 4)
            throw new ArgumentException($"expected query/key of rank 3 or 4 and block indices of rank 4, got [{string.Join(",", queryShape.ToArray())}], [{string.Join(",", keyShape.ToArray())}], [{string.Join(",", indexShape.ToArray())}]");
        int batch = (int)queryShape[0], hq = spec.NumHeads, hkv = spec.KvHeads;
        var s = (int)(bnsh ? queryShape[2] : queryShape[1]);
        var t = (int)(bnsh ? keyShape[2] : keyShape[1]);
        var d = (int)(bnsh ? queryShape[3] : queryShape[2] / hq);
        var k = (int)indexShape[3];
        if ((bnsh ? queryShape[1] : queryShape[2] / d) != hq || (bnsh ? keyShape[1] * keyShape[3] : keyShape[2]) != hkv * d
            || indexShape[0] != batch || indexShape[1] != hkv || indexShape[2] != s || t < s)
            throw new ArgumentException("query, key and block indices do not fit the layer's heads and lengths");
        var scale = spec.Scale > 0 ? spec.Scale : 1 / Math.Sqrt(d);
        var group = hq / hkv;
        var past = t - s;
        var keys = new double[t * d];
        var q = new double[d];
        var logits = new double[t];
        var selected = new bool[(t + spec.BlockSize - 1) / spec.BlockSize];
        double total = 0, covered = 0;
        for (var b = 0; b < batch; b++)
            for (var g = 0; g < hkv; g++)
            {
                for (var j = 0; j < t; j++)
                    for (var c = 0; c < d; c++)
                        keys[j * d + c] = key[bnsh ? ((b * hkv + g) * t + j) * d + c : (b * t + j) * hkv * d + g * d + c];
                for (var i = 0; i < s; i++)
                {
                    var position = past + i;
                    Array.Clear(selected);
                    for (var slot = 0; slot < k; slot++)
                    {
                        var block = blockIndices[((b * hkv + g) * s + i) * k + slot];
                        if (block >= 0) selected[block] = true;
                    }
                    for (var h = g * group; h < (g + 1) * group; h++)
                    {
                        for (var c = 0; c < d; c++)
                            q[c] = scale * query[bnsh ? ((b * hq + h) * s + i) * d + c : (b * s + i) * hq * d + h * d + c];
                        var max = double.NegativeInfinity;
                        for (var j = 0; j <= position; j++)
                        {
                            double dot = 0;
                            for (var c = 0; c < d; c++) dot += q[c] * keys[j * d + c];
                            logits[j] = dot;
                            if (dot > max) max = dot;
                        }
                        double all = 0, inside = 0;
                        var inKeys = 0;
                        for (var j = 0; j <= position; j++)
                        {
                            var p = Math.Exp(logits[j] - max);
                            all += p;
                            if (j > position - spec.Window || selected[j / spec.BlockSize])
                            {
                                inside += p;
                                inKeys++;
                            }
                        }
                        total += inside / all;
                        covered += (double)inKeys / (position + 1);
                    }
                }
            }
        var count = (double)batch * hq * s;
        return new RecallStats(total / count, covered / count);
    }

    /// <summary>
    /// Mean σ of the SA and of the window gate logits in <paramref name="gate"/>, [B, S, 2·H_q] (per head)
    /// or [B, S, 2·H_q·D] (per channel): the first half of the last axis is the SA branch's, the second the
    /// window's (docs/ops.md, <c>combine = "gate"</c>).
    /// </summary>
    public static (double Sa, double Window) GateMeans(ReadOnlySpan<float> gate, ReadOnlySpan<long> shape)
    {
        if (shape.Length != 3 || shape[2] < 2 || shape[2] % 2 != 0)
            throw new ArgumentException($"expected gate logits [B, S, 2·H] or [B, S, 2·H·D], got [{string.Join(",", shape.ToArray())}]");
        var half = (int)shape[2] / 2;
        var rows = (int)(shape[0] * shape[1]);
        double sa = 0, window = 0;
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < half; c++)
            {
                sa += Sigmoid(gate[r * 2 * half + c]);
                window += Sigmoid(gate[r * 2 * half + half + c]);
            }
        var count = (double)rows * half;
        return (sa / count, window / count);
    }

    private static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));

    /// <summary>N of the node's <c>present.N.key</c> output; its index among the attention nodes otherwise.</summary>
    private static int LayerNumber(NodeProto node, int ordinal)
    {
        var present = node.Output.Count > 1 ? node.Output[1].Split('.') : [];
        return present.Length == 3 && present[0] == "present" && int.TryParse(present[1], out var n) ? n : ordinal;
    }

    private static long Int(NodeProto node, string name, long fallback) => node.Attribute.FirstOrDefault(a => a.Name == name)?.I ?? fallback;
}
