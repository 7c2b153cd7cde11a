using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Rewrite;

/// <summary>
/// Makes the nodes a rewrite adds, with node and tensor names unique in the graph being rewritten
/// (<paramref name="uniqueTensor"/> and <paramref name="uniqueNode"/> reserve a name from a stem).
/// </summary>
internal sealed class NodeFactory(Func<string, string> uniqueTensor, Func<string, string> uniqueNode)
{
    /// <summary>A node named after <paramref name="name"/> with <paramref name="outputs"/> new output tensors, appended to <paramref name="nodes"/>.</summary>
    public NodeProto Node(string opType, string domain, string name, IEnumerable<string> inputs, int outputs, List<NodeProto> nodes)
    {
        var node = new NodeProto { OpType = opType, Domain = domain, Name = uniqueNode(name) };
        node.Input.AddRange(inputs);
        for (var i = 0; i < outputs; i++) node.Output.Add(uniqueTensor($"{node.Name}_output_{i}"));
        nodes.Add(node);
        return node;
    }

    /// <summary>A <c>Constant</c> node holding <paramref name="value"/>; returns its output.</summary>
    public string Constant(TensorProto value, string name, List<NodeProto> nodes)
    {
        var node = Node("Constant", "", name, [], 1, nodes);
        node.Attribute.Add(Attr.Tensor("value", value));
        return node.Output[0];
    }

    /// <summary>An int64 constant of shape <paramref name="dims"/>.</summary>
    public string Int64(long[] dims, long[] values, string name, List<NodeProto> nodes) =>
        Constant(Tensors.Int64("value", dims, values), name, nodes);
}
