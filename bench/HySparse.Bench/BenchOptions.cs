using System.CommandLine;
using System.Globalization;

namespace HySparse.Bench;

/// <summary>Element type of the attention tensors (arithmetic is float32 in every kernel).</summary>
public enum ElementKind
{
    /// <summary>IEEE float32.</summary>
    Float32,
    /// <summary>IEEE float16.</summary>
    Float16,
}

/// <summary>Head configuration of one attention layer.</summary>
/// <param name="Name">Short label used in tables and on the command line.</param>
/// <param name="QueryHeads">H_q.</param>
/// <param name="KvHeads">H_kv (divides H_q).</param>
/// <param name="HeadDim">D.</param>
public sealed record AttentionShape(string Name, int QueryHeads, int KvHeads, int HeadDim)
{
    /// <summary>The paper's 7B layer: H_q 32, H_kv 8, D 128.</summary>
    public static readonly AttentionShape Paper7B = new("7b", 32, 8, 128);

    /// <summary>A small-model layer (1B class): H_q 8, H_kv 2, D 64.</summary>
    public static readonly AttentionShape Small = new("small", 8, 2, 64);

    /// <summary>Looks a shape up by <see cref="Name"/>.</summary>
    public static AttentionShape Parse(string name) => name.ToLowerInvariant() switch
    {
        "7b" => Paper7B,
        "small" => Small,
        _ => throw new ArgumentException($"unknown shape '{name}' (expected 7b or small)"),
    };

    /// <inheritdoc />
    public override string ToString() => $"{Name} (H_q {QueryHeads}, H_kv {KvHeads}, D {HeadDim})";
}

/// <summary>Sparse-layer parameters (docs/ops.md): K blocks of <see cref="BlockSize"/> tokens plus a window.</summary>
/// <param name="TopK">Selected blocks per token.</param>
/// <param name="BlockSize">Tokens per key block.</param>
/// <param name="Window">Sliding-window length in tokens.</param>
public sealed record SparseParams(int TopK, int BlockSize, int Window)
{
    /// <summary>The paper's defaults: K = 16 blocks of 64 tokens, w = 128.</summary>
    public static readonly SparseParams Paper = new(16, 64, 128);
}

/// <summary>Command-line options of the benchmark.</summary>
public sealed class BenchOptions
{
    /// <summary>Prefill lengths S (no past).</summary>
    public IReadOnlyList<int> PrefillLengths { get; private set; } = [512, 1024, 2048, 4096];

    /// <summary>Decode context lengths T (one new token after T − 1 cached ones).</summary>
    public IReadOnlyList<int> DecodeLengths { get; private set; } = [2048, 4096, 8192, 16384, 32768];

    /// <summary>Element types to run.</summary>
    public IReadOnlyList<ElementKind> Types { get; private set; } = [ElementKind.Float32, ElementKind.Float16];

    /// <summary>Layer shapes to run.</summary>
    public IReadOnlyList<AttentionShape> Shapes { get; private set; } = [AttentionShape.Paper7B, AttentionShape.Small];

    /// <summary>ONNX Runtime intra-op threads for every session, and threads of the floor measurement.</summary>
    public int Threads { get; private set; } = Environment.ProcessorCount;

    /// <summary>Untimed runs before the timed ones.</summary>
    public int Warmup { get; private set; } = 2;

    /// <summary>Timed runs; the median is reported.</summary>
    public int Iterations { get; private set; } = 5;

    /// <summary>Whether the <c>--quick</c> preset was chosen.</summary>
    public bool Quick { get; private set; }

    /// <summary>Keys of the measurements to run (see <see cref="Labels.Keys"/>); all when empty.</summary>
    public IReadOnlySet<string> OnlyKeys { get; private set; } = new HashSet<string>();

    /// <summary>Skip the HySparse operators (ONNX Runtime and floors only).</summary>
    public bool OrtOnly { get; private set; }

    /// <summary>Explicit path of the native HySparse library, or null to locate it.</summary>
    public string? LibraryPath { get; private set; }

    /// <summary>Where to write the JSON results, or null.</summary>
    public string? JsonPath { get; private set; }

