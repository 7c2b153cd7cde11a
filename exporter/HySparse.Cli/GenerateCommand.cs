using System.Globalization;
using System.Text.Json.Nodes;
using HySparse.Exporter;
using HySparse.Exporter.Folders;

namespace HySparse.Cli;

/// <summary>
/// <c>hysparse generate</c>: run an onnxruntime-genai model folder (converted or not) on a prompt
/// through Microsoft.ML.OnnxRuntimeGenAI, and print the text or tokens with speed and KV bytes.
/// </summary>
internal static class GenerateCommand
{
    public static int Run(ArgumentReader reader, TextWriter stdout, TextWriter stderr)
    {
        var json = reader.Flag("--json");
        var text = reader.Option("--prompt", "-p");
        var ids = reader.Option("--ids");
        var randomPrompt = reader.PositiveIntList("--random-prompt");
        var batch = reader.PositiveInt("--batch") ?? 1;
        var settings = new GenerationSettings
        {
            NewTokens = reader.PositiveInt("--new-tokens", "-n") ?? 64,
            Sample = reader.Flag("--sample"),
            Temperature = Number(reader, "--temperature") ?? 1.0,
            TopK = reader.PositiveInt("--top-k") ?? 0,
            TopP = Number(reader, "--top-p") ?? 1.0,
            Seed = reader.PositiveInt("--seed") ?? 1,
        };
        var folder = SharedOptions.ModelPath(reader, "generate");
        if (new[] { text is not null, ids is not null, randomPrompt is not null }.Count(x => x) != 1)
            throw new UsageException("give exactly one of --prompt TEXT, --ids 1,2,3 and --random-prompt LENGTH");
        if (!GenAiModelFolder.IsModelFolder(folder))
            throw new ConversionException(ConversionError.InvalidModel, $"'{folder}' is not an onnxruntime-genai model folder (no {GenAiModelFolder.ConfigFileName})");
        var genai = GenAiModelFolder.Open(folder);

        int[] prompt;
        if (text is not null)
        {
            if (!GenAiRunner.HasTokenizer(folder))
                throw new UsageException($"'{folder}' has no tokenizer files (tokenizer.json, tokenizer_config.json): give the prompt as --ids or --random-prompt");
            prompt = GenAiRunner.Encode(folder, text);
        }
        else if (ids is not null)
        {
            prompt = ParseIds(ids);
        }
        else
        {
            if (randomPrompt!.Length != 1) throw new UsageException("--random-prompt takes one length");
            var vocab = ((genai.Config["model"] as JsonObject)?["vocab_size"]?.GetValue<int>())
                        ?? throw new UsageException($"{GenAiModelFolder.ConfigFileName} has no model.vocab_size to draw random tokens from");
            var random = new Random(settings.Seed);
            // Token 0 is the usual pad id: genai would mask it out of the prompt.
            prompt = Enumerable.Range(0, checked((int)randomPrompt[0])).Select(_ => random.Next(1, vocab)).ToArray();
        }
        var prompts = Enumerable.Repeat(prompt, batch).ToArray();
        var result = GenAiRunner.Generate(folder, prompts, settings);
        var converted = genai.DecoderSessionOptions()["custom_ops_library"] is not null;
        var completions = GenAiRunner.HasTokenizer(folder)
            ? GenAiRunner.Decode(folder, result.Sequences.Select(s => s[result.PromptLength..]))
            : null;

        if (json)
        {
            CliApp.WriteJson(stdout, new
            {
                ok = true,
                folder,
                hysparse = converted,
                promptTokens = result.PromptLength,
                batch,
                generatedTokens = result.GeneratedTokens,
                sequences = result.Sequences,
                completions,
                timeToFirstTokenMs = result.FirstTokenSeconds * 1000,
                decodeTokensPerSecond = result.DecodeTokensPerSecond,
                kvBytes = result.KvBytes,
                caches = result.Caches,
                peakResidentBytes = result.PeakResidentBytes,
            });
            return ExitCodes.Success;
        }
        stdout.WriteLine($"Generated with onnxruntime-genai from {folder} ({(converted ? "HySparse" : "no HySparse ops")}): prompt {result.PromptLength} tokens x batch {batch}, {result.GeneratedTokens} new tokens per row");
        for (var b = 0; b < result.Sequences.Length; b++)
        {
            var row = result.Sequences[b];
            stdout.WriteLine(completions is not null
                ? $"  [{b}] {(text ?? "")}{completions[b]}"
                : $"  [{b}] {string.Join(' ', row.Take(result.PromptLength))} | {string.Join(' ', row.Skip(result.PromptLength))}");
        }
        stdout.WriteLine($"  time to first token {result.FirstTokenSeconds * 1000:0.0} ms, decode {result.DecodeTokensPerSecond:0.0} tokens/s");
        stdout.WriteLine($"  KV cache held by genai at the end: {SharedOptions.Bytes(result.KvBytes)} in {result.Caches.Count} tensors; peak resident memory {SharedOptions.Bytes(result.PeakResidentBytes)}");
        return ExitCodes.Success;
    }

    private static double? Number(ArgumentReader reader, string name)
    {
        if (reader.Option(name) is not { } text) return null;
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || !(value > 0))
            throw new UsageException($"option {name} needs a positive number, not '{text}'");
        return value;
    }

    private static int[] ParseIds(string text)
    {
        var ids = new List<int>();
        foreach (var item in text.Split(','))
        {
            if (!int.TryParse(item.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var id))
                throw new UsageException($"option --ids needs token ids separated by commas, not '{text}'");
            ids.Add(id);
        }
        return ids.ToArray();
    }
}
