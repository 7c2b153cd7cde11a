namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>
/// Random attention inputs in BNSH: new query/key/value for <c>S</c> tokens, the past caches
/// (<c>P = T − S</c> tokens) and an optional mask. Values are rounded to half once when the test runs
/// in float16, so the float64 references see what the kernels see.
/// </summary>
public sealed record AttentionData(AttentionShape Shape, double[] Query, double[] Key, double[] Value,
                                   double[]? PastKey, double[]? PastValue, long[]? Mask)
{
    /// <summary>Queries are drawn wider than keys so that attention is peaked and block selection matters.</summary>
    public const double QueryAmplitude = 2.5;

    public static AttentionData Random(AttentionShape shape, int seed, ElementType type = ElementType.Float32, long[]? mask = null)
    {
        var random = new TensorRandom(seed);
        double[] Draw(long count, double amplitude) => random.Uniform(count, amplitude, type);
        var (b, hq, hkv, d, s, p) = (shape.Batch, shape.NumHeads, shape.KvNumHeads, shape.HeadDim, shape.NewLength, shape.PastLength);
        return new AttentionData(shape,
            Draw((long)b * hq * s * d, QueryAmplitude), Draw((long)b * hkv * s * d, 1), Draw((long)b * hkv * s * d, 1),
            p > 0 ? Draw((long)b * hkv * p * d, 1) : null, p > 0 ? Draw((long)b * hkv * p * d, 1) : null, mask);
    }

    public double[] KeyCache() => PastKey is null ? Key : Layouts.ConcatSeq(PastKey, Shape.PastLength, Key, Shape.NewLength, Shape.Batch, Shape.KvNumHeads, Shape.HeadDim);
    public double[] ValueCache() => PastValue is null ? Value : Layouts.ConcatSeq(PastValue, Shape.PastLength, Value, Shape.NewLength, Shape.Batch, Shape.KvNumHeads, Shape.HeadDim);

    /// <summary>The same values stored as <paramref name="type"/> (rounded when it is float16).</summary>
    public AttentionData As(ElementType type)
    {
        double[]? Round(double[]? x) => x?.Select(v => TestTensor.RoundTo(type, v)).ToArray();
        return this with
        {
            Query = Round(Query)!, Key = Round(Key)!, Value = Round(Value)!, PastKey = Round(PastKey), PastValue = Round(PastValue),
        };
    }
}

/// <summary>Masks for padded batches: <c>1</c> on real tokens, <c>0</c> on padding.</summary>
public static class Masks
{
    /// <summary>Row <c>b</c> has <c>leftPadding[b]</c> leading and <c>rightPadding[b]</c> trailing zeros.</summary>
    public static long[] Padded(int totalLength, int[] leftPadding, int[] rightPadding)
    {
        var mask = new long[leftPadding.Length * totalLength];
        for (var b = 0; b < leftPadding.Length; b++)
        for (var j = 0; j < totalLength; j++)
            mask[b * totalLength + j] = j >= leftPadding[b] && j < totalLength - rightPadding[b] ? 1 : 0;
        return mask;
    }
}

/// <summary>Settings of a HySparseFullAttn call and the outputs it asks for.</summary>
public sealed record FullAttnOptions
{
    public ElementType Type { get; init; } = ElementType.Float32;
    public bool ThreeD { get; init; } = true;
    public float Scale { get; init; }
    public int BlockSize { get; init; } = 16;
    public int TopK { get; init; } = 4;
    public bool WantIndices { get; init; } = true;
    public bool WantScores { get; init; } = true;
    public bool WantSelected { get; init; } = true;
}

/// <summary>Outputs of a HySparseFullAttn call, converted to BNSH; optional ones are null when not asked for.</summary>
public sealed record FullAttnResult(double[] Output, double[] PresentKey, double[] PresentValue, int[]? BlockIndices,
                                    double[]? BlockScores, double[]? SelectedKey, double[]? SelectedValue);

