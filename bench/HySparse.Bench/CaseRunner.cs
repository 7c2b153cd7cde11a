using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using A = HySparse.Onnx.HySparseOps.Attributes;

namespace HySparse.Bench;

/// <summary>Measurement labels used in tables, JSON and the plot.</summary>
public static class Labels
{
    /// <summary>ONNX Runtime's contrib op.</summary>
    public const string Gqa = "GroupQueryAttention";
    /// <summary>Prefill without past (no cache convention involved).</summary>
    public const string NoPast = "no past";
    /// <summary>past [T−1] in, present [T] out as separate tensors: the op copies the cache.</summary>
    public const string Separate = "separate past/present";
    /// <summary>past and present bound to one max-length buffer; seqlens_k/total_sequence_length give the length.</summary>
    public const string SharedBuffer = "shared buffer";
    /// <summary>HySparse ops: present = past ++ new (the only convention the ops have).</summary>
    public const string Concat = "concat past→present";
    /// <summary>Sparse op reading its own full-length cache (training-free retrofit).</summary>
    public const string Retrofit = "retrofit, own full cache (concat)";
    /// <summary>Sparse op reading the full layer's cache, own window cache.</summary>
    public const string SharedKv = "shared-KV, window cache";
    /// <summary>Sparse op reading its own cache kept in a shared max-length buffer (seqlens_k), updated in place.</summary>
    public const string RetrofitInPlace = "retrofit, shared buffer";

    /// <summary>Short keys of (op, variant) pairs, for <c>--only</c>.</summary>
    public static readonly IReadOnlySet<string> Keys = new HashSet<string> { "gqa", "gqa-shared", "full", "full-shared", "sparse-retrofit", "sparse-retrofit-shared", "sparse-shared" };

    /// <summary>The <c>--only</c> key of a measurement.</summary>
    public static string KeyOf(string op, string variant) => (op, variant) switch
    {
        (Gqa, SharedBuffer) => "gqa-shared",
        (Gqa, _) => "gqa",
        (_, SharedBuffer) => "full-shared",
        (_, Retrofit) => "sparse-retrofit",
        (_, RetrofitInPlace) => "sparse-retrofit-shared",
        (_, SharedKv) => "sparse-shared",
        _ => "full",
    };
}

/// <summary>One timed operator invocation pattern and what it cost.</summary>
public sealed record Measurement
{
    /// <summary>"prefill" or "decode".</summary>
    public required string Phase { get; init; }
    /// <summary>Layer shape name.</summary>
    public required string Shape { get; init; }
    /// <summary>"f32" or "f16".</summary>
    public required string Type { get; init; }
    /// <summary>S for prefill, T (total context including the new token) for decode.</summary>
    public required long Length { get; init; }
    /// <summary>Operator type.</summary>
    public required string Op { get; init; }
    /// <summary>Cache convention / variant (see <see cref="Labels"/>).</summary>
    public required string Variant { get; init; }
    /// <summary>Median of the timed runs; NaN when the run failed.</summary>
    public double MedianMs { get; init; } = double.NaN;
    /// <summary>Fastest timed run.</summary>
    public double MinMs { get; init; } = double.NaN;
    /// <summary>Slowest timed run.</summary>
    public double MaxMs { get; init; } = double.NaN;
    /// <summary>All timed runs.</summary>
    public double[] SamplesMs { get; init; } = [];
    /// <summary>Compulsory bytes (see <see cref="WorkModel"/>).</summary>
    public double Bytes { get; init; }
    /// <summary>Attention FLOPs (see <see cref="WorkModel"/>).</summary>
    public double Flops { get; init; }
    /// <summary>max(bytes ÷ bandwidth, FLOPs ÷ FMA rate).</summary>
    public double FloorMs { get; init; }
    /// <summary>Which of the two terms set the floor.</summary>
    public string FloorBound { get; init; } = "";
    /// <summary>Largest |output − GroupQueryAttention output| where both compute the same function, else null.</summary>
    public double? MaxAbsDiffVsGqa { get; init; }
    /// <summary>Why there is no time, when the op could not run.</summary>
    public string? Error { get; init; }

