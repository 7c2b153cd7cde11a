namespace HySparse.Onnx.Tests;

/// <summary>
/// The op fuzzer of issue 14: random one-node models of both ops, built from a plausible call and then
/// broken in up to three random ways (a dimension, a rank, an element type, a missing or extra input, an
/// attribute's value or type, mask values, block indices, shared-buffer lengths, NaN/Inf data, the
/// outputs asked for). Every case must either run or fail with an <see cref="OnnxRuntimeException"/>;
/// anything else — another exception, a crash, a hang — is a defect. The cases run in child processes
/// (<see cref="OpFuzzChild"/>, batches of 2,500): each writes the case about to run to a file first, so a
/// crash, or a case running over 60 s (which ends its child), is counted with its seed and the
/// campaign goes on. <c>HYSPARSE_FUZZ_OP_CASES</c> sets the
/// number of cases (default 10,000, the CI smoke), <c>HYSPARSE_FUZZ_SEED</c> the first seed. Run with
/// the ASan+UBSan build of the library (docs/reliability.md) to also catch memory errors.
/// </summary>
[TestClass]
public sealed class OpFuzzTests
{
    private static int Setting(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.None, CultureInfo.InvariantCulture, out var value) ? value : fallback;

    /// <summary>Cases per child process: large enough that the runtime's start-up (about a second) is noise.</summary>
    private const int CasesPerChild = 2_500;

    [TestMethod]
    [TestCategory("Fuzz")]
    public void RandomCallsRunOrFailWithAnOrtErrorNeverCrash()
    {
        var cases = Setting("HYSPARSE_FUZZ_OP_CASES", 10_000);
        var firstSeed = Setting("HYSPARSE_FUZZ_SEED", 1);
        var (outcomes, failures, children) = OpFuzzChild.Campaign(firstSeed, cases, CasesPerChild);
        Console.WriteLine($"{cases} op cases (seeds {firstSeed}..{(long)firstSeed + cases - 1}) in {children} child processes: " +
                          string.Join(", ", outcomes.OrderBy(o => o.Key, StringComparer.Ordinal).Select(o => $"{o.Key}: {o.Value}")));
        Assert.IsEmpty(failures, string.Join("\n", failures.Take(20)));
    }

    [TestMethod]
    [TestCategory("Fuzz")]
    public void ACrashOrAHangEndsOnlyItsChildIsCountedWithItsSeedAndTheCampaignGoesOn()
    {
        // Simulated faults (OpFuzzChild.SimulateVariable): a crash at seed 120, a hang at seed 260 (the
        // watchdog cut to 2 s), in batches of 100 cases from seed 101.
        var environment = new Dictionary<string, string>
        {
            [OpFuzzChild.SimulateVariable] = "crash:120,hang:260",
            [OpFuzzChild.CaseSecondsVariable] = "2",
        };
        var (outcomes, failures, children) = OpFuzzChild.Campaign(101, 300, casesPerChild: 100, environment);
        Assert.AreEqual(1, outcomes.GetValueOrDefault("crash"), string.Join("\n", failures));
        Assert.AreEqual(1, outcomes.GetValueOrDefault("hang"), string.Join("\n", failures));
        Assert.AreEqual(2, failures.Count);
        StringAssert.Contains(failures[0], "seed 120:");
        StringAssert.Contains(failures[1], "seed 260:");
        // Every other case ran to an outcome: 300 seeds, two of them lost to the faults.
        Assert.AreEqual(298, outcomes.Where(o => o.Key is not ("crash" or "hang")).Sum(o => o.Value),
            string.Join(", ", outcomes.Select(o => $"{o.Key}: {o.Value}")) + $"; {children} children");
        // Batches: 101-200 (crash at 120), 121-220, 221-320 (hang at 260), 261-360 ... up to 400.
        Assert.AreEqual(5, children);
    }

