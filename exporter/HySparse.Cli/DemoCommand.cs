using System.CommandLine;
using Google.Protobuf;
using HySparse.Exporter;
using HySparse.Exporter.Layout;
using HySparse.Models.Llama;
using HySparse.Models.Native;
using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;
using Onnx;

namespace HySparse.Cli;

/// <summary>
/// <c>hysparse demo</c>: the built-in trained model converted and run beside the original
/// (<see cref="TrainedDemo"/>), or with <c>--synthetic</c> a small Llama-style decoder with random
/// weights built, converted and run side by side — the whole pipeline in one command, nothing to download.
/// </summary>
internal sealed class DemoCommand : Verb
{
    // What the trained model's HySparse twin was trained with.
    private static readonly HybridParameters TrainedDefaults = new() { TopK = 8, BlockSize = 16, Window = 64 };
    // Small enough that sparsity acts within the synthetic demo's context.
    private static readonly HybridParameters SyntheticDefaults = new() { TopK = 4, BlockSize = 16, Window = 32 };

    private readonly Option<string> _directory = new("--dir") { HelpName = "DIR", Description = "keep the models in DIR (default: a temporary directory, deleted)" };
    private readonly Option<bool> _native = new("--native") { Description = "also run the HySparse-native model" };
    private readonly Option<int?> _prompt = SharedOptions.OptionalPositiveInt("--prompt", "N", "prompt bytes (default 1024; --synthetic: tokens, 256)");
    private readonly Option<int?> _steps = SharedOptions.OptionalPositiveInt("--steps", "N", "bytes to generate (default 120; --synthetic: decode steps, 16)");
    private readonly Option<bool> _synthetic = new("--synthetic") { Description = "random-weight decoder instead of the trained model" };
    private readonly Option<int?> _layers = SharedOptions.OptionalPositiveInt("--layers", "N", "--synthetic: decoder layers (default 8)");
    private readonly Option<double> _temperature = new("--temperature")
    {
        HelpName = "T",
        Description = $"sampling temperature of the trained demo's generations (default {TrainedDemo.DefaultTemperature}; 0: greedy)",
        CustomParser = OptionValues.NonNegativeNumber,
        DefaultValueFactory = _ => TrainedDemo.DefaultTemperature,
    };
    private readonly Option<int> _seed = SharedOptions.PositiveInt("--seed", "N", "seed of the trained demo's sampler (every model draws with the same one)", 1);
    private readonly Option<bool> _quiet = SharedOptions.Quiet();
    private readonly Option<bool> _json = SharedOptions.Json("print the generations (--synthetic: the comparison, the oracle's choices and the native run) as JSON on stdout");
    private readonly LayoutOptions _layout = new(defaults: null);

    public DemoCommand() : base("demo", "convert the built-in trained model and run dense and hybrid side by side")
    {
        foreach (var option in new Option[] { _directory, _native, _prompt, _steps, _temperature, _seed, _synthetic, _layers, _quiet, _json }) Options.Add(option);
        _layout.AddTo(this);
        Details = $"""
            Details:
              The whole pipeline on a built-in model. Converts the built-in trained model - a byte-level
              language model of Python source (8 layers, 1.6 M parameters, models/fixtures/trained) - and
              lets dense and hybrid continue the same held-out Python prompt (sampled at --temperature,
              0.7 by default, with the same --seed for every model; greedy decoding of a model this small
              falls into loops): it prints both continuations,
              how often the hybrid predicts the byte dense wrote, KV bytes and speed. Defaults: full layers
              {TrainedDemo.BuiltInFullLayers} (where this model's induction heads need them; --ratio 1:3, the
              converter's default, makes layer 6 sparse and shows what that costs), top-k 8, block size 16,
              window 64 (what the model's HySparse twin was trained with); add --kv-sharing for that mode's
              smaller cache, --native to also run the model trained as HySparse.

              --synthetic runs the earlier demo instead: a Llama-style decoder with random weights (hidden
              256, 8 query / 2 KV heads, head size 32) on a random prompt and greedy decode steps (as verify
              does), with defaults top-k 4, block size 16, window 32 so that the sparse layers skip keys
              within its context; --native there builds a HySparse-native model of the same sizes.

            {LayoutOptions.Notes}

            """;
    }

