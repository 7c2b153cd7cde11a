using HySparse.Graph;
namespace HySparse.Models.Llama;

/// <summary>
/// Weights of a Llama-style decoder as row-major float arrays. Projection matrices are stored
/// [in, out], the layout a graph multiplies activations by (<c>MatMul(x, W)</c>).
/// </summary>
public sealed class LlamaWeights
{
    private LlamaWeights(LlamaConfig config, float[] embedding, LlamaLayerWeights[] layers, float[] finalNorm, float[]? lmHead)
    {
        Config = config;
        Embedding = embedding;
        Layers = layers;
        FinalNorm = finalNorm;
        LmHead = lmHead;
    }

    /// <summary>The configuration these weights fit.</summary>
    public LlamaConfig Config { get; }
    /// <summary>Token embedding [vocab, hidden].</summary>
    public float[] Embedding { get; }
    /// <summary>Per-layer weights.</summary>
    public IReadOnlyList<LlamaLayerWeights> Layers { get; }
    /// <summary>Final RMSNorm weight [hidden].</summary>
    public float[] FinalNorm { get; }
    /// <summary>LM head [hidden, vocab]; null when tied to <see cref="Embedding"/>.</summary>
    public float[]? LmHead { get; }

    /// <summary>
    /// Draws weights from <see cref="LlamaConfig.Seed"/>: projections uniform with variance
    /// 1/fan-in (so activations keep their scale through the layers), norm weights near 1, embedding
    /// entries uniform in [-1, 1).
    /// </summary>
    public static LlamaWeights Generate(LlamaConfig config)
    {
        config.Validate();
        var rng = new SplitMix64(config.Seed);
        int h = config.Hidden, qWidth = config.Heads * config.HeadDim, kvWidth = config.KvHeads * config.HeadDim;

        float[] Matrix(int rows, int cols)
        {
            var bound = MathF.Sqrt(3f / rows);
            var m = new float[rows * cols];
            for (var i = 0; i < m.Length; i++) m[i] = rng.NextSymmetric(bound);
            return m;
        }
        float[] Norm(int size)
        {
            var w = new float[size];
            for (var i = 0; i < size; i++) w[i] = 1f + rng.NextSymmetric(0.1f);
            return w;
        }

        var embedding = new float[config.Vocab * h];
        for (var i = 0; i < embedding.Length; i++) embedding[i] = rng.NextSymmetric(1f);
        var layers = new LlamaLayerWeights[config.Layers];
        for (var l = 0; l < layers.Length; l++)
        {
            layers[l] = new LlamaLayerWeights(
                InputNorm: Norm(h),
                Query: Matrix(h, qWidth),
                Key: Matrix(h, kvWidth),
                Value: Matrix(h, kvWidth),
                Output: Matrix(qWidth, h),
                PostAttentionNorm: Norm(h),
                Gate: Matrix(h, config.Ffn),
                Up: Matrix(h, config.Ffn),
                Down: Matrix(config.Ffn, h));
        }
        var finalNorm = Norm(h);
        var lmHead = config.TiedEmbeddings ? null : Matrix(h, config.Vocab);
        return new LlamaWeights(config, embedding, layers, finalNorm, lmHead);
    }
}

/// <summary>Weights of one decoder layer ([in, out] matrices, row-major).</summary>
/// <param name="InputNorm">RMSNorm before attention [hidden].</param>
/// <param name="Query">Q projection [hidden, heads·head size].</param>
/// <param name="Key">K projection [hidden, kv heads·head size].</param>
/// <param name="Value">V projection [hidden, kv heads·head size].</param>
/// <param name="Output">Attention output projection [heads·head size, hidden].</param>
/// <param name="PostAttentionNorm">RMSNorm before the feed-forward block [hidden].</param>
/// <param name="Gate">SwiGLU gate projection [hidden, ffn].</param>
/// <param name="Up">SwiGLU up projection [hidden, ffn].</param>
/// <param name="Down">SwiGLU down projection [ffn, hidden].</param>
public sealed record LlamaLayerWeights(
    float[] InputNorm, float[] Query, float[] Key, float[] Value, float[] Output,
    float[] PostAttentionNorm, float[] Gate, float[] Up, float[] Down)
{
    /// <summary>
    /// One [hidden, q + k + v] projection whose columns are the Q, K and V projections side by side,
    /// as exports with a fused QKV projection store it.
    /// </summary>
    public float[] ConcatenatedQkv(LlamaConfig config)
    {
        int qWidth = config.Heads * config.HeadDim, kvWidth = config.KvHeads * config.HeadDim, width = qWidth + 2 * kvWidth;
        var fused = new float[config.Hidden * width];
        for (var row = 0; row < config.Hidden; row++)
        {
            Array.Copy(Query, row * qWidth, fused, row * width, qWidth);
            Array.Copy(Key, row * kvWidth, fused, row * width + qWidth, kvWidth);
            Array.Copy(Value, row * kvWidth, fused, row * width + qWidth + kvWidth, kvWidth);
        }
        return fused;
    }
}