    /// <summary>Median ÷ floor.</summary>
    public double TimesFloor => MedianMs / FloorMs;
}

/// <summary>
/// Runs the prefill and decode cases: builds the inputs once per case, then times GroupQueryAttention
/// and the HySparse ops on those same tensors.
/// </summary>
public sealed class CaseRunner(BenchOptions options, SessionFactory sessions, MachineFloor floor, string? hySparseUnavailable)
{
    private readonly List<Measurement> _results = [];

    /// <summary>Everything measured so far, in run order.</summary>
    public IReadOnlyList<Measurement> Results => _results;

    /// <summary>Causal prefill of <paramref name="s"/> tokens, no past.</summary>
    public void RunPrefill(AttentionShape shape, ElementKind kind, int s)
    {
        using var pool = new TensorPool(options.Seed ^ s);
        int e = TensorPool.ElementBytes(kind), K = options.Sparse.TopK;
        var q = pool.Random(kind, 1, s, shape.QueryHeads * shape.HeadDim);
        var k = pool.Random(kind, 1, s, shape.KvHeads * shape.HeadDim);
        var v = pool.Random(kind, 1, s, shape.KvHeads * shape.HeadDim);
        var presentK = pool.Allocate(kind, 1, shape.KvHeads, s, shape.HeadDim);
        var presentV = pool.Allocate(kind, 1, shape.KvHeads, s, shape.HeadDim);
        var gqaOut = pool.Allocate(kind, 1, s, shape.QueryHeads * shape.HeadDim);
        var fullOut = pool.Allocate(kind, 1, s, shape.QueryHeads * shape.HeadDim);
        var indices = pool.Int32(new int[shape.KvHeads * s * K], 1, shape.KvHeads, s, K);
        var seqlens = pool.Int32([s - 1], 1);
        var total = pool.Int32([s], 1);
        var ctx = new CaseContext("prefill", shape, kind, s);

        var gqa = Queue(ctx, Labels.Gqa, Labels.NoPast, WorkModel.Prefill(shape, e, s, 0), GqaModel(shape),
             [("query", q), ("key", k), ("value", v), ("past_key", null), ("past_value", null), ("seqlens_k", seqlens), ("total_sequence_length", total)],
             [("output", gqaOut), ("present_key", presentK), ("present_value", presentV)]);
        Queue(ctx, HySparseOps.FullAttn, Labels.NoPast, WorkModel.Prefill(shape, e, s, K), FullModel(shape),
             [("query", q), ("key", k), ("value", v)],
             [("output", fullOut), ("present_key", presentK), ("present_value", presentV), ("block_indices", indices)],
             reference: gqa);
        RunQueued();
    }

