using HySparse.Graph;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Models.Graph;

/// <summary>
/// Turns a float32 model into a float16 model with the interface of genai's CPU fp16 models: float
/// initializers stored as float16, float graph inputs and outputs (KV caches, logits) declared
/// float16, and the operators in <see cref="DefaultFloat16Ops"/> computing in float16, so attention
/// reads and writes float16 Q/K/V and caches. Every other float computation (norms, projections,
/// MLP) stays float32 behind <c>Cast</c> nodes at the boundaries, which keeps it close to the float32
/// original; genai's builder writes those in float16 too, which this does not reproduce.
/// </summary>
/// <remarks>
/// Element types are followed through the graph from the inputs, initializers and <c>Constant</c>s by
/// the rules of the operators the model builders emit; a node of another type is refused rather than
/// guessed at. The graph must list its nodes in topological order, as the builders write it.
/// </remarks>
public static class Float16Conversion
{
    /// <summary>
    /// Operators run in float16 by default: the attention operators (whose float16 CPU kernels are what
    /// a float16 model is for) and pure data movement, which is exact in any precision.
    /// </summary>
    public static readonly IReadOnlySet<string> DefaultFloat16Ops = new HashSet<string>(StringComparer.Ordinal)
    {
        "GroupQueryAttention", "RotaryEmbedding",
        "Gather", "Transpose", "Reshape", "Slice", "Concat", "Split", "Squeeze", "Unsqueeze", "Identity",
    };