    public override string PositionalError(IReadOnlyList<string> given) => "demo takes no file arguments; use --dir to keep the models";

    protected override int Run(ParseResult parse, TextWriter stdout, TextWriter stderr)
    {
        var json = parse.GetValue(_json);
        Action<string>? progress = json || parse.GetValue(_quiet) ? null : step => stderr.WriteLine($"[demo] {step}");
        return parse.GetValue(_synthetic) ? RunSynthetic(parse, json, progress, stdout) : RunTrained(parse, json, progress, stdout);
    }

    // The default demo: the built-in trained model (TrainedDemo).
    private int RunTrained(ParseResult parse, bool json, Action<string>? progress, TextWriter stdout)
    {
        if (parse.GetValue(_layers) is not null) throw new UsageException("--layers sizes the random-weight decoder: add --synthetic");
        var options = new TrainedDemo.Options(_layout.Read(parse, TrainedDefaults, TrainedDemo.BuiltInFullLayers), parse.GetValue(_prompt) ?? 1024, parse.GetValue(_steps) ?? 120,
            parse.GetValue(_native), parse.GetValue(_directory), parse.GetValue(_temperature), parse.GetValue(_seed));
        var result = TrainedDemo.Run(options, progress);
        if (json)
        {
            CliApp.WriteJson(stdout, new { ok = true, model = "trained", directory = result.Directory, promptBytes = result.Prompt.Length, parameters = result.Parameters, generations = result.Generations });
            return ExitCodes.Success;
        }
        TrainedDemo.Write(stdout, result);
        return ExitCodes.Success;
    }

