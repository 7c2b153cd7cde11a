using Google.Protobuf;
using HySparse.Graph;
using HySparse.Onnx;
using Onnx;

namespace HySparse.Fidelity;

/// <summary>The oracle's attention recall of one sparse layer.</summary>
/// <param name="Node">The <c>HySparseSparseAttn</c> node.</param>
/// <param name="Recall">Mean, over query heads and the second half of each window's positions, of the
/// share of the layer's own dense attention probability inside the selected blocks ∪ the window.</param>
public sealed record LayerRecall(string Node, double Recall);

/// <summary>Attention recall of every sparse layer of a model at one context.</summary>
/// <param name="Context">Window length.</param>
/// <param name="Windows">Windows of validation text averaged over.</param>
/// <param name="Layers">Per sparse layer, in graph order.</param>
public sealed record RecallScore(int Context, int Windows, IReadOnlyList<LayerRecall> Layers)
{
    /// <summary>Mean over the sparse layers.</summary>
    public double Mean => Layers.Average(l => l.Recall);
}

/// <summary>
/// What the oracle keeps of each sparse layer's attention: for a query at position s of a layer, its
/// dense attention p_j = softmax_j(scale · q_s · k_j) over every causal key j of the keys the layer's SA
/// branch reads (its own cache for a retrofit; the full layer's cache with KV sharing and in the native
/// model), and the probability mass at keys inside the blocks the oracle selected for s (block_indices)
/// or inside the window (the last w positions). A recall of 1 means the sparse layer sees everything its
/// own attention would have looked at; what it misses explains a conversion's loss.
/// </summary>
/// <remarks>
/// The tensors are the model's own: the query, key and block_indices tensors the sparse node reads are
/// exposed as extra graph outputs and fetched after one prefill per window; the softmax is computed in
/// float64. Positions in the first half of a window are left out of the mean: with s below K·B + w every
/// key is inside the selection and the recall is 1 by construction.
/// </remarks>
public static class AttentionRecall
{
    private sealed record SparseLayer(string Node, string Query, string Keys, string Indices, int Heads, int KvHeads, int BlockSize, int Window, float Scale);

