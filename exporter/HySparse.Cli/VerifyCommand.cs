using HySparse.Exporter;

namespace HySparse.Cli;

/// <summary><c>hysparse verify</c>: run a dense model and its conversion side by side.</summary>
internal static class VerifyCommand
{
    public static int Run(ArgumentReader reader, TextWriter stdout, TextWriter stderr)
    {
        var json = reader.Flag("--json");
        var quiet = reader.Flag("--quiet", "-q");
        var defaults = new VerifyOptions();
        var options = new VerifyOptions
        {
            PromptLength = reader.PositiveInt("--prompt") ?? defaults.PromptLength,
            DecodeSteps = reader.PositiveInt("--steps") ?? defaults.DecodeSteps,
            Batch = reader.PositiveInt("--batch") ?? defaults.Batch,
            Seed = (ulong)(reader.PositiveInt("--seed") ?? (int)defaults.Seed),
        };
        var given = reader.Positionals();
        if (given.Count != 2) throw new UsageException("verify takes two model files or genai model folders: hysparse verify <dense.onnx> <converted.onnx>");
        var paths = given.Select(SharedOptions.ModelFile).ToList();

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
        stdout.WriteLine($"  KV cache after the last call: {SharedOptions.Bytes(report.DenseKvBytes)} dense, {SharedOptions.Bytes(report.HybridKvBytes)} converted");
        return ExitCodes.Success;
    }
}
