using System.Runtime.CompilerServices;
using Google.Protobuf;
using HySparse.Graph;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Recognition;

/// <summary>How a mask tensor says which keys a query sees.</summary>
internal enum MaskMeaning
{
    /// <summary>Added to the logits: 0 for a visible key, a large negative number for a hidden one.</summary>
    Additive,
    /// <summary>A Where condition selecting the scores where true.</summary>
    TrueKeeps,
    /// <summary>A Where condition selecting the fill value where true.</summary>
    TrueHides,
    /// <summary>ONNX Attention's attn_mask: boolean (true keeps) or additive, whichever type it has.</summary>
    AttentionInput,
}

/// <summary>
/// Computes a layer's mask for a small left-padded batch in ONNX Runtime and checks that it is the
/// causal + padding mask the HySparse op applies. An encoder (BERT-style) masks only padding, and
/// converting its bidirectional attention into a causal op would silently change the model; a mask
/// that ignores padding, or hides something else, would change it too. The mask is what the source
/// graph computes from its inputs, so evaluating it is exact where recognising its construction could
/// only guess.
/// </summary>
internal static class MaskProbe
{
    /// <summary>
    /// The probe batch: <see cref="Batch"/> rows of <see cref="NewTokens"/> new tokens after
    /// <see cref="PastTokens"/> cached ones (none without a cache); the second row's first
    /// <see cref="PaddedSlots"/> slots are padding, reaching into the new tokens.
    /// </summary>
    private const int Batch = 2, NewTokens = 5, PastTokens = 2, PaddedSlots = PastTokens + 1;

    private static readonly ConditionalWeakTable<GraphIndex, Dictionary<(string, MaskMeaning, bool, bool), string?>> Verdicts = new();

    /// <summary>
    /// Null when <paramref name="mask"/> hides exactly the keys the op hides from every real token:
    /// later positions (unless <paramref name="causalByFlag"/>, when the layer adds that itself) and
    /// padding slots of <c>attention_mask</c>; otherwise the reason the layer cannot be converted.
    /// <paramref name="cached"/>: the layer reads past caches (fed as zeros of <see cref="PastTokens"/> tokens).
    /// </summary>
    public static string? CheckCausalPadding(GraphIndex graph, string mask, MaskMeaning meaning, bool causalByFlag, bool cached)
    {
        var verdicts = Verdicts.GetOrCreateValue(graph);
        lock (verdicts)
        {
            var key = (mask, meaning, causalByFlag, cached);
            if (!verdicts.TryGetValue(key, out var verdict)) verdicts[key] = verdict = Evaluate(graph, mask, meaning, causalByFlag, cached ? PastTokens : 0);
            return verdict;
        }
    }

    private static string? Evaluate(GraphIndex graph, string mask, MaskMeaning meaning, bool causalByFlag, int past)
    {
        var total = past + NewTokens;
        var padding = new long[Batch * total];
        for (var j = 0; j < padding.Length; j++) padding[j] = j / total == 1 && j % total < PaddedSlots ? 0 : 1;
        var (model, feeds, problem) = Extract(graph, mask, padding, past);
        if (problem is not null) return problem;

        float[] values;
        int[] dims;
        bool isBool;
        try
        {
            using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_FATAL };
            using var session = new InferenceSession(model!.ToByteArray(), options);
            using var results = session.Run(feeds!, [mask]);
            var result = results.Single();
            switch (result.Value)
            {
                case Tensor<bool> b:
                    (values, dims, isBool) = (b.Select(v => v ? 1f : 0f).ToArray(), b.Dimensions.ToArray(), true);
                    break;
                case Tensor<float> f:
                    (values, dims, isBool) = (f.ToArray(), f.Dimensions.ToArray(), false);
                    break;
                case Tensor<Float16> h:
                    (values, dims, isBool) = (h.Select(v => (float)v).ToArray(), h.Dimensions.ToArray(), false);
                    break;
                default:
                    return $"the mask has element type {result.ElementType}; expected bool, float or float16";
            }
        }
        catch (OnnxRuntimeException error)
        {
            return $"{Unchecked} computing it on a probe batch failed ({error.Message.Split('\n')[0]})";
        }

