using System.Security.Cryptography;
using System.Text.Json.Nodes;
using HySparse.Exporter.Folders;
using HySparse.Models.GenAi;

namespace HySparse.Exporter.Tests;

/// <summary>
/// Converted onnxruntime-genai model folders run under Microsoft.ML.OnnxRuntimeGenAI, which owns the KV
/// cache: with a selection covering every key they decode the original folder's greedy tokens; with a
/// sparse layout they decode what <see cref="KvCacheDecoder"/> decodes from the converted model in ONNX
/// Runtime directly.
/// </summary>
[TestClass]
public sealed class GenAiFolderTests
{
    private const int NewTokens = 48;
    private static readonly LlamaConfig Config = new() { Layers = 4, Hidden = 64, Heads = 4, KvHeads = 2, HeadDim = 16, Ffn = 96, Vocab = 97, Seed = 5 };

    // Two rows of equal length without the pad id (0), which genai masks out of a batch.
    private static readonly int[][] Prompts =
    [
        [3, 14, 15, 9, 26, 53, 58, 9, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28, 84, 19, 71, 69, 39],
        [2, 71, 82, 81, 82, 84, 59, 4, 52, 35, 36, 28, 74, 71, 35, 26, 62, 49, 77, 57, 24, 70, 93, 69],
    ];

    /// <summary>Every key of a 72-token sequence is in the selection: the hybrid computes what dense computes.</summary>
    private static ConversionOptions Covering(bool kvSharing = false) => new()
    {
        Layout = LayoutSpec.Ratio("1:1", false),
        Parameters = new HybridParameters { TopK = 8, BlockSize = 16, Window = 16, Mode = kvSharing ? HybridMode.KvSharing : HybridMode.Retrofit },
    };

    /// <summary>Sparse for real: 2 blocks of 8 + a window of 8 out of up to 72 keys, the last layer sparse too.</summary>
    private static ConversionOptions Sparse(bool kvSharing = false) => new()
    {
        Layout = LayoutSpec.Ratio("1:3", true),
        Parameters = new HybridParameters { TopK = 2, BlockSize = 8, Window = 8, Mode = kvSharing ? HybridMode.KvSharing : HybridMode.Retrofit },
    };

    private static GenerationResult Generate(string folder) =>
        GenAiRunner.Generate(folder, Prompts, new GenerationSettings { NewTokens = NewTokens });

    private static string DenseFolder(ModelDirectory dir, LlamaAttentionStyle style, GroupQueryAttentionOptions? gqa = null)
    {
        var folder = Path.Combine(dir.Path, "dense");
        var model = LlamaModelBuilder.Build(Config, style, groupQuery: gqa);
        GenAiFolderWriter.Write(folder, model, Config, shareBuffer: style == LlamaAttentionStyle.GroupQueryAttention, positionIds: gqa?.PositionIdsInput ?? false);
        return folder;
    }

