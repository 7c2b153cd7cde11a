using System.Globalization;

namespace HySparse.Exporter.Tests;

/// <summary>The hysparse command line end to end (in process).</summary>
[TestClass]
public sealed class CliTests
{
    internal static (int Code, string Out, string Err) Run(params string[] args)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var code = CliApp.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>
    /// <c>hysparse verify --json</c> on a conversion expected to be exact (its selection covers every
    /// key): logits within 1e-4, every top-1 token agreeing. Returns the JSON for further checks.
    /// </summary>
    internal static JsonDocument VerifyExact(string dense, string converted, int prompt, int steps, int batch)
    {
        var verify = Run("verify", dense, converted, "--prompt", prompt.ToString(CultureInfo.InvariantCulture),
                         "--steps", steps.ToString(CultureInfo.InvariantCulture), "--batch", batch.ToString(CultureInfo.InvariantCulture), "--json");
        Assert.AreEqual(ExitCodes.Success, verify.Code, verify.Err);
        var json = JsonDocument.Parse(verify.Out);
        var report = json.RootElement.GetProperty("report");
        Assert.IsLessThan(1e-4, report.GetProperty("maxAbsError").GetDouble());
        Assert.AreEqual(1.0, report.GetProperty("top1Agreement").GetDouble());
        return json;
    }

    private static void AssertOneLineError(string stderr, string contains)
    {
        // Progress lines may precede it; the error itself is exactly one line.
        var errors = stderr.Split('\n').Where(l => l.StartsWith("hysparse: error: ", StringComparison.Ordinal)).ToList();
        Assert.HasCount(1, errors, stderr);
        StringAssert.Contains(errors[0], contains);
    }

    [TestMethod]
    public void HelpTeachesTheCommands()
    {
        var (code, output, _) = Run("--help");
        Assert.AreEqual(ExitCodes.Success, code);
        foreach (var text in new[] { "convert", "inspect", "K*B + w", "w >= context", "Exit codes" }) StringAssert.Contains(output, text);

        var convert = Run("convert", "--help");
        Assert.AreEqual(ExitCodes.Success, convert.Code);
        foreach (var text in new[] { "--pattern", "--ratio", "--full-layers", "--top-k", "--block-size", "--window", "--kv-sharing", "past_window_length", "Layer 0 must be full", "Examples" })
            StringAssert.Contains(convert.Out, text);
        StringAssert.Contains(Run("inspect", "--help").Out, "--context");
    }

    [TestMethod]
    public void BadCommandLinesExitWithUsageErrors()
    {
        var none = Run();
        Assert.AreEqual(ExitCodes.Usage, none.Code);
        StringAssert.Contains(none.Out, "Usage");

        var unknown = Run("transmogrify", "x.onnx");
        Assert.AreEqual(ExitCodes.Usage, unknown.Code);
        AssertOneLineError(unknown.Err, "unknown command 'transmogrify'");

        using var dir = new ModelDirectory();
        var model = dir.WriteLlama();
        AssertOneLineError(Run("convert", model, "--topk", "4").Err, "unknown option --topk");
        AssertOneLineError(Run("convert", model, "--top-k", "0").Err, "positive integer");
        AssertOneLineError(Run("convert", model, "--ratio", "1:3", "--pattern", "FS").Err, "only one of");
        AssertOneLineError(Run("convert").Err, "needs a model file");
        var badPattern = Run("convert", model, "--pattern", "FQS", "-o", dir.File("out.onnx"));
        Assert.AreEqual(ExitCodes.Usage, badPattern.Code);
        AssertOneLineError(badPattern.Err, "'Q'");
        Assert.IsFalse(File.Exists(dir.File("out.onnx")));
        Assert.AreEqual(ExitCodes.Usage, Run("inspect", model, "--context", "4k,zero").Code);
    }

    [TestMethod]
    public void ConvertWritesTheHybridModelAndReportsIt()
    {
        using var dir = new ModelDirectory();
        var model = dir.WriteLlama(layers: 6);

        var (code, output, err) = Run("convert", model, "--ratio", "1:2", "--top-k", "2", "--block-size", "8", "--window", "16");

        Assert.AreEqual(ExitCodes.Success, code, err);
        Assert.IsTrue(File.Exists(dir.File("llama.hysparse.onnx")), "default output sits beside the input");
        StringAssert.Contains(output, "FSSFSF");
        StringAssert.Contains(output, "at most 32 keys");
        StringAssert.Contains(output, "/model/layers.4/self_attn/HySparseSparseAttn");
        StringAssert.Contains(err, "writing");

        var again = Run("convert", model, "--ratio", "1:2");
        Assert.AreEqual(ExitCodes.InvalidOutput, again.Code);
        AssertOneLineError(again.Err, "exists");
        Assert.AreEqual(ExitCodes.Success, Run("convert", model, "--ratio", "1:2", "--overwrite", "-q").Code);
    }