    /// <summary>Null when the model has no sparse layer.</summary>
    public static RecallScore? Measure(byte[] modelBytes, byte[] text, int context, int windows)
    {
        var model = ModelProto.Parser.ParseFrom(modelBytes);
        var layers = SparseLayers(model);
        if (layers.Count == 0) return null;
        var outputs = model.Graph.Output.Select(o => o.Name).ToHashSet();
        foreach (var name in layers.SelectMany(l => new[] { l.Query, l.Keys, l.Indices }).Distinct().Where(n => !outputs.Contains(n)))
        {
            var type = layers.Any(l => l.Indices == name) ? TensorProto.Types.DataType.Int32 : TensorProto.Types.DataType.Float;
            model.Graph.Output.Add(new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type } } });
        }
        using var session = Evaluator.Open(model.ToByteArray());
        var extra = layers.SelectMany(l => new[] { l.Query, l.Keys, l.Indices }).Distinct().ToList();
        var sums = new double[layers.Count];
        var counts = new long[layers.Count];
        var stride = (text.Length - context - 1) / Math.Max(1, windows - 1);
        for (var w = 0; w < windows; w++)
        {
            using var decoder = new KvCacheDecoder(session, 1, extra);
            decoder.Step(text.AsSpan(w * stride, context).ToArray().Select(b => (long)b).ToArray());
            for (var i = 0; i < layers.Count; i++)
            {
                var (sum, count) = Layer(layers[i], decoder, context);
                sums[i] += sum;
                counts[i] += count;
            }
        }
        return new RecallScore(context, windows, layers.Select((l, i) => new LayerRecall(l.Node, sums[i] / counts[i])).ToList());
    }

    /// <summary>
    /// Recall of one query row against its keys: the share of softmax(scale · q · kᵀ) over keys
    /// [0, position] that falls in <paramref name="selected"/> blocks or the last <paramref name="window"/> positions.
    /// </summary>
    public static double Recall(ReadOnlySpan<float> query, ReadOnlySpan<float> keys, int headDim, int position, double scale,
                                ReadOnlySpan<int> selected, int blockSize, int window)
    {
        var logits = new double[position + 1];
        var max = double.NegativeInfinity;
        for (var j = 0; j <= position; j++)
        {
            double dot = 0;
            var key = keys.Slice(j * headDim, headDim);
            for (var d = 0; d < headDim; d++) dot += (double)query[d] * key[d];
            logits[j] = scale * dot;
            max = Math.Max(max, logits[j]);
        }
        double total = 0, kept = 0;
        for (var j = 0; j <= position; j++)
        {
            var p = Math.Exp(logits[j] - max);
            total += p;
            var inWindow = j > position - window;
            var block = j / blockSize;
            var inSelected = false;
            foreach (var b in selected) inSelected |= b == block;
            if (inWindow || inSelected) kept += p;
        }
        return kept / total;
    }

    // Sums the recall over query heads and the positions of the window's second half.
    private static (double Sum, long Count) Layer(SparseLayer layer, KvCacheDecoder decoder, int context)
    {
        var q = decoder.ExtraOutput(layer.Query);
        var k = decoder.ExtraOutput(layer.Keys);
        var idx = decoder.ExtraOutput(layer.Indices);
        var qShape = q.GetTensorTypeAndShape().Shape;
        var kShape = k.GetTensorTypeAndShape().Shape;   // [1, H_kv, T, D]
        var iShape = idx.GetTensorTypeAndShape().Shape; // [1, H_kv, S, K]
        var headDim = (int)kShape[3];
        var scale = EffectiveScale(layer.Scale, headDim);
        var queries = q.GetTensorDataAsSpan<float>().ToArray();
        var keys = k.GetTensorDataAsSpan<float>().ToArray();
        var indices = idx.GetTensorDataAsSpan<int>().ToArray();
        var topK = (int)iShape[3];
        var group = layer.Heads / layer.KvHeads;
        var bnsh = qShape.Length == 4;  // [1, H_q, S, D]; else [1, S, H_q·D]
        var sum = 0.0;
        long count = 0;
        var gate = new object();
        Parallel.For(0, layer.Heads, h =>
        {
            var g = h / group;
            var headKeys = keys.AsSpan(g * (int)kShape[2] * headDim, (int)kShape[2] * headDim).ToArray();
            double local = 0;
            long n = 0;
            var query = new float[headDim];
            for (var s = context / 2; s < context; s++)
            {
                for (var d = 0; d < headDim; d++)
                    query[d] = bnsh ? queries[(h * context + s) * headDim + d] : queries[s * layer.Heads * headDim + h * headDim + d];
                var selected = indices.AsSpan((g * context + s) * topK, topK);
                local += Recall(query, headKeys, headDim, s, scale, selected, layer.BlockSize, layer.Window);
                n++;
            }
            lock (gate)
            {
                sum += local;
                count += n;
            }
        });
        return (sum, count);
    }

    private static List<SparseLayer> SparseLayers(ModelProto model)
    {
        var producers = new Dictionary<string, NodeProto>();
        foreach (var node in model.Graph.Node)
            foreach (var output in node.Output)
                producers[output] = node;
        var layers = new List<SparseLayer>();
        foreach (var node in model.Graph.Node.Where(n => n.OpType == HySparseOps.SparseAttn))
        {
            string Input(int i) => node.Input.Count > i ? node.Input[i] : "";
            var indices = Input(7);
            // The keys the SA branch reads: shared_key (KV sharing), else the full layer's present_key
            // when it hands over gathered rows (selected_key), else this layer's own present_key.
            var keys = Input(5).Length > 0 ? Input(5)
                : Input(11).Length > 0 ? producers[indices].Output[1]
                : node.Output[1];
            long Int(string name, long fallback) => node.Attribute.FirstOrDefault(a => a.Name == name)?.I ?? fallback;
            var heads = (int)Int(HySparseOps.Attributes.NumHeads, 0);
            var kvHeads = (int)Int(HySparseOps.Attributes.KvNumHeads, 0);
            var scale = node.Attribute.FirstOrDefault(a => a.Name == HySparseOps.Attributes.Scale)?.F ?? 0f;
            layers.Add(new SparseLayer(node.Name, Input(0), keys, indices, heads, kvHeads, (int)Int(HySparseOps.Attributes.BlockSize, 64),
                                       (int)Int(HySparseOps.Attributes.Window, 128), scale));
        }
        return layers;
    }

    /// <summary>The scale a node uses: its attribute, or 1/√D when it is 0 or absent (docs/ops.md).</summary>
    internal static double EffectiveScale(float attribute, int headDim) => attribute != 0 ? attribute : 1 / Math.Sqrt(headDim);
}