    /// <summary>One decode step at total context <paramref name="t"/> (T − 1 cached tokens + 1 new).</summary>
    public void RunDecode(AttentionShape shape, ElementKind kind, int t)
    {
        using var pool = new TensorPool(options.Seed ^ t);
        int e = TensorPool.ElementBytes(kind), Hkv = shape.KvHeads, D = shape.HeadDim, w = options.Sparse.Window;
        var q = pool.Random(kind, 1, 1, shape.QueryHeads * D);
        var k = pool.Random(kind, 1, 1, Hkv * D);
        var v = pool.Random(kind, 1, 1, Hkv * D);
        var pastK = pool.Random(kind, 1, Hkv, t - 1, D);
        var pastV = pool.Random(kind, 1, Hkv, t - 1, D);
        var presentK = pool.Allocate(kind, 1, Hkv, t, D);
        var presentV = pool.Allocate(kind, 1, Hkv, t, D);
        // The shared buffer holds the same past; its capacity is exactly T, so the step fills it.
        var bufferK = pool.CacheWithCapacity(kind, pastK, t);
        var bufferV = pool.CacheWithCapacity(kind, pastV, t);
        var seqlens = pool.Int32([t - 1], 1);
        var total = pool.Int32([t], 1);
        var outputs = Enumerable.Range(0, 7).Select(_ => pool.Allocate(kind, 1, 1, shape.QueryHeads * D)).ToArray();
        var fullIndices = pool.Int32(new int[Hkv * options.Sparse.TopK], 1, Hkv, 1, options.Sparse.TopK);
        var ctx = new CaseContext("decode", shape, kind, t);

        var gqa = Queue(ctx, Labels.Gqa, Labels.Separate, WorkModel.DecodeConcat(shape, e, t, 0), GqaModel(shape),
             [("query", q), ("key", k), ("value", v), ("past_key", pastK), ("past_value", pastV), ("seqlens_k", seqlens), ("total_sequence_length", total)],
             [("output", outputs[0]), ("present_key", presentK), ("present_value", presentV)]);
        Queue(ctx, Labels.Gqa, Labels.SharedBuffer, WorkModel.DecodeShared(shape, e, t), GqaModel(shape),
             [("query", q), ("key", k), ("value", v), ("past_key", bufferK), ("past_value", bufferV), ("seqlens_k", seqlens), ("total_sequence_length", total)],
             [("output", outputs[1]), ("present_key", bufferK), ("present_value", bufferV)],
             reference: gqa);
        Queue(ctx, HySparseOps.FullAttn, Labels.Concat, WorkModel.DecodeConcat(shape, e, t, options.Sparse.TopK), FullModel(shape),
             [("query", q), ("key", k), ("value", v), ("past_key", pastK), ("past_value", pastV)],
             [("output", outputs[2]), ("present_key", presentK), ("present_value", presentV), ("block_indices", fullIndices)],
             reference: gqa);

        Queue(ctx, HySparseOps.FullAttn, Labels.SharedBuffer, WorkModel.DecodeShared(shape, e, t, options.Sparse.TopK), FullModel(shape),
             [("query", q), ("key", k), ("value", v), ("past_key", bufferK), ("past_value", bufferV), ("attention_mask", null), ("seqlens_k", seqlens), ("total_sequence_length", total)],
             [("output", outputs[5]), ("present_key", bufferK), ("present_value", bufferV), ("block_indices", fullIndices)],
             reference: gqa);

        var selection = new SparseSelection(Hkv, t, options.Sparse, new Random(options.Seed ^ t));
        var indices = pool.Int32(selection.Indices, 1, Hkv, 1, options.Sparse.TopK);
        Queue(ctx, HySparseOps.SparseAttn, Labels.Retrofit, WorkModel.SparseRetrofit(shape, e, t, selection), SparseModel(shape, windowCache: false),
             [("query", q), ("key", k), ("value", v), ("past_key", pastK), ("past_value", pastV), ("shared_key", null), ("shared_value", null), ("block_indices", indices)],
             [("output", outputs[3]), ("present_key", presentK), ("present_value", presentV)]);

        // The retrofit layer's own cache in shared-buffer mode: the same buffer GQA updates in place
        // (every op writes the same new row, so the contents stay identical across ops and runs).
        Queue(ctx, HySparseOps.SparseAttn, Labels.RetrofitInPlace, WorkModel.SparseInPlace(shape, e, selection), SparseModel(shape, windowCache: false),
             [("query", q), ("key", k), ("value", v), ("past_key", bufferK), ("past_value", bufferV), ("shared_key", null), ("shared_value", null), ("block_indices", indices),
              ("attention_mask", null), ("gate", null), ("sinks", null), ("selected_key", null), ("selected_value", null), ("seqlens_k", seqlens), ("total_sequence_length", total)],
             [("output", outputs[6]), ("present_key", bufferK), ("present_value", bufferV)]);

        var windowPastK = pool.Random(kind, 1, Hkv, Math.Min(w, t - 1), D);
        var windowPastV = pool.Random(kind, 1, Hkv, Math.Min(w, t - 1), D);
        var windowPresentK = pool.Allocate(kind, 1, Hkv, Math.Min(w, t), D);
        var windowPresentV = pool.Allocate(kind, 1, Hkv, Math.Min(w, t), D);
        Queue(ctx, HySparseOps.SparseAttn, Labels.SharedKv, WorkModel.SparseSharedKv(shape, e, t, w, selection), SparseModel(shape, windowCache: true),
             [("query", q), ("key", k), ("value", v), ("past_key", windowPastK), ("past_value", windowPastV), ("shared_key", bufferK), ("shared_value", bufferV), ("block_indices", indices)],
             [("output", outputs[4]), ("present_key", windowPresentK), ("present_value", windowPresentV)]);
        RunQueued();
    }

