using Google.Protobuf.Collections;
using System.Globalization;

namespace HySparse.Exporter.Tests;

/// <summary>
/// The model mutator of issue 14: damaged and hostile variants of every attention style's fixture and of
/// a converted model (truncations, byte flips, duplicated or removed nodes, inputs and initializers,
/// cycles, huge dimensions, external data outside the folder), each run through <c>inspect</c>,
/// <c>convert</c> and <c>verify</c>. Whatever a mutant is, the commands must refuse it or handle it:
/// no exit 1 ("this is a bug"), no hang, the input unchanged, no leftover or partial file.
/// <c>HYSPARSE_FUZZ_MUTANTS</c> sets how many mutants run (default 320, the CI smoke);
/// <c>HYSPARSE_FUZZ_SEED</c> the first seed.
/// </summary>
[TestClass]
public sealed class ModelMutationTests
{
    internal const string Fuzz = "Fuzz";

    private static readonly LlamaConfig Config = new() { Layers = 2, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 40, Vocab = 37, Seed = 31 };

    private static int Setting(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.None, CultureInfo.InvariantCulture, out var value) ? value : fallback;

    /// <summary>The fixtures mutated: each attention style the converter reads, and a converted model.</summary>
    private static List<(string Name, ModelProto Model)> Fixtures()
    {
        var fixtures = Enum.GetValues<LlamaAttentionStyle>()
            // MultiHeadAttention and com.microsoft.Attention have one head count for queries and keys.
            .Select(style => (style.ToString(), LlamaModelBuilder.Build(
                style is LlamaAttentionStyle.MultiHeadAttention or LlamaAttentionStyle.ContribAttention ? Config with { KvHeads = Config.Heads } : Config, style)))
            .ToList();
        var converted = HybridConverter.Convert(fixtures[0].Item2, new ConversionOptions { Layout = LayoutSpec.Ratio("1:1"), Parameters = new HybridParameters { TopK = 2, BlockSize = 4, Window = 4 } }).Model;
        fixtures.Add(("Converted", converted));
        return fixtures;
    }

    [TestMethod]
    [TestCategory(Fuzz)]
    [TestCategory(HySparseEquivalenceTests.NeedsOps)]
    public void MutantsAreRefusedOrHandledNeverCrash()
    {
        var count = Setting("HYSPARSE_FUZZ_MUTANTS", 320);
        var firstSeed = Setting("HYSPARSE_FUZZ_SEED", 1);
        var fixtures = Fixtures();
        var outcomes = new Dictionary<string, int>();
        var failures = new List<string>();
        using var dir = new ModelDirectory();
        for (var i = 0; i < count; i++)
        {
            var seed = firstSeed + i;
            var (name, fixture) = fixtures[i % fixtures.Count];
            var rng = new Random(seed);
            var (mutation, bytes) = Mutate(fixture, rng);
            var input = dir.Write("mutant.onnx", bytes);
            var dense = dir.WriteModel("dense.onnx", fixtures[0].Model);
            var hash = ModelDirectory.Sha256(input);
            var label = $"seed {seed} ({name}, {mutation})";

            foreach (var args in new[]
            {
                new[] { "inspect", input, "--json" },
                ["convert", input, "-o", dir.File("out.onnx"), "-q"],
                ["verify", input, input, "--prompt", "3", "--steps", "1", "-q"],
                ["verify", dense, input, "--prompt", "3", "--steps", "1", "-q"],
            })
            {
                var (code, _, err) = CliTests.Run(args);
                var key = $"{args[0]} exit {code}";
                outcomes[key] = outcomes.GetValueOrDefault(key) + 1;
                if (code == ExitCodes.InternalError) failures.Add($"{label}: {string.Join(' ', args[..1])} exit 1: {err.Trim()}");
            }

            if (ModelDirectory.Sha256(input) != hash) failures.Add($"{label}: the input changed");
            if (File.Exists(dir.File("out.onnx")))
            {
                try
                {
                    ModelFile.Load(dir.File("out.onnx"));
                }
                catch (ConversionException e)
                {
                    failures.Add($"{label}: convert wrote an invalid model: {e.Message}");
                }
                File.Delete(dir.File("out.onnx"));
            }
            var leftovers = dir.FilesExcept("mutant.onnx", "dense.onnx");
            if (leftovers.Length > 0) failures.Add($"{label}: left {string.Join(", ", leftovers)}");
        }

        Console.WriteLine($"{count} mutants of {fixtures.Count} fixtures (seeds {firstSeed}..{firstSeed + count - 1}): " +
                          string.Join(", ", outcomes.OrderBy(o => o.Key, StringComparer.Ordinal).Select(o => $"{o.Key}: {o.Value}")));
        Assert.IsEmpty(failures, string.Join("\n", failures.Take(20)));
    }

