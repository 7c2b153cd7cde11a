using HySparse.Graph;
namespace HySparse.Graph;

/// <summary>
/// SplitMix64 generator: a fixed, documented algorithm, so a seed names the same weights on every
/// .NET version and platform (System.Random makes no such promise).
/// </summary>
public sealed class SplitMix64(ulong seed)
{
    private ulong _state = seed;

    /// <summary>Next 64 random bits.</summary>
    public ulong NextUInt64()
    {
        var z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform double in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform float in [-<paramref name="bound"/>, <paramref name="bound"/>).</summary>
    public float NextSymmetric(float bound) => (float)((NextDouble() * 2 - 1) * bound);

    /// <summary>Uniform integer in [0, <paramref name="exclusiveMax"/>).</summary>
    public int NextInt(int exclusiveMax) => (int)(NextUInt64() % (ulong)exclusiveMax);
}
