using HySparse.Graph;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Models.Graph;

/// <summary>
/// Builds one ONNX graph node by node. Names follow the <c>torch.onnx.export</c> convention so
/// built models read like exported ones: nodes are called <c>{scope}/{OpType}</c> (numbered
/// <c>_1</c>, <c>_2</c>… on repeats) and their outputs <c>{node}_output_{i}</c>; weights are
/// initializers, small shape and scalar constants are <c>Constant</c> nodes.
/// </summary>
public sealed class GraphBuilder
{
    private readonly GraphProto _graph;
    private readonly HashSet<string> _nodeNames = new(StringComparer.Ordinal);
    private readonly HashSet<string> _tensorNames = new(StringComparer.Ordinal);
    private readonly Stack<string> _scopes = new();

    /// <summary>Starts an empty graph called <paramref name="name"/>.</summary>
    public GraphBuilder(string name)
    {
        _graph = new GraphProto { Name = name };
    }

    /// <summary>The graph built so far.</summary>
    public GraphProto Graph => _graph;

    /// <summary>The current name scope (<c>/model/layers.0/self_attn</c>), empty at top level.</summary>
    public string CurrentScope => _scopes.Count == 0 ? "" : _scopes.Peek();

    /// <summary>
    /// Enters a name scope nested in the current one; dispose the result to leave it. Scopes only
    /// affect generated names.
    /// </summary>
    public IDisposable Scope(string name)
    {
        _scopes.Push(CurrentScope + "/" + name.Trim('/'));
        return new ScopeExit(_scopes);
    }

    /// <summary>Declares a graph input.</summary>
    public string AddInput(string name, DataType type, params Dim[] shape)
    {
        Claim(name);
        _graph.Input.Add(ValueInfo(name, type, shape));
        return name;
    }

    /// <summary>Declares an existing tensor as a graph output.</summary>
    public void AddOutput(string name, DataType type, params Dim[] shape)
    {
        if (!_tensorNames.Contains(name)) throw new InvalidOperationException($"graph output '{name}' is not produced by the graph");
        _graph.Output.Add(ValueInfo(name, type, shape));
    }

    /// <summary>Adds an initializer (a weight) and returns its name.</summary>
    public string AddInitializer(TensorProto tensor)
    {
        Claim(tensor.Name);
        _graph.Initializer.Add(tensor);
        return tensor.Name;
    }

    /// <summary>Adds a float32 initializer.</summary>
    public string AddInitializer(string name, long[] dims, float[] data) => AddInitializer(Tensors.Float(name, dims, data));

    /// <summary>A <c>Constant</c> node holding int64 values as a 1-D tensor.</summary>
    public string ConstInt64s(params long[] values) =>
        Constant(Tensors.Int64("value", [values.Length], values));

    /// <summary>A <c>Constant</c> node holding one int64 scalar (rank 0).</summary>
    public string ConstInt64(long value) => Constant(Tensors.Int64("value", [], [value]));

    /// <summary>A <c>Constant</c> node holding one float32 scalar (rank 0).</summary>
    public string ConstFloat(float value) => Constant(Tensors.Float("value", [], [value]));

    private string Constant(TensorProto value) => Node("Constant", [], 1, "", Attr.Tensor("value", value))[0];

    /// <summary>Adds a one-output node from the default domain and returns its output's name.</summary>
    public string Op(string opType, params string[] inputs) => Node(opType, inputs, 1)[0];

    /// <summary>Adds a one-output node with attributes and returns its output's name.</summary>
    public string Op(string opType, string[] inputs, params AttributeProto[] attributes) =>
        Node(opType, inputs, 1, "", attributes)[0];

    /// <summary>Adds a one-output node whose output gets the given name (for graph outputs).</summary>
    public string OpNamed(string outputName, string opType, string[] inputs, params AttributeProto[] attributes) =>
        Node(opType, inputs, [outputName], "", attributes)[0];

    /// <summary>Adds a node with <paramref name="outputCount"/> generated outputs and returns their names.</summary>
    public string[] Node(string opType, IReadOnlyList<string> inputs, int outputCount, string domain = "", params AttributeProto[] attributes) =>
        Node(opType, inputs, new string?[outputCount], domain, attributes);

    /// <summary>
    /// Adds a node whose outputs get the given names; a null entry gets a generated name. Returns the
    /// output names.
    /// </summary>
    public string[] Node(string opType, IReadOnlyList<string> inputs, IReadOnlyList<string?> outputs, string domain = "", params AttributeProto[] attributes)
    {
        var node = NewNode(opType, inputs, domain, attributes);
        for (var i = 0; i < outputs.Count; i++)
        {
            var output = outputs[i] ?? $"{node.Name}_output_{i}";
            Claim(output);
            node.Output.Add(output);
        }
        _graph.Node.Add(node);
        return node.Output.ToArray();
    }

    private NodeProto NewNode(string opType, IReadOnlyList<string> inputs, string domain, AttributeProto[] attributes)
    {
        foreach (var input in inputs)
        {
            // An empty name is ONNX's marker for an omitted optional input.
            if (input.Length > 0 && !_tensorNames.Contains(input))
                throw new InvalidOperationException($"{opType} input '{input}' is not defined yet; add nodes in topological order");
        }
        var node = new NodeProto { OpType = opType, Domain = domain, Name = UniqueNodeName(opType) };
        node.Input.AddRange(inputs);
        node.Attribute.AddRange(attributes);
        return node;
    }

    /// <summary>Wraps the graph in a model.</summary>
    /// <param name="opsets">Domain → version for every operator domain the graph uses ("" is the default domain).</param>
    /// <param name="irVersion">ONNX IR version to declare.</param>
    /// <param name="producer">Producer name recorded in the model.</param>
    public ModelProto BuildModel(IReadOnlyDictionary<string, long> opsets, long irVersion, string producer)
    {
        var model = new ModelProto { IrVersion = irVersion, ProducerName = producer, Graph = _graph };
        foreach (var (domain, version) in opsets) model.OpsetImport.Add(new OperatorSetIdProto { Domain = domain, Version = version });
        return model;
    }

    /// <summary>A tensor-typed value info.</summary>
    public static ValueInfoProto ValueInfo(string name, DataType type, params Dim[] shape)
    {
        var tensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = new TensorShapeProto() };
        foreach (var dim in shape)
        {
            tensorType.Shape.Dim.Add(dim.Symbol is { } symbol
                ? new TensorShapeProto.Types.Dimension { DimParam = symbol }
                : new TensorShapeProto.Types.Dimension { DimValue = dim.Size!.Value });
        }
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = tensorType } };
    }

    private string UniqueNodeName(string opType)
    {
        var stem = $"{CurrentScope}/{opType}";
        var name = stem;
        for (var n = 1; !_nodeNames.Add(name); n++) name = $"{stem}_{n}";
        return name;
    }

    private void Claim(string tensorName)
    {
        if (string.IsNullOrEmpty(tensorName)) throw new ArgumentException("tensor names must be non-empty");
        if (!_tensorNames.Add(tensorName)) throw new InvalidOperationException($"tensor '{tensorName}' is defined twice");
    }

    private sealed class ScopeExit(Stack<string> scopes) : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            scopes.Pop();
        }
    }
}
