using System.Diagnostics;
using System.Runtime.InteropServices;
using HySparse.Bench;
using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;
using Onnx;

// A prefill measurement in a process of its own (PrefillBench starts this program again for each).
if (args.Length > 0 && args[0] == PrefillBench.ChildVerb) return PrefillBench.ChildMain(args);

BenchOptions options;
try
{
    if (BenchOptions.Parse(args) is not { } parsed) return 0;   // --help
    options = parsed;
}
catch (ArgumentException ex)
{
    Console.Error.WriteLine(ex.Message);
    Console.Error.WriteLine("see --help");
    return 2;
}
if (options.GenAiFolder is { } genaiFolder)
{
    var config = options.EndToEndModel.Model;
    var model = HySparse.Models.Llama.LlamaModelBuilder.Build(config, HySparse.Models.Llama.LlamaAttentionStyle.GroupQueryAttention,
        groupQuery: new HySparse.Models.Llama.GroupQueryAttentionOptions { RotaryPositions = options.GenAiContext });
    HySparse.Models.GenAi.GenAiFolderWriter.Write(genaiFolder, model, config, contextLength: options.GenAiContext);
    Console.WriteLine($"wrote {options.EndToEndModel.Name} as an onnxruntime-genai folder (GroupQueryAttention, shared buffers, context {options.GenAiContext}) to {genaiFolder}");
    return 0;
}
if (options.PrefillEndToEnd)
{
    var prefillStarted = DateTime.UtcNow;
    var prefill = new PrefillBench(options.Threads, options.LibraryPath, options.Seed).Run(options.PrefillModel, options.Iterations, options.PrefillProfile);
    string prefillMarkdown = $"Run {prefillStarted:yyyy-MM-dd HH:mm} UTC on {CpuModel()} ({Environment.ProcessorCount} cores), ONNX Runtime {OrtEnv.Instance().GetVersionString()}: " +
                             $"`dotnet run -c Release --project bench/HySparse.Bench -- {string.Join(' ', args)}`\n\n" + PrefillBench.Markdown(prefill);
    Console.WriteLine(prefillMarkdown);
    if (options.MarkdownPath is not null) File.WriteAllText(options.MarkdownPath, prefillMarkdown);
    if (options.JsonPath is not null)
        File.WriteAllText(options.JsonPath, System.Text.Json.JsonSerializer.Serialize(prefill, new System.Text.Json.JsonSerializerOptions { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals }));
    Console.Error.WriteLine($"done in {(DateTime.UtcNow - prefillStarted).TotalSeconds:F0} s");
    return 0;
}
#if DEBUG
Console.Error.WriteLine("warning: a Debug build; timings of the managed floor loops are meaningless. Use -c Release.");
#endif

var started = DateTime.UtcNow;
Console.Error.WriteLine($"measuring machine floors with {options.Threads} threads ...");
var floor = MachineFloor.Measure(options.Threads);
Console.Error.WriteLine($"  read bandwidth {floor.ReadBandwidthBytesPerSecond / 1e9:F1} GB/s, FMA {floor.FmaFlopsPerSecond / 1e9:F1} GFLOP/s");

var sessions = new SessionFactory(options.Threads, options.LibraryPath);
string? hySparseStatus = options.OrtOnly ? "skipped (--ort-only)" : ProbeHySparse(sessions);
if (hySparseStatus is not null) Console.Error.WriteLine($"HySparse ops not measured: {hySparseStatus}");

var runner = new CaseRunner(options, sessions, floor, options.OrtOnly ? null : hySparseStatus);
if (options.OperatorCases)
{
    foreach (var shape in options.Shapes)
    {
        foreach (var kind in options.Types)
        {
            foreach (int s in options.PrefillLengths) runner.RunPrefill(shape, kind, s);
            foreach (int t in options.DecodeLengths) runner.RunDecode(shape, kind, t);
        }
    }
}
EndToEndReport? endToEnd = null;
if (options.EndToEnd && !options.OrtOnly)
{
    if (hySparseStatus is not null) Console.Error.WriteLine($"end-to-end benchmark skipped: {hySparseStatus}");
    else endToEnd = new EndToEndBench(sessions, options.Seed).Run(options.EndToEndModel, options.Warmup, options.Iterations);
}

var info = new RunInfo(CpuModel(), Environment.ProcessorCount, options.Threads, OrtEnv.Instance().GetVersionString(),
                       Environment.Version.ToString(), started.ToString("yyyy-MM-dd HH:mm 'UTC'"),
                       "dotnet run -c Release --project bench/HySparse.Bench -- " + string.Join(' ', args),
                       options.Warmup, options.Iterations, hySparseStatus);
var report = new RunReport(info, floor, options.Sparse, runner.Results, Targets.Evaluate(runner.Results, endToEnd), endToEnd);

string markdown = Reports.Markdown(report);
Console.WriteLine(markdown);
if (options.MarkdownPath is not null) File.WriteAllText(options.MarkdownPath, markdown);
if (options.JsonPath is not null) File.WriteAllText(options.JsonPath, Reports.Json(report));
if (options.SvgPath is not null)
{
    string? svg = DecodeTimePlot.Render(runner.Results, endToEnd);
    if (svg is null) Console.Error.WriteLine("no decode measurements: no plot written");
    else File.WriteAllText(options.SvgPath, svg);
}
Console.Error.WriteLine($"done in {(DateTime.UtcNow - started).TotalSeconds:F0} s");
return 0;

// Null when both HySparse ops can be instantiated; otherwise why not (library missing, ops not registered).
static string? ProbeHySparse(SessionFactory sessions)
{
    var f = TensorProto.Types.DataType.Float;
    TensorSpec T(string name, params long[] shape) => new(name, f, shape);
    var attributes = new[] { ModelFactory.Int(HySparseOps.Attributes.NumHeads, 2), ModelFactory.Int(HySparseOps.Attributes.KvNumHeads, 1) };
    var full = ModelFactory.SingleNode(HySparseOps.FullAttn, HySparseOps.Domain,
        [T("query", 1, 4, 8), T("key", 1, 4, 4), T("value", 1, 4, 4)],
        [T("output", 1, 4, 8), T("present_key", 1, 1, 4, 4), T("present_value", 1, 1, 4, 4)], attributes);
    var sparse = ModelFactory.SingleNode(HySparseOps.SparseAttn, HySparseOps.Domain,
        [T("query", 1, 1, 8), T("key", 1, 1, 4), T("value", 1, 1, 4), T("past_key", 1, 1, 3, 4), T("past_value", 1, 1, 3, 4), null, null,
         new TensorSpec("block_indices", TensorProto.Types.DataType.Int32, [1, 1, 1, 1])],
        [T("output", 1, 1, 8), T("present_key", 1, 1, 4, 4), T("present_value", 1, 1, 4, 4)], attributes);
    try
    {
        using var a = sessions.Create(full, withHySparse: true);
        using var b = sessions.Create(sparse, withHySparse: true);
        return null;
    }
    catch (Exception ex) when (ex is OnnxRuntimeException or HySparseLibraryNotFoundException)
    {
        return ex.Message.Split('\n')[0];
    }
}

static string CpuModel()
{
    try
    {
        var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
        if (line is not null) return line[(line.IndexOf(':') + 1)..].Trim();
    }
    catch (IOException)
    {
    }
    return RuntimeInformation.ProcessArchitecture.ToString();
}