    /// <summary>One random mutation of <paramref name="model"/>; returns its name and the file bytes.</summary>
    internal static (string Name, byte[] Bytes) Mutate(ModelProto model, Random rng)
    {
        var m = model.Clone();
        var graph = m.Graph;
        T Pick<T>(IList<T> items) => items[rng.Next(items.Count)];
        // A copy of a random item, at a random place or at the end (the random draws keep their order:
        // a seed names the same mutant as before).
        (string, byte[]) Duplicated<T>(RepeatedField<T> items, string what, Func<T, string> name, bool anywhere)
            where T : IDeepCloneable<T>
        {
            var item = Pick(items);
            if (anywhere) items.Insert(rng.Next(items.Count + 1), item.Clone());
            else items.Add(item.Clone());
            return ($"{what} '{name(item)}' duplicated", m.ToByteArray());
        }
        (string, byte[]) Removed<T>(RepeatedField<T> items, string what, Func<T, string> name)
        {
            var at = rng.Next(items.Count);
            var removed = name(items[at]);
            items.RemoveAt(at);
            return ($"{what} '{removed}' removed", m.ToByteArray());
        }
        switch (rng.Next(14))
        {
            case 0:
            {
                var bytes = m.ToByteArray();
                return ("truncated", bytes[..rng.Next(bytes.Length)]);
            }
            case 1:
            {
                var bytes = m.ToByteArray();
                var flips = 1 + rng.Next(8);
                for (var f = 0; f < flips; f++) bytes[rng.Next(bytes.Length)] ^= (byte)(1 << rng.Next(8));
                return ($"{flips} byte flips", bytes);
            }
            case 2: return Duplicated(graph.Node, "node", n => n.Name, anywhere: true);
            case 3: return Removed(graph.Node, "node", n => n.Name);
            case 4: return Duplicated(graph.Input, "input", i => i.Name, anywhere: false);
            case 5: return Removed(graph.Input, "input", i => i.Name);
            case 6: return Duplicated(graph.Initializer, "initializer", t => t.Name, anywhere: false);
            case 7: return Removed(graph.Initializer, "initializer", t => t.Name);
            case 8:
            {
                // A cycle: an early node reads the output of a later one.
                var early = rng.Next(graph.Node.Count / 2);
                var late = graph.Node.Count / 2 + rng.Next(graph.Node.Count - graph.Node.Count / 2);
                if (graph.Node[early].Input.Count > 0 && graph.Node[late].Output.Count > 0) graph.Node[early].Input[0] = graph.Node[late].Output[0];
                return ($"cycle '{graph.Node[early].Name}' <- '{graph.Node[late].Name}'", m.ToByteArray());
            }
            case 9:
            {
                var node = Pick(graph.Node);
                (graph.Node[0], graph.Node[graph.Node.Count - 1]) = (graph.Node[graph.Node.Count - 1], graph.Node[0]);
                return ($"first and last node swapped ({node.Name})", m.ToByteArray());
            }
            case 10:
            {
                // Huge dimensions: declared on an input, or stored in an initializer's dims.
                var huge = rng.Next(2) == 0 ? 1L << 40 : -7;
                if (rng.Next(2) == 0 && Pick(graph.Input).Type?.TensorType?.Shape is { Dim.Count: > 0 } shape)
                    shape.Dim[rng.Next(shape.Dim.Count)] = new TensorShapeProto.Types.Dimension { DimValue = huge };
                else if (Pick(graph.Initializer) is { Dims.Count: > 0 } tensor)
                    tensor.Dims[rng.Next(tensor.Dims.Count)] = huge;
                return ($"dimension {huge}", m.ToByteArray());
            }
            case 11:
            {
                var tensor = graph.Initializer.FirstOrDefault(t => t.RawData.Length >= 64) ?? Pick(graph.Initializer);
                var location = Pick(new[] { "../outside.bin", "/etc/hostname", "a/../../b.bin", "" });
                ExternalData.PointTo(tensor, location, 0, Math.Max(tensor.RawData.Length, 4));
                return ($"external data at '{location}'", m.ToByteArray());
            }
            case 12:
            {
                // A node of the com.hysparse domain, or one of its attributes, changed.
                var node = graph.Node.FirstOrDefault(n => n.Domain == HySparse.Onnx.HySparseOps.Domain) ?? Pick(graph.Node);
                var change = rng.Next(3);
                if (change == 0) node.OpType = "HySparseUnknownAttn";
                else if (change == 1) node.Attribute.Add(Attr.Int("mystery", 1));
                else if (node.Attribute.Count > 0) node.Attribute[rng.Next(node.Attribute.Count)].I = rng.Next(2) == 0 ? -5 : int.MaxValue;
                return ($"node '{node.Name}' {(change == 0 ? "retyped" : change == 1 ? "given an attribute" : "attribute value")}", m.ToByteArray());
            }
            default:
            {
                // Names made to collide: a node output renamed to a graph input's name.
                var node = Pick(graph.Node);
                if (node.Output.Count > 0) node.Output[0] = Pick(graph.Input).Name;
                return ($"node '{node.Name}' output renamed to a graph input", m.ToByteArray());
            }
        }
    }
}
