using System.CommandLine;
using HySparse.Exporter;
using DataType = global::Onnx.TensorProto.Types.DataType;
using HySparse.Exporter.Layout;

namespace HySparse.Cli;

/// <summary>
/// <c>--top-k</c>, <c>--block-size</c> and <c>--window</c>: the sparse-attention parameters of every
/// command that converts (convert, inspect and demo through <see cref="LayoutOptions"/>; scan-layers,
/// which takes no layout, on their own).
/// </summary>
internal sealed class SparseParameterOptions
{
    private readonly Option<int?> _topK;
    private readonly Option<int?> _blockSize;
    private readonly Option<int?> _window;

    /// <summary><paramref name="defaults"/>: what <c>--help</c> shows as the defaults, or null where the command chooses them later.</summary>
    public SparseParameterOptions(HybridParameters? defaults)
    {
        _topK = Parameter("--top-k", "K", $"blocks each token selects, at most {HybridParameters.MaxTopK}", defaults?.TopK);
        _blockSize = Parameter("--block-size", "B", $"tokens per key block, at most {HybridParameters.MaxBlockSize}", defaults?.BlockSize);
        _window = Parameter("--window", "W", "sliding-window tokens of each sparse layer", defaults?.Window);
    }

    /// <summary>The three options, in help order.</summary>
    public IEnumerable<Option> All => [_topK, _blockSize, _window];

    /// <summary>The parameters <paramref name="parse"/> gives, <paramref name="defaults"/>' for those it does not (its mode kept).</summary>
    public HybridParameters Read(ParseResult parse, HybridParameters defaults) => defaults with
    {
        TopK = parse.GetValue(_topK) ?? defaults.TopK,
        BlockSize = parse.GetValue(_blockSize) ?? defaults.BlockSize,
        Window = parse.GetValue(_window) ?? defaults.Window,
    };

    private static Option<int?> Parameter(string name, string helpName, string description, int? shownDefault) =>
        SharedOptions.OptionalPositiveInt(name, helpName, shownDefault is { } value ? $"{description} (default {value})" : description);
}

/// <summary>
/// The layout, sparse-parameter and mode options convert, inspect and demo share: each of them adds
/// its own set (<see cref="AddTo"/>).
/// </summary>
internal sealed class LayoutOptions
{
    private readonly HybridParameters? _defaults;
    private readonly Option<string> _pattern = new("--pattern") { HelpName = "FSSS", Description = "layout: F = full, S = sparse, repeated over the layers (FSSS on 8 layers gives FSSSFSSS, then the last layer is made full: FSSSFSSF)" };
    private readonly Option<string> _ratio = new("--ratio") { HelpName = "1:N", Description = "layout: one full layer, then N sparse layers, repeated (1:3 = FSSS; the default layout)" };
    private readonly Option<string> _fullLayers = new("--full-layers") { HelpName = "0,4,8", Description = "layout: exactly these layers are full (0-based)" };
    private readonly Option<bool> _sparseLast = new("--sparse-last") { Description = "keep the last layer sparse if the layout makes it so (by default the last layer is full, as in the paper)" };
    private readonly SparseParameterOptions _parameters;
    private readonly Option<bool> _kvSharing = new("--kv-sharing")
    {
        Description = "mode: sparse layers read their selected blocks from the preceding full layer's KV cache and keep only a window cache of their own: their "
            + "past_key_values.N.* inputs and present.N.* outputs (combined past_N/present_N) keep their names but hold at most W tokens (dim 2, or 3 of past_N, "
            + "'past_window_length' / 'present_window_length'; start empty, feed each present back as the next past). Exact only while W >= context; beyond, even "
            + "with every block selected, a key outside the window comes from the full layer's K/V, not the layer's own. Without it the mode is retrofit: every "
            + "layer keeps its own full KV cache and the model's interface is unchanged",
    };

    /// <summary>
    /// The options; <paramref name="defaults"/> are the parameters' defaults, which <c>--help</c> shows,
    /// or null where the command chooses them when it reads the options (demo: one set per model).
    /// </summary>
    public LayoutOptions(HybridParameters? defaults)
    {
        _defaults = defaults;
        _parameters = new SparseParameterOptions(defaults);
        _ratio.CompletionSources.Add("1:1", "1:3", "1:7");
    }

    /// <summary>What the help of a command with these options says about them, after its own details.</summary>
    public const string Notes = """
        Layout:
          Give one of --pattern, --ratio and --full-layers (default --ratio 1:3).
          Layer 0 must be full: a sparse layer needs a preceding full layer to select for it.
        """;

    /// <summary>Adds the options to <paramref name="command"/>.</summary>
    public void AddTo(Command command)
    {
        foreach (var option in new Option[] { _pattern, _ratio, _fullLayers, _sparseLast }.Concat(_parameters.All).Append(_kvSharing))
            command.Options.Add(option);
    }