    [TestMethod]
    public void ConvertJsonDescribesEveryLayer()
    {
        using var dir = new ModelDirectory();
        var model = dir.WriteLlama(layers: 4);

        var (code, output, err) = Run("convert", model, "-o", dir.File("h.onnx"), "--full-layers", "0,2", "--json");

        Assert.AreEqual(ExitCodes.Success, code, err);
        Assert.AreEqual("", err, "--json prints no progress");
        using var json = JsonDocument.Parse(output);
        var root = json.RootElement;
        Assert.IsTrue(root.GetProperty("ok").GetBoolean());
        Assert.AreEqual("FSFF", root.GetProperty("layout").GetString());
        Assert.AreEqual("decomposed", root.GetProperty("sourceAttention").GetString());
        var layers = root.GetProperty("layers").EnumerateArray().ToList();
        Assert.HasCount(4, layers);
        Assert.AreEqual("sparse", layers[1].GetProperty("kind").GetString());
        Assert.AreEqual(0, layers[1].GetProperty("oracleLayer").GetInt32());
        Assert.AreEqual("/model/layers.1/self_attn/Softmax", layers[1].GetProperty("sourceNode").GetString());
        Assert.AreEqual("FSFF", root.GetProperty("metadata").GetProperty("hysparse.layout").GetString());
    }

    [TestMethod]
    public void RefusalsExitNonZeroWithOneLineErrors()
    {
        using var dir = new ModelDirectory();
        var text = dir.Write("text.onnx", "not a model"u8.ToArray());
        var notOnnx = Run("convert", text, "-o", dir.File("a.onnx"));
        Assert.AreEqual(ExitCodes.InvalidModel, notOnnx.Code);
        AssertOneLineError(notOnnx.Err, "text.onnx");

        var noAttention = Run("convert", dir.WriteMlp(), "-o", dir.File("b.onnx"), "--json");
        Assert.AreEqual(ExitCodes.Refused, noAttention.Code);
        using (var json = JsonDocument.Parse(noAttention.Out))
        {
            Assert.IsFalse(json.RootElement.GetProperty("ok").GetBoolean());
            Assert.AreEqual("noAttention", json.RootElement.GetProperty("error").GetProperty("kind").GetString());
        }

        var model = dir.WriteLlama();
        Assert.AreEqual(ExitCodes.Success, Run("convert", model, "-o", dir.File("c.onnx"), "-q").Code);
        var twice = Run("convert", dir.File("c.onnx"), "-o", dir.File("d.onnx"));
        Assert.AreEqual(ExitCodes.Refused, twice.Code);
        AssertOneLineError(twice.Err, "already converted");
        Assert.IsEmpty(dir.FilesExcept("text.onnx", "mlp.onnx", "llama.onnx", "c.onnx"));
    }