    /// <summary>Where to write the SVG plot, or null.</summary>
    public string? SvgPath { get; private set; }

    /// <summary>Where to write the markdown report (it is always printed), or null.</summary>
    public string? MarkdownPath { get; private set; }

    /// <summary>Run the end-to-end model benchmark (on by default).</summary>
    public bool EndToEnd { get; private set; } = true;

    /// <summary>Run the per-operator cases (off with <c>--e2e</c>).</summary>
    public bool OperatorCases { get; private set; } = true;

    /// <summary>Model and contexts of the end-to-end benchmark.</summary>
    public EndToEndConfig EndToEndModel { get; private set; } = EndToEndConfig.Default;

    /// <summary>Run only the end-to-end prefill benchmark (<see cref="PrefillBench"/>).</summary>
    public bool PrefillEndToEnd { get; private set; }
    /// <summary>Also profile one call per conversion in the end-to-end prefill benchmark.</summary>
    public bool PrefillProfile { get; private set; }
    /// <summary>Model and prompt lengths of the end-to-end prefill benchmark.</summary>
    public PrefillBenchConfig PrefillModel { get; private set; } = PrefillBenchConfig.Default;
    /// <summary>Sparse-layer parameters.</summary>
    public SparseParams Sparse { get; } = SparseParams.Paper;

    /// <summary>Seed of the random inputs.</summary>
    public int Seed { get; private set; } = 20260203;

    /// <summary>
    /// When set, only write the end-to-end model (<see cref="EndToEndModel"/>) as an onnxruntime-genai
    /// model folder there (GroupQueryAttention on shared buffers, as genai's builder emits it) for
    /// scripts/genai-kv-memory.sh, and measure nothing.
    /// </summary>
    public string? GenAiFolder { get; private set; }

    /// <summary>context_length of the folder <see cref="GenAiFolder"/> writes.</summary>
    public int GenAiContext { get; private set; } = 8192 + 64;

    /// <summary>
    /// The command line, for <c>--help</c> and parsing. The <c>--quick</c> preset is applied first, so an
    /// option given explicitly overrides it wherever it stands.
    /// </summary>
    private sealed class CommandLine
    {
        public readonly Option<bool> Quick = new("--quick") { Description = "small preset (~1 minute): 7b shape, S 512,1024, T 2048,8192, 1 warm-up, 3 runs; end-to-end on a tiny model at T 512,2048 (seconds)" };
        public readonly Option<bool> EndToEndOnly = new("--e2e") { Description = "only the end-to-end model benchmark: dense decoder vs its 1:3 retrofit, kv-sharing and in-place (--kv-buffer) conversions, decode tokens/s at T 2048,8192,16384" };
        public readonly Option<bool> PrefillOnly = new("--e2e-prefill") { Description = "only the end-to-end prefill benchmark: time to first token and peak memory of the original export, its all-full conversion and its 1:3 conversions with the last layer sparse, at S 4096,16384,32768 (--iters rounds)" };
        public readonly Option<bool> PrefillProfile = new("--e2e-prefill-profile") { Description = "with --e2e-prefill: also profile one call per conversion (kernel time by op type, ONNX Runtime's profiler)" };
        public readonly Option<string> PrefillContexts = new("--e2e-prefill-contexts") { Description = "prompt lengths of --e2e-prefill, comma-separated (default 4096,16384,32768)" };
        public readonly Option<bool> NoEndToEnd = new("--no-e2e") { Description = "skip the end-to-end benchmark" };
        public readonly Option<string> EndToEndContexts = new("--e2e-contexts") { Description = "end-to-end context lengths T, comma-separated (default 2048,8192,16384)" };
        public readonly Option<string> EndToEndModel = new("--e2e-model") { Description = "end-to-end model size: default (8 layers, d 1024, H_q 16, H_kv 4, D 64) or tiny" };
        public readonly Option<string> Prefill = new("--prefill") { Description = "prefill lengths S, comma-separated, may be empty (default 512,1024,2048,4096)" };
        public readonly Option<string> Decode = new("--decode") { Description = "decode context lengths T, comma-separated, may be empty (default 2048,4096,8192,16384,32768)" };
        public readonly Option<string> Types = new("--types") { Description = "element types: f32,f16 (default both)" };
        public readonly Option<string> Shapes = new("--shapes") { Description = "layer shapes: 7b,small (default both)" };
        public readonly Option<string> Threads = new("--threads") { Description = "intra-op threads (default: all cores)" };
        public readonly Option<string> Warmup = new("--warmup") { Description = "untimed runs (default 2)" };
        public readonly Option<string> Iterations = new("--iters") { Description = "timed runs; the median is reported (default 5)" };
        public readonly Option<bool> OrtOnly = new("--ort-only") { Description = "skip the HySparse ops" };
        public readonly Option<string> Only = new("--only") { Description = $"run only these measurements (for profiling): {string.Join(", ", Labels.Keys)}" };
        public readonly Option<string> Library = new("--library") { Description = "native HySparse library (default: located next to the app)" };
        public readonly Option<string> Json = new("--json") { Description = "also write the results as JSON here" };
        public readonly Option<string> Svg = new("--svg") { Description = "also write the decode plot as SVG here" };
        public readonly Option<string> Markdown = new("--markdown") { Description = "also write the markdown report here (it is always printed)" };
        public readonly Option<string> Seed = new("--seed") { Description = "seed of the random inputs" };
        public readonly Option<string> GenAiFolder = new("--write-genai-folder") { Description = "only write the end-to-end model (--e2e-model) as an onnxruntime-genai model folder (GroupQueryAttention, shared buffers) for scripts/genai-kv-memory.sh" };
        public readonly Option<string> GenAiContext = new("--genai-context") { Description = "context length of the folder --write-genai-folder writes (default 8256)" };

