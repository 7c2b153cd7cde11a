using HySparse.Models.Native;

namespace HySparse.Exporter.Tests;

/// <summary><c>hysparse</c> on HySparse-native models: inspect reads them from metadata; convert and verify refuse them with the reason.</summary>
[TestClass]
public sealed class NativeCliTests
{
    private static readonly HySparseNativeConfig Config = new()
    {
        Model = new LlamaConfig { Layers = 6, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 48, Vocab = 41, Seed = 3 },
        Layout = "FSSFSS", TopK = 2, BlockSize = 16, Window = 64, Gate = SparseGateKind.PerChannel,
    };

    private static (int Code, string Out, string Err) Run(params string[] args) => CliTests.Run(args);

    [TestMethod]
    public void InspectReportsLayoutModeAndKvFromTheMetadata()
    {
        using var dir = new ModelDirectory();
        var path = dir.WriteModel("native.onnx", HySparseModelBuilder.Build(Config));

        var (code, output, err) = Run("inspect", path, "--context", "1000", "--json");

        Assert.AreEqual(ExitCodes.Success, code, err);
        using var json = JsonDocument.Parse(output);
        var root = json.RootElement;
        Assert.IsTrue(root.GetProperty("converted").GetBoolean());
        Assert.IsTrue(root.GetProperty("native").GetBoolean());
        Assert.AreEqual("FSSFSS", root.GetProperty("layout").GetString());
        var parameters = root.GetProperty("parameters");
        Assert.AreEqual("native", parameters.GetProperty("mode").GetString());
        Assert.AreEqual(2, parameters.GetProperty("topK").GetInt32());
        Assert.AreEqual(16, parameters.GetProperty("blockSize").GetInt32());
        Assert.AreEqual(64, parameters.GetProperty("window").GetInt32());
        CollectionAssert.AreEqual(HySparseModelBuilder.WindowCaches(Config).ToArray(),
            root.GetProperty("windowCaches").EnumerateArray().Select(e => e.GetString()).ToArray());
        var layers = root.GetProperty("layers").EnumerateArray().ToList();
        CollectionAssert.AreEqual(new[] { "full", "sparse", "sparse", "full", "sparse", "sparse" }, layers.Select(l => l.GetProperty("kind").GetString()).ToArray());
        Assert.IsTrue(layers.All(l => l.GetProperty("headSize").GetInt32() == 8 && l.GetProperty("kvNumHeads").GetInt32() == 2));

        // One sequence of T = 1000 tokens: 2·H_kv·D·4 bytes per layer and token, 2 full layers keep
        // T tokens, 4 sparse layers their window of 64.
        var kv = root.GetProperty("kv").EnumerateArray().Single();
        const long perLayerToken = 2 * 2 * 8 * 4;
        Assert.AreEqual(perLayerToken * (2 * 1000 + 4 * 64), kv.GetProperty("kvSharingCache").GetInt64());
        Assert.AreEqual(perLayerToken * 6 * 1000, kv.GetProperty("denseCache").GetInt64());
        Assert.AreEqual(perLayerToken * (2 * 1000 + 4 * (2 * 16 + 64)), kv.GetProperty("hybridDecodeRead").GetInt64());
    }

    [TestMethod]
    public void InspectTextSaysWhatTheModelIs()
    {
        using var dir = new ModelDirectory();
        var path = dir.WriteModel("native.onnx", HySparseModelBuilder.Build(Config with { Gate = SparseGateKind.PerHead, Sinks = false }));

        var (code, output, err) = Run("inspect", path, "--context", "1000");

        Assert.AreEqual(ExitCodes.Success, code, err);
        foreach (var text in new[]
                 {
                     "6 attention layer(s), HySparse-native (combine gate, gates per head, no sinks; no dense original)",
                     "hybrid layout FSSFSS, top-k 2, block size 16, window 64",
                     "mode       native: trained as HySparse",
                     "window caches (at most 64 tokens each): past_key_values.1.key",
                 })
            StringAssert.Contains(output, text);
        // The kv-sharing column is this model's.
        StringAssert.Contains(output, "*");
        Assert.IsFalse(output.Contains("retrofit: every layer", StringComparison.Ordinal), output);
    }