    private sealed record CaseContext(string Phase, AttentionShape Shape, ElementKind Kind, long Length);

    // Model builders take the shapes from the bound tensors, so a model always matches its inputs.
    private delegate byte[] ModelBuilder(IReadOnlyList<TensorSpec?> inputs, IReadOnlyList<TensorSpec> outputs);

    private static ModelBuilder GqaModel(AttentionShape shape) => (inputs, outputs) =>
        ModelFactory.SingleNode("GroupQueryAttention", "com.microsoft", inputs, outputs,
            [ModelFactory.Int(A.NumHeads, shape.QueryHeads), ModelFactory.Int(A.KvNumHeads, shape.KvHeads)]);

    private ModelBuilder FullModel(AttentionShape shape) => (inputs, outputs) =>
        ModelFactory.SingleNode(HySparseOps.FullAttn, HySparseOps.Domain, inputs, outputs,
            [ModelFactory.Int(A.NumHeads, shape.QueryHeads), ModelFactory.Int(A.KvNumHeads, shape.KvHeads),
             ModelFactory.Int(A.BlockSize, options.Sparse.BlockSize), ModelFactory.Int(A.TopK, options.Sparse.TopK)]);

    private ModelBuilder SparseModel(AttentionShape shape, bool windowCache) => (inputs, outputs) =>
        ModelFactory.SingleNode(HySparseOps.SparseAttn, HySparseOps.Domain, inputs, outputs,
            [ModelFactory.Int(A.NumHeads, shape.QueryHeads), ModelFactory.Int(A.KvNumHeads, shape.KvHeads),
             ModelFactory.Int(A.BlockSize, options.Sparse.BlockSize), ModelFactory.Int(A.Window, options.Sparse.Window),
             ModelFactory.String(A.Combine, HySparseOps.CombineModes.Union), ModelFactory.Int(A.WindowCache, windowCache ? 1 : 0)]);

    /// <summary>A run slower than this is long enough that fewer repetitions give a stable median.</summary>
    public const double LongRunMs = 1000;

    // One op of the current case: its session, ready to run, and where its result goes.
    private sealed class Pending(int slot, Measurement template, BoundSession session, OrtValue output, Pending? reference)
    {
        public int Slot { get; } = slot;
        public Measurement Template { get; } = template;
        public BoundSession Session { get; } = session;
        public OrtValue Output { get; } = output;
        public Pending? Reference { get; } = reference;
        public List<double> Samples { get; } = [];
        public string? Error { get; set; }
    }

    private readonly List<Pending> _pending = [];