public static class FullAttnCall
{
    public static OpInvocation Build(AttentionData data, FullAttnOptions options)
    {
        var sh = data.Shape;
        var (b, hq, hkv, d, s, t) = (sh.Batch, sh.NumHeads, sh.KvNumHeads, sh.HeadDim, sh.NewLength, sh.TotalLength);
        var call = new OpInvocation(FullAttn, Domain, FullAttnIO.Inputs, FullAttnIO.Outputs) { NodeName = "full_layer" };
        var type = options.Type;
        call.Inputs["query"] = Qkv(data.Query, b, hq, s, d, options.ThreeD, type);
        call.Inputs["key"] = Qkv(data.Key, b, hkv, s, d, options.ThreeD, type);
        call.Inputs["value"] = Qkv(data.Value, b, hkv, s, d, options.ThreeD, type);
        if (data.PastKey is not null)
        {
            call.Inputs["past_key"] = new TestTensor(type, [b, hkv, sh.PastLength, d], data.PastKey);
            call.Inputs["past_value"] = new TestTensor(type, [b, hkv, sh.PastLength, d], data.PastValue!);
        }
        if (data.Mask is not null) call.Inputs["attention_mask"] = TestTensor.Int64s([b, t], data.Mask);

        long nb = (t + options.BlockSize - 1) / options.BlockSize;
        call.Outputs["output"] = new OutputRequest("output", type, options.ThreeD ? [b, s, hq * d] : [b, hq, s, d]);
        call.Outputs["present_key"] = new OutputRequest("present_key", type, [b, hkv, t, d]);
        call.Outputs["present_value"] = new OutputRequest("present_value", type, [b, hkv, t, d]);
        if (options.WantIndices) call.Outputs["block_indices"] = new OutputRequest("block_indices", ElementType.Int32, [b, hkv, s, options.TopK]);
        if (options.WantScores) call.Outputs["block_scores"] = new OutputRequest("block_scores", ElementType.Float32, [b, hkv, s, nb]);
        if (options.WantSelected)
        {
            long rows = (long)options.TopK * options.BlockSize;
            call.Outputs["selected_key"] = new OutputRequest("selected_key", type, [b, hkv, s, rows, d]);
            call.Outputs["selected_value"] = new OutputRequest("selected_value", type, [b, hkv, s, rows, d]);
        }

        call.Attributes[Attributes.NumHeads] = hq;
        call.Attributes[Attributes.KvNumHeads] = hkv;
        call.Attributes[Attributes.BlockSize] = options.BlockSize;
        call.Attributes[Attributes.TopK] = options.TopK;
        if (options.Scale != 0) call.Attributes[Attributes.Scale] = options.Scale;
        return call;
    }

    public static FullAttnResult Run(AttentionData data, FullAttnOptions options)
    {
        var results = Build(data, options).Run();
        var sh = data.Shape;
        return new FullAttnResult(
            OutputToBnsh(results["output"], sh.Batch, sh.NumHeads, sh.NewLength, sh.HeadDim, options.ThreeD),
            results["present_key"].Data, results["present_value"].Data,
            results.TryGetValue("block_indices", out var idx) ? idx.Data.Select(v => (int)v).ToArray() : null,
            results.GetValueOrDefault("block_scores")?.Data,
            results.GetValueOrDefault("selected_key")?.Data, results.GetValueOrDefault("selected_value")?.Data);
    }

    public static AttentionReference.FullResult Reference(AttentionData data, FullAttnOptions options) =>
        AttentionReference.FullAttention(data.Shape, data.Query, data.KeyCache(), data.ValueCache(), data.Mask,
            AttentionReference.ResolveScale(options.Scale, data.Shape.HeadDim), options.BlockSize, options.TopK);

