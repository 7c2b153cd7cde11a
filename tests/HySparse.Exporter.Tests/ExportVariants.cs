using Google.Protobuf;
using HySparse.Models.Llama;
using Onnx;

namespace HySparse.Exporter.Tests;

/// <summary>
/// Spellings of attention that real exports use beyond Hugging Face's eager export, built from one
/// set of weights so each can be checked against the float64 reference and its conversion against it.
/// </summary>
/// <param name="Name">Name used in data rows.</param>
/// <param name="Style">Attention style.</param>
/// <param name="Decomposed">Decomposed-export options (also: with or without KV cache).</param>
/// <param name="OnnxAttention">ONNX Attention options, for that style.</param>
/// <param name="Mha">True when the variant needs H_q = H_kv.</param>
public sealed record ExportVariant(string Name, LlamaAttentionStyle Style, DecomposedExportOptions Decomposed, OnnxAttentionOptions? OnnxAttention = null, bool Mha = false)
{
    /// <summary>Whether the model has past/present cache inputs and outputs.</summary>
    public bool KvCache => Decomposed.KvCache;

    /// <summary>False when the export ignores padding (ONNX Attention with is_causal=1 and no mask).</summary>
    public bool MasksPadding => OnnxAttention?.Mask != OnnxAttentionMask.IsCausal;

    /// <summary>A 4-layer configuration fitting the variant.</summary>
    public LlamaConfig Config(ulong seed) =>
        new() { Layers = 4, Hidden = 32, Heads = 4, KvHeads = Mha ? 4 : 2, HeadDim = 8, Ffn = 48, Vocab = 53, Seed = seed };

    /// <summary>Builds the variant with <paramref name="weights"/>.</summary>
    public ModelProto Build(LlamaWeights weights) => LlamaModelBuilder.Build(weights, Style, Decomposed, OnnxAttention);

    private static readonly DecomposedExportOptions NoCache = new() { KvCache = false };

    /// <summary>Every variant, by name.</summary>
    public static IReadOnlyDictionary<string, ExportVariant> All { get; } = new ExportVariant[]
    {
        new("where", LlamaAttentionStyle.Decomposed, new DecomposedExportOptions { Mask = MaskStyle.WhereOnScores }),
        new("where-sdpa-slices", LlamaAttentionStyle.Decomposed,
            new DecomposedExportOptions { Mask = MaskStyle.WhereOnScores, Scale = ScalePlacement.SplitOverQueryAndKey, FusedQkv = true, SplitBySlices = true }),
        new("fused-slices", LlamaAttentionStyle.Decomposed, new DecomposedExportOptions { FusedQkv = true, SplitBySlices = true, Scale = ScalePlacement.MultiplyScores }),
        new("no-cache", LlamaAttentionStyle.Decomposed, NoCache),
        new("no-cache-where-perm0231", LlamaAttentionStyle.Decomposed,
            NoCache with { Mask = MaskStyle.WhereOnScores, KeysFromHeadSplit = true }, Mha: true),
        new("onnx-attention-bool-4d", LlamaAttentionStyle.OnnxAttention, new DecomposedExportOptions(), new OnnxAttentionOptions()),
        new("onnx-attention-additive-3d", LlamaAttentionStyle.OnnxAttention, new DecomposedExportOptions(),
            new OnnxAttentionOptions { Rank = 3, Mask = OnnxAttentionMask.Additive, ExplicitScale = true }),
        new("onnx-attention-causal-no-cache", LlamaAttentionStyle.OnnxAttention, NoCache, new OnnxAttentionOptions { Mask = OnnxAttentionMask.IsCausal }),
        new("onnx-attention-bool-3d-no-cache", LlamaAttentionStyle.OnnxAttention, NoCache, new OnnxAttentionOptions { Rank = 3 }),
    }.ToDictionary(v => v.Name);

    public override string ToString() => Name;
}

/// <summary>Each variant as built computes what the float64 reference computes.</summary>
[TestClass]
public sealed class ExportVariantModelTests
{
    [TestMethod]
    [DataRow("where")]
    [DataRow("where-sdpa-slices")]
    [DataRow("fused-slices")]
    [DataRow("no-cache")]
    [DataRow("no-cache-where-perm0231")]
    [DataRow("onnx-attention-bool-4d")]
    [DataRow("onnx-attention-additive-3d")]
    [DataRow("onnx-attention-causal-no-cache")]
    [DataRow("onnx-attention-bool-3d-no-cache")]
    public void VariantMatchesFloat64Reference(string name)
    {
        var variant = ExportVariant.All[name];
        var weights = LlamaWeights.Generate(variant.Config(seed: 17));
        var model = variant.Build(weights).ToByteArray();
        // Prefill with a past, decode, first call; without a cache, prefills of two lengths. The second row
        // is left-padded into its new tokens (not for an export that ignores padding).
        var calls = variant.KvCache ? new[] { (3, 5), (6, 1), (0, 4) } : [(0, 7), (0, 4)];
        foreach (var (past, newTokens) in calls)
        {
            var padding = variant.MasksPadding ? Math.Min(past + 2, past + newTokens - 1) : 0;
            var inputs = DecoderInputs.Random(weights.Config, batch: 2, past, newTokens, leftPadding: [0, padding], seed: (ulong)(past * 31 + newTokens));
            if (variant.Style == LlamaAttentionStyle.OnnxAttention)
            {
                // ONNX Attention leaves a query with no visible key implementation-defined (ONNX Runtime
                // does not spread it evenly as adding the float minimum does): compare real tokens.
                var expected = ReferenceLlama.Forward(weights, inputs.Batch, inputs.InputIds, inputs.Mask, inputs.PastKeys, inputs.PastValues);
                var actual = DecoderRunner.Run(model, weights.Config, inputs);
                if (!variant.KvCache) expected = expected with { PresentKeys = [], PresentValues = [] };
                Close.AssertRealTokens(inputs, weights.Config, expected, actual, 2e-4, $"{name} (P={past}, S={newTokens})");
            }
            else
            {
                ReferenceLlama.AssertModelMatches(model, weights, inputs, 2e-4, variant.KvCache);
            }
        }
    }
}
