using HySparse.Exporter.Layout;
using HySparse.Onnx;
using HySparse.Fidelity;

namespace HySparse.Exporter.Tests;

/// <summary>
/// The fidelity report's measurements on the trained fixtures at small contexts: the KV bytes it
/// reports are what each layout must hold, agreement is measured against dense, and the losses are
/// those of a trained model rather than of random weights.
/// </summary>
[TestClass]
[TestCategory(HySparseEquivalenceTests.NeedsOps)]
public sealed class FidelityReportTests
{
    private static string Directory => Path.Combine(AppContext.BaseDirectory, "fixtures", "trained");

    [TestMethod]
    public void ReportedKvBytesAndAgreementFollowFromEachLayout()
    {
        var variants = ModelVariants.Build(Directory, quick: true);
        var evaluator = new Evaluator(File.ReadAllBytes(Path.Combine(Directory, "validation.bin")), windows: 2);
        int[] contexts = [96, 192];
        const int window = 64, bytesPerLayerToken = 2 * 2 * 32 * 4; // K and V, 2 KV heads of 32, float32

        CollectionAssert.AreEqual(new[] { "dense", "retrofit", "kv_sharing", "native", "swa" }, variants.Where(v => v.Seed == 1).Select(v => v.Kind).ToArray());
        foreach (var variant in variants)
        {
            var scores = evaluator.Score(variant, contexts);
            foreach (var score in scores)
            {
                // Full layers and every retrofit layer keep all T tokens; window caches keep min(T, w).
                var keepsAll = variant.Kind is "dense" or "retrofit";
                double expected = variant.Layout.Sum(letter => letter == 'F' || keepsAll
                    ? bytesPerLayerToken
                    : bytesPerLayerToken * (double)Math.Min(score.Context, window) / score.Context);
                Assert.AreEqual(expected, score.KvBytesPerToken, 1e-9, $"{variant.Name} at {score.Context}");
                // Trained on this kind of text: far below the 8 bits of a uniform guess.
                Assert.IsLessThan(6.0, score.BitsPerByte, $"{variant.Name} at {score.Context}");
                if (variant.IsReference) Assert.AreEqual(1.0, score.Top1Agreement);
                else Assert.IsTrue(score.Top1Agreement is > 0.2 and <= 1.0, $"{variant.Name}: agreement {score.Top1Agreement}");
            }
        }
    }

    [TestMethod]
    public void FullLayerSetsAddRetrofitsWithExactlyThoseFullLayers()
    {
        // The layout a user picks after finding where a dense model's induction heads are (layer 6 for the
        // one in models/train/README.md, "Where the head forms"): three full layers, as 1:3 has, not the same three.
        var variants = ModelVariants.Build(Directory, quick: true, ["0,6,7", "0,2,6"]);
        var ratio = variants.Single(v => v.Kind == "retrofit" && v.Name.StartsWith("retrofit 1:3", StringComparison.Ordinal));
        var chosen = variants.Single(v => v.Name.StartsWith("retrofit full 0,6,7, K ", StringComparison.Ordinal));

        Assert.AreEqual("FSSSSSFF", chosen.Layout);
        // Exactly the listed layers: the last one stays sparse when not listed (what scan-layers suggested here).
        Assert.AreEqual("FSFSSSFS", variants.Single(v => v.Name.StartsWith("retrofit full 0,2,6, K ", StringComparison.Ordinal)).Layout);
        Assert.AreEqual("FSSSFSSF", ratio.Layout);
        Assert.AreEqual("retrofit", chosen.Kind);
        Assert.AreEqual(ratio.Detail, chosen.Detail, "the same K, block size and window as the ratio retrofits");
        CollectionAssert.AreNotEqual(ratio.Model, chosen.Model);

        var error = Assert.ThrowsExactly<LayoutException>(() => ModelVariants.Build(Directory, quick: true, ["0,9"]));
        StringAssert.Contains(error.Message, "full layer 9 does not exist");
    }

