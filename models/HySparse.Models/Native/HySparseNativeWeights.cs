using HySparse.Graph;
using HySparse.Models.Llama;

namespace HySparse.Models.Native;

/// <summary>
/// Weights of a HySparse-native decoder. Everything a Llama decoder has comes from
/// <see cref="Base"/>; in a sparse layer its Q, K and V projections are q′ (read by both branches)
/// and the SWA branch's own k′ and v′. The gates and sinks of the sparse layers are in
/// <see cref="Sparse"/>. Matrices are row-major [in, out].
/// </summary>
public sealed class HySparseNativeWeights
{
    // A fixed odd constant ("HySparse" in ASCII) mixed into the seed, so the gates and sinks are a
    // stream of their own and the Llama part equals LlamaWeights.Generate of the same config.
    private const ulong SparseStreamSalt = 0x4879537061727365UL;

    private HySparseNativeWeights(HySparseNativeConfig config, LlamaWeights baseWeights, SparseLayerWeights?[] sparse)
    {
        Config = config;
        Base = baseWeights;
        Sparse = sparse;
    }

    /// <summary>The configuration these weights fit.</summary>
    public HySparseNativeConfig Config { get; }

    /// <summary>Embedding, norms, projections, feed-forward blocks and LM head of every layer.</summary>
    public LlamaWeights Base { get; }

    /// <summary>Per layer: the sparse layer's gate and sinks; null for a full layer.</summary>
    public IReadOnlyList<SparseLayerWeights?> Sparse { get; }

    /// <summary>
    /// Draws weights from <see cref="LlamaConfig.Seed"/> of <see cref="HySparseNativeConfig.Model"/>:
    /// the Llama part as <see cref="LlamaWeights.Generate"/> draws it; gate projections uniform with
    /// variance 1/hidden (logits of unit scale, so the gates spread over (0, 1) instead of sitting at ½),
    /// gate biases uniform in [-0.5, 0.5), sinks uniform in [-1, 1) (comparable with the exponentiated
    /// logits of a window of a few keys, so they change the result visibly).
    /// </summary>
    public static HySparseNativeWeights Generate(HySparseNativeConfig config)
    {
        config.Validate();
        var model = config.Model;
        var baseWeights = LlamaWeights.Generate(model);
        var rng = new SplitMix64(model.Seed ^ SparseStreamSalt);
        var width = config.GateWidth;
        var bound = MathF.Sqrt(3f / model.Hidden);
        var sparse = new SparseLayerWeights?[model.Layers];
        for (var l = 0; l < model.Layers; l++)
        {
            if (config.IsFull(l)) continue;
            var gate = new float[model.Hidden * width];
            for (var i = 0; i < gate.Length; i++) gate[i] = rng.NextSymmetric(bound);
            var bias = new float[width];
            for (var i = 0; i < bias.Length; i++) bias[i] = rng.NextSymmetric(0.5f);
            float[]? sinks = null;
            if (config.Sinks)
            {
                sinks = new float[2 * model.Heads];
                for (var i = 0; i < sinks.Length; i++) sinks[i] = rng.NextSymmetric(1f);
            }
            sparse[l] = new SparseLayerWeights(gate, bias, sinks);
        }
        return new HySparseNativeWeights(config, baseWeights, sparse);
    }
}

/// <summary>What a sparse layer has beyond a Llama layer's weights.</summary>
/// <param name="Gate">Gate projection [hidden, gate width]: SA logits first, then SWA logits
/// (per head: H_q each; per channel: H_q·D each, head-major), as the op's <c>gate</c> input orders them.</param>
/// <param name="GateBias">Gate bias [gate width].</param>
/// <param name="Sinks">Sinks [2, H_q] (row 0 SA, row 1 SWA), or null when the model has none.</param>
public sealed record SparseLayerWeights(float[] Gate, float[] GateBias, float[]? Sinks);