        public RootCommand Root()
        {
            var root = new RootCommand("HySparse.Bench: HySparse ops vs ONNX Runtime GroupQueryAttention (CPU), with machine floors. Explicit options override the --quick preset.");
            foreach (var option in new Option[] { Quick, EndToEndOnly, PrefillOnly, PrefillContexts, PrefillProfile, NoEndToEnd, EndToEndContexts, EndToEndModel, Prefill, Decode, Types, Shapes, Threads, Warmup, Iterations, OrtOnly, Only, Library, Json, Svg, Markdown, Seed, GenAiFolder, GenAiContext })
                root.Options.Add(option);
            return root;
        }
    }

    /// <summary>
    /// Parses <paramref name="args"/>; null when they asked for help (printed already). Throws
    /// <see cref="ArgumentException"/> with a message on error.
    /// </summary>
    public static BenchOptions? Parse(IReadOnlyList<string> args)
    {
        var line = new CommandLine();
        var root = line.Root();
        var parsed = root.Parse(args.ToArray());
        if (parsed.Errors.Count > 0) throw new ArgumentException(string.Join(Environment.NewLine, parsed.Errors.Select(e => e.Message)));
        if (args.Any(a => a is "--help" or "-h" or "-?"))
        {
            parsed.Invoke();
            return null;
        }

        var o = new BenchOptions();
        if (parsed.GetValue(line.Quick))
        {
            o.Quick = true;
            o.Shapes = [AttentionShape.Paper7B];
            o.PrefillLengths = [512, 1024];
            o.DecodeLengths = [2048, 8192];
            o.Warmup = 1;
            o.Iterations = 3;
            o.EndToEndModel = EndToEndConfig.Tiny;
            o.PrefillModel = PrefillBenchConfig.Tiny;
        }
        string? Value(Option<string> option) => parsed.GetValue(option);
        if (parsed.GetValue(line.EndToEndOnly))
        {
            o.EndToEnd = true;
            o.OperatorCases = false;
        }
        if (parsed.GetValue(line.NoEndToEnd)) o.EndToEnd = false;
        if (Value(line.EndToEndModel) is { } size)
        {
            o.EndToEndModel = size.ToLowerInvariant() switch
            {
                "default" => EndToEndConfig.Default,
                "tiny" => EndToEndConfig.Tiny,
                var other => throw new ArgumentException($"--e2e-model: unknown size '{other}' (expected default or tiny)"),
            };
            o.PrefillModel = o.EndToEndModel == EndToEndConfig.Tiny ? PrefillBenchConfig.Tiny : PrefillBenchConfig.Default;
        }
        if (Value(line.EndToEndContexts) is { } e2eContexts) o.EndToEndModel = o.EndToEndModel with { Contexts = ParseInts("--e2e-contexts", e2eContexts, allowEmpty: false) };
        o.PrefillEndToEnd = parsed.GetValue(line.PrefillOnly);
        o.PrefillProfile = parsed.GetValue(line.PrefillProfile);
        if (Value(line.PrefillContexts) is { } prefillContexts) o.PrefillModel = o.PrefillModel with { Contexts = ParseInts("--e2e-prefill-contexts", prefillContexts, allowEmpty: false) };
        if (Value(line.Prefill) is { } prefill) o.PrefillLengths = ParseInts("--prefill", prefill, allowEmpty: true);
        if (Value(line.Decode) is { } decode) o.DecodeLengths = ParseInts("--decode", decode, allowEmpty: true);
        if (Value(line.Types) is { } types) o.Types = SplitList(types).Select(ParseType).ToArray();
        if (Value(line.Shapes) is { } shapes) o.Shapes = SplitList(shapes).Select(AttentionShape.Parse).ToArray();
        if (Value(line.Threads) is { } threads) o.Threads = ParsePositive("--threads", threads);
        if (Value(line.Warmup) is { } warmup) o.Warmup = ParseInt("--warmup", warmup, min: 0);
        if (Value(line.Iterations) is { } iterations) o.Iterations = ParsePositive("--iters", iterations);
        if (parsed.GetValue(line.OrtOnly)) o.OrtOnly = true;
        if (Value(line.Only) is { } only)
        {
            o.OnlyKeys = SplitList(only).ToHashSet();
            if (o.OnlyKeys.FirstOrDefault(k => !Labels.Keys.Contains(k)) is string bad)
                throw new ArgumentException($"--only: unknown key '{bad}' (expected {string.Join(", ", Labels.Keys)})");
        }
        o.LibraryPath = Value(line.Library);
        o.JsonPath = Value(line.Json);
        o.SvgPath = Value(line.Svg);
        o.MarkdownPath = Value(line.Markdown);
        if (Value(line.Seed) is { } seed) o.Seed = ParseInt("--seed", seed, min: int.MinValue);
        o.GenAiFolder = Value(line.GenAiFolder);
        if (Value(line.GenAiContext) is { } genaiContext) o.GenAiContext = ParsePositive("--genai-context", genaiContext);
        if (o.Types.Count == 0 || o.Shapes.Count == 0) throw new ArgumentException("--types and --shapes need at least one entry");
        if (o.DecodeLengths.Any(t => t < 2)) throw new ArgumentException("--decode lengths must be at least 2 (one cached token)");
        if (o.EndToEndModel.Contexts.Any(t => t < 2)) throw new ArgumentException("--e2e-contexts must be at least 2 (one cached token)");
        return o;
    }

    private static string[] SplitList(string value) =>
        value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    private static ElementKind ParseType(string s) => s.ToLowerInvariant() switch
    {
        "f32" or "float" or "float32" => ElementKind.Float32,
        "f16" or "half" or "float16" => ElementKind.Float16,
        _ => throw new ArgumentException($"unknown type '{s}' (expected f32 or f16)"),
    };

    private static int[] ParseInts(string option, string value, bool allowEmpty)
    {
        var items = SplitList(value).Select(v => ParsePositive(option, v)).ToArray();
        if (items.Length == 0 && !allowEmpty) throw new ArgumentException($"{option} needs at least one value");
        return items;
    }

    private static int ParsePositive(string option, string value) => ParseInt(option, value, min: 1);

    private static int ParseInt(string option, string value, int min)
    {
        if (!int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) || n < min)
            throw new ArgumentException($"{option}: '{value}' is not an integer >= {min}");
        return n;
    }
}