    [TestMethod]
    public void TheFullRunAlsoVariesBlockSizeAndWindowAt1To3()
    {
        var variants = ModelVariants.Build(Directory, quick: false);
        var names = variants.Select(v => v.Name).ToList();

        CollectionAssert.AllItemsAreUnique(names);
        CollectionAssert.IsSubsetOf(new[] { "retrofit 1:3, K 4", "retrofit 1:3, K 8", "retrofit 1:3, K 4 × 32", "retrofit 1:3, K 8, w 256" }, names);
        // The node attributes say what the names say.
        foreach (var (name, topK, blockSize, window) in new[] { ("retrofit 1:3, K 4 × 32", 4L, 32L, 64L), ("retrofit 1:3, K 8, w 256", 8L, 16L, 256L) })
        {
            var variant = variants.Single(v => v.Name == name);
            Assert.AreEqual("FSSSFSSF", variant.Layout);
            var model = global::Onnx.ModelProto.Parser.ParseFrom(variant.Model);
            var sparse = model.Graph.Node.Where(n => n.OpType == HySparseOps.SparseAttn).ToList();
            var full = model.Graph.Node.Where(n => n.OpType == HySparseOps.FullAttn).ToList();
            Assert.HasCount(5, sparse, name);
            long Attr(global::Onnx.NodeProto n, string a) => n.Attribute.Single(x => x.Name == a).I;
            Assert.IsTrue(full.All(n => Attr(n, HySparseOps.Attributes.TopK) == topK && Attr(n, HySparseOps.Attributes.BlockSize) == blockSize), name);
            Assert.IsTrue(sparse.All(n => Attr(n, HySparseOps.Attributes.Window) == window && Attr(n, HySparseOps.Attributes.BlockSize) == blockSize), name);
        }
    }

    [TestMethod]
    public void AgreementNeedsTheDenseReferenceFirst()
    {
        var variants = ModelVariants.Build(Directory, quick: true);
        var evaluator = new Evaluator(File.ReadAllBytes(Path.Combine(Directory, "validation.bin")), windows: 1);

        var error = Assert.ThrowsExactly<InvalidOperationException>(() => evaluator.Score(variants.Single(v => v.Kind == "native" && v.Seed == 1), [64]));
        StringAssert.Contains(error.Message, "dense");
    }

    [TestMethod]
    public void ProbesScoreTheValueBytesOfEachCell()
    {
        var probes = ProbeSet.Load(Path.Combine(Directory, ProbeSet.FileName));
        // make_probes.py: 1k, 2k and 4k × needle at 10, 50, 90 % × the same number of probes per cell.
        CollectionAssert.AreEqual(new[] { 1024, 2048, 4096 }, probes.Select(p => p.Context).Distinct().ToArray());
        Assert.AreEqual(9, probes.GroupBy(p => (p.Context, p.Position)).Count());
        foreach (var p in probes)
            Assert.IsTrue(p.Needle < p.ValueStart && Math.Abs((double)p.Needle / p.Context - p.Position) < 0.15 && p.ValueEnd > p.Context - 32,
                $"needle {p.Needle}, value {p.ValueStart}..{p.ValueEnd} at {p.Context}, position {p.Position}");

        var subset = ProbeSet.Select(probes, [1024], perCell: 1);
        var dense = ModelVariants.Build(Directory, quick: true)[0];
        var outcomes = Evaluator.Probe(dense, subset);
        Assert.HasCount(3, outcomes);
        foreach (var (outcome, probe) in outcomes.Zip(subset))
        {
            Assert.AreEqual(probe.ValueEnd - probe.ValueStart, outcome.ValueBytes);
            Assert.IsTrue(outcome.Right <= outcome.ValueBytes && outcome.Bits > 0, $"{outcome}");
        }
        var cells = ProbeScore.Cells(outcomes);
        CollectionAssert.AreEqual(new[] { 0.1, 0.5, 0.9 }, cells.Select(c => c.Position).ToArray());
    }

