using System.Diagnostics;
using System.Text.Json.Nodes;
using HySparse.Exporter.Folders;
using Microsoft.ML.OnnxRuntimeGenAI;

namespace HySparse.Cli;

/// <summary>How <see cref="GenAiRunner"/> decodes.</summary>
internal sealed record GenerationSettings
{
    /// <summary>Tokens to generate after the prompt (each row).</summary>
    public int NewTokens { get; init; } = 64;
    /// <summary>Sample instead of greedy search.</summary>
    public bool Sample { get; init; }
    /// <summary>Sampling temperature.</summary>
    public double Temperature { get; init; } = 1.0;
    /// <summary>Sample among the K most likely tokens (0: all).</summary>
    public int TopK { get; init; }
    /// <summary>Nucleus sampling mass (1: all).</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Seed of genai's sampler.</summary>
    public int Seed { get; init; } = 1;
}

/// <summary>One cache tensor genai held after the last step.</summary>
internal sealed record CacheTensor(string Name, long[] Shape, long Bytes);

/// <summary>What a generation produced and cost.</summary>
internal sealed record GenerationResult
{
    /// <summary>Each row's prompt followed by its generated tokens.</summary>
    public required int[][] Sequences { get; init; }
    /// <summary>Prompt length (tokens per row).</summary>
    public required int PromptLength { get; init; }
    /// <summary>Seconds from the first call to the first generated token (prefill).</summary>
    public required double FirstTokenSeconds { get; init; }
    /// <summary>Seconds spent on every later token.</summary>
    public required double DecodeSeconds { get; init; }
    /// <summary>The cache outputs of the last step, as genai bound them.</summary>
    public required IReadOnlyList<CacheTensor> Caches { get; init; }
    /// <summary>The process's peak resident memory (VmHWM) after the run, bytes.</summary>
    public required long PeakResidentBytes { get; init; }
    /// <summary>Generated tokens per row.</summary>
    public int GeneratedTokens => Sequences[0].Length - PromptLength;
    /// <summary>Bytes of every KV-cache tensor genai held at the end.</summary>
    public long KvBytes => Caches.Sum(c => c.Bytes);
    /// <summary>Decode throughput (tokens after the first, all rows), tokens per second.</summary>
    public double DecodeTokensPerSecond => GeneratedTokens > 1 && DecodeSeconds > 0 ? (GeneratedTokens - 1) * Sequences.Length / DecodeSeconds : 0;
}

/// <summary>
/// Runs a model folder through onnxruntime-genai (Microsoft.ML.OnnxRuntimeGenAI, CPU), the way a
/// serving app does: genai owns the KV cache, binds the inputs and runs the search. Converted folders
/// load the HySparse library through their own genai_config.json.
/// </summary>
internal static class GenAiRunner
{
    /// <summary>True when the folder carries tokenizer files genai can read.</summary>
    public static bool HasTokenizer(string folder) => File.Exists(Path.Combine(folder, "tokenizer_config.json")) || File.Exists(Path.Combine(folder, "tokenizer.json"));

    // The tokenizer is made from the folder's config, not from a Model: loading the model would build
    // its ONNX Runtime session (seconds and gigabytes for a real LLM) just to split text.

    /// <summary>Encodes <paramref name="text"/> with the folder's tokenizer.</summary>
    public static int[] Encode(string folder, string text)
    {
        using var config = new Config(folder);
        using var tokenizer = new Tokenizer(config);
        using var sequences = tokenizer.Encode(text);
        return sequences[0].ToArray();
    }

    /// <summary>Decodes each of <paramref name="rows"/> with the folder's tokenizer.</summary>
    public static string[] Decode(string folder, IEnumerable<int[]> rows)
    {
        using var config = new Config(folder);
        using var tokenizer = new Tokenizer(config);
        return rows.Select(r => tokenizer.Decode(r)).ToArray();
    }