    // Creates the op's session and queues it for RunQueued; null when it was filtered out or failed
    // (the failure is recorded). reference: the queued op whose output this one must reproduce.
    private Pending? Queue(CaseContext ctx, string op, string variant, Work work, ModelBuilder model,
                           (string Name, OrtValue? Value)[] inputs, (string Name, OrtValue Value)[] outputs, Pending? reference = null)
    {
        if (options.OnlyKeys.Count > 0 && !options.OnlyKeys.Contains(Labels.KeyOf(op, variant))) return null;
        var (floorMs, bound) = floor.FloorMs(work.Bytes, work.Flops);
        var m = new Measurement
        {
            Phase = ctx.Phase, Shape = ctx.Shape.Name, Type = ctx.Kind == ElementKind.Float16 ? "f16" : "f32",
            Length = ctx.Length, Op = op, Variant = variant, Bytes = work.Bytes, Flops = work.Flops, FloorMs = floorMs, FloorBound = bound,
        };
        bool hySparse = op != Labels.Gqa;
        if (hySparse && (options.OrtOnly || hySparseUnavailable is not null))
        {
            _results.Add(m with { Error = options.OrtOnly ? "skipped (--ort-only)" : hySparseUnavailable });
            return null;
        }
        try
        {
            var specs = inputs.Select(i => i.Value is null ? null : TensorPool.Spec(i.Name, i.Value)).ToArray();
            var outSpecs = outputs.Select(o => TensorPool.Spec(o.Name, o.Value)).ToArray();
            var boundInputs = inputs.Where(i => i.Value is not null).Select(i => (i.Name, i.Value!));
            var pending = new Pending(_results.Count, m, new BoundSession(sessions, model(specs, outSpecs), hySparse, boundInputs, outputs), outputs[0].Value, reference);
            _pending.Add(pending);
            _results.Add(m);  // its slot, so results keep the order the ops were queued in
            return pending;
        }
        catch (Exception ex) when (ex is OnnxRuntimeException or HySparseLibraryNotFoundException)
        {
            _results.Add(m with { Error = FirstLine(ex) });
            Console.Error.WriteLine($"  {Describe(m)}: failed: {FirstLine(ex)}");
            return null;
        }
    }

    // Times the queued ops of one case round-robin: run i of every op happens before run i + 1 of any,
    // so a change of machine load during the case hits every op alike and the ratios stay fair.
    private void RunQueued()
    {
        int iterations = options.Iterations, warmup = options.Warmup;
        foreach (var p in _pending)
        {
            for (int i = 0; i < warmup && p.Error is null; i++)
            {
                double ms = Guarded(p, p.Session.TimeOnce);
                if (i == 0 && ms > LongRunMs)
                {
                    iterations = Math.Min(iterations, 3);
                    warmup = 1;
                }
            }
        }
        for (int i = 0; i < iterations; i++)
        {
            foreach (var p in _pending.Where(p => p.Error is null)) p.Samples.Add(Guarded(p, p.Session.TimeOnce));
        }
        foreach (var p in _pending)
        {
            Measurement m = p.Template;
            if (p.Error is not null)
            {
                _results[p.Slot] = m with { Error = p.Error };
                Console.Error.WriteLine($"  {Describe(m)}: failed: {p.Error}");
            }
            else
            {
                var timing = new Timing([.. p.Samples]);
                double? diff = p.Reference is { Error: null } r ? OutputComparison.MaxAbsDiff(r.Output, p.Output) : null;
                _results[p.Slot] = m with { MedianMs = timing.MedianMs, MinMs = timing.MinMs, MaxMs = timing.MaxMs, SamplesMs = timing.SamplesMs, MaxAbsDiffVsGqa = diff };
                Console.Error.WriteLine($"  {Describe(m)}: {timing.MedianMs:F3} ms");
            }
            p.Session.Dispose();
        }
        _pending.Clear();
    }

    private static double Guarded(Pending p, Func<double> run)
    {
        try
        {
            return run();
        }
        catch (OnnxRuntimeException ex)
        {
            p.Error = FirstLine(ex);
            return double.NaN;
        }
    }

    private static string Describe(Measurement m) => $"{m.Phase} {m.Shape} {m.Type} {m.Length,6} {m.Op} ({m.Variant})";

    private static string FirstLine(Exception ex) => ex.Message.Split('\n')[0];
}
