using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace HySparse.Bench;

/// <summary>
/// The machine's two floors, measured in-process with the same thread count as the sessions:
/// streaming read bandwidth (a vectorised sum over an array far larger than the caches) and the
/// float32 fused-multiply-add rate (independent FMA chains in registers, widest vector the CPU has).
/// </summary>
/// <param name="ReadBandwidthBytesPerSecond">Best measured streaming read bandwidth.</param>
/// <param name="FmaFlopsPerSecond">Best measured float32 FLOP rate (one FMA = 2 FLOPs).</param>
/// <param name="Threads">Threads used for both measurements.</param>
/// <param name="VectorBits">Vector width of the FMA loop (512 with AVX-512, else 256).</param>
/// <param name="ArrayBytes">Size of the array the bandwidth loop streams.</param>
public sealed record MachineFloor(double ReadBandwidthBytesPerSecond, double FmaFlopsPerSecond, int Threads, int VectorBits, long ArrayBytes)
{
    private const int Repeats = 7;

    /// <summary>Floor time in ms of a kernel that must move <paramref name="bytes"/> and do <paramref name="flops"/>.</summary>
    public (double Ms, string Bound) FloorMs(double bytes, double flops)
    {
        double memoryMs = bytes / ReadBandwidthBytesPerSecond * 1e3;
        double computeMs = flops / FmaFlopsPerSecond * 1e3;
        return memoryMs >= computeMs ? (memoryMs, "memory") : (computeMs, "compute");
    }

    /// <summary>Measures both floors with <paramref name="threads"/> threads.</summary>
    public static MachineFloor Measure(int threads, long arrayBytes = 512L << 20)
    {
        if (!Avx2.IsSupported || !Fma.IsSupported)
            throw new PlatformNotSupportedException("the floor measurement needs AVX2 and FMA");
        double bandwidth = MeasureBandwidth(threads, arrayBytes);
        double flops = MeasureFma(threads);
        return new MachineFloor(bandwidth, flops, threads, Avx512F.IsSupported ? 512 : 256, arrayBytes);
    }