    /// <summary>The layout and parameters <paramref name="parse"/> gives; <paramref name="defaults"/> (or the constructor's, or the paper's) for parameters it does not,
    /// the full layers <paramref name="defaultFullLayers"/> (else ratio 1:3) when it gives no layout.</summary>
    public ConversionOptions Read(ParseResult parse, HybridParameters? defaults = null, string? defaultFullLayers = null)
    {
        defaults ??= _defaults ?? new HybridParameters();
        var pattern = parse.GetValue(_pattern);
        var ratio = parse.GetValue(_ratio);
        var fullLayers = parse.GetValue(_fullLayers);
        var sparseLast = parse.GetValue(_sparseLast);
        if (new[] { pattern, ratio, fullLayers }.Count(o => o is not null) > 1)
            throw new UsageException("give only one of --pattern, --ratio and --full-layers");
        var layout = pattern is not null ? LayoutSpec.FromLetters(pattern, sparseLast)
            : ratio is not null ? LayoutSpec.Ratio(ratio, sparseLast)
            : (fullLayers ?? defaultFullLayers) is { } list ? LayoutSpec.FromFullLayers(list, sparseLast)
            : LayoutSpec.Ratio("1:3", sparseLast);
        var parameters = _parameters.Read(parse, defaults) with { Mode = parse.GetValue(_kvSharing) ? HybridMode.KvSharing : defaults.Mode };
        return new ConversionOptions { Layout = layout, Parameters = parameters };
    }
}

/// <summary>Helpers the commands share: options, the model argument, how figures are written.</summary>
internal static class SharedOptions
{
    /// <summary><c>-q, --quiet</c> of the commands that print progress.</summary>
    public static Option<bool> Quiet() => new("--quiet", "-q") { Description = "no progress lines on stderr" };

    /// <summary><c>--json</c>: what the command prints as JSON on stdout instead of text.</summary>
    public static Option<bool> Json(string description) => new("--json") { Description = description };

    /// <summary>An option of one integer ≥ 1 (<see cref="OptionValues.PositiveInt"/>) whose default <c>--help</c> shows.</summary>
    public static Option<int> PositiveInt(string name, string helpName, string description, int defaultValue, params string[] aliases) => new(name, aliases)
    {
        HelpName = helpName,
        Description = description,
        CustomParser = OptionValues.PositiveInt,
        DefaultValueFactory = _ => defaultValue,
    };

    /// <summary>An option of one integer ≥ 1 (<see cref="OptionValues.PositiveInt"/>), null when not given.</summary>
    public static Option<int?> OptionalPositiveInt(string name, string helpName, string description) => new(name)
    {
        HelpName = helpName,
        Description = description,
        CustomParser = result => OptionValues.PositiveInt(result),
    };

    /// <summary><c>--context</c> of convert and inspect: context lengths (<see cref="OptionValues.PositiveIntList"/>).</summary>
    public static Option<long[]> Contexts(string what) => new("--context", "--contexts")
    {
        HelpName = "LIST",
        Description = $"{what}, comma-separated, k = 1024",
        Arity = ArgumentArity.ExactlyOne,
        CustomParser = OptionValues.PositiveIntList,
        DefaultValueFactory = _ => InspectCommand.DefaultContexts,
    };

    /// <summary><c>--tokens LOW:HIGH</c> of the commands that feed random prompts (<see cref="TokenRange"/>).</summary>
    public static Option<string?> Tokens() => new("--tokens")
    {
        Description = "draw the random prompt from token ids LOW (inclusive) to HIGH (exclusive) instead of the whole vocabulary",
        HelpName = "LOW:HIGH",
    };

    /// <summary>LOW:HIGH → (LOW, HIGH); null when the option is absent.</summary>
    public static (int, int)? TokenRange(string? text)
    {
        if (text is null) return null;
        var parts = text.Split(':');
        if (parts.Length != 2 || !int.TryParse(parts[0], System.Globalization.NumberStyles.None, null, out var low)
            || !int.TryParse(parts[1], System.Globalization.NumberStyles.None, null, out var high) || high - low < 2)
            throw new UsageException($"--tokens needs LOW:HIGH, two token ids with at least two ids from LOW up to HIGH (exclusive), not '{text}'");
        return (low, high);
    }

    /// <summary>The positional argument that names the model (or model folder).</summary>
    public static Argument<string> Model(string name, string description) => new(name) { Description = description };

    /// <summary>The usage error of a verb that takes one model file but was given <paramref name="given"/>.</summary>
    public static string OneModelError(string verb, IReadOnlyList<string> given) => given.Count == 0
        ? $"{verb} needs a model file: hysparse {verb} <model.onnx>"
        : $"{verb} takes one model file, got {given.Count} arguments: {string.Join(" ", given)}";

    /// <summary>One line on what the mode keeps and reads, for convert, inspect and demo.</summary>
    public static string ModeLine(HybridMode mode) => mode == HybridMode.KvSharing
        ? "kv-sharing: sparse layers read selected blocks from the preceding full layer's KV cache and keep only a window cache of their own"
        : "retrofit: every layer keeps its own KV cache; sparse layers take one softmax over selected blocks ∪ window";

    /// <summary>
    /// The model file a path names: the path itself, or for an onnxruntime-genai model folder the
    /// decoder its genai_config.json names.
    /// </summary>
    public static string ModelFile(string path) =>
        HySparse.Exporter.Folders.GenAiModelFolder.IsModelFolder(path) ? HySparse.Exporter.Folders.GenAiModelFolder.Open(path).DecoderPath : path;

    /// <summary>ONNX element type as people write it (float32, float16, bfloat16…).</summary>
    public static string TypeName(DataType type) => type switch
    {
        DataType.Float => "float32",
        DataType.Double => "float64",
        _ => type.ToString().ToLowerInvariant(),
    };

    /// <summary>Bytes as a short human figure (KiB/MiB/GiB, binary).</summary>
    public static string Bytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double value = bytes;
        var unit = 0;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        return unit == 0 ? $"{bytes} B" : $"{value:0.##} {units[unit]}";
    }
}