    [TestMethod]
    public void RetrievalErrorsAreThoseOfTheRatioOverProbes()
    {
        // Hand-computed: pooled 15/25 = 0.6; residuals right − 0.6·bytes = 1, −3, 2; √(14 · 3/2) / 25.
        ProbeOutcome[] a = [new(2048, 0.1, 1800, 10, 7, 20), new(2048, 0.5, 1000, 10, 3, 40), new(2048, 0.9, 240, 5, 5, 2)];
        var pooled = ProbeScore.Pool(2048, double.NaN, a);
        Assert.AreEqual(0.6, pooled.ValueAccuracy, 1e-12);
        Assert.AreEqual(Math.Sqrt(21) / 25, pooled.ValueAccuracyError, 1e-12);

        // Paired with b (same probes): differences 2, 0, 4 → 6/25; residuals −0.4, −2.4, 2.8; √(13.76 · 3/2) / 25.
        ProbeOutcome[] b = [a[0] with { Right = 5 }, a[1] with { Right = 3 }, a[2] with { Right = 1 }];
        var (difference, error) = ProbeScore.Paired(a, b);
        Assert.AreEqual(0.24, difference, 1e-12);
        Assert.AreEqual(Math.Sqrt(20.64) / 25, error, 1e-12);
        // Smaller than the two scores' own errors combined: what makes a probe hard is shared and cancels.
        Assert.IsLessThan(Math.Sqrt(Math.Pow(pooled.ValueAccuracyError, 2) + Math.Pow(ProbeScore.Pool(2048, double.NaN, b).ValueAccuracyError, 2)), error);

        Assert.ThrowsExactly<ArgumentException>(() => ProbeScore.Paired(a, [b[1], b[0], b[2]]));
        Assert.IsTrue(double.IsNaN(ProbeScore.Pool(2048, 0.5, [a[0]]).ValueAccuracyError), "one probe has no spread");

        static VariantResult Result(string kind, string name, ProbeOutcome[] probes) =>
            new(new ModelVariant(name, kind, "", "", []), [new ContextScore(2048, 1.3, 1.3, 1, 0, 0)], probes, []);
        var targets = Report.Targets([Result("dense", "dense", a), Result("native", "HySparse native", b)], 2048, 2048, window: 64);
        Assert.AreEqual("60.0 ± 18.3 %", targets[1].Measured);
        Assert.AreEqual("met", targets[1].Verdict);
        Assert.AreEqual("36.0 % vs 60.0 % (−24.0 ± 18.2 points, paired)", targets[3].Measured);
    }

    [TestMethod]
    public void TargetsCompareTheModelsWithTheIssuesThresholds()
    {
        static VariantResult Result(string kind, string name, double bitsPerByte, int right, string layout = "") => new(
            new ModelVariant(name, kind, layout, "", []),
            [new ContextScore(2048, bitsPerByte, bitsPerByte, 1, 0, 0)],
            [new ProbeOutcome(2048, 0.5, 500, 10, right, 30)],
            []);
        VariantResult[] results =
        [
            Result("dense", "dense", 2.25, 7), Result("retrofit", "retrofit 1:3, K 8", 2.3, 6, "FSSSFSSF"),
            Result("native", "HySparse native", 2.31, 7), Result("swa", "sliding-window baseline", 2.4, 1),
            // Same budget as 1:3 (three full layers) elsewhere: judged beside it; four full layers: not.
            Result("retrofit", "retrofit full 0,2,6, K 8", 2.26, 7, "FSFSSSFS"), Result("retrofit", "retrofit full 0,2,6,7, K 8", 2.26, 7, "FSFSSSFF"),
        ];

        var targets = Report.Targets(results, 2048, 2048, window: 64);

        CollectionAssert.AreEqual(new bool?[] { true, true, false, true, null, false, true }, targets.Select(t => t.Met).ToArray());
        Assert.AreEqual("missed by 0.010 bits/byte", targets[2].Verdict);
        Assert.AreEqual("10.0 % (dense 70.0 %, native 70.0 %)", targets[4].Measured);
        Assert.AreEqual("missed: 86 % kept", targets[5].Verdict);
        Assert.AreEqual("retrofit full 0,2,6, K 8 (as many full layers as 1:3) keeps ≥ 90 % of dense's retrieval at 2k", targets[6].Goal);
        Assert.AreEqual("met (100 % kept)", targets[6].Verdict);
        StringAssert.Contains(Report.Markdown(results, [2048], 64, "a.svg", "b.svg"), "No second seed was evaluated");
    }