    /// <summary>The converted decoder run by <see cref="KvCacheDecoder"/> in ONNX Runtime, greedy, batch 2.</summary>
    private static int[][] KvCacheDecoderTokens(string folder, bool sharedBuffers)
    {
        // By path, so that a decoder with external data finds its weights beside it.
        var decoderFile = GenAiModelFolder.Open(folder).DecoderPath;
        using var options = new Microsoft.ML.OnnxRuntime.SessionOptions { LogSeverityLevel = Microsoft.ML.OnnxRuntime.OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        if (HybridConverter.IsConverted(ModelFile.Load(decoderFile))) options.RegisterHySparseOps();
        using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(decoderFile, options);
        using var decoder = new KvCacheDecoder(session, batchSize: Prompts.Length, bufferCapacity: sharedBuffers ? Prompts[0].Length + NewTokens : null);
        var generated = decoder.GenerateGreedy(Prompts.SelectMany(p => p.Select(t => (long)t)).ToArray(), NewTokens);
        return Prompts.Select((p, b) => p.Concat(generated.Skip(b * NewTokens).Take(NewTokens).Select(t => (int)t)).ToArray()).ToArray();
    }

    private static void AssertSameTokens(int[][] expected, int[][] actual, string what)
    {
        Assert.AreEqual(expected.Length, actual.Length);
        for (var b = 0; b < expected.Length; b++)
        {
            Assert.AreEqual(Prompts[b].Length + NewTokens, actual[b].Length, $"{what}: row {b} stopped early (the eos id was generated)");
            CollectionAssert.AreEqual(expected[b], actual[b], $"{what}: row {b}");
        }
    }

    /// <summary>The genai builder's GroupQueryAttention layouts the folder tests run.</summary>
    public enum GroupQueryVariant
    {
        SeparateQkv,
        PackedQkv,
        /// <summary>RotaryEmbedding nodes on a position_ids graph input that genai fills, do_rotary=0.</summary>
        PositionIds,
        /// <summary>Weights, caches and logits in float16, GroupQueryAttention computing in float16.</summary>
        Float16,
        /// <summary>Float16 with RotaryEmbedding on position_ids.</summary>
        Float16PositionIds,
    }

    private static GroupQueryAttentionOptions Options(GroupQueryVariant variant) => variant switch
    {
        GroupQueryVariant.SeparateQkv => new(),
        GroupQueryVariant.PackedQkv => new() { PackedQkv = true },
        GroupQueryVariant.PositionIds => new() { DoRotary = false, PositionIdsInput = true },
        GroupQueryVariant.Float16 => new() { Float16 = true },
        GroupQueryVariant.Float16PositionIds => new() { Float16 = true, DoRotary = false, PositionIdsInput = true },
        _ => throw new ArgumentOutOfRangeException(nameof(variant)),
    };

    [TestMethod]
    [DataRow(GroupQueryVariant.SeparateQkv, DisplayName = "GroupQueryAttention, separate Q/K/V")]
    [DataRow(GroupQueryVariant.PackedQkv, DisplayName = "GroupQueryAttention, packed QKV")]
    [DataRow(GroupQueryVariant.PositionIds, DisplayName = "GroupQueryAttention, RotaryEmbedding on a position_ids input")]
    [DataRow(GroupQueryVariant.Float16, DisplayName = "GroupQueryAttention, float16")]
    [DataRow(GroupQueryVariant.Float16PositionIds, DisplayName = "GroupQueryAttention, float16, RotaryEmbedding on a position_ids input")]
    public void GroupQueryAttentionFolder_CoveringLayout_DecodesTheOriginalTokens_SparseLayout_TheKvCacheDecoderTokens(GroupQueryVariant variant)
    {
        using var dir = new ModelDirectory();
        var dense = DenseFolder(dir, LlamaAttentionStyle.GroupQueryAttention, Options(variant));
        var covering = Path.Combine(dir.Path, "covering");
        var report = ModelFolderConverter.Convert(dense, covering, Covering());
        Assert.AreEqual(HybridMetadata.SharedBufferCache, report.Decoder.Metadata[HybridMetadata.KvCache]);
        var sparse = Path.Combine(dir.Path, "sparse");
        ModelFolderConverter.Convert(dense, sparse, Sparse());
        if (Options(variant).PositionIdsInput)
        {
            // The RotaryEmbedding nodes before the op are not the op's: they stay as they were, on position_ids.
            foreach (var folder in new[] { covering, sparse })
                CollectionAssert.AreEquivalent(RotaryNodesOnPositionIds(dense), RotaryNodesOnPositionIds(folder), folder);
            Assert.HasCount(2 * Config.Layers, RotaryNodesOnPositionIds(dense));
        }
        // KvCacheDecoder feeds position_ids as genai does for rows without padding: 0..S−1 for the
        // prompt, then one more per step (genai numbers left-padded rows by column instead).
        var expectedDense = KvCacheDecoderTokens(dense, sharedBuffers: true);
        var expectedSparse = KvCacheDecoderTokens(sparse, sharedBuffers: true);
        GenAiFolders.SetEosOutside([dense, covering, sparse], expectedDense, expectedSparse);

        // Float16 too is asserted token for token over all 48: GroupQueryAttention's float16 kernel and
        // the HySparse ops' read the same float16 Q/K/V and caches and differ by rounding only, which
        // flips no greedy choice of this model. Should a kernel change make the paths part, compare
        // the first steps' logits with a tolerance and tokens only up to the first disagreement.
        var original = Generate(dense);
        AssertSameTokens(expectedDense, original.Sequences, "the original folder under genai vs KvCacheDecoder");
        AssertSameTokens(original.Sequences, Generate(covering).Sequences, "covering conversion under genai");
        var hybrid = Generate(sparse);
        AssertSameTokens(expectedSparse, hybrid.Sequences, "sparse conversion under genai vs KvCacheDecoder");
        // Shared buffers: genai holds every layer's buffer at max_length, as for the original, in the
        // model's element type.
        Assert.AreEqual(original.KvBytes, hybrid.KvBytes);
        var elementBytes = Options(variant).Float16 ? 2 : sizeof(float);
        Assert.AreEqual(2L * Config.Layers * Prompts.Length * Config.KvHeads * (Prompts[0].Length + NewTokens) * Config.HeadDim * elementBytes, original.KvBytes);
    }

    private static string[] RotaryNodesOnPositionIds(string folder) =>
        ModelFile.Load(GenAiModelFolder.Open(folder).DecoderPath).Graph.Node
            .Where(n => n.OpType == "RotaryEmbedding" && n.Input[1] == DecoderNames.PositionIds).Select(n => n.ToString()).ToArray();

    [TestMethod]
    public void GroupQueryAttentionFolder_KvSharing_RunsUnderGenAiWithWindowCaches_AndHoldsLessKv()
    {
        using var dir = new ModelDirectory();
        var dense = DenseFolder(dir, LlamaAttentionStyle.GroupQueryAttention);
        var shared = Path.Combine(dir.Path, "kv-sharing");
        var report = ModelFolderConverter.Convert(dense, shared, Sparse(kvSharing: true));
        Assert.AreEqual(HybridMetadata.ConcatenatedCache, report.Decoder.Metadata[HybridMetadata.KvCache]);
        CollectionAssert.Contains(report.ConfigChanges.ToArray(), "search.past_present_share_buffer = false");
        var expectedDense = KvCacheDecoderTokens(dense, sharedBuffers: true);
        var expectedShared = KvCacheDecoderTokens(shared, sharedBuffers: false);
        GenAiFolders.SetEosOutside([dense, shared], expectedDense, expectedShared);

        var original = Generate(dense);
        var hybrid = Generate(shared);
        AssertSameTokens(expectedShared, hybrid.Sequences, "GQA kv-sharing under genai vs KvCacheDecoder");
        // genai held the original's 4 buffers at max_length (72) and the hybrid's full layer at the
        // tokens so far (71) plus three window caches of 8.
        var bytes = (long)Prompts.Length * Config.KvHeads * Config.HeadDim * sizeof(float) * 2;
        Assert.AreEqual(bytes * 4 * (Prompts[0].Length + NewTokens), original.KvBytes);
        Assert.AreEqual(bytes * (Prompts[0].Length + NewTokens - 1 + 3 * 8), hybrid.KvBytes);
    }

    [TestMethod]
    public void Gpt2StyleFolder_ContribAttention_CoveringLayoutDecodesTheOriginalTokens_SparseLayoutTheKvCacheDecoderTokens()
    {
        using var dir = new ModelDirectory();
        var config = Config with { KvHeads = Config.Heads };   // com.microsoft.Attention has no GQA
        var dense = Path.Combine(dir.Path, "dense");
        GenAiFolderWriter.Write(dense, LlamaModelBuilder.Build(config, LlamaAttentionStyle.ContribAttention), config, type: "gpt2", shareBuffer: false);
        var covering = Path.Combine(dir.Path, "covering");
        ModelFolderConverter.Convert(dense, covering, Covering());
        var sparse = Path.Combine(dir.Path, "sparse");
        ModelFolderConverter.Convert(dense, sparse, Sparse());
        var expectedDense = KvCacheDecoderTokens(dense, sharedBuffers: false);
        var expectedSparse = KvCacheDecoderTokens(sparse, sharedBuffers: false);
        GenAiFolders.SetEosOutside([dense, covering, sparse], expectedDense, expectedSparse);

        var original = Generate(dense);
        AssertSameTokens(expectedDense, original.Sequences, "the gpt2 folder under genai vs KvCacheDecoder");
        AssertSameTokens(original.Sequences, Generate(covering).Sequences, "covering conversion of the gpt2 folder under genai");
        AssertSameTokens(expectedSparse, Generate(sparse).Sequences, "sparse conversion of the gpt2 folder under genai vs KvCacheDecoder");
        Assert.AreEqual("gpt2", new Microsoft.ML.OnnxRuntimeGenAI.Model(sparse).GetModelType());
    }

    [TestMethod]
    public void ConcatenatingFolder_RetrofitAndKvSharing_RunUnderGenAi_KvSharingHoldsWindowCaches()
    {
        using var dir = new ModelDirectory();
        var dense = DenseFolder(dir, LlamaAttentionStyle.Decomposed);
        var covering = Path.Combine(dir.Path, "covering");
        ModelFolderConverter.Convert(dense, covering, Covering());
        var shared = Path.Combine(dir.Path, "kv-sharing");
        var report = ModelFolderConverter.Convert(dense, shared, Sparse(kvSharing: true));
        var expectedDense = KvCacheDecoderTokens(dense, sharedBuffers: false);
        var expectedShared = KvCacheDecoderTokens(shared, sharedBuffers: false);
        GenAiFolders.SetEosOutside([dense, covering, shared], expectedDense, expectedShared);

        var original = Generate(dense);
        AssertSameTokens(expectedDense, original.Sequences, "the original folder under genai vs KvCacheDecoder");
        AssertSameTokens(original.Sequences, Generate(covering).Sequences, "covering retrofit under genai");

        var window = (JsonObject)GenAiModelFolder.Open(shared).Config["model"]!["decoder"]!["sliding_window"]!;
        Assert.AreEqual(7, window["window_size"]!.GetValue<int>());
        Assert.AreEqual(1, window["cache_slack"]!.GetValue<int>());
        CollectionAssert.AreEqual(new[] { 1, 2, 3 }, window["layers"]!.AsArray().Select(n => n!.GetValue<int>()).ToArray());
        Assert.IsFalse(GenAiModelFolder.Open(shared).Config["search"]!["past_present_share_buffer"]!.GetValue<bool>());
        Assert.AreEqual(6, report.Decoder.WindowCaches.Count / 2);

        var hybrid = Generate(shared);
        AssertSameTokens(expectedShared, hybrid.Sequences, "kv-sharing under genai vs KvCacheDecoder");
        // The last step's caches: layer 0 keeps all T - 1 = 71 positions (genai feeds the last token
        // without computing its KV), layers 1-3 keep the window of 8.
        var total = Prompts[0].Length + NewTokens - 1;
        var bytes = (long)Prompts.Length * Config.KvHeads * Config.HeadDim * sizeof(float) * 2;
        Assert.AreEqual(bytes * (total + 3 * 8), hybrid.KvBytes, string.Join(", ", hybrid.Caches.Select(c => $"{c.Name} [{string.Join(",", c.Shape)}]")));
        Assert.AreEqual(bytes * 4 * total, original.KvBytes);
    }

    [TestMethod]
    public void FolderConversion_CopiesTheFolder_AddsTheLibrary_LeavesTheInputUntouched()
    {
        using var dir = new ModelDirectory();
        var dense = DenseFolder(dir, LlamaAttentionStyle.GroupQueryAttention);
        File.WriteAllText(Path.Combine(dense, "tokenizer.json"), "{\"stand-in\": true}");
        Directory.CreateDirectory(Path.Combine(dense, "extra"));
        File.WriteAllText(Path.Combine(dense, "extra", "notes.txt"), "kept");
        var before = Hashes(dense);

        var output = Path.Combine(dir.Path, "out");
        var report = ModelFolderConverter.Convert(dense, output, Covering());
        CollectionAssert.AreEquivalent(before, Hashes(dense), "the input folder changed");
        CollectionAssert.AreEquivalent(new[] { "tokenizer.json", Path.Combine("extra", "notes.txt") }, report.CopiedFiles.ToArray());
        Assert.AreEqual("kept", File.ReadAllText(Path.Combine(output, "extra", "notes.txt")));
        Assert.IsTrue(File.Exists(Path.Combine(output, HySparseNativeLibrary.FileName)));
        Assert.AreEqual(HySparseNativeLibrary.FileName,
            GenAiModelFolder.Open(output).DecoderSessionOptions()["custom_ops_library"]!.GetValue<string>());
        Assert.IsTrue(HybridConverter.IsConverted(ModelFile.Load(GenAiModelFolder.Open(output).DecoderPath)));

        // Refusals: nothing is written, no staging folder is left behind.
        var exists = Assert.ThrowsExactly<ConversionException>(() => ModelFolderConverter.Convert(dense, output, Covering()));
        Assert.AreEqual(ConversionError.InvalidOutput, exists.Error);
        var inside = Assert.ThrowsExactly<ConversionException>(() => ModelFolderConverter.Convert(dense, Path.Combine(dense, "sub"), Covering()));
        StringAssert.Contains(inside.Message, "input folder");
        // The same through a symlink to the input folder.
        var alias = Path.Combine(dir.Path, "alias");
        Directory.CreateSymbolicLink(alias, dense);
        var throughLink = Assert.ThrowsExactly<ConversionException>(() => ModelFolderConverter.Convert(dense, Path.Combine(alias, "sub"), Covering()));
        StringAssert.Contains(throughLink.Message, "input folder");
        Directory.Delete(alias);
        var refused = Path.Combine(dir.Path, "refused");
        var again = Assert.ThrowsExactly<ConversionException>(() => ModelFolderConverter.Convert(output, refused, Covering()));
        Assert.AreEqual(ConversionError.AlreadyConverted, again.Error);
        Assert.IsFalse(Directory.Exists(refused));
        Assert.IsFalse(Directory.EnumerateFileSystemEntries(dir.Path).Any(p => Path.GetFileName(p).StartsWith('.')), "a staging folder was left behind");
        CollectionAssert.AreEquivalent(before, Hashes(dense));

        // --overwrite replaces the output whole.
        ModelFolderConverter.Convert(dense, output, Sparse(), overwrite: true);
        Assert.AreEqual("2", ModelFile.Load(GenAiModelFolder.Open(output).DecoderPath).MetadataProps.First(p => p.Key == HybridMetadata.TopK).Value);
    }

    [TestMethod]
    public void FolderWithExternalData_CopiesTheDataBesideTheConvertedDecoder_AndRunsUnderGenAi()
    {
        using var dir = new ModelDirectory();
        var dense = Path.Combine(dir.Path, "dense");
        var model = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention);
        Directory.CreateDirectory(dense);
        var moved = HySparse.Graph.ExternalData.MoveToFile(model, dense, "model.onnx.data");
        Assert.IsTrue(moved > 0);
        GenAiFolderWriter.Write(dense, model, Config);
        Assert.IsTrue(new FileInfo(Path.Combine(dense, "model.onnx")).Length < new FileInfo(Path.Combine(dense, "model.onnx.data")).Length);

        var covering = Path.Combine(dir.Path, "covering");
        var report = ModelFolderConverter.Convert(dense, covering, Covering());
        CollectionAssert.Contains(report.CopiedFiles.ToArray(), "model.onnx.data");
        Assert.IsTrue(ModelFile.Load(Path.Combine(covering, "model.onnx")).Graph.Initializer.Any(HySparse.Graph.Tensors.IsExternal), "weights stay external");
        var expected = KvCacheDecoderTokens(dense, sharedBuffers: true);
        GenAiFolders.SetEosOutside([dense, covering], expected);
        AssertSameTokens(expected, Generate(covering).Sequences, "covering conversion of an external-data folder under genai");
    }

