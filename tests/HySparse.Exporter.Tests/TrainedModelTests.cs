using Microsoft.ML.OnnxRuntime.Tensors;

namespace HySparse.Exporter.Tests;

/// <summary>
/// The byte-level LMs trained by models/train (dense, HySparse-native, sliding-window baseline) run
/// in ONNX Runtime as PyTorch computed them: prefill of real text in a left-padded batch, then decode
/// steps through <see cref="KvCacheDecoder"/>. The PyTorch forward (models/train/hysparse_lm.py) is
/// written from the paper and docs/ops.md, not from the kernels, so this checks the com.hysparse ops
/// against an independent implementation on a trained model's real attention patterns.
/// </summary>
[TestClass]
[TestCategory(HySparseEquivalenceTests.NeedsOps)]
public sealed class TrainedModelTests
{
    /// <summary>Logits agree to this, relative to max(1, |logit|): float32 sums in different orders.</summary>
    private const double LogitTolerance = 2e-3;

    private sealed record Step(long[] Tokens, long[] Mask, int NewTokens, int[] Positions, double[] Logits, int[] CacheLengths, int[][]? BlockIndices);

    private sealed record Expected(int Batch, int Vocab, int[] FullLayers, Step[] Steps);

    private static string Directory => Path.Combine(AppContext.BaseDirectory, "fixtures", "trained");

    private static Expected Load(string kind)
    {
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(Directory, $"{kind}.expected.json")));
        var root = json.RootElement;
        var config = root.GetProperty("config");
        var steps = root.GetProperty("steps").EnumerateArray().Select(s =>
        {
            var tokens = s.GetProperty("tokens");
            int[][]? indices = s.TryGetProperty("block_indices", out var bi) && bi.GetArrayLength() > 0
                ? bi.EnumerateArray().Select(layer => JsonArrays.Flatten(layer).Select(v => (int)v).ToArray()).ToArray()
                : null;
            return new Step(
                JsonArrays.Flatten(tokens).Select(v => (long)v).ToArray(),
                JsonArrays.Flatten(s.GetProperty("mask")).Select(v => (long)v).ToArray(),
                tokens[0].GetArrayLength(),
                s.GetProperty("positions").EnumerateArray().Select(p => p.GetInt32()).ToArray(),
                JsonArrays.Flatten(s.GetProperty("logits")),
                s.GetProperty("cache_lengths").EnumerateArray().Select(p => p.GetInt32()).ToArray(),
                indices);
        }).ToArray();
        return new Expected(root.GetProperty("batch").GetInt32(), config.GetProperty("vocab").GetInt32(),
            config.GetProperty("full_layers").EnumerateArray().Select(p => p.GetInt32()).ToArray(), steps);
    }

    /// <summary>Runs the expected steps through the decoder and compares logits and cache lengths.</summary>
    private static void RunAndCompare(InferenceSession session, Expected expected, IReadOnlyList<string>? indexOutputs = null)
    {
        using var decoder = new KvCacheDecoder(session, expected.Batch, indexOutputs);
        foreach (var (step, number) in expected.Steps.Select((s, i) => (s, i)))
        {
            var logits = decoder.Step(step.Tokens, step.Mask);
            for (var b = 0; b < expected.Batch; b++)
                for (var p = 0; p < step.Positions.Length; p++)
                {
                    var s = step.Positions[p];
                    if (step.Mask[b * step.NewTokens + s] == 0) continue; // a padding token's logits mean nothing
                    var actual = logits.AsSpan((b * step.NewTokens + s) * expected.Vocab, expected.Vocab).ToArray().Select(v => (double)v).ToArray();
                    var reference = step.Logits.AsSpan((b * step.Positions.Length + p) * expected.Vocab, expected.Vocab).ToArray();
                    Close.Assert(reference, actual, LogitTolerance, $"step {number} row {b} token {s}");
                }
            var lengths = decoder.CacheLengths.Where((_, i) => i % 2 == 0).Select(l => (int)l).ToArray();
            CollectionAssert.AreEqual(step.CacheLengths, lengths, $"cache lengths after step {number}");
            if (indexOutputs is null || step.BlockIndices is null) continue;
            for (var l = 0; l < indexOutputs.Count; l++)
            {
                var actual = decoder.ExtraOutput(indexOutputs[l]).GetTensorDataAsSpan<int>().ToArray();
                CollectionAssert.AreEqual(step.BlockIndices[l], actual, $"oracle selection of full layer {expected.FullLayers[l]} at step {number}");
            }
        }
    }


    [TestMethod]
    [DataRow("dense")]
    [DataRow("hysparse")]
    [DataRow("swa")]
    [DataRow("dense-seed2")]      // the second seeds are in the fidelity report too
    [DataRow("hysparse-seed2")]
    public void TrainedModelRunsAsPyTorchComputedIt(string kind)
    {
        var expected = Load(kind);
        using var session = TestSessions.Open(File.ReadAllBytes(Path.Combine(Directory, $"{kind}.onnx")));
        RunAndCompare(session, expected);
    }

    [TestMethod]
    [DataRow("hysparse")]
    [DataRow("hysparse-seed2")]
    public void NativeModelsOracleSelectsTheBlocksPyTorchSelects(string kind)
    {
        var expected = Load(kind);
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(Directory, $"{kind}.onnx")));
        // Expose each full layer's block_indices so the decode steps can compare the selections.
        var names = expected.FullLayers.Select(l => $"layers.{l}.block_indices").ToList();
        foreach (var name in names)
        {
            Assert.IsTrue(model.Graph.Node.Any(n => n.Output.Contains(name)), $"the native model has no value '{name}'");
            model.Graph.Output.Add(new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Int32 } } });
        }
        using var session = TestSessions.Open(model.ToByteArray());
        RunAndCompare(session, expected, names);
    }

    [TestMethod]
    public void TrainedDenseModelConvertsToARetrofitThatComputesTheSame()
    {
        var expected = Load("dense");
        var source = ModelFile.Load(Path.Combine(Directory, "dense.onnx"));
        // 304 tokens in blocks of 16: 19 blocks, all selected (K ≥ nb), so the union is every key.
        var options = new ConversionOptions { Layout = LayoutSpec.Ratio("1:3"), Parameters = new HybridParameters { TopK = 19, BlockSize = 16, Window = 64 } };
        var (converted, report) = HybridConverter.Convert(source, options);
        Assert.AreEqual("FSSSFSSF", report.Layout.Letters);
        using var session = TestSessions.Open(converted.ToByteArray());
        RunAndCompare(session, expected);
    }

    [TestMethod]
    public void InspectReportsWhatEachTrainedModelReadsPerDecodedToken()
    {
        const long context = 4096, bytesPerLayerToken = 2 * 2 * 32 * 4; // K and V, 2 KV heads of 32, float32
        long ReadAt(string kind)
        {
            var result = CliTests.Run("inspect", Path.Combine(Directory, $"{kind}.onnx"), "--json", "--contexts", context.ToString());
            Assert.AreEqual(0, result.Code, result.Err);
            using var json = JsonDocument.Parse(result.Out);
            return json.RootElement.GetProperty("kv")[0].GetProperty("hybridDecodeRead").GetInt64();
        }

        // FSSSFSSS: two full layers read every key; a native sparse layer reads K·B + w = 8·16 + 64 keys,
        // a sliding-window layer only its 64-token window.
        Assert.AreEqual(bytesPerLayerToken * (2 * context + 6 * (8 * 16 + 64)), ReadAt("hysparse"));
        Assert.AreEqual(bytesPerLayerToken * (2 * context + 6 * 64), ReadAt("swa"));
    }
}