    /// <summary>A dense model that gets every probe wrong has no spread: the miss is stated without "standard errors" (not ∞ of them).</summary>
    [TestMethod]
    public void ARetrievalMissWithoutSpreadIsNotCountedInStandardErrors()
    {
        ProbeOutcome[] wrong = [new(2048, 0.1, 1800, 8, 0, 40), new(2048, 0.5, 1000, 6, 0, 30), new(2048, 0.9, 200, 10, 0, 50)];
        var dense = new VariantResult(new ModelVariant("dense", "dense", "", "", []), [new ContextScore(2048, 4.7, 4.7, 1, 0, 0)], wrong, []);
        var target = Report.Targets([dense], 2048, 2048, window: 64)[1];
        Assert.AreEqual("0.0 ± 0.0 %", target.Measured);
        Assert.AreEqual("missed by 60.0 points", target.Verdict);
    }

    /// <summary>A second seed's native model is judged against the dense model of its own seed, after seed 1's targets.</summary>
    [TestMethod]
    public void SecondSeedTargetsPairEachNativeModelWithTheDenseModelOfItsSeed()
    {
        static VariantResult Result(string kind, string name, double bitsPerByte, int right, int seed = 1) => new(
            new ModelVariant(name, kind, "", "", [], seed),
            [new ContextScore(2048, bitsPerByte, bitsPerByte, 1, 0, 0)],
            [new ProbeOutcome(2048, 0.5, 500, 10, right, 30)],
            []);
        VariantResult[] results =
        [
            Result("dense", "dense", 1.30, 5), Result("native", "HySparse native", 1.32, 6),
            // Seed 2: native retrieves 20 points below its own dense (missed), though as much as seed 1's dense.
            Result("dense", "dense (seed 2)", 1.25, 7, seed: 2), Result("native", "HySparse native (seed 2)", 1.33, 5, seed: 2),
        ];

        var targets = Report.Targets(results, 2048, 2048, window: 64);

        CollectionAssert.AreEqual(new[]
        {
            "dense ≤ 2.3 bits/byte at 2k", "dense retrieval ≥ 60 % at 2k",
            "HySparse native within 0.05 bits/byte of dense (or better) at 2k", "HySparse native within 10 points of dense on retrieval at 2k",
            "dense (seed 2) ≤ 2.3 bits/byte at 2k", "dense (seed 2) retrieval ≥ 60 % at 2k",
            "HySparse native (seed 2) within 0.05 bits/byte of dense (seed 2) (or better) at 2k", "HySparse native (seed 2) within 10 points of dense (seed 2) on retrieval at 2k",
        }, targets.Select(t => t.Goal).ToArray());
        CollectionAssert.AreEqual(new bool?[] { true, false, true, true, true, true, false, false }, targets.Select(t => t.Met).ToArray());
        Assert.AreEqual("1.330 vs 1.250 (+0.080)", targets[6].Measured);
        Assert.AreEqual("missed by 0.030 bits/byte", targets[6].Verdict);
        Assert.AreEqual("50.0 % vs 70.0 % (−20.0 points)", targets[7].Measured);
    }

