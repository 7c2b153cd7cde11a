using Google.Protobuf;
using HySparse.Exporter.Layout;
using HySparse.Graph;
using HySparse.Models.Llama;
using HySparse.Onnx;
using Onnx;

namespace HySparse.Exporter.Tests;

/// <summary>
/// The converter's RoPE fusion: the decomposed rotation of Q and K (Slice, Neg, Concat, Mul, Add) becomes
/// one com.microsoft.RotaryEmbedding reading the model's own cos/sin tables; the converted model must
/// compute what the same conversion with the rotation left decomposed computes.
/// </summary>
[TestClass]
[TestCategory(HySparseEquivalenceTests.NeedsOps)]
public sealed class RotaryFusionTests
{
    private static readonly LlamaConfig Config = new() { Layers = 4, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 48, Vocab = 53, Seed = 5 };

    [TestMethod]
    public void EveryQueryAndKeyRotationBecomesOneRotaryEmbedding()
    {
        var dense = LlamaModelBuilder.Build(Config);
        var (hybrid, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1") });

        Assert.AreEqual(2 * Config.Layers, report.FusedRotaries);
        Assert.IsEmpty(report.RotariesLeftDecomposed);
        var rotaries = hybrid.Graph.Node.Where(n => n is { OpType: "RotaryEmbedding", Domain: "com.microsoft" }).ToList();
        Assert.HasCount(2 * Config.Layers, rotaries);
        // Nothing of the decomposed rotation is left: no Neg of rotate_half (the position ids keep theirs),
        // and the tables feed only the caches.
        Assert.AreEqual(dense.Graph.Node.Count(n => n.OpType == "Neg") - 2 * Config.Layers, hybrid.Graph.Node.Count(n => n.OpType == "Neg"));
        var graph = new GraphIndex(hybrid.Graph, hybrid);
        var cosTables = hybrid.Graph.Node.Where(n => n.OpType == "Cos").Select(n => n.Output[0]).ToList();
        Assert.HasCount(1, cosTables, "one cos table for the whole model");
        Assert.IsTrue(graph.Consumers(cosTables[0]).All(c => c.OpType is "Slice" or "Shape"), "the cos table should only feed the cache");
        // One set of caches and positions serves every layer.
        Assert.AreEqual(1, rotaries.Select(r => r.Input[1]).Distinct().Count());
        Assert.AreEqual(1, rotaries.Select(r => r.Input[2]).Distinct().Count());
        Assert.IsTrue(hybrid.OpsetImport.Any(o => o.Domain == "com.microsoft"));
    }

    [TestMethod]
    [DataRow("F", DisplayName = "all full")]
    [DataRow("1:1", DisplayName = "1:1 retrofit")]
    public void FusedRotationComputesWhatTheDecomposedOneComputes(string layout)
    {
        // Batch 2 with the second row left-padded: the rows have different positions, so each row must
        // read its own row of the tables.
        AssertFusionKeepsOutputs(LlamaModelBuilder.Build(Config), layout);
    }

    [TestMethod]
    public void TablesWithOneRowServeEveryBatchRow()
    {
        // Positions taken from row 0 only: the tables are [1, S, D] and broadcast over the batch, so
        // every row reads table row 0 (the fused positions use min(b, rows − 1)).
        var model = LlamaModelBuilder.Build(Config);
        var cast = model.Graph.Node.Single(n => n.OpType == "Cast" && n.Name.Contains("rotary_emb", StringComparison.Ordinal));
        var firstRow = new NodeProto { OpType = "Slice", Name = "test/first_row" };
        firstRow.Input.AddRange([cast.Input[0], "test/zero", "test/one", "test/zero"]);
        firstRow.Output.Add("test/first_row_positions");
        model.Graph.Initializer.Add(Tensors.Int64("test/zero", [1], [0]));
        model.Graph.Initializer.Add(Tensors.Int64("test/one", [1], [1]));
        cast.Input[0] = firstRow.Output[0];
        model.Graph.Node.Insert(model.Graph.Node.IndexOf(cast), firstRow);

        AssertFusionKeepsOutputs(model, "1:1");
    }

    [TestMethod]
    public void KeysRotatedOnTheHeadSplitKeepTheirRotationAndSayWhy()
    {
        var config = Config with { KvHeads = Config.Heads };
        var dense = LlamaModelBuilder.Build(config, decomposed: new DecomposedExportOptions { KvCache = false, KeysFromHeadSplit = true });
        var (hybrid, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1") });

        Assert.AreEqual(0, report.FusedRotaries);
        Assert.HasCount(config.Layers, report.RotariesLeftDecomposed);
        StringAssert.Contains(report.RotariesLeftDecomposed[0], "[B,S,H,D] head split");
        Assert.IsFalse(hybrid.Graph.Node.Any(n => n.OpType == "RotaryEmbedding"));
    }

    [TestMethod]
    public void KeepDecomposedRopeLeavesTheGraphsRotationAlone()
    {
        var dense = LlamaModelBuilder.Build(Config);
        var (hybrid, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1"), FuseRotary = false });

        Assert.AreEqual(0, report.FusedRotaries);
        Assert.IsFalse(hybrid.Graph.Node.Any(n => n.OpType == "RotaryEmbedding"));
        Assert.AreEqual(dense.Graph.Node.Count(n => n.OpType == "Neg"), hybrid.Graph.Node.Count(n => n.OpType == "Neg"));
    }

    /// <summary>
    /// Converts <paramref name="dense"/> with and without the fusion and compares prefill (batch 2, one
    /// row left-padded) and three decode steps, logits and caches.
    /// </summary>
    private static void AssertFusionKeepsOutputs(ModelProto dense, string layout)
    {
        var spec = layout == "F" ? LayoutSpec.FromLetters("F") : LayoutSpec.Ratio(layout);
        var (fused, report) = HybridConverter.Convert(dense, new ConversionOptions { Layout = spec });
        var (decomposed, _) = HybridConverter.Convert(dense, new ConversionOptions { Layout = spec, FuseRotary = false });
        Assert.AreEqual(2 * Config.Layers, report.FusedRotaries, string.Join("; ", report.RotariesLeftDecomposed));

        var fusedRuns = DecoderRunner.PrefillThenDecode(fused.ToByteArray(), Config, decodeSteps: 3, o => o.RegisterHySparseOps());
        var decomposedRuns = DecoderRunner.PrefillThenDecode(decomposed.ToByteArray(), Config, decodeSteps: 3, o => o.RegisterHySparseOps());
        for (var step = 0; step < fusedRuns.Count; step++)
        {
            var (inputs, expected) = decomposedRuns[step];
            Close.AssertRealTokens(inputs, Config, expected, fusedRuns[step].Outputs, 1e-5, $"step {step}");
        }
        // The fused model really is different code: the same outputs are not a comparison with itself.
        Assert.AreNotEqual(decomposed.Graph.Node.Count, fused.Graph.Node.Count);
    }
}