    /// <summary>Generates from <paramref name="prompts"/> (rows of equal length) in <paramref name="folder"/>.</summary>
    public static GenerationResult Generate(string folder, int[][] prompts, GenerationSettings settings)
    {
        if (prompts.Length == 0 || prompts.Any(p => p.Length != prompts[0].Length || p.Length == 0))
            throw new ArgumentException("prompts must be rows of equal, non-zero length", nameof(prompts));
        var genaiConfig = GenAiModelFolder.Open(folder);
        using var model = new Model(folder);
        using var parameters = new GeneratorParams(model);
        parameters.SetSearchOption("max_length", prompts[0].Length + settings.NewTokens);
        parameters.SetSearchOption("batch_size", prompts.Length);
        parameters.SetSearchOption("do_sample", settings.Sample);
        if (settings.Sample)
        {
            parameters.SetSearchOption("temperature", settings.Temperature);
            parameters.SetSearchOption("top_k", settings.TopK);
            parameters.SetSearchOption("top_p", settings.TopP);
            parameters.SetSearchOption("random_seed", settings.Seed);
        }
        using var generator = new Generator(model, parameters);
        var clock = Stopwatch.StartNew();
        generator.AppendTokens(prompts.SelectMany(p => p).ToArray());
        double firstToken = 0;
        var steps = 0;
        while (!generator.IsDone())
        {
            generator.GenerateNextToken();
            if (steps++ == 0) firstToken = clock.Elapsed.TotalSeconds;
        }
        var total = clock.Elapsed.TotalSeconds;
        var sequences = Enumerable.Range(0, prompts.Length).Select(b => generator.GetSequence((ulong)b).ToArray()).ToArray();
        return new GenerationResult
        {
            Sequences = sequences,
            PromptLength = prompts[0].Length,
            FirstTokenSeconds = firstToken,
            DecodeSeconds = total - firstToken,
            Caches = CacheTensors(generator, genaiConfig.Config),
            PeakResidentBytes = PeakResidentBytes(),
        };
    }

    /// <summary>
    /// The cache outputs genai bound at the last step. genai has no API for its KV bytes, so they are
    /// read from the outputs' shapes (GetOutput copies each tensor: call it after timing).
    /// </summary>
    private static List<CacheTensor> CacheTensors(Generator generator, JsonObject config)
    {
        var decoder = (config["model"] as JsonObject)?["decoder"] as JsonObject;
        var outputs = decoder?["outputs"] as JsonObject;
        var layers = decoder?["num_hidden_layers"]?.GetValue<int>() ?? 0;
        string Template(string key, string fallback) => outputs?[key]?.GetValue<string>() ?? fallback;
        var templates = (config["model"] as JsonObject)?["type"]?.GetValue<string>() == "gpt2"
            ? new[] { Template("present_names", "present_%d") }
            : [Template("present_key_names", "present.%d.key"), Template("present_value_names", "present.%d.value")];
        var caches = new List<CacheTensor>();
        for (var layer = 0; layer < layers; layer++)
            foreach (var template in templates)
            {
                var name = template.Replace("%d", layer.ToString(System.Globalization.CultureInfo.InvariantCulture));
                Tensor tensor;
                try { tensor = generator.GetOutput(name); }
                catch (OnnxRuntimeGenAIException) { continue; }   // a layer without a cache of its own
                using (tensor)
                {
                    var shape = tensor.Shape();
                    caches.Add(new CacheTensor(name, shape, tensor.NumElements() * ElementBytes(tensor.Type())));
                }
            }
        return caches;
    }

    private static long ElementBytes(ElementType type) => type switch
    {
        ElementType.float16 or ElementType.int16 or ElementType.uint16 => 2,
        ElementType.float64 or ElementType.int64 or ElementType.uint64 => 8,
        ElementType.int8 or ElementType.uint8 or ElementType.bool_t => 1,
        _ => 4,
    };

    /// <summary>VmHWM of this process (Linux), 0 where /proc is not there.</summary>
    public static long PeakResidentBytes()
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status)) return 0;
        var line = File.ReadLines(status).FirstOrDefault(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return line is null ? 0 : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
    }
}
