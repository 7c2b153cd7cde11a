using Google.Protobuf;
using Onnx;

namespace HySparse.Graph;

/// <summary>Creates and reads ONNX node attributes.</summary>
public static class Attr
{
    /// <summary>An int attribute.</summary>
    public static AttributeProto Int(string name, long value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    /// <summary>An ints attribute.</summary>
    public static AttributeProto Ints(string name, params long[] values)
    {
        var attribute = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        attribute.Ints.AddRange(values);
        return attribute;
    }

    /// <summary>A float attribute.</summary>
    public static AttributeProto Float(string name, float value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = value };

    /// <summary>A string attribute (UTF-8).</summary>
    public static AttributeProto String(string name, string value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(value) };

    /// <summary>A tensor attribute (as <c>Constant</c> nodes carry their value).</summary>
    public static AttributeProto Tensor(string name, TensorProto value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Tensor, T = value };

    /// <summary>The attribute called <paramref name="name"/> on <paramref name="node"/>, or null.</summary>
    public static AttributeProto? Find(NodeProto node, string name) =>
        node.Attribute.FirstOrDefault(a => a.Name == name);

    /// <summary>An int attribute's value, or <paramref name="fallback"/> when it is absent.</summary>
    public static long GetInt(NodeProto node, string name, long fallback) =>
        Find(node, name) is { } a ? a.I : fallback;

    /// <summary>A float attribute's value, or <paramref name="fallback"/> when it is absent.</summary>
    public static float GetFloat(NodeProto node, string name, float fallback) =>
        Find(node, name) is { } a ? a.F : fallback;

    /// <summary>A string attribute's value, or <paramref name="fallback"/> when it is absent.</summary>
    public static string? GetString(NodeProto node, string name, string? fallback = null) =>
        Find(node, name) is { } a ? a.S.ToStringUtf8() : fallback;

    /// <summary>An ints attribute's values, or null when it is absent.</summary>
    public static long[]? GetInts(NodeProto node, string name) =>
        Find(node, name) is { } a ? a.Ints.ToArray() : null;
}