    /// <summary>
    /// Runs <paramref name="count"/> cases from <paramref name="firstSeed"/> in this process (the child's
    /// side): each case is written to <paramref name="caseFile"/> before it runs; a case running over 60 s
    /// ends the process (<see cref="Environment.FailFast(string)"/>) so its parent counts a hang.
    /// </summary>
    internal static (Dictionary<string, int> Outcomes, List<string> Failures) RunCases(int firstSeed, int count, string caseFile,
                                                                                    Action<string, string?>? onCase = null)
    {
        var outcomes = new Dictionary<string, int>();
        var failures = new List<string>();
        var current = "";
        var caseSeconds = Setting(OpFuzzChild.CaseSecondsVariable, 60);
        using var watchdog = new Timer(_ => Environment.FailFast($"op fuzz case hangs: {current}"), null, Timeout.Infinite, Timeout.Infinite);
        using var options = new SessionOptions { IntraOpNumThreads = 1, LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_FATAL };
        options.RegisterHySparseOps();
        for (var i = 0; i < count; i++)
        {
            var seed = firstSeed + i;
            var (call, mutations) = Case(new Random(seed));
            current = $"seed {seed}: {call.OpType} {string.Join("; ", mutations)}";
            File.WriteAllText(caseFile, current);
            watchdog.Change(caseSeconds * 1000, Timeout.Infinite);
            OpFuzzChild.SimulateFault(seed);
            string outcome;
            string? failure = null;
            try
            {
                using var session = new InferenceSession(call.BuildModel(), options);
                OrtRunner.Run(session, call.Inputs, call.OutputNames.Where(call.Outputs.ContainsKey).Select(n => call.Outputs[n]).ToList());
                outcome = "ran";
            }
            catch (OnnxRuntimeException e)
            {
                outcome = e.Message.Contains(call.OpType, StringComparison.Ordinal) ? "refused by the op" : "refused by ONNX Runtime";
            }
            catch (Exception e)
            {
                outcome = e.GetType().Name;
                failure = $"{current}: {e.GetType().Name}: {e.Message}";
                failures.Add(failure);
            }
            watchdog.Change(Timeout.Infinite, Timeout.Infinite);
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
            onCase?.Invoke(outcome, failure);
        }
        return (outcomes, failures);
    }

