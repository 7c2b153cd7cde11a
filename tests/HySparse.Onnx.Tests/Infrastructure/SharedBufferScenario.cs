namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>
/// A batch whose rows grow at different speeds in GroupQueryAttention's shared KV buffer convention
/// (docs/ops.md "Shared KV buffer"). Each row has its own stream of tokens (query, the full layer's
/// key/value, a sparse layer's own key/value, gate logits), BNSH <c>[B, H, Capacity, D]</c>; a step feeds
/// every row its next tokens, right-padding the rows of a first prompt that are shorter than <c>S</c>
/// with random values the ops must ignore. The streams are the ground truth: a row's valid buffer
/// prefix must equal its stream prefix, and per-row references are built from the streams alone.
/// </summary>
public sealed class SharedBufferScenario
{
    private readonly TensorRandom _random;

    public SharedBufferScenario(int batch, int numHeads, int kvNumHeads, int headDim, int capacity, int seed, ElementType type)
    {
        (Batch, NumHeads, KvNumHeads, HeadDim, Capacity, Type) = (batch, numHeads, kvNumHeads, headDim, capacity, type);
        _random = new TensorRandom(seed);
        Query = Draw((long)batch * numHeads * capacity * headDim, AttentionData.QueryAmplitude);
        Key = Draw(KvCount, 1);
        Value = Draw(KvCount, 1);
        OwnKey = Draw(KvCount, 1);
        OwnValue = Draw(KvCount, 1);
        Gate = Draw((long)batch * capacity * 2 * numHeads, 3);
        Sinks = Draw(2 * numHeads, 1.5);
        Lengths = new int[batch];
    }

    public int Batch { get; }
    public int NumHeads { get; }
    public int KvNumHeads { get; }
    public int HeadDim { get; }
    public int Capacity { get; }
    public ElementType Type { get; }
    public double[] Query { get; }
    public double[] Key { get; }
    public double[] Value { get; }
    public double[] OwnKey { get; }
    public double[] OwnValue { get; }
    /// <summary>Per-head gate logits, <c>[B, Capacity, 2·H_q]</c>.</summary>
    public double[] Gate { get; }
    public double[] Sinks { get; }
    /// <summary>Valid tokens per row before the next step.</summary>
    public int[] Lengths { get; }

    private long KvCount => (long)Batch * KvNumHeads * Capacity * HeadDim;

    private double[] Draw(long count, double amplitude) => _random.Uniform(count, amplitude, Type);

    /// <summary>A buffer of capacity positions holding random values, as an uninitialised buffer might.</summary>
    public double[] GarbageBuffer() => Draw(KvCount, 7);

    /// <summary>
    /// The next step: <paramref name="promptLengths"/> real tokens per row for a first prompt of
    /// <c>S = max</c> tokens (rows must be empty), or else <paramref name="newLength"/> tokens for every row.
    /// </summary>
    public SharedBufferStep Next(int newLength, int[]? promptLengths = null)
    {
        if (promptLengths is not null)
        {
            if (Lengths.Any(l => l != 0)) throw new InvalidOperationException("a right-padded prompt must be the first step");
            newLength = promptLengths.Max();
        }
        var real = promptLengths ?? Enumerable.Repeat(newLength, Batch).ToArray();
        var past = (int[])Lengths.Clone();
        var step = new SharedBufferStep(this, newLength, past, real,
            Tokens(Query, NumHeads, past, real, newLength), Tokens(Key, KvNumHeads, past, real, newLength),
            Tokens(Value, KvNumHeads, past, real, newLength), Tokens(OwnKey, KvNumHeads, past, real, newLength),
            Tokens(OwnValue, KvNumHeads, past, real, newLength), GateTokens(past, real, newLength));
        for (var b = 0; b < Batch; b++) Lengths[b] += real[b];
        return step;
    }

    /// <summary>Row b's real tokens [past, past + real) of a stream, then random padding up to S: BNSH [B, H, S, D].</summary>
    private double[] Tokens(double[] stream, int heads, int[] past, int[] real, int newLength)
    {
        var tokens = Draw((long)Batch * heads * newLength * HeadDim, 5);
        for (var b = 0; b < Batch; b++)
        for (var h = 0; h < heads; h++)
            Array.Copy(stream, (((long)b * heads + h) * Capacity + past[b]) * HeadDim,
                       tokens, (((long)b * heads + h) * newLength) * HeadDim, (long)real[b] * HeadDim);
        return tokens;
    }

    private double[] GateTokens(int[] past, int[] real, int newLength)
    {
        var width = 2 * NumHeads;
        var gate = Draw((long)Batch * newLength * width, 3);
        for (var b = 0; b < Batch; b++)
            Array.Copy(Gate, ((long)b * Capacity + past[b]) * width, gate, (long)b * newLength * width, (long)real[b] * width);
        return gate;
    }

