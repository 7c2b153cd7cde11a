using Microsoft.ML.OnnxRuntime.Tensors;

namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>An output the caller wants back; with a shape it is pre-allocated and poisoned.</summary>
public sealed record OutputRequest(string Name, ElementType Type, long[]? Shape = null);

/// <summary>
/// Runs a model in an <see cref="InferenceSession"/> with the HySparse ops registered. Outputs whose
/// shape the caller knows are pre-allocated and filled with NaN (floats) or <see cref="int.MinValue"/>
/// (integers) before the run, so an element the kernel forgets to write shows up, and ORT checks the
/// shape the op asks for against the contract's shape.
/// </summary>
public static class OrtRunner
{
    public static Dictionary<string, TestTensor> Run(byte[] model, IReadOnlyDictionary<string, TestTensor> inputs,
                                                     IReadOnlyList<OutputRequest> outputs, bool registerHySparseOps = true)
    {
        using var session = OpenSession(model, registerHySparseOps);
        return Run(session, inputs, outputs);
    }

    /// <summary>A session over an in-memory model, quiet below errors, with or without the HySparse ops.</summary>
    public static InferenceSession OpenSession(byte[] model, bool registerHySparseOps = true)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 2, LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        if (registerHySparseOps) options.RegisterHySparseOps();
        return new InferenceSession(model, options);
    }

    public static Dictionary<string, TestTensor> Run(InferenceSession session, IReadOnlyDictionary<string, TestTensor> inputs,
                                                     IReadOnlyList<OutputRequest> outputs)
    {
        var inputValues = new List<OrtValue>();
        var outputValues = new List<OrtValue>();
        try
        {
            foreach (var tensor in inputs.Values) inputValues.Add(ToOrtValue(tensor));
            using var runOptions = new RunOptions();
            if (outputs.All(o => o.Shape is not null))
            {
                foreach (var request in outputs) outputValues.Add(ToOrtValue(Poisoned(request)));
                session.Run(runOptions, inputs.Keys.ToList(), inputValues, outputs.Select(o => o.Name).ToList(), outputValues);
                return outputs.Select((o, i) => (o.Name, Value: FromOrtValue(outputValues[i])))
                              .ToDictionary(p => p.Name, p => p.Value);
            }
            using var results = session.Run(runOptions, inputs.Keys.ToList(), inputValues, outputs.Select(o => o.Name).ToList());
            return outputs.Select((o, i) => (o.Name, Value: FromOrtValue(results[i])))
                          .ToDictionary(p => p.Name, p => p.Value);
        }
        finally
        {
            foreach (var value in inputValues) value.Dispose();
            foreach (var value in outputValues) value.Dispose();
        }
    }

    public static TestTensor Poisoned(OutputRequest request)
    {
        var poison = request.Type is ElementType.Float32 or ElementType.Float16 ? double.NaN : int.MinValue;
        var data = new double[TestTensor.ElementCount(request.Shape!)];
        Array.Fill(data, poison);
        return new TestTensor(request.Type, request.Shape!, data);
    }

    public static OrtValue ToOrtValue(TestTensor tensor) => tensor.Type switch
    {
        ElementType.Float32 => OrtValue.CreateTensorValueFromMemory(tensor.Data.Select(v => (float)v).ToArray(), tensor.Shape),
        ElementType.Float16 => OrtValue.CreateTensorValueFromMemory(
            tensor.Data.Select(v => new Float16(BitConverter.HalfToUInt16Bits((Half)v))).ToArray(), tensor.Shape),
        ElementType.Int64 => OrtValue.CreateTensorValueFromMemory(tensor.Data.Select(v => (long)v).ToArray(), tensor.Shape),
        ElementType.Int32 => OrtValue.CreateTensorValueFromMemory(
            tensor.Data.Select(v => double.IsNaN(v) ? int.MinValue : (int)v).ToArray(), tensor.Shape),
        _ => throw new ArgumentOutOfRangeException(nameof(tensor)),
    };

    public static TestTensor FromOrtValue(OrtValue value)
    {
        var info = value.GetTensorTypeAndShape();
        var shape = info.Shape;
        return info.ElementDataType switch
        {
            TensorElementType.Float => new TestTensor(ElementType.Float32, shape,
                value.GetTensorDataAsSpan<float>().ToArray().Select(v => (double)v).ToArray()),
            TensorElementType.Float16 => new TestTensor(ElementType.Float16, shape,
                value.GetTensorDataAsSpan<Float16>().ToArray().Select(v => (double)BitConverter.UInt16BitsToHalf(v.value)).ToArray()),
            TensorElementType.Int64 => new TestTensor(ElementType.Int64, shape,
                value.GetTensorDataAsSpan<long>().ToArray().Select(v => (double)v).ToArray()),
            TensorElementType.Int32 => new TestTensor(ElementType.Int32, shape,
                value.GetTensorDataAsSpan<int>().ToArray().Select(v => (double)v).ToArray()),
            var other => throw new NotSupportedException($"output element type {other}"),
        };
    }
}
