using HySparse.Graph;
using Onnx;

namespace HySparse.Graph;

/// <summary>
/// Read-only lookups over a graph: which node produces a tensor, which nodes consume it, which
/// tensors are graph inputs, outputs, initializers or constants. Built once per pass; a rewrite
/// that changes the graph builds a new index.
/// </summary>
public sealed class GraphIndex
{
    private readonly Dictionary<string, NodeProto> _producers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, List<NodeProto>> _consumers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, TensorProto> _initializers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, ValueInfoProto> _inputs = new(StringComparer.Ordinal);
    private readonly Dictionary<NodeProto, int> _positions = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<string> _outputs = new(StringComparer.Ordinal);

    /// <summary>Indexes <paramref name="graph"/>, the graph of <paramref name="model"/> when given.</summary>
    public GraphIndex(GraphProto graph, ModelProto? model = null)
    {
        Graph = graph;
        Model = model;
        foreach (var initializer in graph.Initializer) _initializers[initializer.Name] = initializer;
        // Initializers may also be listed as inputs (IR < 4 style); they are not real inputs then.
        foreach (var input in graph.Input.Where(i => !_initializers.ContainsKey(i.Name))) _inputs[input.Name] = input;
        foreach (var output in graph.Output) _outputs.Add(output.Name);
        for (var i = 0; i < graph.Node.Count; i++)
        {
            var node = graph.Node[i];
            _positions[node] = i;
            foreach (var output in node.Output.Where(o => o.Length > 0)) _producers[output] = node;
            foreach (var input in node.Input.Where(n => n.Length > 0))
            {
                if (!_consumers.TryGetValue(input, out var list)) _consumers[input] = list = [];
                if (!list.Contains(node)) list.Add(node);
            }
        }
    }

    /// <summary>The indexed graph.</summary>
    public GraphProto Graph { get; }

    /// <summary>The model holding the graph (its opsets and IR version), when known.</summary>
    public ModelProto? Model { get; }

    /// <summary>The node producing <paramref name="tensor"/>, or null for inputs, initializers and unknown names.</summary>
    public NodeProto? Producer(string tensor) => _producers.GetValueOrDefault(tensor);

    /// <summary>Nodes reading <paramref name="tensor"/> (each once).</summary>
    public IReadOnlyList<NodeProto> Consumers(string tensor) =>
        _consumers.TryGetValue(tensor, out var list) ? list : [];

    /// <summary>Position of <paramref name="node"/> in the graph's node list.</summary>
    public int PositionOf(NodeProto node) => _positions[node];

    /// <summary>True for a graph input that is not an initializer.</summary>
    public bool IsGraphInput(string tensor) => _inputs.ContainsKey(tensor);

    /// <summary>The graph input's declaration, or null.</summary>
    public ValueInfoProto? GraphInput(string tensor) => _inputs.GetValueOrDefault(tensor);

    /// <summary>True for a tensor listed among the graph outputs.</summary>
    public bool IsGraphOutput(string tensor) => _outputs.Contains(tensor);

    /// <summary>True for an initializer.</summary>
    public bool IsInitializer(string tensor) => _initializers.ContainsKey(tensor);

    /// <summary>
    /// The constant value of <paramref name="tensor"/> when it is an initializer (not also a graph
    /// input, which a caller could override) or the output of a <c>Constant</c> node; else null.
    /// </summary>
    public TensorProto? Constant(string tensor)
    {
        if (_initializers.TryGetValue(tensor, out var initializer)) return _inputs.ContainsKey(tensor) ? null : initializer;
        if (Producer(tensor) is not { OpType: "Constant", Domain: "" } node) return null;
        foreach (var attribute in node.Attribute)
        {
            switch (attribute.Name)
            {
                case "value": return attribute.T;
                case "value_float": return Tensors.Float(tensor, [], [attribute.F]);
                case "value_floats": return Tensors.Float(tensor, [attribute.Floats.Count], attribute.Floats.ToArray());
                case "value_int": return Tensors.Int64(tensor, [], [attribute.I]);
                case "value_ints": return Tensors.Int64(tensor, [attribute.Ints.Count], attribute.Ints.ToArray());
            }
        }
        return null;
    }

    /// <summary>A constant holding exactly one number (any rank, float or integer), as a double; else null.</summary>
    public double? ScalarConstant(string tensor)
    {
        if (Constant(tensor) is not { } value || Tensors.ElementCount(value) != 1 || Tensors.IsExternal(value)) return null;
        return (TensorProto.Types.DataType)value.DataType switch
        {
            TensorProto.Types.DataType.Float or TensorProto.Types.DataType.Double or TensorProto.Types.DataType.Float16 => Tensors.ReadFloats(value)[0],
            TensorProto.Types.DataType.Int64 or TensorProto.Types.DataType.Int32 => Tensors.ReadInt64s(value)[0],
            _ => null,
        };
    }

    /// <summary>An integer constant's values; null when <paramref name="tensor"/> is not an integer constant.</summary>
    public long[]? IntConstant(string tensor)
    {
        if (Constant(tensor) is not { } value || Tensors.IsExternal(value)) return null;
        try
        {
            return Tensors.ReadInt64s(value);
        }
        catch (NotSupportedException)
        {
            return null;
        }
    }

    /// <summary>
    /// A 1-D int64 shape vector whose entries are partly known: exporters build shapes as
    /// <c>Concat(Unsqueeze(Gather(Shape(x))), Constant, …)</c>, where only some entries are
    /// constants. Unknown entries are null; null overall when even the length is unknown.
    /// </summary>
    public long?[]? PartialIntVector(string tensor)
    {
        if (IntConstant(tensor) is { } constant) return constant.Select(v => (long?)v).ToArray();
        switch (Producer(tensor))
        {
            case { OpType: "Concat", Domain: "" } concat when Attr.GetInt(concat, "axis", 0) == 0:
                var parts = new List<long?>();
                foreach (var input in concat.Input)
                {
                    if (PartialIntVector(input) is not { } part) return null;
                    parts.AddRange(part);
                }
                return parts.ToArray();
            case { OpType: "Unsqueeze", Domain: "" }:
                // Unsqueezing a scalar (a dimension gathered from a Shape) gives one unknown entry.
                return [null];
            default:
                return null;
        }
    }

    /// <summary>
    /// True when <paramref name="tensor"/> is computed (transitively) from the graph input
    /// <paramref name="input"/>.
    /// </summary>
    public bool DependsOn(string tensor, string input)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<string>();
        pending.Push(tensor);
        while (pending.Count > 0)
        {
            var current = pending.Pop();
            if (current == input) return true;
            if (!seen.Add(current) || Producer(current) is not { } node) continue;
            foreach (var i in node.Input.Where(n => n.Length > 0)) pending.Push(i);
        }
        return false;
    }
}