    /// <summary>Positions [0, length) of row b of a BNSH stream or buffer with <see cref="Capacity"/> positions.</summary>
    public double[] RowPrefix(double[] bnsh, int heads, int b, int length)
    {
        var row = bnsh.AsSpan((int)((long)b * heads * Capacity * HeadDim), heads * Capacity * HeadDim).ToArray();
        return Layouts.SliceSeq(row, Capacity, 0, length, 1, heads, HeadDim);
    }
}

/// <summary>One step of a <see cref="SharedBufferScenario"/>: per-row past and real lengths and the padded new tokens (BNSH).</summary>
public sealed record SharedBufferStep(SharedBufferScenario Scenario, int NewLength, int[] Past, int[] Real, double[] Query,
                                      double[] Key, double[] Value, double[] OwnKey, double[] OwnValue, double[] Gate)
{
    public int Total(int b) => Past[b] + Real[b];
    public TestTensor SeqlensK => TestTensor.Int32s([Scenario.Batch], Enumerable.Range(0, Scenario.Batch).Select(b => Total(b) - 1));
    public TestTensor TotalSequenceLength => TestTensor.Int32s([], [Enumerable.Range(0, Scenario.Batch).Max(Total)]);

    /// <summary>Row b's real tokens of a per-token BNSH tensor <c>[B, H, S, inner]</c>: <c>[1, H, real, inner]</c>.</summary>
    public double[] RowTokens(double[] perToken, int heads, int inner, int b)
    {
        var row = perToken.AsSpan(b * heads * NewLength * inner, heads * NewLength * inner).ToArray();
        return Layouts.SliceAxis2(row, heads, NewLength, inner, 0, Real[b]);
    }

    /// <summary>Every element of the padding tokens (s ≥ real) of a per-token BNSH tensor <c>[B, H, S, inner]</c>.</summary>
    public IEnumerable<double> PaddingValues(double[] perToken, int heads, int inner) =>
        from b in Enumerable.Range(0, Scenario.Batch)
        from h in Enumerable.Range(0, heads)
        from s in Enumerable.Range(Real[b], NewLength - Real[b])
        from i in Enumerable.Range(0, inner)
        select perToken[(((long)b * heads + h) * NewLength + s) * inner + i];

    /// <summary>Row b as an ordinary (concatenating) call: past = its stream prefix, new = its real tokens.</summary>
    public AttentionData RowData(int b)
    {
        var s = Scenario;
        var shape = new AttentionShape(1, s.NumHeads, s.KvNumHeads, s.HeadDim, Real[b], Total(b));
        return new AttentionData(shape, RowTokens(Query, s.NumHeads, s.HeadDim, b), RowTokens(Key, s.KvNumHeads, s.HeadDim, b),
            RowTokens(Value, s.KvNumHeads, s.HeadDim, b),
            Past[b] > 0 ? s.RowPrefix(s.Key, s.KvNumHeads, b, Past[b]) : null,
            Past[b] > 0 ? s.RowPrefix(s.Value, s.KvNumHeads, b, Past[b]) : null, null);
    }
}

/// <summary>
/// Runs a single-node model through an <see cref="OrtIoBinding"/> that binds one OrtValue as both
/// <c>past_key</c> and <c>present_key</c> (and likewise for the values), the way a decode loop keeps its
/// KV in one buffer across steps. The buffers are updated in place; other outputs come back poisoned
/// unless written.
/// </summary>
public static class AliasedRunner
{
    public static Dictionary<string, TestTensor> Run(OpInvocation call)
    {
        using var session = OrtRunner.OpenSession(call.BuildModel(), registerHySparseOps: call.Domain == HySparseOps.Domain);
        using var binding = session.CreateIoBinding();
        using var runOptions = new RunOptions();
        var values = new Dictionary<string, OrtValue>();
        try
        {
            foreach (var (name, tensor) in call.Inputs)
            {
                values[name] = OrtRunner.ToOrtValue(tensor);
                binding.BindInput(name, values[name]);
            }
            var aliases = new Dictionary<string, string> { ["present_key"] = "past_key", ["present_value"] = "past_value" };
            foreach (var (name, request) in call.Outputs)
            {
                if (!aliases.TryGetValue(name, out var input))
                {
                    values[name] = OrtRunner.ToOrtValue(OrtRunner.Poisoned(request));
                    input = name;
                }
                binding.BindOutput(name, values[input]);
            }
            session.RunWithBinding(runOptions, binding);
            return call.Outputs.Keys.ToDictionary(n => n, n => OrtRunner.FromOrtValue(values[aliases.GetValueOrDefault(n, n)]));
        }
        finally
        {
            foreach (var value in values.Values) value.Dispose();
        }
    }
}