    /// <summary>A plausible call of one of the ops, then up to three random breakages (listed).</summary>
    private static (OpInvocation Call, List<string> Mutations) Case(Random rng)
    {
        var full = rng.Next(2) == 0;
        int batch = 1 + rng.Next(2), kvHeads = 1 + rng.Next(2), heads = kvHeads * (1 + rng.Next(2)), headDim = 1 << rng.Next(4);
        int newLength = 1 + rng.Next(5), pastLength = rng.Next(7), blockSize = 1 + rng.Next(5), topK = 1 + rng.Next(4), total = pastLength + newLength;
        var threeD = rng.Next(2) == 0;
        TestTensor Floats(params long[] shape) => new(ElementType.Float32, shape, Enumerable.Range(0, (int)TestTensor.ElementCount(shape)).Select(_ => rng.NextDouble() * 2 - 1).ToArray());
        TestTensor Qkv(int h) => threeD ? Floats(batch, newLength, h * headDim) : Floats(batch, h, newLength, headDim);

        var io = full ? FullAttnIO.Inputs : SparseAttnIO.Inputs;
        var call = new OpInvocation(full ? FullAttn : SparseAttn, Domain, io, full ? FullAttnIO.Outputs : SparseAttnIO.Outputs) { NodeName = "fuzz" };
        call.Inputs["query"] = Qkv(heads);
        call.Inputs["key"] = Qkv(kvHeads);
        call.Inputs["value"] = Qkv(kvHeads);
        if (pastLength > 0 || rng.Next(3) == 0)
        {
            call.Inputs["past_key"] = Floats(batch, kvHeads, pastLength, headDim);
            call.Inputs["past_value"] = Floats(batch, kvHeads, pastLength, headDim);
        }
        if (rng.Next(2) == 0) call.Inputs["attention_mask"] = TestTensor.Int64s([batch, total], Enumerable.Range(0, batch * total).Select(_ => rng.Next(5) == 0 ? 0L : 1L));
        call.Attributes[Attributes.NumHeads] = heads;
        call.Attributes[Attributes.KvNumHeads] = kvHeads;
        call.Attributes[Attributes.BlockSize] = blockSize;
        if (full)
        {
            call.Attributes[Attributes.TopK] = topK;
            foreach (var name in FullAttnIO.Outputs) if (name.StartsWith("present", StringComparison.Ordinal) || name == "output" || rng.Next(2) == 0) call.Outputs[name] = new OutputRequest(name, name is "block_indices" ? ElementType.Int32 : ElementType.Float32);
            call.Outputs["block_indices"] = call.Outputs.GetValueOrDefault("block_indices") ?? new OutputRequest("block_indices", ElementType.Int32);
        }
        else
        {
            var numBlocks = (total + blockSize - 1) / blockSize;
            call.Inputs["block_indices"] = TestTensor.Int32s([batch, kvHeads, newLength, topK],
                Enumerable.Range(0, batch * kvHeads * newLength).SelectMany(_ => Enumerable.Range(0, topK).Select(k => k < numBlocks ? k : -1)));
            call.Attributes[Attributes.Window] = 1 + rng.Next(6);
            var gate = rng.Next(2) == 0;
            call.Attributes[Attributes.Combine] = gate ? CombineModes.Gate : CombineModes.Union;
            if (rng.Next(3) == 0)
            {
                call.Inputs["shared_key"] = Floats(batch, kvHeads, total, headDim);
                call.Inputs["shared_value"] = Floats(batch, kvHeads, total, headDim);
            }
            if (gate && rng.Next(2) == 0) call.Inputs["gate"] = Floats(batch, newLength, 2 * heads);
            if (rng.Next(2) == 0) call.Inputs["sinks"] = Floats(gate ? 2 : 1, heads);
            foreach (var name in SparseAttnIO.Outputs) call.Outputs[name] = new OutputRequest(name, ElementType.Float32);
        }

        var mutations = new List<string>();
        for (var m = rng.Next(4); m > 0; m--) mutations.Add(Break(call, rng));
        return (call, mutations);
    }

    private static readonly object[] AttributeValues = [-1, 0, 1, 2, 3, 4097, 65537, int.MaxValue, long.MaxValue, 2.5f, float.NaN, float.PositiveInfinity, -1f, "", "gate", "union", "64", new long[] { 4 }];

