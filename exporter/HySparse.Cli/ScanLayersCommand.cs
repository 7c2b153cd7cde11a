using System.CommandLine;
using HySparse.Exporter;

namespace HySparse.Cli;

/// <summary><c>hysparse scan-layers</c>: which layers a retrofit should keep full (<see cref="LayerScanner"/>).</summary>
internal sealed class ScanLayersCommand : Verb
{
    private readonly Argument<string> _model = SharedOptions.Model("model", "the dense model file or genai model folder");
    private readonly Option<int?> _full = SharedOptions.OptionalPositiveInt("--full", "N", "layers the suggestion keeps full, layer 0 among them (default: as many as --ratio 1:3)");
    private readonly SparseParameterOptions _parameters = new(new HybridParameters());
    private readonly Option<int> _prompt = SharedOptions.PositiveInt("--prompt", "N", "copy-test prompt tokens per sequence (the repeat is N/2 back)", 1024);
    private readonly Option<int> _batch = SharedOptions.PositiveInt("--batch", "N", "copy-test sequences", 2);
    private readonly Option<int> _seed = SharedOptions.PositiveInt("--seed", "N", "seed of the random prompt", 1);
    private readonly Option<string?> _tokens = SharedOptions.Tokens();
    private readonly Option<bool> _quiet = SharedOptions.Quiet();
    private readonly Option<bool> _json = SharedOptions.Json("print the options and the scan as JSON on stdout");

    public ScanLayersCommand() : base("scan-layers", "find the layers a conversion should keep full (copy test, one layer sparse at a time)")
    {
        Arguments.Add(_model);
        foreach (var option in _parameters.All.Prepend(_full).Concat([_prompt, _batch, _seed, _tokens, _quiet, _json])) Options.Add(option);
        Details = """
            Details:
              A ratio layout (--ratio 1:3) puts the full layers at fixed places. A model reads far back
              through a few layers (induction heads: they find an earlier occurrence of the current
              context and copy what followed it); made sparse, such a layer sees only its selected blocks
              and window, and the converted model stops reading back even though its logits stay close.

              scan-layers converts the model with one layer sparse at a time (retrofit, the given K, B, W)
              and runs verify's copy test on each: random tokens whose second half repeats the first, and
              the share of the repeat the model predicts. It then suggests as full layer 0 and the layers
              whose sparsity cost the copy most, as many as --full (the last layer only if it is one of them;
              when it is not, the suggested options end in --sparse-last), and runs the copy test on that
              layout and on --ratio 1:3 for comparison. One conversion and one prefill per layer (the dense model's once); the scratch files
              go to a temporary folder (with copies of external data files, if the model has them) and the
              input is never modified.

              A single-layer ablation misses layers that matter only together; the suggested layout's own
              copy score says what the combination keeps. For a byte-level or small-vocabulary model pass
              --tokens with the ids it was trained on (97:123 is a-z); for a subword model, a range clear of
              its special tokens.

            Example:
              hysparse scan-layers model.onnx --top-k 8 --block-size 16 --window 64
              hysparse convert model.onnx -o model.hysparse.onnx --full-layers 0,2,6 --sparse-last --top-k 8 --block-size 16 --window 64

            """;
    }

    public override string PositionalError(IReadOnlyList<string> given) => SharedOptions.OneModelError("scan-layers", given);

    protected override int Run(ParseResult parse, TextWriter stdout, TextWriter stderr)
    {
        var json = parse.GetValue(_json);
        var parameters = _parameters.Read(parse, new HybridParameters());
        var test = new VerifyOptions
        {
            PromptLength = parse.GetValue(_prompt),
            Batch = parse.GetValue(_batch),
            Seed = (ulong)parse.GetValue(_seed),
            Tokens = SharedOptions.TokenRange(parse.GetValue(_tokens)),
        };
        var path = SharedOptions.ModelFile(parse.GetRequiredValue(_model));
        Action<string>? progress = json || parse.GetValue(_quiet) ? null : step => stderr.WriteLine($"[scan-layers] {step}");

        var report = LayerScanner.Scan(path, parameters, test, parse.GetValue(_full), progress);

        if (json)
        {
            CliApp.WriteJson(stdout, new { ok = true, model = path, parameters = new { topK = parameters.TopK, blockSize = parameters.BlockSize, window = parameters.Window }, copyTest = test, report,
                convertArguments = report.ConvertArguments });
            return ExitCodes.Success;
        }
        stdout.WriteLine($"Scanned {path}: {report.Layers} layers, K {parameters.TopK} x B {parameters.BlockSize} + W {parameters.Window}; "
                         + $"copy test: {test.PromptLength} tokens x {test.Batch}, the repeat {report.Distance} back");
        stdout.WriteLine($"  dense model: {report.DenseCopy:P1} of the repeat predicted");
        stdout.WriteLine("  layer  copy with only this layer sparse");
        foreach (var layer in report.Single)
            stdout.WriteLine($"  {layer.Layer,5}  {layer.Copy,8:P1}{(report.FullLayers.Contains(layer.Layer) ? "  <- keep full" : "")}");
        stdout.WriteLine($"  suggested: {report.ConvertArguments}  copy {report.SuggestedCopy:P1}");
        stdout.WriteLine($"  --ratio 1:3 ({report.RatioLetters}): copy {report.RatioCopy:P1}");
        return ExitCodes.Success;
    }
}
