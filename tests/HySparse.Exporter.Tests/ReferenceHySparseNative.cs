using HySparse.Models.Native;

namespace HySparse.Exporter.Tests;

/// <summary>What the float64 native reference computes over a whole sequence.</summary>
/// <param name="Logits">[B,T,V].</param>
/// <param name="Keys">Per layer, every position's rotated key [B,H_kv,T,D] (a sparse layer's k′).</param>
/// <param name="Values">Per layer, every position's value [B,H_kv,T,D] (a sparse layer's v′).</param>
/// <param name="Selections">Per layer, for a full layer that feeds sparse layers, the chosen blocks [B,H_kv,T,K]
/// (ascending, −1 padding); null for other layers.</param>
/// <param name="SelectionMargin">Smallest relative gap, over every selection that had to leave an eligible block out,
/// between the K-th and the (K+1)-th group score: how far float32 rounding is from changing a choice.</param>
public sealed record NativeReferenceOutputs(double[] Logits, double[][] Keys, double[][] Values, int[]?[] Selections, double SelectionMargin);

/// <summary>
/// Float64 forward pass of a HySparse-native decoder over whole sequences, written with plain loops
/// from the paper's definitions and docs/ops.md, sharing nothing with the ONNX graph or the kernels.
/// Because every layer is causal, position t's result does not depend on how the sequence was cut
/// into calls, so one pass is the reference for any prefill/decode schedule of the model.
/// </summary>
/// <remarks>
/// Full layer: causal softmax attention over the valid keys (j ≤ t, unmasked; none for a padding
/// query, whose output is 0); block score = the largest probability in the block, reduced by max over
/// the query heads of a KV head; the top-K eligible blocks (those holding a valid key), higher score
/// first, equal scores to the lower index, reported ascending. Sparse layer: SA = softmax over the
/// valid keys in the selected blocks of the preceding full layer's K/V, with exp(sink_SA) in the
/// denominator; SWA = softmax over the valid keys t−w &lt; j ≤ t of the layer's own k′/v′, with
/// exp(sink_SWA); o = σ(g_SA)·o_SA + σ(g_SWA)·o_SWA with g = normed·W_g + b_g per head or per channel.
/// </remarks>
public static class ReferenceHySparseNative
{
    /// <summary>Runs the decoder on ids and mask [B,T]; <paramref name="topK"/> overrides the config's K.</summary>
    public static NativeReferenceOutputs Forward(HySparseNativeWeights weights, int batch, long[] ids, long[] mask, int? topK = null)
    {
        var native = weights.Config;
        var c = native.Model;
        var llama = weights.Base;
        int h = c.Hidden, d = c.HeadDim, hq = c.Heads, hkv = c.KvHeads, group = c.GroupSize;
        var t = ids.Length / batch;
        var k = topK ?? native.TopK;
        var bs = native.BlockSize;
        var blocks = (t + bs - 1) / bs;
        var scale = 1.0 / Math.Sqrt(d);

        var x = ReferenceLlama.Embed(llama, ids);
        var positions = ReferenceLlama.Positions(mask, batch, t);
        bool Valid(int b, int query, int key) => key <= query && mask[b * t + key] == 1 && mask[b * t + query] == 1;

        var keys = new double[c.Layers][];
        var values = new double[c.Layers][];
        var selections = new int[]?[c.Layers];
        var margin = double.PositiveInfinity;
        var shared = -1;
        for (var l = 0; l < c.Layers; l++)
        {
            var w = llama.Layers[l];
            var normed = ReferenceLlama.RmsNorm(x, w.InputNorm, h, c.RmsEpsilon);
            var q = ReferenceLlama.MatMul(normed, w.Query, h, hq * d);
            var kNew = ReferenceLlama.MatMul(normed, w.Key, h, hkv * d);
            var vNew = ReferenceLlama.MatMul(normed, w.Value, h, hkv * d);
            ReferenceLlama.Rope(q, positions, hq, d, c.RopeTheta);
            ReferenceLlama.Rope(kNew, positions, hkv, d, c.RopeTheta);
            keys[l] = ToHeadMajor(kNew, batch, t, hkv, d);
            values[l] = ToHeadMajor(vNew, batch, t, hkv, d);
            double Dot(int b, int head, int query, double[] cache, int key)
            {
                var g = head / group;
                double dot = 0;
                for (var e = 0; e < d; e++) dot += q[(b * t + query) * hq * d + head * d + e] * cache[((b * hkv + g) * t + key) * d + e];
                return dot * scale;
            }

            var heads = new double[batch * t * hq * d];
            if (native.IsFull(l))
            {
                shared = l;
                var groupScores = new double[batch * hkv * t * blocks];
                for (var b = 0; b < batch; b++)
                    for (var head = 0; head < hq; head++)
                        for (var i = 0; i < t; i++)
                        {
                            var valid = Enumerable.Range(0, t).Where(j => Valid(b, i, j)).ToArray();
                            if (valid.Length == 0) continue;
                            var logits = valid.Select(j => Dot(b, head, i, keys[l], j)).ToArray();
                            var max = logits.Max();
                            var lse = max + Math.Log(logits.Sum(v => Math.Exp(v - max)));
                            var g = head / group;
                            for (var n = 0; n < valid.Length; n++)
                            {
                                var probability = Math.Exp(logits[n] - lse);
                                for (var e = 0; e < d; e++)
                                    heads[(b * t + i) * hq * d + head * d + e] += probability * values[l][((b * hkv + g) * t + valid[n]) * d + e];
                                ref var score = ref groupScores[((b * hkv + g) * t + i) * blocks + valid[n] / bs];
                                score = Math.Max(score, probability);
                            }
                        }
                if (native.FeedsSparseLayer(l))
                {
                    var chosen = new int[batch * hkv * t * k];
                    for (var b = 0; b < batch; b++)
                        for (var g = 0; g < hkv; g++)
                            for (var i = 0; i < t; i++)
                            {
                                var eligible = Enumerable.Range(0, blocks)
                                    .Where(blk => Enumerable.Range(blk * bs, Math.Min(bs, t - blk * bs)).Any(j => Valid(b, i, j))).ToArray();
                                var row = ((b * hkv + g) * t + i) * blocks;
                                var ranked = eligible.OrderByDescending(blk => groupScores[row + blk]).ThenBy(blk => blk).ToArray();
                                if (ranked.Length > k)
                                {
                                    double kth = groupScores[row + ranked[k - 1]], next = groupScores[row + ranked[k]];
                                    margin = Math.Min(margin, (kth - next) / kth);
                                }
                                var picked = ranked.Take(k).Order().ToArray();
                                for (var slot = 0; slot < k; slot++)
                                    chosen[((b * hkv + g) * t + i) * k + slot] = slot < picked.Length ? picked[slot] : -1;
                            }
                    selections[l] = chosen;
                }
            }
            else
            {
                var sparse = weights.Sparse[l]!;
                var gates = ReferenceLlama.MatMul(normed, sparse.Gate, h, native.GateWidth);
                var selected = selections[shared]!;
                for (var b = 0; b < batch; b++)
                    for (var head = 0; head < hq; head++)
                        for (var i = 0; i < t; i++)
                        {
                            var g = head / group;
                            var row = ((b * hkv + g) * t + i) * k;
                            var inSelection = Enumerable.Range(0, t)
                                .Where(j => Valid(b, i, j) && Enumerable.Range(0, k).Any(slot => selected[row + slot] == j / bs)).ToArray();
                            var inWindow = Enumerable.Range(0, t).Where(j => Valid(b, i, j) && j > i - native.Window).ToArray();
                            var sa = Branch(b, head, i, inSelection, keys[shared], values[shared], sparse.Sinks?[head]);
                            var swa = Branch(b, head, i, inWindow, keys[l], values[l], sparse.Sinks?[hq + head]);
                            var gateRow = (b * t + i) * native.GateWidth;
                            for (var e = 0; e < d; e++)
                            {
                                var (saLogit, swaLogit) = native.Gate == SparseGateKind.PerHead
                                    ? (gates[gateRow + head] + sparse.GateBias[head], gates[gateRow + hq + head] + sparse.GateBias[hq + head])
                                    : (gates[gateRow + head * d + e] + sparse.GateBias[head * d + e], gates[gateRow + hq * d + head * d + e] + sparse.GateBias[hq * d + head * d + e]);
                                heads[(b * t + i) * hq * d + head * d + e] = Sigmoid(saLogit) * sa[e] + Sigmoid(swaLogit) * swa[e];
                            }
                        }

                // Softmax over the given keys with exp(sink) in the denominator; no key: zeros.
                double[] Branch(int b, int head, int i, int[] keysToRead, double[] keyCache, double[] valueCache, float? sink)
                {
                    var output = new double[d];
                    if (keysToRead.Length == 0) return output;
                    var logits = keysToRead.Select(j => Dot(b, head, i, keyCache, j)).ToArray();
                    var max = sink is { } s0 ? Math.Max(logits.Max(), s0) : logits.Max();
                    var denominator = logits.Sum(v => Math.Exp(v - max)) + (sink is { } s1 ? Math.Exp(s1 - max) : 0);
                    var g = head / group;
                    for (var n = 0; n < keysToRead.Length; n++)
                    {
                        var probability = Math.Exp(logits[n] - max) / denominator;
                        for (var e = 0; e < d; e++) output[e] += probability * valueCache[((b * hkv + g) * t + keysToRead[n]) * d + e];
                    }
                    return output;
                }
            }
            ReferenceLlama.Accumulate(x, ReferenceLlama.MatMul(heads, w.Output, hq * d, h));
            ReferenceLlama.FeedForward(x, w, c);
        }
        return new NativeReferenceOutputs(ReferenceLlama.LmHead(llama, x), keys, values, selections, margin);
    }

    private static double Sigmoid(double v) => 1 / (1 + Math.Exp(-v));

    /// <summary>[B·T, H·D] (token-major, as projected) → [B,H,T,D] (the caches' layout).</summary>
    private static double[] ToHeadMajor(double[] x, int batch, int t, int heads, int d)
    {
        var y = new double[x.Length];
        for (var b = 0; b < batch; b++)
            for (var i = 0; i < t; i++)
                for (var head = 0; head < heads; head++)
                    for (var e = 0; e < d; e++)
                        y[((b * heads + head) * t + i) * d + e] = x[(b * t + i) * heads * d + head * d + e];
        return y;
    }
}
