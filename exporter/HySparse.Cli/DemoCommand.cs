using Google.Protobuf;
using HySparse.Exporter;
using HySparse.Exporter.Layout;
using HySparse.Models.Llama;

namespace HySparse.Cli;

/// <summary>
/// <c>hysparse demo</c>: builds a small Llama-style decoder with random weights, converts it, and
/// runs both side by side — the whole pipeline in one command, nothing to download.
/// </summary>
internal static class DemoCommand
{
    public static int Run(ArgumentReader reader, TextWriter stdout, TextWriter stderr)
    {
        var json = reader.Flag("--json");
        var quiet = reader.Flag("--quiet", "-q");
        var directory = reader.Option("--dir");
        var layers = reader.PositiveInt("--layers") ?? 8;
        var prompt = reader.PositiveInt("--prompt") ?? 256;
        var steps = reader.PositiveInt("--steps") ?? 16;
        // Defaults small enough that sparsity acts within the demo's context.
        var conversion = SharedOptions.ReadConversion(reader, new HybridParameters { TopK = 4, BlockSize = 16, Window = 32 });
        if (reader.Positionals().Count > 0) throw new UsageException("demo takes no file arguments; use --dir to keep the models");

        var keep = directory is not null;
        directory ??= Path.Combine(Path.GetTempPath(), $"hysparse-demo-{Guid.NewGuid():N}");
        Directory.CreateDirectory(directory);
        Action<string>? progress = json || quiet ? null : step => stderr.WriteLine($"[demo] {step}");
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
            var context = (long)prompt + steps;
            var kv = KvAccounting.Compute(config.KvHeads, config.HeadDim, 4, report.Layout, conversion.Parameters, [context]).Single();

            if (json)
            {
                CliApp.WriteJson(stdout, new { ok = true, directory = keep ? directory : null, layout = report.Layout.Pattern, parameters = conversion.Parameters, verify, kv });
                return ExitCodes.Success;
            }
            var p = conversion.Parameters;
            stdout.WriteLine($"HySparse demo: {layers}-layer decoder, layout {report.Layout.Pattern}, top-k {p.TopK} x block {p.BlockSize} + window {p.Window}");
            stdout.WriteLine($"  prompt {prompt} tokens, then {steps} greedy decode steps (context {context})");
            stdout.WriteLine();
            stdout.WriteLine("                          dense        hybrid");
            stdout.WriteLine($"  prefill ms           {verify.Steps[0].DenseMilliseconds,9:0.00}     {verify.Steps[0].HybridMilliseconds,9:0.00}");
            stdout.WriteLine($"  decode ms / token    {verify.DenseDecodeMilliseconds,9:0.00}     {verify.HybridDecodeMilliseconds,9:0.00}");
            stdout.WriteLine($"  KV cache             {SharedOptions.Bytes(kv.DenseCache),9}     {SharedOptions.Bytes(kv.RetrofitCache),9}   (retrofit keeps every layer's cache)");
            stdout.WriteLine($"  KV read / token      {SharedOptions.Bytes(kv.DenseDecodeRead),9}     {SharedOptions.Bytes(kv.HybridDecodeRead),9}");
            stdout.WriteLine($"  max |logit error|                  {verify.MaxAbsError,9:0.000e+00}");
            stdout.WriteLine($"  top-1 agreement                    {verify.Top1Agreement,9:P1}");
            stdout.WriteLine();
            stdout.WriteLine(keep ? $"Models kept in {directory}." : "Pass --dir DIR to keep the models; then try hysparse inspect / verify on them.");
            return ExitCodes.Success;
        }
        finally
        {
            if (!keep) Directory.Delete(directory, recursive: true);
        }
    }
}
