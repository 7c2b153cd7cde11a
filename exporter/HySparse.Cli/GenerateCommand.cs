using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Text.Json.Nodes;
using HySparse.Exporter;
using HySparse.Exporter.Folders;

namespace HySparse.Cli;

/// <summary>
/// <c>hysparse generate</c>: run an onnxruntime-genai model folder (converted or not) on a prompt
/// through Microsoft.ML.OnnxRuntimeGenAI, and print the text or tokens with speed and KV bytes.
/// </summary>
internal sealed class GenerateCommand : Verb
{
    private readonly Argument<string> _folder = SharedOptions.Model("folder", "an onnxruntime-genai model folder (converted or not)");
    private readonly Option<string> _text = new("--prompt", "-p") { HelpName = "TEXT", Description = "prompt text (needs tokenizer.json / tokenizer_config.json)" };
    private readonly Option<int[]> _ids = new("--ids")
    {
        HelpName = "LIST",
        Description = "prompt token ids, comma-separated",
        Arity = ArgumentArity.ExactlyOne,
        CustomParser = ParseIds,
    };
    private readonly Option<long[]> _randomPrompt = new("--random-prompt")
    {
        HelpName = "N",
        Description = "N random token ids (seeded by --seed), for measurements",
        Arity = ArgumentArity.ExactlyOne,
        CustomParser = OptionValues.PositiveIntList,
    };
    private readonly Option<int> _newTokens = SharedOptions.PositiveInt("--new-tokens", "N", "tokens to generate", 64, "-n");
    private readonly Option<int> _batch = SharedOptions.PositiveInt("--batch", "N", "decode N copies of the prompt together", 1);
    private readonly Option<bool> _sample = new("--sample") { Description = "sample instead of greedy search, with --temperature, --top-k, --top-p and --seed" };
    private readonly Option<double> _temperature = PositiveNumber("--temperature", "T", "sampling temperature");
    private readonly Option<int?> _topK = SharedOptions.OptionalPositiveInt("--top-k", "K", "sample among the K most likely tokens (default: all)");
    private readonly Option<double> _topP = PositiveNumber("--top-p", "P", "sample among the most likely tokens of total probability P");
    private readonly Option<int> _seed = SharedOptions.PositiveInt("--seed", "S", "seed of the sampling and of --random-prompt", 1);
    private readonly Option<bool> _json = SharedOptions.Json("sequences, timings, KV tensors and memory as JSON");

    public GenerateCommand() : base("generate", "run an onnxruntime-genai model folder (converted or not) on a prompt")
    {
        Arguments.Add(_folder);
        foreach (var option in new Option[] { _text, _ids, _randomPrompt, _newTokens, _batch, _sample, _temperature, _topK, _topP, _seed, _json }) Options.Add(option);
        Details = """
            Details:
              Runs the folder through onnxruntime-genai (CPU), as a serving app would: genai keeps the KV
              cache and runs the search; a converted folder loads libhysparse_onnx.so itself. Prints the
              completion (through the folder's tokenizer) or the token ids, time to first token, decode
              tokens/s, the KV-cache bytes genai held at the end and the peak resident memory. Give the
              prompt as exactly one of --prompt TEXT, --ids 1,2,3 and --random-prompt N.

            Examples:
              hysparse generate ./phi3-hysparse --prompt "def fibonacci(n):" -n 48
              hysparse generate ./model-hysparse --random-prompt 8192 -n 16 --json

            """;
    }

    public override string PositionalError(IReadOnlyList<string> given) => SharedOptions.OneModelError(Name, given);

    protected override int Run(ParseResult parse, TextWriter stdout, TextWriter stderr)
    {
        var json = parse.GetValue(_json);
        var text = parse.GetValue(_text);
        var ids = parse.GivenValue(_ids);
        var randomPrompt = parse.GivenValue(_randomPrompt);
        var batch = parse.GetValue(_batch);
        var settings = new GenerationSettings
        {
            NewTokens = parse.GetValue(_newTokens),
            Sample = parse.GetValue(_sample),
            Temperature = parse.GetValue(_temperature),
            TopK = parse.GetValue(_topK) ?? 0,
            TopP = parse.GetValue(_topP),
            Seed = parse.GetValue(_seed),
        };
        var folder = parse.GetRequiredValue(_folder);
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
            prompt = ids;
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

    private static Option<double> PositiveNumber(string name, string helpName, string description) => new(name)
    {
        HelpName = helpName,
        Description = description,
        CustomParser = OptionValues.PositiveNumber,
        DefaultValueFactory = _ => 1.0,
    };

    private static int[] ParseIds(ArgumentResult result)
    {
        var text = OptionValues.Text(result);
        var ids = new List<int>();
        foreach (var item in text.Split(','))
        {
            if (!int.TryParse(item.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var id))
            {
                result.AddError($"option --ids needs token ids separated by commas, not '{text}'");
                return [];
            }
            ids.Add(id);
        }
        return ids.ToArray();
    }
}
