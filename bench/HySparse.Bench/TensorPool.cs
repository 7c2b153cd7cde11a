using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx;

namespace HySparse.Bench;

/// <summary>
/// Owns the pre-allocated ONNX Runtime tensors of one benchmark case. Inputs are filled once with
/// seeded random values; outputs are allocated once and bound, so no timed run allocates or copies
/// anything the operator itself does not.
/// </summary>
public sealed class TensorPool : IDisposable
{
    private readonly List<OrtValue> _values = [];
    private ulong _state;

    /// <summary>Creates a pool whose random tensors derive from <paramref name="seed"/>.</summary>
    public TensorPool(int seed) => _state = (ulong)(uint)seed;

    /// <summary>An uninitialised tensor (for outputs).</summary>
    public OrtValue Allocate(ElementKind kind, params long[] shape) =>
        Track(OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, OrtElementType(kind), shape));

    /// <summary>A tensor of uniform random values in [−1, 1).</summary>
    public unsafe OrtValue Random(ElementKind kind, params long[] shape)
    {
        var value = Allocate(kind, shape);
        long count = value.GetTensorTypeAndShape().ElementCount;
        ulong tensorSeed = SplitMix(ref _state);
        nint data;
        // ORT owns the buffer in native memory: the address stays valid for the tensor's lifetime.
        fixed (byte* p = value.GetTensorMutableRawData()) data = (nint)p;
        // Chunks are filled in parallel, each from its own stream, so caches of hundreds of MB are ready
        // in a fraction of a second and the values do not depend on the thread count.
        long chunks = (count + FillChunk - 1) / FillChunk;
        Parallel.For(0L, chunks, c =>
        {
            ulong state = tensorSeed ^ (ulong)c * 0xD1B54A32D192ED03UL;
            SplitMix(ref state);
            long start = c * FillChunk, n = Math.Min(FillChunk, count - start);
            if (kind == ElementKind.Float32)
            {
                foreach (ref float x in new Span<float>((float*)data + start, (int)n)) x = NextUniform(ref state);
            }
            else
            {
                foreach (ref ushort x in new Span<ushort>((ushort*)data + start, (int)n))
                    x = BitConverter.HalfToUInt16Bits((Half)NextUniform(ref state));
            }
        });
        return value;
    }

    /// <summary>An int32 tensor holding <paramref name="data"/>.</summary>
    public OrtValue Int32(int[] data, params long[] shape)
    {
        var value = Track(OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, TensorElementType.Int32, shape));
        data.CopyTo(value.GetTensorMutableDataAsSpan<int>());
        return value;
    }

    /// <summary>
    /// A [B, H, <paramref name="capacity"/>, D] cache whose first rows per head copy <paramref name="source"/>
    /// ([B, H, L, D], L ≤ capacity) and whose remaining rows are random: the shared max-length buffer
    /// of GroupQueryAttention's in-place convention, holding the same past as the separate tensors.
    /// </summary>
    public OrtValue CacheWithCapacity(ElementKind kind, OrtValue source, long capacity)
    {
        long[] shape = source.GetTensorTypeAndShape().Shape;
        long rows = shape[0] * shape[1], length = shape[2], dim = shape[3];
        var value = Random(kind, shape[0], shape[1], capacity, dim);
        int elementBytes = ElementBytes(kind);
        var src = source.GetTensorMutableRawData();
        var dst = value.GetTensorMutableRawData();
        long rowBytes = length * dim * elementBytes;
        for (long r = 0; r < rows; r++)
        {
            src.Slice(checked((int)(r * rowBytes)), checked((int)rowBytes))
               .CopyTo(dst.Slice(checked((int)(r * capacity * dim * elementBytes))));
        }
        return value;
    }

    /// <summary>Bytes per element.</summary>
    public static int ElementBytes(ElementKind kind) => kind == ElementKind.Float16 ? 2 : 4;

    /// <summary>Shape and ONNX type of <paramref name="value"/> under <paramref name="name"/>.</summary>
    public static TensorSpec Spec(string name, OrtValue value)
    {
        var info = value.GetTensorTypeAndShape();
        var type = info.ElementDataType switch
        {
            TensorElementType.Float => TensorProto.Types.DataType.Float,
            TensorElementType.Float16 => TensorProto.Types.DataType.Float16,
            TensorElementType.Int32 => TensorProto.Types.DataType.Int32,
            TensorElementType.Int64 => TensorProto.Types.DataType.Int64,
            var other => throw new NotSupportedException($"element type {other}"),
        };
        return new TensorSpec(name, type, info.Shape);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var v in _values) v.Dispose();
        _values.Clear();
    }

    private OrtValue Track(OrtValue value)
    {
        _values.Add(value);
        return value;
    }

    private static TensorElementType OrtElementType(ElementKind kind) =>
        kind == ElementKind.Float16 ? TensorElementType.Float16 : TensorElementType.Float;

    private const long FillChunk = 1 << 20;

    private static ulong SplitMix(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    // xorshift64*: cheap enough to fill hundreds of MB of cache without dominating the run.
    private static float NextUniform(ref ulong state)
    {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ulong bits = state * 0x2545F4914F6CDD1DUL;
        return (bits >> 40) * (2.0f / (1 << 24)) - 1.0f;
    }
}
