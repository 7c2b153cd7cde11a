using System.Diagnostics;
using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;

namespace HySparse.Bench;

/// <summary>Median and spread of the timed runs of one measurement, in milliseconds.</summary>
/// <param name="SamplesMs">Every timed run, in run order.</param>
public sealed record Timing(double[] SamplesMs)
{
    /// <summary>Median of <see cref="SamplesMs"/>.</summary>
    public double MedianMs
    {
        get
        {
            var sorted = SamplesMs.Order().ToArray();
            int n = sorted.Length;
            return n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
        }
    }

    /// <summary>Fastest run.</summary>
    public double MinMs => SamplesMs.Min();

    /// <summary>Slowest run.</summary>
    public double MaxMs => SamplesMs.Max();
}

/// <summary>Creates the session options every measured session uses, so all run under the same threading.</summary>
public sealed class SessionFactory(int threads, string? hySparseLibrary)
{
    /// <summary>Intra-op threads of every session.</summary>
    public int Threads { get; } = threads;

    /// <summary>A session over <paramref name="model"/>; <paramref name="withHySparse"/> registers the custom ops.</summary>
    public InferenceSession Create(byte[] model, bool withHySparse) => Create(model, withHySparse, profilePrefix: null);

    /// <summary>As <see cref="Create(byte[], bool)"/>, with ONNX Runtime's profiler writing to <paramref name="profilePrefix"/> when set.</summary>
    public InferenceSession Create(byte[] model, bool withHySparse, string? profilePrefix)
    {
        using var options = new SessionOptions
        {
            IntraOpNumThreads = Threads,
            InterOpNumThreads = 1,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
            // The arena stays on (ORT's default, what deployments run): with it off, GroupQueryAttention
            // would pay page faults for its temporaries on every call.
            EnableCpuMemArena = true,
            // GQA's shape inference guesses present = past length; the lenient merge it warns about is harmless here.
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
        };
        if (profilePrefix is not null)
        {
            options.EnableProfiling = true;
            options.ProfileOutputPathPrefix = profilePrefix;
        }
        if (withHySparse) options.RegisterHySparseOps(hySparseLibrary);
        return new InferenceSession(model, options);
    }
}

/// <summary>
/// One single-node session with every input and output bound to a pre-allocated tensor through
/// IOBinding: a timed run is exactly one operator invocation.
/// </summary>
public sealed class BoundSession : IDisposable
{
    private readonly InferenceSession _session;
    private readonly OrtIoBinding _binding;
    private readonly RunOptions _runOptions = new();

    /// <summary>Binds <paramref name="inputs"/> and <paramref name="outputs"/> (name → tensor) to a new session.</summary>
    /// <remarks>The same tensor may appear as an input and an output: that is how GroupQueryAttention's
    /// past and present share one buffer.</remarks>
    public BoundSession(SessionFactory factory, byte[] model, bool withHySparse,
                        IEnumerable<(string Name, OrtValue Value)> inputs, IEnumerable<(string Name, OrtValue Value)> outputs)
    {
        _session = factory.Create(model, withHySparse);
        try
        {
            _binding = _session.CreateIoBinding();
            foreach (var (name, value) in inputs) _binding.BindInput(name, value);
            foreach (var (name, value) in outputs) _binding.BindOutput(name, value);
        }
        catch
        {
            _session.Dispose();
            throw;
        }
    }

    /// <summary>Runs once, untimed (for checks).</summary>
    public void Run() => _session.RunWithBinding(_runOptions, _binding);

    /// <summary>Runs once and returns the wall time in milliseconds.</summary>
    public double TimeOnce()
    {
        long start = Stopwatch.GetTimestamp();
        Run();
        return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _binding.Dispose();
        _runOptions.Dispose();
        _session.Dispose();
    }
}