    // --synthetic: a random-weight Llama-style decoder built, converted and run beside its conversion.
    private int RunSynthetic(ParseResult parse, bool json, Action<string>? progress, TextWriter stdout)
    {
        var directory = parse.GetValue(_directory);
        var keep = directory is not null;
        var layers = parse.GetValue(_layers) ?? 8;
        var prompt = parse.GetValue(_prompt) ?? 256;
        var steps = parse.GetValue(_steps) ?? 16;
        var conversion = _layout.Read(parse, SyntheticDefaults);

        directory ??= Path.Combine(Path.GetTempPath(), $"hysparse-demo-{Guid.NewGuid():N}");
        Directory.CreateDirectory(directory);
        try
        {
            var config = new LlamaConfig { Layers = layers, Hidden = 256, Heads = 8, KvHeads = 2, HeadDim = 32, Ffn = 512, Vocab = 512, Seed = 1 };
            var dense = Path.Combine(directory, "demo_llama.onnx");
            var hybrid = Path.Combine(directory, "demo_llama.hysparse.onnx");
            progress?.Invoke($"building a {layers}-layer Llama-style decoder (hidden 256, 8 query / 2 KV heads, head size 32) in {directory}");
            File.WriteAllBytes(dense, LlamaModelBuilder.Build(config).ToByteArray());
            progress?.Invoke("converting");
            var report = HybridConverter.ConvertFile(dense, hybrid, conversion, overwrite: true);
            var verify = ModelVerifier.Verify(dense, hybrid, new VerifyOptions { PromptLength = prompt, DecodeSteps = steps }, progress);
            progress?.Invoke("reading the oracle's block choices");
            var oracle = OracleChoices(hybrid, directory, config, prompt);
            var context = (long)prompt + steps;
            NativeRun? native = null;
            if (parse.GetValue(_native))
            {
                progress?.Invoke($"building and running a HySparse-native model of the same sizes and layout {report.Layout.Letters}");
                native = RunNative(config, report.Layout.Letters, conversion.Parameters, directory, prompt, steps);
            }
            var kv = KvAccounting.Compute(config.KvHeads, config.HeadDim, 4, report.Layout, conversion.Parameters, [context]).Single();

            if (json)
            {
                CliApp.WriteJson(stdout, new { ok = true, directory = keep ? directory : null, layout = report.Layout.Letters, parameters = conversion.Parameters, verify, kv, oracle, native });
                return ExitCodes.Success;
            }
            var p = conversion.Parameters;
            stdout.WriteLine($"HySparse demo: {layers}-layer decoder, layout {report.Layout.Letters}, top-k {p.TopK} x block {p.BlockSize} + window {p.Window}, {p.ModeName.Replace('_', '-')}");
            stdout.WriteLine($"  prompt {prompt} tokens, then {steps} greedy decode steps (context {context})");
            stdout.WriteLine();
            stdout.WriteLine("                          dense        hybrid");
            stdout.WriteLine($"  prefill ms           {verify.Steps[0].DenseMilliseconds,9:0.00}     {verify.Steps[0].HybridMilliseconds,9:0.00}");
            stdout.WriteLine($"  decode ms / token    {verify.DenseDecodeMilliseconds,9:0.00}     {verify.HybridDecodeMilliseconds,9:0.00}");
            var sharing = p.Mode == HybridMode.KvSharing;
            stdout.WriteLine($"  KV cache             {SharedOptions.Bytes(kv.DenseCache),9}     {SharedOptions.Bytes(sharing ? kv.KvSharingCache : kv.RetrofitCache),9}   ({(sharing ? "sparse layers keep only their window" : "retrofit keeps every layer's cache")}; the last call returned {SharedOptions.Bytes(verify.DenseKvBytes)} / {SharedOptions.Bytes(verify.HybridKvBytes)})");
            stdout.WriteLine($"  KV read / token      {SharedOptions.Bytes(kv.DenseDecodeRead),9}     {SharedOptions.Bytes(kv.HybridDecodeRead),9}");
            stdout.WriteLine($"  max |logit error|                  {verify.MaxAbsError,9:0.000e+00}");
            stdout.WriteLine($"  top-1 agreement                    {verify.Top1Agreement,9:P1}");
            stdout.WriteLine();
            if (oracle is null)
            {
                stdout.WriteLine($"  Layout {report.Layout.Letters} has no sparse layers, so no full layer selects blocks.");
            }
            else
            {
                stdout.WriteLine($"  Oracle: full layer {oracle.Layer} at token {oracle.Position} ({oracle.Blocks} key blocks of {p.BlockSize} so far) chose, per KV head:");
                for (var h = 0; h < oracle.PerHead.Count; h++)
                    stdout.WriteLine($"    KV head {h}: blocks [{string.Join(", ", oracle.PerHead[h])}]");
                stdout.WriteLine($"  Each sparse layer after it reads those {p.TopK} x {p.BlockSize} keys{(sharing ? " (from this full layer's cache)" : "")} plus the last {p.Window}: at most {Math.Min(context, (long)p.TopK * p.BlockSize + p.Window)} of {context} keys per token.");
            }
            if (native is not null)
            {
                stdout.WriteLine();
                stdout.WriteLine($"  HySparse-native model ({Path.GetFileName(native.Path)}: same sizes and layout, q′ + own k′/v′ window caches, per-head gates, sinks,");
                stdout.WriteLine("  random weights, so its tokens are its own, not the dense model's):");
                stdout.WriteLine($"    prefill ms {native.PrefillMilliseconds:0.00}, decode ms / token {native.DecodeMilliseconds:0.00}, KV cache {SharedOptions.Bytes(native.KvBytes)} after the last call (= the kv-sharing figure {SharedOptions.Bytes(kv.KvSharingCache)})");
            }
            stdout.WriteLine();
            stdout.WriteLine(keep ? $"Models kept in {directory}." : "Pass --dir DIR to keep the models; then try hysparse inspect / verify on them.");
            return ExitCodes.Success;
        }
        finally
        {
            if (!keep) Directory.Delete(directory, recursive: true);
        }
    
    }

    /// <summary>A HySparse-native model's run: where it was written, its timings and the KV bytes it returned at the last call.</summary>
    internal sealed record NativeRun(string Path, double PrefillMilliseconds, double DecodeMilliseconds, long KvBytes);

    // Builds a native model of the dense model's sizes with the conversion's layout, K, B and w, and
    // decodes greedily with it (after one untimed warm-up prefill, as verify does).
    private static NativeRun RunNative(LlamaConfig config, string layout, HybridParameters parameters, string directory, int prompt, int steps)
    {
        var native = new HySparseNativeConfig { Model = config, Layout = layout, TopK = parameters.TopK, BlockSize = parameters.BlockSize, Window = parameters.Window };
        var path = Path.Combine(directory, "demo_llama.native.onnx");
        File.WriteAllBytes(path, HySparseModelBuilder.Build(native).ToByteArray());
        using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        options.RegisterHySparseOps();
        using var session = new InferenceSession(path, options);
        var rng = new Random(1);
        var promptIds = Enumerable.Range(0, prompt).Select(_ => (long)rng.Next(config.Vocab)).ToArray();
        // The prefill yields the first token, then `steps` decode steps.
        var (_, prefill, decode, kvBytes) = TrainedDemo.Generate(session, promptIds, steps + 1);
        return new NativeRun(path, prefill, decode, kvBytes);
    }

    /// <summary>The blocks one full layer selected for the first decoded token, per KV head.</summary>
    internal sealed record OracleReport(int Layer, long Position, long Blocks, IReadOnlyList<int[]> PerHead);

    // Runs the converted model once more with the first oracle layer's block_indices exposed as a
    // graph output: prefill, then one decode step, whose selection is reported. Null when no full
    // layer feeds sparse layers (a layout of full layers only).
    private static OracleReport? OracleChoices(string hybridPath, string directory, LlamaConfig config, int prompt)
    {
        var model = ModelFile.Load(hybridPath);
        var oracleNodes = model.Graph.Node.Where(n => n.OpType == HySparseOps.FullAttn && n.Output.Count > 3 && n.Output[3].Length > 0).ToList();
        if (oracleNodes.Count == 0) return null;
        var indices = oracleNodes[0].Output[3];
        var layer = model.Graph.Node.Where(n => n.OpType is HySparseOps.FullAttn or HySparseOps.SparseAttn).ToList().IndexOf(oracleNodes[0]);
        model.Graph.Output.Add(new ValueInfoProto
        {
            Name = indices,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Int32 } },
        });
        var inspectPath = Path.Combine(directory, "demo_llama.hysparse.oracle.onnx");
        File.WriteAllBytes(inspectPath, model.ToByteArray());

        using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        options.RegisterHySparseOps();
        using var session = new InferenceSession(inspectPath, options);
        using var decoder = new KvCacheDecoder(session, batchSize: 1, extraOutputs: [indices]);
        var rng = new Random(1);
        var promptIds = Enumerable.Range(0, prompt).Select(_ => (long)rng.Next(config.Vocab)).ToArray();
        var next = decoder.StepGreedy(promptIds);
        decoder.Step(next);
        var chosen = decoder.ExtraOutput(indices);
        var shape = chosen.GetTensorTypeAndShape().Shape;  // [1, H_kv, 1, K]
        var values = chosen.GetTensorDataAsSpan<int>().ToArray();
        var k = (int)shape[3];
        var perHead = Enumerable.Range(0, (int)shape[1])
            .Select(h => values.Skip(h * k).Take(k).Where(i => i >= 0).ToArray())
            .ToList();
        var position = decoder.Position - 1;
        var blockSize = (int)oracleNodes[0].Attribute.First(a => a.Name == HySparseOps.Attributes.BlockSize).I;
        return new OracleReport(layer, position, (position + blockSize) / blockSize, perHead);
    }
}