    [TestMethod]
    public void ASecondSeedIsEvaluatedWhenTheFolderHoldsItAndItsSpreadReported()
    {
        var folder = System.IO.Directory.CreateTempSubdirectory("fidelity-seeds").FullName;
        try
        {
            foreach (var file in new[] { "dense.onnx", "hysparse.onnx", "swa.onnx" })
                File.CreateSymbolicLink(Path.Combine(folder, file), Path.Combine(Directory, file));
            File.CreateSymbolicLink(Path.Combine(folder, ModelVariants.SecondSeedDense), Path.Combine(Directory, "dense.onnx"));

            var variants = ModelVariants.Build(folder, quick: true);
            var second = variants.Single(v => v.Seed == 2);
            Assert.AreEqual(("dense (seed 2)", "dense", false), (second.Name, second.Kind, second.IsReference));
            Assert.AreSame(variants[0], variants.Single(v => v.IsReference));

            static VariantResult Result(ModelVariant variant, double bitsPerByte, int right) => new(variant,
                [new ContextScore(2048, bitsPerByte, bitsPerByte, 1, 0, 0)], [new ProbeOutcome(2048, 0.5, 500, 10, right, 30)], []);
            var markdown = Report.Markdown([Result(variants[0], 2.5, 3), Result(second, 2.45, 5)], [2048], 64, "a.svg", "b.svg");
            StringAssert.Contains(markdown, "| dense | bits/byte @2k | 2.500 | 2.450 | −0.050 |");
            // 30 % → 50 %: the values are percentages, their difference is in points.
            StringAssert.Contains(markdown, "| dense | retrieval @2k | 30.0 % | 50.0 % | +20.0 points |");
        }
        finally
        {
            System.IO.Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>Loss curves of both trainers: train.py's records, and train_gpu.py's evaluation lines without a training loss.</summary>
    [TestMethod]
    public void TrainingCurvesReadBothTrainersRecords()
    {
        var folder = System.IO.Directory.CreateTempSubdirectory("hysparse-curve-");
        try
        {
            File.WriteAllLines(Path.Combine(folder.FullName, "dense.loss.jsonl"),
            [
                """{"step": 25, "seq": 512, "tokens": 102400, "seconds": 95.0, "train_bpb": 7.1, "lr": 0.0002}""",
                """{"step": 50, "seq": 512, "tokens": 204800, "seconds": 160.0, "eval_seq": 2048, "validation_bpb": 5.5, "retrieval_acc": 0.01}""",
            ]);
            var curve = TrainingCurve.Load(folder.FullName, "dense")!;
            Assert.HasCount(2, curve.Points);
            Assert.AreEqual(7.1, curve.Points[0].TrainBpb);
            Assert.IsTrue(double.IsNaN(curve.Points[1].TrainBpb));
            Assert.AreEqual(2048, curve.Points[1].Sequence);
            StringAssert.Contains(TrainingReport.Markdown([curve], "t.svg"), "| dense | random weights | 50 | 204,800 | 3 min | 7.100 | 5.500 @2048 |");
            Assert.IsNull(TrainingCurve.Load(folder.FullName, "swa"));

            // A warm-started model (models/train/warm_start.py) says where its weights came from.
            File.Copy(Path.Combine(folder.FullName, "dense.loss.jsonl"), Path.Combine(folder.FullName, "hysparse.loss.jsonl"));
            var model = new global::Onnx.ModelProto { IrVersion = 8, Graph = new global::Onnx.GraphProto { Name = "g" } };
            model.OpsetImport.Add(new global::Onnx.OperatorSetIdProto { Domain = "", Version = 14 });
            model.MetadataProps.Add(new global::Onnx.StringStringEntryProto { Key = "training.warm_start", Value = """{"from": "x.npz", "from_kind": "swa", "from_steps": 1984}""" });
            File.WriteAllBytes(Path.Combine(folder.FullName, "hysparse.onnx"), Google.Protobuf.MessageExtensions.ToByteArray(model));
            StringAssert.Contains(TrainingReport.Markdown([TrainingCurve.Load(folder.FullName, "hysparse")!], "t.svg"), "| hysparse | warm start: swa model after 1,984 steps | 50 |");
        }
        finally
        {
            folder.Delete(recursive: true);
        }
    }
}