    [TestMethod]
    public void ConvertRefusesANativeModelSayingWhy()
    {
        using var dir = new ModelDirectory();
        var path = dir.WriteModel("native.onnx", HySparseModelBuilder.Build(Config));

        var (code, _, err) = Run("convert", path, "-o", dir.File("again.onnx"));

        Assert.AreEqual(ExitCodes.Refused, code);
        StringAssert.Contains(err, "HySparse-native (hysparse.mode = native)");
        StringAssert.Contains(err, "nothing to convert");
        Assert.IsFalse(File.Exists(dir.File("again.onnx")));
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void VerifyRefusesANativeModelOnEitherSide()
    {
        using var dir = new ModelDirectory();
        var native = dir.WriteModel("native.onnx", HySparseModelBuilder.Build(Config));
        var dense = dir.WriteModel("dense.onnx", LlamaModelBuilder.Build(Config.Model));

        var first = Run("verify", native, dense, "--prompt", "4", "--steps", "1");
        Assert.AreEqual(ExitCodes.Refused, first.Code);
        StringAssert.Contains(first.Err, "is a HySparse-native model (hysparse.mode = native): verify compares a dense model with its conversion");

        var second = Run("verify", dense, native, "--prompt", "4", "--steps", "1", "--json");
        Assert.AreEqual(ExitCodes.Refused, second.Code);
        StringAssert.Contains(second.Err, "not a conversion of");
        using var json = JsonDocument.Parse(second.Out);
        Assert.IsFalse(json.RootElement.GetProperty("ok").GetBoolean());
    }

    [TestMethod]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void DemoRunsANativeModelBesideTheConversion()
    {
        using var dir = new ModelDirectory();

        var (code, output, err) = Run("demo", "--synthetic", "--dir", dir.Path, "--layers", "4", "--prompt", "40", "--steps", "2", "--native", "--json");

        Assert.AreEqual(ExitCodes.Success, code, err);
        using var json = JsonDocument.Parse(output);
        var native = json.RootElement.GetProperty("native");
        // Layout FSSF, T = 42, w = 32: 2 full layers keep 42 tokens, 2 sparse layers 32, at 2·2·32·4 bytes each.
        Assert.AreEqual(2L * 2 * 32 * 4 * (2 * 42 + 2 * 32), native.GetProperty("kvBytes").GetInt64());
        Assert.AreEqual(json.RootElement.GetProperty("kv").GetProperty("kvSharingCache").GetInt64(), native.GetProperty("kvBytes").GetInt64());
        Assert.IsGreaterThan(0.0, native.GetProperty("decodeMilliseconds").GetDouble());
        Assert.IsTrue(File.Exists(dir.File("demo_llama.native.onnx")));

        var text = Run("demo", "--synthetic", "--layers", "2", "--prompt", "8", "--steps", "1", "--native", "-q");
        Assert.AreEqual(ExitCodes.Success, text.Code, text.Err);
        StringAssert.Contains(text.Out, "HySparse-native model (demo_llama.native.onnx");
        Assert.IsFalse(Run("demo", "--synthetic", "--layers", "2", "--prompt", "8", "--steps", "1", "-q").Out.Contains("HySparse-native", StringComparison.Ordinal));
    }

    [TestMethod]
    public void VerifyRefusesAConvertedModelGivenAsTheDenseOne()
    {
        using var dir = new ModelDirectory();
        var dense = dir.WriteLlama();
        Assert.AreEqual(ExitCodes.Success, Run("convert", dense, "-o", dir.File("h.onnx"), "-q").Code);

        var (code, _, err) = Run("verify", dir.File("h.onnx"), dense);

        Assert.AreEqual(ExitCodes.Refused, code);
        StringAssert.Contains(err, "is already a HySparse model; verify takes the dense original first");
    }
}
