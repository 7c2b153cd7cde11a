namespace HySparse.Models.Llama;

/// <summary>
/// Shape of a Llama-style decoder: RMSNorm, rotary position embedding, grouped-query attention,
/// SwiGLU feed-forward, tied or untied LM head. All sizes are small integers so tests can build
/// and run models in milliseconds; nothing here limits them to small values.
/// </summary>
public sealed record LlamaConfig
{
    /// <summary>Decoder layers.</summary>
    public int Layers { get; init; } = 4;
    /// <summary>Width of the residual stream.</summary>
    public int Hidden { get; init; } = 64;
    /// <summary>Query heads H_q.</summary>
    public int Heads { get; init; } = 4;
    /// <summary>Key/value heads H_kv (divides <see cref="Heads"/>; equal means plain multi-head attention).</summary>
    public int KvHeads { get; init; } = 2;
    /// <summary>Head size D (even: RoPE rotates pairs).</summary>
    public int HeadDim { get; init; } = 16;
    /// <summary>Inner width of the SwiGLU feed-forward block.</summary>
    public int Ffn { get; init; } = 128;
    /// <summary>Vocabulary size.</summary>
    public int Vocab { get; init; } = 101;
    /// <summary>Seed of the random weights.</summary>
    public ulong Seed { get; init; } = 1;
    /// <summary>When true the LM head reuses the embedding matrix (transposed).</summary>
    public bool TiedEmbeddings { get; init; }
    /// <summary>RMSNorm epsilon.</summary>
    public float RmsEpsilon { get; init; } = 1e-5f;
    /// <summary>RoPE base θ.</summary>
    public float RopeTheta { get; init; } = 10000f;

    /// <summary>Query heads that share one KV head.</summary>
    public int GroupSize => Heads / KvHeads;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first inconsistent field.</summary>
    public void Validate()
    {
        void Positive(int value, string name)
        {
            if (value < 1) throw new ArgumentException($"{name} must be at least 1 (got {value})");
        }
        Positive(Layers, nameof(Layers));
        Positive(Hidden, nameof(Hidden));
        Positive(Heads, nameof(Heads));
        Positive(KvHeads, nameof(KvHeads));
        Positive(HeadDim, nameof(HeadDim));
        Positive(Ffn, nameof(Ffn));
        Positive(Vocab, nameof(Vocab));
        if (Heads % KvHeads != 0) throw new ArgumentException($"KvHeads ({KvHeads}) must divide Heads ({Heads})");
        if (HeadDim % 2 != 0) throw new ArgumentException($"HeadDim must be even for RoPE (got {HeadDim})");
        if (!(RmsEpsilon > 0)) throw new ArgumentException($"RmsEpsilon must be positive (got {RmsEpsilon})");
        if (!(RopeTheta > 1)) throw new ArgumentException($"RopeTheta must exceed 1 (got {RopeTheta})");
    }
}