    internal static TestTensor Qkv(double[] bnsh, int b, int h, int s, int d, bool threeD, ElementType type) =>
        threeD ? new TestTensor(type, [b, s, h * d], Layouts.BnshToBsnh(bnsh, b, h, s, d))
               : new TestTensor(type, [b, h, s, d], bnsh);

    internal static double[] OutputToBnsh(TestTensor output, int b, int h, int s, int d, bool threeD) =>
        threeD ? Layouts.BsnhToBnsh(output.Data, b, h, s, d) : output.Data;
}

/// <summary>
/// A HySparseSparseAttn call: the layer's own new KV and past cache, the SA source (shared cache or
/// selected blocks, or neither for retrofit), indices and the gate/sink inputs. Arrays are BNSH.
/// </summary>
public sealed record SparseAttnCall
{
    public required AttentionShape Shape { get; init; }  // NewLength = S, TotalLength = T
    public required double[] Query { get; init; }
    public required double[] Key { get; init; }
    public required double[] Value { get; init; }
    public double[]? PastKey { get; init; }
    public double[]? PastValue { get; init; }
    public int PastLength { get; init; }  // P_own
    public double[]? SharedKey { get; init; }
    public double[]? SharedValue { get; init; }
    public required int[] BlockIndices { get; init; }
    public required int TopK { get; init; }
    public long[]? Mask { get; init; }
    public double[]? Gate { get; init; }
    public bool GatePerChannel { get; init; }
    public double[]? Sinks { get; init; }
    public double[]? SelectedKey { get; init; }
    public double[]? SelectedValue { get; init; }
    public ElementType Type { get; init; } = ElementType.Float32;
    public bool ThreeD { get; init; } = true;
    public float Scale { get; init; }
    public int BlockSize { get; init; } = 16;
    public int Window { get; init; } = 8;
    public string Combine { get; init; } = CombineModes.Union;
    public int WindowCache { get; init; }
    /// <summary>Shared-buffer mode (docs/ops.md "Shared KV buffer"): past/present/shared are buffers of <c>Shape.TotalLength</c> = <see cref="PastLength"/> positions.</summary>
    public TestTensor? SeqlensK { get; init; }
    public TestTensor? TotalSequenceLength { get; init; }

    public int OwnLength => PastLength + Shape.NewLength;
    public int PresentLength => SeqlensK is not null ? PastLength : WindowCache == 1 ? Math.Min(Window, OwnLength) : OwnLength;

    public double[] OwnKey() => PastKey is null ? Key : Layouts.ConcatSeq(PastKey, PastLength, Key, Shape.NewLength, Shape.Batch, Shape.KvNumHeads, Shape.HeadDim);
    public double[] OwnValue() => PastValue is null ? Value : Layouts.ConcatSeq(PastValue, PastLength, Value, Shape.NewLength, Shape.Batch, Shape.KvNumHeads, Shape.HeadDim);

