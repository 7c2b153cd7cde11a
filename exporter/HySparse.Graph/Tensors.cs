using System.Runtime.InteropServices;
using Google.Protobuf;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Graph;

/// <summary>
/// Creates ONNX tensors from arrays and reads small ones back. Data is stored as little-endian
/// <c>raw_data</c>, the form exporters write; reading also accepts the typed repeated fields.
/// </summary>
public static class Tensors
{
    static Tensors()
    {
        // raw_data is little-endian by definition; reinterpreting spans is only right on such hosts.
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("ONNX raw_data handling assumes a little-endian host.");
    }

    /// <summary>A float32 tensor with the given dimensions and data.</summary>
    public static TensorProto Float(string name, ReadOnlySpan<long> dims, ReadOnlySpan<float> data) =>
        Create(name, DataType.Float, dims, MemoryMarshal.AsBytes(data), data.Length);

    /// <summary>A float16 tensor with the given dimensions and data.</summary>
    public static TensorProto Float16(string name, ReadOnlySpan<long> dims, ReadOnlySpan<Half> data) =>
        Create(name, DataType.Float16, dims, MemoryMarshal.AsBytes(data), data.Length);

    /// <summary>An int64 tensor with the given dimensions and data.</summary>
    public static TensorProto Int64(string name, ReadOnlySpan<long> dims, ReadOnlySpan<long> data) =>
        Create(name, DataType.Int64, dims, MemoryMarshal.AsBytes(data), data.Length);

    /// <summary>An int32 tensor with the given dimensions and data.</summary>
    public static TensorProto Int32(string name, ReadOnlySpan<long> dims, ReadOnlySpan<int> data) =>
        Create(name, DataType.Int32, dims, MemoryMarshal.AsBytes(data), data.Length);

    private static TensorProto Create(string name, DataType type, ReadOnlySpan<long> dims, ReadOnlySpan<byte> raw, int count)
    {
        long expected = 1;
        foreach (var d in dims) expected *= d;
        if (expected != count)
            throw new ArgumentException($"tensor '{name}': dimensions [{string.Join(", ", dims.ToArray())}] hold {expected} elements but {count} were given");
        var tensor = new TensorProto { Name = name, DataType = (int)type, RawData = ByteString.CopyFrom(raw) };
        tensor.Dims.AddRange(dims.ToArray());
        return tensor;
    }

    /// <summary>Number of elements the tensor's dimensions describe.</summary>
    public static long ElementCount(TensorProto tensor)
    {
        long count = 1;
        foreach (var d in tensor.Dims) count *= d;
        return count;
    }

    /// <summary>True when the tensor's bytes live in an external file rather than in the protobuf.</summary>
    public static bool IsExternal(TensorProto tensor) =>
        tensor.DataLocation == TensorProto.Types.DataLocation.External;

    /// <summary>Reads a float32, float64 or float16 tensor's values as floats.</summary>
    /// <exception cref="NotSupportedException">Another element type, or external data.</exception>
    public static float[] ReadFloats(TensorProto tensor)
    {
        RequireEmbedded(tensor);
        var count = checked((int)ElementCount(tensor));
        switch ((DataType)tensor.DataType)
        {
            case DataType.Float:
                return tensor.RawData.Length > 0 ? FromRaw<float>(tensor, count) : tensor.FloatData.ToArray();
            case DataType.Double:
                return (tensor.RawData.Length > 0 ? FromRaw<double>(tensor, count) : tensor.DoubleData.ToArray()).Select(v => (float)v).ToArray();
            case DataType.Float16:
                if (tensor.RawData.Length > 0) return FromRaw<Half>(tensor, count).Select(v => (float)v).ToArray();
                // int32_data holds one float16 bit pattern per element.
                return tensor.Int32Data.Select(bits => (float)BitConverter.UInt16BitsToHalf((ushort)bits)).ToArray();
            default:
                throw new NotSupportedException($"tensor '{tensor.Name}' has element type {(DataType)tensor.DataType}, not a float type");
        }
    }

    /// <summary>Reads an int64 or int32 tensor's values as longs.</summary>
    /// <exception cref="NotSupportedException">Another element type, or external data.</exception>
    public static long[] ReadInt64s(TensorProto tensor)
    {
        RequireEmbedded(tensor);
        var count = checked((int)ElementCount(tensor));
        return (DataType)tensor.DataType switch
        {
            DataType.Int64 => tensor.RawData.Length > 0 ? FromRaw<long>(tensor, count) : tensor.Int64Data.ToArray(),
            DataType.Int32 => tensor.RawData.Length > 0 ? FromRaw<int>(tensor, count).Select(v => (long)v).ToArray() : tensor.Int32Data.Select(v => (long)v).ToArray(),
            _ => throw new NotSupportedException($"tensor '{tensor.Name}' has element type {(DataType)tensor.DataType}, not an integer type"),
        };
    }

    private static void RequireEmbedded(TensorProto tensor)
    {
        if (IsExternal(tensor)) throw new NotSupportedException($"tensor '{tensor.Name}' stores its data externally");
    }

    private static T[] FromRaw<T>(TensorProto tensor, int count) where T : unmanaged
    {
        var bytes = tensor.RawData.Span;
        if (bytes.Length != count * Marshal.SizeOf<T>())
            throw new InvalidDataException($"tensor '{tensor.Name}': raw_data holds {bytes.Length} bytes, expected {count} × {Marshal.SizeOf<T>()}");
        return MemoryMarshal.Cast<byte, T>(bytes).ToArray();
    }

    /// <summary>Size in bytes of one element of <paramref name="type"/>, or 0 when it has no fixed size.</summary>
    public static int ElementSize(DataType type) => type switch
    {
        DataType.Float or DataType.Int32 or DataType.Uint32 => 4,
        DataType.Double or DataType.Int64 or DataType.Uint64 or DataType.Complex64 => 8,
        DataType.Float16 or DataType.Bfloat16 or DataType.Int16 or DataType.Uint16 => 2,
        DataType.Int8 or DataType.Uint8 or DataType.Bool or DataType.Float8E4M3Fn or DataType.Float8E5M2 => 1,
        DataType.Complex128 => 16,
        _ => 0,
    };
}