    /// <summary>Breaks <paramref name="call"/> in one random way and says how.</summary>
    private static string Break(OpInvocation call, Random rng)
    {
        T Pick<T>(IReadOnlyList<T> items) => items[rng.Next(items.Count)];
        var inputs = call.Inputs.Keys.ToList();
        switch (rng.Next(10))
        {
            case 0:
            {
                var name = Pick(inputs);
                var t = call.Inputs[name];
                var shape = t.Shape.ToArray();
                if (shape.Length == 0) return "nothing";
                var axis = rng.Next(shape.Length);
                shape[axis] = Pick(new long[] { 0, 1, 2, 3, 5, 9, 17 });
                call.Inputs[name] = Resized(t, shape, rng);
                return $"{name} dim {axis} = {shape[axis]}";
            }
            case 1:
            {
                var name = Pick(inputs);
                var t = call.Inputs[name];
                long[] shape = rng.Next(2) == 0 ? [.. t.Shape, 1] : t.Shape.Length > 0 ? t.Shape[..^1] : [1];
                call.Inputs[name] = Resized(t, shape, rng);
                return $"{name} rank {shape.Length}";
            }
            case 2:
            {
                var name = Pick(inputs);
                var type = Pick(new[] { ElementType.Float32, ElementType.Float16, ElementType.Int32, ElementType.Int64 });
                call.Inputs[name] = new TestTensor(type, call.Inputs[name].Shape, call.Inputs[name].Data.Select(v => type is ElementType.Int32 or ElementType.Int64 ? Math.Round(v) : v).ToArray());
                return $"{name} as {type}";
            }
            case 3:
            {
                var name = Pick(inputs);
                call.Inputs.Remove(name);
                return $"{name} removed";
            }
            case 4:
            {
                // An optional input the plausible call did not give.
                var missing = call.InputNames.Where(n => !call.Inputs.ContainsKey(n)).ToList();
                if (missing.Count == 0) return "nothing";
                var name = Pick(missing);
                var reference = call.Inputs.GetValueOrDefault("query") ?? call.Inputs.Values.First();
                call.Inputs[name] = name switch
                {
                    "seqlens_k" => TestTensor.Int32s([reference.Shape[0]], Enumerable.Range(0, (int)reference.Shape[0]).Select(_ => rng.Next(-2, 12))),
                    "total_sequence_length" => TestTensor.Int32s([1], [rng.Next(-1, 12)]),
                    "attention_mask" => Resized(TestTensor.Int64s([0], []), [reference.Shape[0], 1 + rng.Next(9)], rng),
                    "block_indices" => TestTensor.Int32s([1, 1, 1, 2], [rng.Next(-3, 9), rng.Next(-3, 9)]),
                    _ => Resized(reference, [.. reference.Shape.Take(2).Select(d => Math.Max(1, d)), 1 + rng.Next(6), 1 + rng.Next(8)], rng),
                };
                return $"{name} added {call.Inputs[name]}";
            }
            case 5:
            {
                var name = Pick(new[] { Attributes.NumHeads, Attributes.KvNumHeads, Attributes.Scale, Attributes.BlockSize, Attributes.TopK, Attributes.Window, Attributes.Combine, Attributes.WindowCache, "mystery" });
                if (rng.Next(5) == 0)
                {
                    call.Attributes.Remove(name);
                    return $"attribute {name} removed";
                }
                var value = AttributeValues[rng.Next(AttributeValues.Length)];
                call.Attributes[name] = value is long[] list ? list.ToArray() : value;
                return $"attribute {name} = {value}";
            }
            case 6:
            {
                if (!call.Inputs.TryGetValue("attention_mask", out var mask) || mask.Data.Length == 0) return "nothing";
                var data = mask.Data.ToArray();
                data[rng.Next(data.Length)] = Pick(new double[] { 2, -1, 0, 1, long.MaxValue });
                call.Inputs["attention_mask"] = new TestTensor(mask.Type, mask.Shape, data);
                return "mask value";
            }
            case 7:
            {
                if (!call.Inputs.TryGetValue("block_indices", out var indices) || indices.Data.Length == 0) return "nothing";
                var data = indices.Data.ToArray();
                data[rng.Next(data.Length)] = Pick(new double[] { -2, -1, 0, 1, 7, 1000, int.MaxValue, int.MinValue });
                call.Inputs["block_indices"] = new TestTensor(indices.Type, indices.Shape, data);
                return "block index";
            }
            case 8:
            {
                var name = Pick(inputs);
                var t = call.Inputs[name];
                if (t.Data.Length == 0 || t.Type is ElementType.Int32 or ElementType.Int64) return "nothing";
                var data = t.Data.ToArray();
                data[rng.Next(data.Length)] = Pick(new[] { double.NaN, double.PositiveInfinity, double.NegativeInfinity, 1e30 });
                call.Inputs[name] = new TestTensor(t.Type, t.Shape, data);
                return $"{name} non-finite";
            }
            default:
            {
                var name = Pick(call.OutputNames);
                if (!call.Outputs.Remove(name)) call.Outputs[name] = new OutputRequest(name, ElementType.Float32);
                return $"output {name} toggled";
            }
        }
    }

    /// <summary><paramref name="t"/> with another shape, its data cut or extended with random values.</summary>
    private static TestTensor Resized(TestTensor t, long[] shape, Random rng)
    {
        var count = TestTensor.ElementCount(shape);
        var integral = t.Type is ElementType.Int32 or ElementType.Int64;
        var data = Enumerable.Range(0, (int)count).Select(i => i < t.Data.Length ? t.Data[i] : integral ? rng.Next(-1, 3) : rng.NextDouble()).ToArray();
        return new TestTensor(t.Type, shape, data);
    }
}