    [TestMethod]
    public void InspectReportsLayersAndKvFigures()
    {
        using var dir = new ModelDirectory();
        var model = dir.WriteLlama(layers: 4);

        var (code, output, err) = Run("inspect", model, "--pattern", "FS", "--top-k", "2", "--block-size", "16", "--window", "32", "--context", "100,4k", "--json");

        Assert.AreEqual(ExitCodes.Success, code, err);
        using var json = JsonDocument.Parse(output);
        var root = json.RootElement;
        Assert.IsFalse(root.GetProperty("converted").GetBoolean());
        Assert.AreEqual("FSFF", root.GetProperty("layout").GetString());
        var layers = root.GetProperty("layers").EnumerateArray().ToList();
        Assert.HasCount(4, layers);
        Assert.AreEqual(4, layers[0].GetProperty("numHeads").GetInt32());
        Assert.AreEqual(2, layers[0].GetProperty("kvNumHeads").GetInt32());
        Assert.AreEqual(8, layers[0].GetProperty("headSize").GetInt32());

        // Per layer and token: K and V, 2 KV heads × 8 × 4 bytes = 128 bytes. One sparse layer (1).
        const long perLayer = 2 * 2 * 8 * 4;
        var kv = root.GetProperty("kv").EnumerateArray().ToList();
        Assert.HasCount(2, kv);
        foreach (var (figures, t) in kv.Zip(new long[] { 100, 4096 }))
        {
            Assert.AreEqual(t, figures.GetProperty("context").GetInt64());
            Assert.AreEqual(4 * perLayer * t, figures.GetProperty("denseCache").GetInt64());
            Assert.AreEqual(4 * perLayer * t, figures.GetProperty("retrofitCache").GetInt64());
            Assert.AreEqual(3 * perLayer * t + perLayer * Math.Min(t, 32), figures.GetProperty("kvSharingCache").GetInt64());
            Assert.AreEqual(4 * perLayer * t, figures.GetProperty("denseDecodeRead").GetInt64());
            Assert.AreEqual(3 * perLayer * t + perLayer * Math.Min(t, 2 * 16 + 32), figures.GetProperty("hybridDecodeRead").GetInt64());
        }

        var text = Run("inspect", model);
        Assert.AreEqual(ExitCodes.Success, text.Code);
        StringAssert.Contains(text.Out, "4 query, 2 key/value");
        StringAssert.Contains(text.Out, "FSSF");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void VerifyComparesDenseAndConvertedModels()
    {
        using var dir = new ModelDirectory();
        var model = dir.WriteLlama(layers: 4);
        // 24 + 3 tokens in blocks of 4: K = 7 selects every block, so the conversion is exact.
        Assert.AreEqual(ExitCodes.Success, Run("convert", model, "-o", dir.File("exact.onnx"), "--top-k", "7", "--block-size", "4", "--window", "4", "-q").Code);
        Assert.AreEqual(ExitCodes.Success, Run("convert", model, "-o", dir.File("sparse.onnx"), "--top-k", "1", "--block-size", "4", "--window", "4", "-q").Code);

        var exact = Run("verify", model, dir.File("exact.onnx"), "--prompt", "24", "--steps", "3", "--batch", "2", "--json");
        var sparse = Run("verify", model, dir.File("sparse.onnx"), "--prompt", "24", "--steps", "3");

        Assert.AreEqual(ExitCodes.Success, exact.Code, exact.Err);
        using var json = JsonDocument.Parse(exact.Out);
        var report = json.RootElement.GetProperty("report");
        Assert.IsLessThan(1e-4, report.GetProperty("maxAbsError").GetDouble());
        Assert.AreEqual(1.0, report.GetProperty("top1Agreement").GetDouble());
        var steps = report.GetProperty("steps").EnumerateArray().ToList();
        Assert.HasCount(4, steps);
        Assert.AreEqual(24, steps[0].GetProperty("tokens").GetInt32());
        Assert.AreEqual(1, steps[3].GetProperty("tokens").GetInt32());

        Assert.AreEqual(ExitCodes.Success, sparse.Code, sparse.Err);
        StringAssert.Contains(sparse.Out, "top-1 agreement");
        StringAssert.Contains(sparse.Err, "decode step 3 of 3");
        AssertOneLineError(Run("verify", model).Err, "two model files");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void DemoRunsTheBuiltInTrainedModelAndItsConversion()
    {
        var (code, output, err) = Run("demo", "--prompt", "300", "--steps", "8", "--json");

        Assert.AreEqual(ExitCodes.Success, code, err);
        using var json = JsonDocument.Parse(output);
        var root = json.RootElement;
        Assert.AreEqual("trained", root.GetProperty("model").GetString());
        var generations = root.GetProperty("generations").EnumerateArray().ToList();
        Assert.HasCount(2, generations);
        // The default keeps the built-in model's induction layer (6) full; a layout option replaces it.
        Assert.AreEqual("FSSSSSFF", generations[1].GetProperty("layout").GetString());
        Assert.AreEqual(8, root.GetProperty("parameters").GetProperty("topK").GetInt32());
        var ratio = Run("demo", "--prompt", "200", "--steps", "2", "--ratio", "1:3", "--json");
        Assert.AreEqual(ExitCodes.Success, ratio.Code, ratio.Err);
        Assert.AreEqual("FSSSFSSF", JsonDocument.Parse(ratio.Out).RootElement.GetProperty("generations")[1].GetProperty("layout").GetString());

        var text = Run("demo", "--prompt", "200", "--steps", "4", "-q");
        Assert.AreEqual(ExitCodes.Success, text.Code, text.Err);
        StringAssert.Contains(text.Out, "same next byte as dense");
        var layers = Run("demo", "--layers", "2");
        Assert.AreEqual(ExitCodes.Usage, layers.Code);
        StringAssert.Contains(layers.Err, "--synthetic");

        // Sampling is seeded: the same seed writes the same text; greedy (temperature 0) is accepted, a negative one is not.
        string Continuations(params string[] extra) => string.Join("|", JsonDocument.Parse(Run(["demo", "--prompt", "200", "--steps", "16", "--json", .. extra]).Out)
            .RootElement.GetProperty("generations").EnumerateArray().Select(g => g.GetProperty("text").GetString()));
        Assert.AreEqual(Continuations("--seed", "3"), Continuations("--seed", "3"));
        Assert.AreEqual(Continuations("--temperature", "0", "--seed", "3"), Continuations("--temperature", "0", "--seed", "4"));
        var negative = Run("demo", "--temperature", "-1");
        Assert.AreEqual(ExitCodes.Usage, negative.Code);
        StringAssert.Contains(negative.Err, "--temperature needs a number ≥ 0, not '-1'");
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void DemoBuildsConvertsAndComparesInOneCommand()
    {
        using var dir = new ModelDirectory();

        var (code, output, err) = Run("demo", "--synthetic", "--dir", dir.Path, "--layers", "4", "--prompt", "120", "--steps", "2", "--json");

        Assert.AreEqual(ExitCodes.Success, code, err);
        using var json = JsonDocument.Parse(output);
        var root = json.RootElement;
        Assert.AreEqual("FSSF", root.GetProperty("layout").GetString());
        Assert.HasCount(3, root.GetProperty("verify").GetProperty("steps").EnumerateArray().ToList());
        // Context 122 beyond top-k 4 × 16 + window 32 = 96: the sparse layers read fewer keys than dense.
        var kv = root.GetProperty("kv");
        Assert.IsLessThan(kv.GetProperty("denseDecodeRead").GetInt64(), kv.GetProperty("hybridDecodeRead").GetInt64());
        Assert.IsTrue(File.Exists(dir.File("demo_llama.onnx")) && File.Exists(dir.File("demo_llama.hysparse.onnx")), "--dir keeps both models");
        // The oracle report: layer 0's choice for the first decoded token (position 120, 8 blocks of 16),
        // per KV head: top-k 4 valid blocks in ascending order.
        var oracle = root.GetProperty("oracle");
        Assert.AreEqual(0, oracle.GetProperty("layer").GetInt32());
        Assert.AreEqual(120, oracle.GetProperty("position").GetInt64());
        Assert.AreEqual(8, oracle.GetProperty("blocks").GetInt64());
        var heads = oracle.GetProperty("perHead").EnumerateArray().Select(h => h.EnumerateArray().Select(b => b.GetInt32()).ToArray()).ToList();
        Assert.HasCount(2, heads);
        foreach (var blocks in heads)
        {
            Assert.HasCount(4, blocks);
            CollectionAssert.AreEqual(blocks.Order().Distinct().ToArray(), blocks, "ascending, no repeats");
            Assert.IsTrue(blocks.All(b => b is >= 0 and < 8), string.Join(",", blocks));
        }

        var text = Run("demo", "--synthetic", "--layers", "2", "--prompt", "8", "--steps", "1", "-q");
        Assert.AreEqual(ExitCodes.Success, text.Code, text.Err);
        StringAssert.Contains(text.Out, "top-1 agreement");
        StringAssert.Contains(text.Out, "no sparse layers");
    }

    [TestMethod]
    public void InspectReadsAConvertedModelsLayout()
    {
        using var dir = new ModelDirectory();
        var model = dir.WriteLlama(layers: 5);
        Assert.AreEqual(ExitCodes.Success, Run("convert", model, "-o", dir.File("h.onnx"), "--ratio", "1:1", "--window", "7", "-q").Code);

        var (code, output, err) = Run("inspect", dir.File("h.onnx"), "--json");

        Assert.AreEqual(ExitCodes.Success, code, err);
        using var json = JsonDocument.Parse(output);
        Assert.IsTrue(json.RootElement.GetProperty("converted").GetBoolean());
        Assert.AreEqual("FSFSF", json.RootElement.GetProperty("layout").GetString());
        Assert.AreEqual(7, json.RootElement.GetProperty("parameters").GetProperty("window").GetInt32());
        Assert.AreEqual("decomposed", json.RootElement.GetProperty("sourceAttention").GetString());
        Assert.AreEqual(ExitCodes.Refused, Run("inspect", dir.WriteMlp()).Code);
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void KvSharingConvertsInspectsAndVerifies()
    {
        using var dir = new ModelDirectory();
        var model = dir.WriteLlama(layers: 4);
        var shared = dir.File("shared.onnx");

        var convert = Run("convert", model, "-o", shared, "--pattern", "FS", "--top-k", "2", "--block-size", "4", "--window", "6", "--kv-sharing", "-q");
        Assert.AreEqual(ExitCodes.Success, convert.Code, convert.Err);
        StringAssert.Contains(convert.Out, "kv-sharing");
        StringAssert.Contains(convert.Out, "4 cache inputs/outputs keep their names but become window caches");
        foreach (var name in new[] { "past_key_values.1.key", "past_key_values.1.value", "present.1.key", "present.1.value" })
            StringAssert.Contains(convert.Out, name);
        Assert.DoesNotContain("past_key_values.0.key", convert.Out, "full layers keep full caches");
        // 2 KV heads × 8 × 4 bytes × (K and V) per layer and token; the sparse layer keeps only 6 tokens.
        const long perLayer = 2 * 2 * 8 * 4;
        StringAssert.Contains(convert.Out, "at 4096 tokens: 2 MiB dense, 1");
        StringAssert.Contains(convert.Out, "MiB this model");

        var json = Run("convert", model, "-o", dir.File("shared2.onnx"), "--pattern", "FS", "--window", "6", "--kv-sharing", "--context", "100", "--json");
        Assert.AreEqual(ExitCodes.Success, json.Code, json.Err);
        using (var doc = JsonDocument.Parse(json.Out))
        {
            Assert.AreEqual("kv_sharing", doc.RootElement.GetProperty("parameters").GetProperty("mode").GetString());
            Assert.AreEqual(4, doc.RootElement.GetProperty("windowCaches").GetArrayLength());
            StringAssert.Contains(doc.RootElement.GetProperty("interfaceChanges").GetString(), "window caches");
            var kv = doc.RootElement.GetProperty("kv").EnumerateArray().Single();
            Assert.AreEqual(4 * perLayer * 100, kv.GetProperty("denseCache").GetInt64());
            Assert.AreEqual(3 * perLayer * 100 + perLayer * 6, kv.GetProperty("kvSharingCache").GetInt64());
        }

        var inspect = Run("inspect", shared, "--context", "100", "--json");
        Assert.AreEqual(ExitCodes.Success, inspect.Code, inspect.Err);
        using (var doc = JsonDocument.Parse(inspect.Out))
        {
            var root = doc.RootElement;
            Assert.AreEqual("FSFF", root.GetProperty("layout").GetString());
            Assert.AreEqual("kv_sharing", root.GetProperty("parameters").GetProperty("mode").GetString());
            CollectionAssert.AreEqual(new[] { "past_key_values.1.key", "past_key_values.1.value", "present.1.key", "present.1.value" },
                root.GetProperty("windowCaches").EnumerateArray().Select(e => e.GetString()).ToArray());
            Assert.AreEqual(3 * perLayer * 100 + perLayer * 6, root.GetProperty("kv")[0].GetProperty("kvSharingCache").GetInt64());
        }
        var projected = Run("inspect", model, "--kv-sharing", "--json");
        Assert.AreEqual(ExitCodes.Success, projected.Code, projected.Err);
        using (var doc = JsonDocument.Parse(projected.Out))
        {
            Assert.IsFalse(doc.RootElement.GetProperty("converted").GetBoolean());
            Assert.AreEqual("kv_sharing", doc.RootElement.GetProperty("parameters").GetProperty("mode").GetString());
            Assert.AreEqual(0, doc.RootElement.GetProperty("windowCaches").GetArrayLength(), "a dense model has no window caches yet");
        }
        var inspectText = Run("inspect", shared);
        StringAssert.Contains(inspectText.Out, "window caches (at most 6 tokens each): past_key_values.1.key");

        // 20 + 2 tokens: the window cache stays at 6 tokens, so the converted model returns fewer KV bytes.
        var verify = Run("verify", model, shared, "--prompt", "20", "--steps", "2", "--json");
        Assert.AreEqual(ExitCodes.Success, verify.Code, verify.Err);
        using (var doc = JsonDocument.Parse(verify.Out))
        {
            var report = doc.RootElement.GetProperty("report");
            Assert.HasCount(3, report.GetProperty("steps").EnumerateArray().ToList());
            Assert.AreEqual(4 * 128L * 22, report.GetProperty("denseKvBytes").GetInt64());
            Assert.AreEqual(3 * 128L * 22 + 128L * 6, report.GetProperty("hybridKvBytes").GetInt64());
        }
        StringAssert.Contains(Run("verify", model, shared, "--prompt", "20", "--steps", "1", "-q").Out, "KV cache after the last call");

        var demo = Run("demo", "--synthetic", "--layers", "2", "--pattern", "FS", "--sparse-last", "--prompt", "40", "--steps", "1", "--kv-sharing", "-q");
        Assert.AreEqual(ExitCodes.Success, demo.Code, demo.Err);
        StringAssert.Contains(demo.Out, "kv-sharing");
    }
}