    [TestMethod]
    public void FolderWithoutConfigOrDecoder_IsRefusedByName()
    {
        using var dir = new ModelDirectory();
        var empty = Directory.CreateDirectory(Path.Combine(dir.Path, "empty")).FullName;
        var none = Assert.ThrowsExactly<ConversionException>(() => GenAiModelFolder.Open(empty));
        StringAssert.Contains(none.Message, GenAiModelFolder.ConfigFileName);
        File.WriteAllText(Path.Combine(empty, GenAiModelFolder.ConfigFileName), """{"model": {"decoder": {"filename": "../escape.onnx"}}}""");
        StringAssert.Contains(Assert.ThrowsExactly<ConversionException>(() => GenAiModelFolder.Open(empty)).Message, "inside the folder");
        File.WriteAllText(Path.Combine(empty, GenAiModelFolder.ConfigFileName), """{"model": {"decoder": {"filename": "missing.onnx"}}}""");
        StringAssert.Contains(Assert.ThrowsExactly<ConversionException>(() => GenAiModelFolder.Open(empty)).Message, "missing.onnx");
        File.WriteAllText(Path.Combine(empty, GenAiModelFolder.ConfigFileName), "{ not json");
        StringAssert.Contains(Assert.ThrowsExactly<ConversionException>(() => GenAiModelFolder.Open(empty)).Message, "not valid JSON");
    }

