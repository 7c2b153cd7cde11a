using Google.Protobuf;
using HySparse.Onnx;
using Onnx;

namespace HySparse.Bench;

/// <summary>A graph input or output: name, element type and fixed shape.</summary>
/// <param name="Name">Tensor name (also the IOBinding name).</param>
/// <param name="Type">ONNX element type.</param>
/// <param name="Shape">Fixed dimensions.</param>
public sealed record TensorSpec(string Name, TensorProto.Types.DataType Type, long[] Shape);

/// <summary>
/// Builds single-node ONNX models in memory (OnnxSharp protobuf classes), one per benchmark case.
/// Every dimension is fixed, so ONNX Runtime sees exactly the shapes the bound tensors have.
/// </summary>
public static class ModelFactory
{
    /// <summary>Opset of the default ONNX domain (the graph uses no standard op; ORT requires one).</summary>
    private const int DefaultOpset = 21;

    /// <summary>Maps the benchmark's element kind to the ONNX data type.</summary>
    public static TensorProto.Types.DataType OnnxType(ElementKind kind) =>
        kind == ElementKind.Float16 ? TensorProto.Types.DataType.Float16 : TensorProto.Types.DataType.Float;

    /// <summary>
    /// One node of type <paramref name="opType"/> in <paramref name="domain"/>. <paramref name="inputs"/>
    /// is the node's positional input list: a null entry is an omitted optional input (empty name).
    /// </summary>
    public static byte[] SingleNode(string opType, string domain, IReadOnlyList<TensorSpec?> inputs,
                                    IReadOnlyList<TensorSpec> outputs, IEnumerable<AttributeProto> attributes)
    {
        var node = new NodeProto { OpType = opType, Domain = domain, Name = opType.ToLowerInvariant() + "_0" };
        node.Input.AddRange(inputs.Select(i => i?.Name ?? ""));
        node.Output.AddRange(outputs.Select(o => o.Name));
        node.Attribute.AddRange(attributes);

        var graph = new GraphProto { Name = "bench_" + opType };
        graph.Node.Add(node);
        graph.Input.AddRange(inputs.OfType<TensorSpec>().Select(ValueInfo));
        graph.Output.AddRange(outputs.Select(ValueInfo));

        var model = new ModelProto { IrVersion = 10, ProducerName = "HySparse.Bench", Graph = graph };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = DefaultOpset });
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = domain, Version = domain == HySparseOps.Domain ? HySparseOps.DomainVersion : 1 });
        return model.ToByteArray();
    }

    /// <summary>An int attribute.</summary>
    public static AttributeProto Int(string name, long value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    /// <summary>A string attribute.</summary>
    public static AttributeProto String(string name, string value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(value) };

    private static ValueInfoProto ValueInfo(TensorSpec spec)
    {
        var shape = new TensorShapeProto();
        foreach (long d in spec.Shape) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        return new ValueInfoProto
        {
            Name = spec.Name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)spec.Type, Shape = shape } },
        };
    }
}
