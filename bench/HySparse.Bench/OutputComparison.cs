using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace HySparse.Bench;

/// <summary>
/// Checks that two timed ops computed the same thing: a benchmark of a wrong kernel is worthless, so
/// every op that should match GroupQueryAttention reports its largest deviation from it.
/// </summary>
public static class OutputComparison
{
    /// <summary>Largest |a − b| over all elements (NaN anywhere gives NaN); both float32 or both float16.</summary>
    public static double MaxAbsDiff(OrtValue a, OrtValue b)
    {
        var ta = a.GetTensorTypeAndShape();
        var tb = b.GetTensorTypeAndShape();
        if (ta.ElementDataType != tb.ElementDataType || ta.ElementCount != tb.ElementCount)
            throw new ArgumentException("outputs differ in type or size");
        double max = 0;
        if (ta.ElementDataType == TensorElementType.Float)
        {
            var x = a.GetTensorDataAsSpan<float>();
            var y = b.GetTensorDataAsSpan<float>();
            for (int i = 0; i < x.Length; i++) max = Math.Max(max, Math.Abs((double)x[i] - y[i]));
        }
        else
        {
            var x = MemoryMarshal.Cast<byte, Half>(a.GetTensorMutableRawData());
            var y = MemoryMarshal.Cast<byte, Half>(b.GetTensorMutableRawData());
            for (int i = 0; i < x.Length; i++) max = Math.Max(max, Math.Abs((double)x[i] - (double)y[i]));
        }
        return max;
    }
}
