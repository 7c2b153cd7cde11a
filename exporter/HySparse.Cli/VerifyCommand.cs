using System.CommandLine;
using HySparse.Exporter;

namespace HySparse.Cli;

/// <summary><c>hysparse verify</c>: run a dense model and its conversion side by side.</summary>
internal sealed class VerifyCommand : Verb
{
    private static readonly VerifyOptions Defaults = new();
    private readonly Argument<string> _dense = SharedOptions.Model("dense", "the dense model file or genai model folder");
    private readonly Argument<string> _converted = SharedOptions.Model("converted", "its conversion (file or genai model folder)");
    private readonly Option<int> _prompt = SharedOptions.PositiveInt("--prompt", "N", "prompt tokens per sequence", Defaults.PromptLength);
    private readonly Option<int> _steps = SharedOptions.PositiveInt("--steps", "N", "decode steps after the prompt", Defaults.DecodeSteps);
    private readonly Option<int> _batch = SharedOptions.PositiveInt("--batch", "N", "sequences per call", Defaults.Batch);
    private readonly Option<int> _seed = SharedOptions.PositiveInt("--seed", "N", "seed of the random prompt", (int)Defaults.Seed);
    private readonly Option<bool> _copy = new("--copy")
    {
        Description = "make the prompt a copy test (its second half repeats the first) and report how much of the repeat each model predicts",
    };
    private readonly Option<string?> _tokens = SharedOptions.Tokens();
    private readonly Option<bool> _quiet = SharedOptions.Quiet();
    private readonly Option<bool> _json = SharedOptions.Json("print the options and the report as JSON on stdout");

    public VerifyCommand() : base("verify", "run original and converted side by side in ONNX Runtime and compare")
    {
        Arguments.Add(_dense);
        Arguments.Add(_converted);
        foreach (var option in new Option[] { _prompt, _steps, _batch, _seed, _copy, _tokens, _quiet, _json }) Options.Add(option);
        Details = """
            Details:
              Feeds both models the same random prompt (prefill), then decodes greedily: the dense model's
              next token goes to both, and each model gets back its own caches. For every call it reports
              the largest absolute and relative logit difference, how often the arg-max token agrees, and
              the wall time of each model (ONNX Runtime, CPU). The converted model runs with the HySparse
              operator library registered. Both models need the exported-decoder interface: input_ids,
              attention_mask, past_key_values.N.key/value in; logits, present.N.key/value out (float32).

              A retrofit conversion is exact (errors at float rounding level) while the selected blocks
              and the window cover the context, i.e. K*B >= context or w >= context; past that it
              approximates, which the top-1 agreement measures. A kv-sharing conversion is exact only
              while w >= context; its window caches are fed back at whatever length they come out, and
              the KV bytes both models returned at the last call are printed.

              Logit errors and agreement on random tokens say how close the conversion is, not whether it
              keeps what the model reads from far back: on random tokens there is nothing to read. --copy
              makes the prompt random tokens whose second half repeats the first, and reports the share of
              the repeat each model predicts (arg-max) — a model with induction heads predicts most of it
              at the distance of half the prompt; a conversion that makes the wrong layers sparse loses it.
              Compare layouts this way (--full-layers) before converting for long contexts. --tokens LOW:HIGH
              keeps the random ids in a range: out of a subword vocabulary's special tokens, or, for a
              byte-level model, in the bytes it was trained on (97:123 is a-z).

              A HySparse-native model (hysparse.mode = native) has no dense original, so verify refuses it
              on either side; inspect it instead.

            Example:
              hysparse convert llama.onnx -o hybrid.onnx --top-k 2 --block-size 16 --window 32
              hysparse verify llama.onnx hybrid.onnx --prompt 256 --steps 16
              hysparse verify llama.onnx hybrid.onnx --prompt 1024 --steps 1 --copy --tokens 1000:30000

            """;
    }

    public override string PositionalError(IReadOnlyList<string> given) =>
        "verify takes two model files or genai model folders: hysparse verify <dense.onnx> <converted.onnx>";

    protected override int Run(ParseResult parse, TextWriter stdout, TextWriter stderr)
    {
        var json = parse.GetValue(_json);
        var quiet = parse.GetValue(_quiet);
        var options = new VerifyOptions
        {
            PromptLength = parse.GetValue(_prompt),
            DecodeSteps = parse.GetValue(_steps),
            Batch = parse.GetValue(_batch),
            Seed = (ulong)parse.GetValue(_seed),
            Copy = parse.GetValue(_copy),
            Tokens = SharedOptions.TokenRange(parse.GetValue(_tokens)),
        };
        var paths = new[] { parse.GetRequiredValue(_dense), parse.GetRequiredValue(_converted) }.Select(SharedOptions.ModelFile).ToList();

        Action<string>? progress = json || quiet ? null : step => stderr.WriteLine($"[verify] {step}");
        var report = ModelVerifier.Verify(paths[0], paths[1], options, progress);

        if (json)
        {
            CliApp.WriteJson(stdout, new { ok = true, dense = paths[0], converted = paths[1], options, report });
            return ExitCodes.Success;
        }
        stdout.WriteLine($"Verified {paths[1]} against {paths[0]}: prompt {options.PromptLength}, {options.DecodeSteps} decode steps, batch {options.Batch}");
        stdout.WriteLine("  step  tokens  max abs err  max rel err  top-1 agree  dense ms  hybrid ms");
        foreach (var s in report.Steps)
            stdout.WriteLine($"  {(s.Step == 0 ? "pre" : s.Step.ToString()),4}  {s.Tokens,6}  {s.MaxAbsError,11:0.000e+00}  {s.MaxRelError,11:0.000e+00}  {s.Top1Agreement,11:P1}  {s.DenseMilliseconds,8:0.00}  {s.HybridMilliseconds,9:0.00}");
        stdout.WriteLine($"  overall: max abs error {report.MaxAbsError:0.000e+00}, top-1 agreement {report.Top1Agreement:P1}, decode {report.DenseDecodeMilliseconds:0.00} ms dense vs {report.HybridDecodeMilliseconds:0.00} ms hybrid per step");
        if (report.Copy is { } copy)
            stdout.WriteLine($"  copy test: {copy.Dense:P1} of the repeat predicted by the dense model, {copy.Hybrid:P1} by the converted one "
                             + $"({copy.Positions} positions per sequence, {copy.Distance} tokens back)");
        stdout.WriteLine($"  KV cache after the last call: {SharedOptions.Bytes(report.DenseKvBytes)} dense, {SharedOptions.Bytes(report.HybridKvBytes)} converted");
        return ExitCodes.Success;
    }
}
