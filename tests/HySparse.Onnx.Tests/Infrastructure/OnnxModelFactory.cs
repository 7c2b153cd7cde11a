using Google.Protobuf;
using Onnx;

namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>A graph input or output of a single-node model: its name, element type and rank.</summary>
/// <remarks>A null rank leaves the shape undeclared (used for outputs, whose shapes the op infers).</remarks>
public sealed record TensorSpec(string Name, ElementType Type, int? Rank);

/// <summary>
/// Builds ONNX models holding exactly one node, over OnnxSharp's protobuf classes. Absent optional
/// inputs/outputs are passed as <c>null</c> and become empty names in the node, the ONNX convention that
/// the custom ops must honour even in the middle of the input list. Graph dimensions are symbolic so a
/// single model accepts every shape a test feeds it.
/// </summary>
public static class OnnxModelFactory
{
    public const string MicrosoftDomain = "com.microsoft";

    public static byte[] SingleNode(string opType, string domain, IReadOnlyList<TensorSpec?> inputs,
                                    IReadOnlyList<TensorSpec?> outputs, IReadOnlyDictionary<string, object> attributes,
                                    string nodeName = "node0")
    {
        var node = new NodeProto { Name = nodeName, OpType = opType, Domain = domain };
        node.Input.AddRange(TrimTrailingAbsent(inputs).Select(spec => spec?.Name ?? ""));
        node.Output.AddRange(TrimTrailingAbsent(outputs).Select(spec => spec?.Name ?? ""));
        foreach (var (name, value) in attributes) node.Attribute.Add(Attribute(name, value));

        var graph = new GraphProto { Name = $"{opType}_test" };
        graph.Node.Add(node);
        graph.Input.AddRange(inputs.OfType<TensorSpec>().Select(ValueInfo));
        graph.Output.AddRange(outputs.OfType<TensorSpec>().Select(ValueInfo));

        var model = new ModelProto { IrVersion = 10, ProducerName = "HySparse.Onnx.Tests", Graph = graph };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 21 });
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = domain, Version = 1 });
        return model.ToByteArray();
    }

    public static int OnnxDataType(ElementType type) => type switch
    {
        ElementType.Float32 => (int)TensorProto.Types.DataType.Float,
        ElementType.Float16 => (int)TensorProto.Types.DataType.Float16,
        ElementType.Int64 => (int)TensorProto.Types.DataType.Int64,
        ElementType.Int32 => (int)TensorProto.Types.DataType.Int32,
        _ => throw new ArgumentOutOfRangeException(nameof(type)),
    };

    private static IEnumerable<TensorSpec?> TrimTrailingAbsent(IReadOnlyList<TensorSpec?> specs)
    {
        var count = specs.Count;
        while (count > 0 && specs[count - 1] is null) count--;
        return specs.Take(count);
    }

    private static ValueInfoProto ValueInfo(TensorSpec spec)
    {
        var tensorType = new TypeProto.Types.Tensor { ElemType = OnnxDataType(spec.Type) };
        if (spec.Rank is { } rank)
        {
            tensorType.Shape = new TensorShapeProto();
            for (var i = 0; i < rank; i++)
                tensorType.Shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimParam = $"{spec.Name}_d{i}" });
        }
        return new ValueInfoProto { Name = spec.Name, Type = new TypeProto { TensorType = tensorType } };
    }

    private static AttributeProto Attribute(string name, object value) => value switch
    {
        int i => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = i },
        long l => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = l },
        float f => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = f },
        string s => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(s) },
        long[] list => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints, Ints = { list } },
        _ => throw new ArgumentException($"attribute '{name}': unsupported value type {value.GetType()}"),
    };
}