/// <summary>Calls of both HySparse ops and of GroupQueryAttention in shared-buffer mode, built from a <see cref="SharedBufferStep"/>.</summary>
public static class SharedBufferCalls
{
    /// <summary>
    /// A full-attention node over the buffers <paramref name="pastKey"/>/<paramref name="pastValue"/>
    /// (BNSH <c>[B, H_kv, Capacity, D]</c>): HySparseFullAttn with <paramref name="options"/>' outputs, or
    /// ONNX Runtime's GroupQueryAttention (3-D, three outputs) when <paramref name="groupQueryAttention"/>.
    /// </summary>
    public static OpInvocation Full(SharedBufferStep step, double[] pastKey, double[] pastValue, FullAttnOptions options,
                                    bool groupQueryAttention = false)
    {
        var sc = step.Scenario;
        var (b, hq, hkv, d, s, cap) = (sc.Batch, sc.NumHeads, sc.KvNumHeads, sc.HeadDim, step.NewLength, sc.Capacity);
        var type = sc.Type;
        var call = groupQueryAttention
            ? new OpInvocation("GroupQueryAttention", OnnxModelFactory.MicrosoftDomain,
                               ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"],
                               ["output", "present_key", "present_value"])
            : new OpInvocation(HySparseOps.FullAttn, HySparseOps.Domain, HySparseOps.FullAttnIO.Inputs, HySparseOps.FullAttnIO.Outputs)
              { NodeName = "full_layer" };
        var threeD = groupQueryAttention || options.ThreeD;
        call.Inputs["query"] = FullAttnCall.Qkv(step.Query, b, hq, s, d, threeD, type);
        call.Inputs["key"] = FullAttnCall.Qkv(step.Key, b, hkv, s, d, threeD, type);
        call.Inputs["value"] = FullAttnCall.Qkv(step.Value, b, hkv, s, d, threeD, type);
        call.Inputs["past_key"] = new TestTensor(type, [b, hkv, cap, d], pastKey);
        call.Inputs["past_value"] = new TestTensor(type, [b, hkv, cap, d], pastValue);
        call.Inputs["seqlens_k"] = step.SeqlensK;
        call.Inputs["total_sequence_length"] = step.TotalSequenceLength;
        call.Outputs["output"] = new OutputRequest("output", type, threeD ? [b, s, hq * d] : [b, hq, s, d]);
        call.Outputs["present_key"] = new OutputRequest("present_key", type, [b, hkv, cap, d]);
        call.Outputs["present_value"] = new OutputRequest("present_value", type, [b, hkv, cap, d]);
        call.Attributes[HySparseOps.Attributes.NumHeads] = hq;
        call.Attributes[HySparseOps.Attributes.KvNumHeads] = hkv;
        if (groupQueryAttention) return call;

        long nb = (cap + options.BlockSize - 1) / options.BlockSize, rows = (long)options.TopK * options.BlockSize;
        if (options.WantIndices) call.Outputs["block_indices"] = new OutputRequest("block_indices", ElementType.Int32, [b, hkv, s, options.TopK]);
        if (options.WantScores) call.Outputs["block_scores"] = new OutputRequest("block_scores", ElementType.Float32, [b, hkv, s, nb]);
        if (options.WantSelected)
        {
            call.Outputs["selected_key"] = new OutputRequest("selected_key", type, [b, hkv, s, rows, d]);
            call.Outputs["selected_value"] = new OutputRequest("selected_value", type, [b, hkv, s, rows, d]);
        }
        call.Attributes[HySparseOps.Attributes.BlockSize] = options.BlockSize;
        call.Attributes[HySparseOps.Attributes.TopK] = options.TopK;
        return call;
    }

    /// <summary>Runs a call built by <see cref="Full"/>, with present bound to the past buffers when <paramref name="aliased"/>.</summary>
    public static FullAttnResult Run(OpInvocation call, SharedBufferStep step, bool aliased, bool threeD = true)
    {
        var results = aliased ? AliasedRunner.Run(call) : call.Run();
        var sc = step.Scenario;
        return new FullAttnResult(
            FullAttnCall.OutputToBnsh(results["output"], sc.Batch, sc.NumHeads, step.NewLength, sc.HeadDim, threeD),
            results["present_key"].Data, results["present_value"].Data,
            results.TryGetValue("block_indices", out var idx) ? idx.Data.Select(v => (int)v).ToArray() : null,
            results.GetValueOrDefault("block_scores")?.Data,
            results.GetValueOrDefault("selected_key")?.Data, results.GetValueOrDefault("selected_value")?.Data);
    }
}