    [TestMethod]
    public void Cli_ConvertsAFolder_AndGeneratesFromIt()
    {
        using var dir = new ModelDirectory();
        var dense = DenseFolder(dir, LlamaAttentionStyle.GroupQueryAttention);
        var output = Path.Combine(dir.Path, "cli-out");
        var (code, stdout, stderr) = CliTests.Run("convert", dense, "-o", output, "--ratio", "1:3", "--top-k", "2", "--block-size", "8", "--window", "8", "--quiet");
        Assert.AreEqual(0, code, stderr);
        StringAssert.Contains(stdout, "custom_ops_library = libhysparse_onnx.so");

        (code, stdout, stderr) = CliTests.Run("generate", output, "--ids", string.Join(",", Prompts[0]), "-n", "6", "--batch", "2", "--json");
        Assert.AreEqual(0, code, stderr);
        var result = JsonNode.Parse(stdout)!;
        Assert.IsTrue(result["hysparse"]!.GetValue<bool>());
        Assert.AreEqual(2, result["sequences"]!.AsArray().Count);
        Assert.IsTrue(result["sequences"]![0]!.AsArray().Count > Prompts[0].Length);
        Assert.AreEqual(8, result["caches"]!.AsArray().Count);
        Assert.IsTrue(result["kvBytes"]!.GetValue<long>() > 0);

        // Text prompts need the folder's tokenizer; without one the user is told what to give instead.
        (code, _, stderr) = CliTests.Run("generate", output, "--prompt", "def f(x):");
        Assert.AreEqual(2, code);
        StringAssert.Contains(stderr, "--ids");
        (code, _, stderr) = CliTests.Run("generate", Path.Combine(dir.Path, "nowhere"), "--ids", "1,2");
        Assert.AreEqual(3, code, stderr);
    }