        // Right-align the mask's shape with [B, H, S, T] and read it by broadcasting.
        if (dims.Length is < 2 or > 4) return $"the mask has rank {dims.Length}; expected [.., S, T]";
        var shape = Enumerable.Repeat(1, 4 - dims.Length).Concat(dims).ToArray();
        if (shape[2] is not (1 or NewTokens) || shape[3] != total || shape[0] is not (1 or Batch))
            return $"the mask computed for {Batch} rows of {NewTokens} new tokens after {past} cached has shape [{string.Join(", ", dims)}], not [.., {NewTokens}, {total}]";
        for (var b = 0; b < Batch; b++)
            for (var h = 0; h < shape[1]; h++)
                for (var s = 0; s < NewTokens; s++)
                {
                    var position = past + s;
                    if (padding[b * total + position] == 0) continue; // a padding query's row is the op's zeros anyway
                    for (var j = 0; j < total; j++)
                    {
                        var value = values[((Math.Min(b, shape[0] - 1) * shape[1] + h) * shape[2] + Math.Min(s, shape[2] - 1)) * shape[3] + j];
                        bool? visible = (meaning, isBool) switch
                        {
                            (MaskMeaning.TrueKeeps, _) or (MaskMeaning.AttentionInput, true) => value != 0,
                            (MaskMeaning.TrueHides, _) => value == 0,
                            _ => value == 0 ? true : value <= -1e4 ? false : null,
                        };
                        if (visible is null)
                            return $"the additive mask holds {value:G} (token at {position}, key {j} of a probe row): neither 0 nor a large negative number";
                        var real = padding[b * total + j] == 1;
                        if (j > position && !causalByFlag && visible.Value)
                            return $"the mask lets the token at {position} see the later key {j}: the attention is not causal (a bidirectional encoder?), and a HySparse layer is";
                        if (j <= position && visible.Value != real)
                            return $"the mask {(real ? "hides" : "shows")} key {j} of a probe row whose attention_mask is {(real ? 1 : 0)}: it is not attention_mask's padding";
                    }
                }
        return null;
    }

    private const string Unchecked = "the mask must be checked to be causal + padding, but";

    /// <summary>
    /// The subgraph computing <paramref name="mask"/> as a model of its own, and feeds for it: the padded
    /// <c>attention_mask</c> [B, P+S], positions P + s for a <c>position_ids</c> input, zeros for other
    /// int64 [batch, sequence] inputs (ids) and for past caches [B, H, P, D].
    /// </summary>
    private static (ModelProto? Model, List<NamedOnnxValue>? Feeds, string? Problem) Extract(GraphIndex graph, string mask, long[] padding, int past)
    {
        var nodes = new HashSet<NodeProto>(ReferenceEqualityComparer.Instance);
        var inputs = new SortedSet<string>(StringComparer.Ordinal);
        var initializers = new List<TensorProto>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<string>([mask]);
        while (pending.Count > 0)
        {
            var tensor = pending.Pop();
            if (tensor.Length == 0 || !seen.Add(tensor)) continue;
            if (graph.IsGraphInput(tensor)) inputs.Add(tensor);
            else if (graph.IsInitializer(tensor)) initializers.Add(graph.Graph.Initializer.First(i => i.Name == tensor));
            else if (graph.Producer(tensor) is { } node && nodes.Add(node))
                foreach (var input in node.Input) pending.Push(input);
        }
        if (initializers.Any(Tensors.IsExternal))
            return (null, null, $"{Unchecked} it reads weights kept in external data");
        if (graph.Model is not { } source)
            return (null, null, $"{Unchecked} the model's opsets are not known");

        var feeds = new List<NamedOnnxValue>();
        foreach (var name in inputs)
        {
            var type = graph.GraphInput(name)!.Type?.TensorType;
            var dims = type?.Shape?.Dim;
            if (type is { ElemType: (int)DataType.Int64 } && dims is { Count: 2 })
            {
                var isMask = name == DecomposedAttentionPattern.AttentionMaskInput;
                var values = isMask ? padding
                    : name.Contains("position", StringComparison.Ordinal) ? Enumerable.Range(0, Batch * NewTokens).Select(i => (long)(past + i % NewTokens)).ToArray()
                    : new long[Batch * NewTokens];
                feeds.Add(NamedOnnxValue.CreateFromTensor(name, new DenseTensor<long>(values, [Batch, isMask ? past + NewTokens : NewTokens])));
            }
            else if (past > 0 && dims is { Count: 4 } && dims[1].DimValue > 0 && dims[3].DimValue > 0
                     && type!.ElemType is (int)DataType.Float or (int)DataType.Float16)
            {
                int[] cacheShape = [Batch, (int)dims[1].DimValue, past, (int)dims[3].DimValue];
                feeds.Add(type.ElemType == (int)DataType.Float
                    ? NamedOnnxValue.CreateFromTensor(name, new DenseTensor<float>(cacheShape))
                    : NamedOnnxValue.CreateFromTensor(name, new DenseTensor<Float16>(cacheShape)));
            }
            else
            {
                return (null, null, $"{Unchecked} it depends on input '{name}', which is neither int64 [batch, sequence] nor a past cache");
            }
        }

        var sub = new GraphProto { Name = "mask_probe" };
        sub.Node.AddRange(graph.Graph.Node.Where(nodes.Contains));
        sub.Initializer.AddRange(initializers);
        sub.Input.AddRange(inputs.Select(graph.GraphInput)!);
        sub.Output.Add(new ValueInfoProto { Name = mask });
        var model = new ModelProto { IrVersion = source.IrVersion, Graph = sub };
        model.OpsetImport.AddRange(source.OpsetImport);
        return (model, feeds, null);
    }
}
