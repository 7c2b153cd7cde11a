using System.Runtime.CompilerServices;
using Google.Protobuf;
using HySparse.Exporter.Graph;
using HySparse.Models.Graph;
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
/// causal + padding mask the HySparse op applies. Exports without a KV cache need this: an encoder
/// (BERT-style) masks only padding, and converting its bidirectional attention into a causal op
/// would silently change the model. The mask is what the source graph computes from its inputs, so
/// evaluating it is exact where recognising its construction could only guess.
/// </summary>
internal static class MaskProbe
{
    /// <summary>Tokens per row of the probe; the second row has <see cref="PaddedSlots"/> padding slots first.</summary>
    private const int Tokens = 5, PaddedSlots = 2, Batch = 2;

    private static readonly ConditionalWeakTable<GraphIndex, Dictionary<(string, MaskMeaning, bool), string?>> Verdicts = new();

    /// <summary>
    /// Null when <paramref name="mask"/> (for a layer without KV cache, T = S) hides exactly the keys the
    /// op hides: later positions (unless <paramref name="causalByFlag"/>, when the layer adds that
    /// itself) and padding slots of <c>attention_mask</c>; otherwise the reason it cannot be converted.
    /// </summary>
    public static string? CheckCausalPadding(GraphIndex graph, string mask, MaskMeaning meaning, bool causalByFlag)
    {
        var verdicts = Verdicts.GetOrCreateValue(graph);
        lock (verdicts)
        {
            if (!verdicts.TryGetValue((mask, meaning, causalByFlag), out var verdict))
                verdicts[(mask, meaning, causalByFlag)] = verdict = Evaluate(graph, mask, meaning, causalByFlag);
            return verdict;
        }
    }

    private static string? Evaluate(GraphIndex graph, string mask, MaskMeaning meaning, bool causalByFlag)
    {
        var padding = new long[Batch * Tokens];
        for (var j = 0; j < padding.Length; j++) padding[j] = j / Tokens == 1 && j % Tokens < PaddedSlots ? 0 : 1;
        var (model, feeds, problem) = Extract(graph, mask, padding);
        if (problem is not null) return problem;

        float[] values;
        int[] dims;
        bool isBool;
        try
        {
            using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_FATAL };
            using var session = new InferenceSession(model!.ToByteArray(), options);
            using var results = session.Run(feeds!.Select(f => NamedOnnxValue.CreateFromTensor(f.Name, f.Value)).ToList(), [mask]);
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
            return $"without a KV cache the mask must be checked to be causal, but computing it on a probe batch failed ({error.Message.Split('\n')[0]})";
        }

        // Right-align the mask's shape with [B, H, S, T] and read it by broadcasting.
        if (dims.Length is < 2 or > 4) return $"the mask has rank {dims.Length}; expected [.., S, T]";
        var shape = Enumerable.Repeat(1, 4 - dims.Length).Concat(dims).ToArray();
        if (shape[2] is not (1 or Tokens) || shape[3] != Tokens || shape[0] is not (1 or Batch))
            return $"the mask computed for {Batch}×{Tokens} tokens has shape [{string.Join(", ", dims)}], not [.., {Tokens}, {Tokens}]";
        for (var b = 0; b < Batch; b++)
            for (var h = 0; h < shape[1]; h++)
                for (var s = 0; s < Tokens; s++)
                {
                    if (padding[b * Tokens + s] == 0) continue; // a padding query's row is the op's zeros anyway
                    for (var j = 0; j < Tokens; j++)
                    {
                        var value = values[((Math.Min(b, shape[0] - 1) * shape[1] + h) * shape[2] + Math.Min(s, shape[2] - 1)) * shape[3] + j];
                        bool? visible = (meaning, isBool) switch
                        {
                            (MaskMeaning.TrueKeeps, _) or (MaskMeaning.AttentionInput, true) => value != 0,
                            (MaskMeaning.TrueHides, _) => value == 0,
                            _ => value == 0 ? true : value <= -1e4 ? false : null,
                        };
                        if (visible is null)
                            return $"the additive mask holds {value:G} (token {s}, key {j} of a probe row): neither 0 nor a large negative number";
                        var real = padding[b * Tokens + j] == 1;
                        if (j > s && !causalByFlag && visible.Value)
                            return $"the mask lets token {s} see the later key {j}: the attention is not causal (a bidirectional encoder?), and a HySparse layer is";
                        if (j <= s && visible.Value != real)
                            return $"the mask {(real ? "hides" : "shows")} key {j} of a probe row whose attention_mask is {(real ? 1 : 0)}: it is not attention_mask's padding";
                    }
                }
        return null;
    }

    /// <summary>
    /// The subgraph computing <paramref name="mask"/> as a model of its own, and feeds for it: the padded
    /// <c>attention_mask</c>, zeros for any other int64 [batch, sequence] input (ids, positions).
    /// </summary>
    private static (ModelProto? Model, List<(string Name, Tensor<long> Value)>? Feeds, string? Problem) Extract(GraphIndex graph, string mask, long[] padding)
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
            return (null, null, "without a KV cache the mask must be checked to be causal, but it reads weights kept in external data");

        var feeds = new List<(string, Tensor<long>)>();
        foreach (var name in inputs)
        {
            var type = graph.GraphInput(name)!.Type?.TensorType;
            if (type is not { ElemType: (int)DataType.Int64, Shape.Dim.Count: 2 })
                return (null, null, $"without a KV cache the mask must be checked to be causal, but it depends on input '{name}', which is not int64 [batch, sequence]");
            feeds.Add((name, new DenseTensor<long>(name == DecomposedAttentionPattern.AttentionMaskInput ? padding : new long[Batch * Tokens], [Batch, Tokens])));
        }

        var sub = new GraphProto { Name = "mask_probe" };
        sub.Node.AddRange(graph.Graph.Node.Where(nodes.Contains));
        sub.Initializer.AddRange(initializers);
        sub.Input.AddRange(inputs.Select(graph.GraphInput)!);
        sub.Output.Add(new ValueInfoProto { Name = mask });
        if (graph.Model is not { } source)
            return (null, null, "without a KV cache the mask must be checked to be causal, but the model's opsets are not known");
        var model = new ModelProto { IrVersion = source.IrVersion, Graph = sub };
        model.OpsetImport.AddRange(source.OpsetImport);
        return (model, feeds, null);
    }
}
