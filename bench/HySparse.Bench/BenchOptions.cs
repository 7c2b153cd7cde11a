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

    /// <summary>Usage text.</summary>
    public const string Usage = """
        HySparse.Bench: HySparse ops vs ONNX Runtime GroupQueryAttention (CPU), with machine floors.

          --quick                 small preset (~1 minute): 7b shape, S 512,1024, T 2048,8192, 1 warm-up, 3 runs;
                                  end-to-end on a tiny model at T 512,2048 (seconds)
          --e2e                   only the end-to-end model benchmark: dense decoder vs its 1:3 retrofit,
                                  kv-sharing and in-place (--kv-buffer) conversions, decode tokens/s at
                                  T 2048,8192,16384
          --no-e2e                skip the end-to-end benchmark
          --e2e-contexts 2048,... end-to-end context lengths T (default 2048,8192,16384)
          --e2e-model default|tiny  end-to-end model size (default: 8 layers, d 1024, H_q 16, H_kv 4, D 64)
          --prefill 512,1024,...  prefill lengths S            (default 512,1024,2048,4096)
          --decode 2048,...       decode context lengths T     (default 2048,4096,8192,16384,32768)
          --types f32,f16         element types                (default f32,f16)
          --shapes 7b,small       layer shapes                 (default 7b,small)
          --threads N             intra-op threads             (default: all cores)
          --warmup N --iters N    untimed / timed runs         (default 2 / 5; the median is reported)
          --ort-only              skip the HySparse ops
          --only KEY,...          run only these measurements (for profiling): gqa, gqa-shared, full,
                                  full-shared, sparse-retrofit, sparse-retrofit-shared, sparse-shared
          --library PATH          native HySparse library      (default: located next to the app)
          --json PATH --svg PATH --markdown PATH   extra outputs (markdown is always printed)
          --seed N                seed of the random inputs
          --write-genai-folder DIR  only write the end-to-end model (--e2e-model) as an onnxruntime-genai
                                  model folder (GroupQueryAttention, shared buffers) for
                                  scripts/genai-kv-memory.sh; --genai-context N sets its context
                                  length (default 8256)
        Options after --quick override the preset.
        """;

    /// <summary>Parses <paramref name="args"/>; throws <see cref="ArgumentException"/> with a message on error.</summary>
    public static BenchOptions Parse(IReadOnlyList<string> args)
    {
        var o = new BenchOptions();
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            string Value() => i + 1 < args.Count ? args[++i] : throw new ArgumentException($"{arg} needs a value");
            switch (arg)
            {
                case "--quick":
                    o.Quick = true;
                    o.Shapes = [AttentionShape.Paper7B];
                    o.PrefillLengths = [512, 1024];
                    o.DecodeLengths = [2048, 8192];
                    o.Warmup = 1;
                    o.Iterations = 3;
                    o.EndToEndModel = EndToEndConfig.Tiny;
                    break;
                case "--e2e":
                    o.EndToEnd = true;
                    o.OperatorCases = false;
                    break;
                case "--no-e2e": o.EndToEnd = false; break;
                case "--e2e-contexts":
                    o.EndToEndModel = o.EndToEndModel with { Contexts = ParseInts(arg, Value(), allowEmpty: false) };
                    break;
                case "--e2e-model":
                    var contexts = o.EndToEndModel.Contexts;
                    var model = Value().ToLowerInvariant() switch
                    {
                        "default" => EndToEndConfig.Default,
                        "tiny" => EndToEndConfig.Tiny,
                        var other => throw new ArgumentException($"--e2e-model: unknown size '{other}' (expected default or tiny)"),
                    };
                    // Contexts given before keep their value; otherwise the size's own defaults apply.
                    o.EndToEndModel = ReferenceEquals(contexts, EndToEndConfig.Default.Contexts) || ReferenceEquals(contexts, EndToEndConfig.Tiny.Contexts)
                        ? model : model with { Contexts = contexts };
                    break;
                case "--prefill": o.PrefillLengths = ParseInts(arg, Value(), allowEmpty: true); break;
                case "--decode": o.DecodeLengths = ParseInts(arg, Value(), allowEmpty: true); break;
                case "--types": o.Types = SplitList(Value()).Select(ParseType).ToArray(); break;
                case "--shapes": o.Shapes = SplitList(Value()).Select(AttentionShape.Parse).ToArray(); break;
                case "--threads": o.Threads = ParsePositive(arg, Value()); break;
                case "--warmup": o.Warmup = ParseInt(arg, Value(), min: 0); break;
                case "--iters": o.Iterations = ParsePositive(arg, Value()); break;
                case "--ort-only": o.OrtOnly = true; break;
                case "--only":
                    o.OnlyKeys = SplitList(Value()).ToHashSet();
                    if (o.OnlyKeys.FirstOrDefault(k => !Labels.Keys.Contains(k)) is string bad)
                        throw new ArgumentException($"--only: unknown key '{bad}' (expected {string.Join(", ", Labels.Keys)})");
                    break;
                case "--library": o.LibraryPath = Value(); break;
                case "--json": o.JsonPath = Value(); break;
                case "--svg": o.SvgPath = Value(); break;
                case "--markdown": o.MarkdownPath = Value(); break;
                case "--seed": o.Seed = ParseInt(arg, Value(), min: int.MinValue); break;
                case "--write-genai-folder": o.GenAiFolder = Value(); break;
                case "--genai-context": o.GenAiContext = ParsePositive(arg, Value()); break;
                default: throw new ArgumentException($"unknown option '{arg}'");
            }
        }
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