    public OpInvocation Build()
    {
        var (b, hq, hkv, d, s, t) = (Shape.Batch, Shape.NumHeads, Shape.KvNumHeads, Shape.HeadDim, Shape.NewLength, Shape.TotalLength);
        var call = new OpInvocation(SparseAttn, Domain, SparseAttnIO.Inputs, SparseAttnIO.Outputs) { NodeName = "sparse_layer" };
        call.Inputs["query"] = FullAttnCall.Qkv(Query, b, hq, s, d, ThreeD, Type);
        call.Inputs["key"] = FullAttnCall.Qkv(Key, b, hkv, s, d, ThreeD, Type);
        call.Inputs["value"] = FullAttnCall.Qkv(Value, b, hkv, s, d, ThreeD, Type);
        if (PastKey is not null)
        {
            call.Inputs["past_key"] = new TestTensor(Type, [b, hkv, PastLength, d], PastKey);
            call.Inputs["past_value"] = new TestTensor(Type, [b, hkv, PastLength, d], PastValue!);
        }
        if (SharedKey is not null)
        {
            call.Inputs["shared_key"] = new TestTensor(Type, [b, hkv, t, d], SharedKey);
            call.Inputs["shared_value"] = new TestTensor(Type, [b, hkv, t, d], SharedValue!);
        }
        call.Inputs["block_indices"] = TestTensor.Int32s([b, hkv, s, TopK], BlockIndices);
        if (Mask is not null) call.Inputs["attention_mask"] = TestTensor.Int64s([b, t], Mask);
        if (Gate is not null) call.Inputs["gate"] = new TestTensor(Type, [b, s, GatePerChannel ? 2L * hq * d : 2L * hq], Gate);
        if (Sinks is not null) call.Inputs["sinks"] = new TestTensor(Type, [Sinks.Length / hq, hq], Sinks);
        if (SelectedKey is not null)
        {
            call.Inputs["selected_key"] = new TestTensor(Type, [b, hkv, s, (long)TopK * BlockSize, d], SelectedKey);
            call.Inputs["selected_value"] = new TestTensor(Type, [b, hkv, s, (long)TopK * BlockSize, d], SelectedValue!);
        }
        if (SeqlensK is not null) call.Inputs["seqlens_k"] = SeqlensK;
        if (TotalSequenceLength is not null) call.Inputs["total_sequence_length"] = TotalSequenceLength;

        call.Outputs["output"] = new OutputRequest("output", Type, ThreeD ? [b, s, hq * d] : [b, hq, s, d]);
        call.Outputs["present_key"] = new OutputRequest("present_key", Type, [b, hkv, PresentLength, d]);
        call.Outputs["present_value"] = new OutputRequest("present_value", Type, [b, hkv, PresentLength, d]);

        call.Attributes[Attributes.NumHeads] = hq;
        call.Attributes[Attributes.KvNumHeads] = hkv;
        call.Attributes[Attributes.BlockSize] = BlockSize;
        call.Attributes[Attributes.Window] = Window;
        call.Attributes[Attributes.Combine] = Combine;
        call.Attributes[Attributes.WindowCache] = WindowCache;
        if (Scale != 0) call.Attributes[Attributes.Scale] = Scale;
        return call;
    }

    /// <summary>Runs the op; returns the output (BNSH) and the present caches.</summary>
    public (double[] Output, double[] PresentKey, double[] PresentValue) Run()
    {
        var results = Build().Run();
        return (FullAttnCall.OutputToBnsh(results["output"], Shape.Batch, Shape.NumHeads, Shape.NewLength, Shape.HeadDim, ThreeD),
                results["present_key"].Data, results["present_value"].Data);
    }

    public double[] ReferenceOutput()
    {
        var ownStart = Shape.TotalLength - OwnLength;
        AttentionReference.SaSource source =
            SelectedKey is not null ? new AttentionReference.SelectedSource(SelectedKey, SelectedValue!)
            : SharedKey is not null ? new AttentionReference.FullLengthSource(SharedKey, SharedValue!)
            : new AttentionReference.FullLengthSource(OwnKey(), OwnValue());
        return AttentionReference.SparseAttention(new AttentionReference.SparseInputs(
            Shape, Query, OwnKey(), OwnValue(), ownStart, source, BlockIndices, TopK, Mask, Gate, GatePerChannel, Sinks,
            AttentionReference.ResolveScale(Scale, Shape.HeadDim), BlockSize, Window, Combine == CombineModes.Union));
    }

    /// <summary>The present caches the contract prescribes: past ++ new, trimmed to the window when <c>window_cache = 1</c>.</summary>
    public (double[] Key, double[] Value) ReferencePresent()
    {
        var (b, hkv, d) = (Shape.Batch, Shape.KvNumHeads, Shape.HeadDim);
        var start = OwnLength - PresentLength;
        return (Layouts.SliceSeq(OwnKey(), OwnLength, start, PresentLength, b, hkv, d),
                Layouts.SliceSeq(OwnValue(), OwnLength, start, PresentLength, b, hkv, d));
    }
}