    // Operators whose outputs have the element type of their first input (data movement and arithmetic).
    private static readonly HashSet<string> SameAsFirstInput = new(StringComparer.Ordinal)
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Sqrt", "Reciprocal", "Exp", "Log", "Tanh", "Sigmoid", "Softmax",
        "Cos", "Sin", "Max", "Min", "Abs", "Erf", "MatMul", "Gemm",
        "ReduceSum", "ReduceMean", "ReduceMax", "CumSum", "Range", "Expand", "Tile",
        "Gather", "Transpose", "Reshape", "Slice", "Concat", "Split", "Squeeze", "Unsqueeze", "Identity",
        "GroupQueryAttention", "RotaryEmbedding", "MultiHeadAttention", "Attention", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
    };

    private static readonly HashSet<string> BooleanOutput = new(StringComparer.Ordinal)
    {
        "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "IsNaN",
    };

    // Operators that read any element type as it is, so a float input never needs a Cast in front.
    private static readonly HashSet<string> AnyInputType = new(StringComparer.Ordinal) { "Cast", "Shape", "Size" };

    /// <summary>Returns the float16 form of <paramref name="model"/> (which is left unchanged).</summary>
    /// <param name="model">A model whose floating-point tensors are all float32.</param>
    /// <param name="float16Ops">Operator types computed in float16 (default <see cref="DefaultFloat16Ops"/>).</param>
    /// <exception cref="NotSupportedException">An operator without a typing rule here, a float type
    /// other than float32, or nodes out of topological order.</exception>
    public static ModelProto Convert(ModelProto model, IReadOnlySet<string>? float16Ops = null)
    {
        float16Ops ??= DefaultFloat16Ops;
        var result = model.Clone();
        var graph = result.Graph;
        var types = new Dictionary<string, DataType>(StringComparer.Ordinal);
        foreach (var input in graph.Input) types[input.Name] = (DataType)input.Type.TensorType.ElemType;
        foreach (var initializer in graph.Initializer) types[initializer.Name] = (DataType)initializer.DataType;
        if (types.Values.Any(t => t is DataType.Double or DataType.Float16 or DataType.Bfloat16))
            throw new NotSupportedException("the model already holds floating-point tensors other than float32");

        // Where each float tensor lives after conversion: float16 unless a float32 node produced it.
        var stored = new Dictionary<string, DataType>(StringComparer.Ordinal);
        foreach (var name in types.Where(t => t.Value == DataType.Float).Select(t => t.Key)) stored[name] = DataType.Float16;
        for (var i = 0; i < graph.Initializer.Count; i++)
            if (graph.Initializer[i].DataType == (int)DataType.Float) graph.Initializer[i] = ToFloat16(graph.Initializer[i]);

        var nodes = new List<NodeProto>();
        var casts = new Dictionary<(string, DataType), string>();
        var names = new HashSet<string>(graph.Node.SelectMany(n => n.Output).Concat(types.Keys), StringComparer.Ordinal);
        foreach (var node in graph.Node)
        {
            foreach (var input in node.Input.Where(i => i.Length > 0 && !types.ContainsKey(i)))
                throw new NotSupportedException($"node '{node.Name}' ({node.OpType}) reads '{input}' before anything produces it: the nodes are not in topological order");
            var outputTypes = OutputTypes(node, types);
            var touchesFloat = node.Input.Any(i => i.Length > 0 && types[i] == DataType.Float) || outputTypes.Contains(DataType.Float);
            var precision = touchesFloat && float16Ops.Contains(node.OpType) ? DataType.Float16 : DataType.Float;
            if (touchesFloat && !AnyInputType.Contains(node.OpType))
                for (var i = 0; i < node.Input.Count; i++)
                    if (node.Input[i].Length > 0 && types[node.Input[i]] == DataType.Float && stored[node.Input[i]] != precision)
                        node.Input[i] = CastOf(node.Input[i], precision, nodes, casts, names);
            for (var o = 0; o < node.Output.Count; o++)
            {
                types[node.Output[o]] = outputTypes[o];
                if (outputTypes[o] == DataType.Float) stored[node.Output[o]] = precision;
            }
            nodes.Add(node);
        }

        foreach (var output in graph.Output.Where(o => types[o.Name] == DataType.Float && stored[o.Name] == DataType.Float))
        {
            // The float32 producer writes under a new name; a Cast writes the declared float16 output.
            var inner = Unique($"{output.Name}_float32", names);
            foreach (var node in nodes)
                for (var i = 0; i < node.Output.Count; i++)
                    if (node.Output[i] == output.Name) node.Output[i] = inner;
            foreach (var node in nodes)
                for (var i = 0; i < node.Input.Count; i++)
                    if (node.Input[i] == output.Name) node.Input[i] = inner;
            nodes.Add(Cast(inner, output.Name, DataType.Float16));
        }

        graph.Node.Clear();
        graph.Node.AddRange(nodes);
        foreach (var value in graph.Input.Concat(graph.Output).Concat(graph.ValueInfo))
            if (value.Type.TensorType.ElemType == (int)DataType.Float) value.Type.TensorType.ElemType = (int)DataType.Float16;
        // Intermediate float declarations may now be either type; ONNX Runtime infers them again.
        var intermediates = graph.ValueInfo.Where(v => v.Type.TensorType.ElemType != (int)DataType.Float16).ToList();
        graph.ValueInfo.Clear();
        graph.ValueInfo.AddRange(intermediates);
        return result;
    }

    private static DataType[] OutputTypes(NodeProto node, Dictionary<string, DataType> types)
    {
        DataType Input(int i) => node.Input.Count > i && node.Input[i].Length > 0 ? types[node.Input[i]]
            : throw new NotSupportedException($"node '{node.Name}' ({node.OpType}) has no input {i} to take its type from");
        DataType type = node.OpType switch
        {
            "Constant" => (DataType)(Attr.Find(node, "value")?.T?.DataType ?? throw new NotSupportedException($"Constant '{node.Name}' has no tensor 'value'")),
            "Cast" => (DataType)Attr.GetInt(node, "to", 0),
            "Shape" or "Size" => DataType.Int64,
            "Where" => Input(1),
            _ when BooleanOutput.Contains(node.OpType) => DataType.Bool,
            _ when SameAsFirstInput.Contains(node.OpType) => Input(0),
            _ => throw new NotSupportedException($"node '{node.Name}': no element-type rule for operator {node.OpType}"),
        };
        if (type is DataType.Double or DataType.Float16 or DataType.Bfloat16)
            throw new NotSupportedException($"node '{node.Name}' ({node.OpType}) produces {type}; only float32 models are converted");
        return Enumerable.Repeat(type, node.Output.Count).ToArray();
    }

    private static string CastOf(string tensor, DataType to, List<NodeProto> nodes, Dictionary<(string, DataType), string> casts, HashSet<string> names)
    {
        if (casts.TryGetValue((tensor, to), out var existing)) return existing;
        var output = Unique($"{tensor}_{(to == DataType.Float16 ? "float16" : "float32")}", names);
        nodes.Add(Cast(tensor, output, to));
        casts[(tensor, to)] = output;
        return output;
    }

    private static NodeProto Cast(string input, string output, DataType to)
    {
        var node = new NodeProto { OpType = "Cast", Name = $"{output}/Cast" };
        node.Input.Add(input);
        node.Output.Add(output);
        node.Attribute.Add(Attr.Int("to", (long)to));
        return node;
    }

    private static string Unique(string name, HashSet<string> names)
    {
        var candidate = name;
        for (var i = 1; !names.Add(candidate); i++) candidate = $"{name}_{i}";
        return candidate;
    }

    private static TensorProto ToFloat16(TensorProto tensor)
    {
        var values = Tensors.ReadFloats(tensor);
        var half = new Half[values.Length];
        for (var i = 0; i < values.Length; i++) half[i] = (Half)values[i];
        var converted = Tensors.Float16(tensor.Name, tensor.Dims.ToArray(), half);
        converted.DocString = tensor.DocString;
        return converted;
    }
}