    /// <summary>
    /// The trained byte-level dense model as a genai folder with its tokenizer: a text prompt goes in
    /// through genai's tokenizer, the converted folders answer it, and the text comes back out.
    /// </summary>
    [TestMethod]
    public void TrainedModelFolder_TextPromptThroughTheTokenizer_ConvertedFoldersAnswerIt()
    {
        using var dir = new ModelDirectory();
        var trained = Path.Combine(AppContext.BaseDirectory, "fixtures", "trained");
        var dense = Directory.CreateDirectory(Path.Combine(dir.Path, "dense")).FullName;
        foreach (var file in Directory.GetFiles(Path.Combine(trained, "genai"))) File.Copy(file, Path.Combine(dense, Path.GetFileName(file)));
        File.Copy(Path.Combine(trained, "dense.onnx"), Path.Combine(dense, "model.onnx"));
        var prompt = "import os\nimport sys\n\n\ndef main(argv):\n    \"\"\"Parse the command line.\"\"\"\n    for arg in argv:\n        ";

        // Token id = byte value, through genai's own tokenizer both ways.
        var ids = GenAiRunner.Encode(dense, prompt);
        CollectionAssert.AreEqual(System.Text.Encoding.UTF8.GetBytes(prompt).Select(b => (int)b).ToArray(), ids);
        Assert.AreEqual(prompt, GenAiRunner.Decode(dense, [ids]).Single());

        // Blocks of 16 over 98 + 48 tokens: K = 16 covers every block, so the retrofit is exact.
        var covering = Path.Combine(dir.Path, "covering");
        ModelFolderConverter.Convert(dense, covering, new ConversionOptions { Parameters = new HybridParameters { TopK = 16, BlockSize = 16, Window = 16 } });
        var shared = Path.Combine(dir.Path, "kv-sharing");
        ModelFolderConverter.Convert(dense, shared, new ConversionOptions { Parameters = new HybridParameters { TopK = 2, BlockSize = 16, Window = 16, Mode = HybridMode.KvSharing } });
        var settings = new GenerationSettings { NewTokens = NewTokens };
        var original = GenAiRunner.Generate(dense, [ids], settings);
        Assert.AreEqual(ids.Length + NewTokens, original.Sequences[0].Length, "the model ended its file (eos = NUL) early");
        CollectionAssert.AreEqual(original.Sequences[0], GenAiRunner.Generate(covering, [ids], settings).Sequences[0]);

        using var session = TestSessions.Open(File.ReadAllBytes(Path.Combine(shared, "model.onnx")));
        using var decoder = new KvCacheDecoder(session);
        var expected = decoder.GenerateGreedy(ids.Select(t => (long)t).ToArray(), NewTokens).Select(t => (int)t).ToArray();
        var hybrid = GenAiRunner.Generate(shared, [ids], settings);
        CollectionAssert.AreEqual(expected, hybrid.Sequences[0].Skip(ids.Length).ToArray());
        Assert.IsTrue(hybrid.KvBytes < original.KvBytes, $"{hybrid.KvBytes} vs {original.KvBytes}");

        // The CLI prints the prompt and the completion as text.
        var (code, stdout, stderr) = CliTests.Run("generate", covering, "--prompt", prompt, "-n", "8");
        Assert.AreEqual(0, code, stderr);
        StringAssert.Contains(stdout, "def main(argv):");
    }

    private static Dictionary<string, string> Hashes(string folder) =>
        Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories)
            .ToDictionary(f => Path.GetRelativePath(folder, f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));
}
