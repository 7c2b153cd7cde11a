namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>Element types the tests feed to and read from ONNX Runtime.</summary>
public enum ElementType
{
    Float32,
    Float16,
    Int64,
    Int32,
}

/// <summary>
/// A dense row-major tensor whose elements are kept as float64 regardless of the element type they
/// travel as, so that the float64 references see exactly the values the kernels see (float16 inputs
/// and float32 inputs are rounded to their storage type once, when the tensor is made).
/// </summary>
public sealed class TestTensor
{
    public TestTensor(ElementType type, long[] shape, double[] data)
    {
        if (ElementCount(shape) != data.Length)
            throw new ArgumentException($"shape [{string.Join(", ", shape)}] holds {ElementCount(shape)} elements, data {data.Length}");
        Type = type;
        Shape = shape;
        Data = type is ElementType.Float16 or ElementType.Float32 ? data.Select(v => RoundTo(type, v)).ToArray() : data;
    }

    public ElementType Type { get; }
    public long[] Shape { get; }
    public double[] Data { get; }

    public static long ElementCount(IEnumerable<long> shape) => shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>The value as the storage type holds it (NaN stays NaN): float16 and float32 round, integers are kept.</summary>
    public static double RoundTo(ElementType type, double value) => type switch
    {
        ElementType.Float16 => (double)(Half)value,
        ElementType.Float32 => (float)value,
        _ => value,
    };

    /// <summary>The same values as another element type (rounding when that type is float16).</summary>
    public TestTensor As(ElementType type) => new(type, Shape, Data);

    public static TestTensor Int64s(long[] shape, IEnumerable<long> values) =>
        new(ElementType.Int64, shape, values.Select(v => (double)v).ToArray());

    public static TestTensor Int32s(long[] shape, IEnumerable<int> values) =>
        new(ElementType.Int32, shape, values.Select(v => (double)v).ToArray());

    public override string ToString() => $"{Type}[{string.Join(", ", Shape)}]";
}

/// <summary>Seeded random tensors; values are drawn uniformly from a symmetric range, never all zeros.</summary>
public sealed class TensorRandom(int seed)
{
    private readonly Random _random = new(seed);

    public double[] Uniform(long count, double amplitude)
    {
        var values = new double[count];
        for (long i = 0; i < count; i++) values[i] = (2 * _random.NextDouble() - 1) * amplitude;
        return values;
    }

    /// <summary>Uniform values already rounded to <paramref name="type"/>, so references and kernels see the same numbers.</summary>
    public double[] Uniform(long count, double amplitude, ElementType type) =>
        Uniform(count, amplitude).Select(v => TestTensor.RoundTo(type, v)).ToArray();

    public int Next(int maxExclusive) => _random.Next(maxExclusive);
}