    private static unsafe double MeasureBandwidth(int threads, long arrayBytes)
    {
        long count = arrayBytes / sizeof(float);
        float* data = (float*)NativeMemory.AlignedAlloc((nuint)arrayBytes, 64);
        try
        {
            long chunk = count / threads / 64 * 64;
            // Each thread first touches its own chunk, so pages are mapped before timing.
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads },
                         t => new Span<float>(data + t * chunk, checked((int)chunk)).Fill(1.0f));
            double best = 0;
            var sums = new float[threads];
            for (int rep = 0; rep < Repeats; rep++)
            {
                long start = Stopwatch.GetTimestamp();
                Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads },
                             t => sums[t] = SumChunk(data + t * chunk, chunk));
                double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
                double expected = (double)chunk * threads;
                if (Math.Abs(sums.Sum() - expected) > expected * 1e-5) throw new InvalidOperationException("bandwidth loop summed wrongly");
                best = Math.Max(best, chunk * threads * sizeof(float) / seconds);
            }
            return best;
        }
        finally
        {
            NativeMemory.AlignedFree(data);
        }
    }

    // Four independent accumulators hide the add latency, so the loop is limited by loads alone.
    private static unsafe float SumChunk(float* p, long n) =>
        Avx512F.IsSupported ? SumChunk<Wide>(p, n) : SumChunk<Narrow>(p, n);

    private static unsafe float SumChunk<TV>(float* p, long n) where TV : struct, IFloatVector<TV>
    {
        TV a0 = TV.Splat(0), a1 = a0, a2 = a0, a3 = a0;
        for (long i = 0; i < n; i += 4 * TV.Lanes)
        {
            a0 = TV.Add(a0, TV.Load(p + i));
            a1 = TV.Add(a1, TV.Load(p + i + TV.Lanes));
            a2 = TV.Add(a2, TV.Load(p + i + 2 * TV.Lanes));
            a3 = TV.Add(a3, TV.Load(p + i + 3 * TV.Lanes));
        }
        return TV.Sum(TV.Add(TV.Add(a0, a1), TV.Add(a2, a3)));
    }

    private static double MeasureFma(int threads)
    {
        const long iterations = 20_000_000;
        bool wide = Avx512F.IsSupported;
        int lanes = wide ? 16 : 8;
        double flopsPerRun = (double)iterations * FmaChains * lanes * 2 * threads;
        double best = 0;
        var sink = new float[threads];
        for (int rep = 0; rep < Repeats; rep++)
        {
            long start = Stopwatch.GetTimestamp();
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads },
                         t => sink[t] = wide ? FmaLoop<Wide>(iterations) : FmaLoop<Narrow>(iterations));
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            if (sink.Any(float.IsNaN)) throw new InvalidOperationException("FMA loop produced NaN");
            best = Math.Max(best, flopsPerRun / seconds);
        }
        return best;
    }

    // Twelve independent chains: more than FMA latency × FMA ports on current x86 cores, so the
    // loop issues an FMA on every port every cycle.
    private const int FmaChains = 12;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float FmaLoop<TV>(long iterations) where TV : struct, IFloatVector<TV>
    {
        TV m = TV.Splat(0.999999f), c = TV.Splat(1e-7f);
        TV x0 = TV.Splat(1.0f), x1 = x0, x2 = x0, x3 = x0, x4 = x0, x5 = x0, x6 = x0, x7 = x0, x8 = x0, x9 = x0, x10 = x0, x11 = x0;
        for (long i = 0; i < iterations; i++)
        {
            x0 = TV.Fma(x0, m, c); x1 = TV.Fma(x1, m, c); x2 = TV.Fma(x2, m, c); x3 = TV.Fma(x3, m, c);
            x4 = TV.Fma(x4, m, c); x5 = TV.Fma(x5, m, c); x6 = TV.Fma(x6, m, c); x7 = TV.Fma(x7, m, c);
            x8 = TV.Fma(x8, m, c); x9 = TV.Fma(x9, m, c); x10 = TV.Fma(x10, m, c); x11 = TV.Fma(x11, m, c);
        }
        TV sum = TV.Add(TV.Add(TV.Add(x0, x1), TV.Add(x2, x3)), TV.Add(TV.Add(x4, x5), TV.Add(x6, x7)));
        return TV.Sum(TV.Add(sum, TV.Add(TV.Add(x8, x9), TV.Add(x10, x11))));
    }

    // The floor loops are written once over this interface; the JIT specialises them per struct, so
    // each instantiation compiles to plain 512- or 256-bit instructions.
    private unsafe interface IFloatVector<TSelf> where TSelf : struct, IFloatVector<TSelf>
    {
        static abstract int Lanes { get; }
        static abstract TSelf Splat(float value);
        static abstract TSelf Load(float* p);
        static abstract TSelf Add(TSelf a, TSelf b);
        static abstract TSelf Fma(TSelf a, TSelf b, TSelf c);
        static abstract float Sum(TSelf a);
    }

    private readonly unsafe struct Wide(Vector512<float> v) : IFloatVector<Wide>
    {
        private readonly Vector512<float> _v = v;
        public static int Lanes => Vector512<float>.Count;
        public static Wide Splat(float value) => new(Vector512.Create(value));
        public static Wide Load(float* p) => new(Vector512.LoadAligned(p));
        public static Wide Add(Wide a, Wide b) => new(a._v + b._v);
        public static Wide Fma(Wide a, Wide b, Wide c) => new(Avx512F.FusedMultiplyAdd(a._v, b._v, c._v));
        public static float Sum(Wide a) => Vector512.Sum(a._v);
    }

    private readonly unsafe struct Narrow(Vector256<float> v) : IFloatVector<Narrow>
    {
        private readonly Vector256<float> _v = v;
        public static int Lanes => Vector256<float>.Count;
        public static Narrow Splat(float value) => new(Vector256.Create(value));
        public static Narrow Load(float* p) => new(Vector256.LoadAligned(p));
        public static Narrow Add(Narrow a, Narrow b) => new(a._v + b._v);
        public static Narrow Fma(Narrow a, Narrow b, Narrow c) => new(System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(a._v, b._v, c._v));
        public static float Sum(Narrow a) => Vector256.Sum(a._v);
    }
}
