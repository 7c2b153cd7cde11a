namespace HySparse.Exporter.Tests;

/// <summary>One decoder step's tensors, row-major, in the graph's layouts.</summary>
/// <param name="Logits">[B,S,V].</param>
/// <param name="PresentKeys">Per layer [B,H_kv,T,D] (none for a model without KV cache).</param>
/// <param name="PresentValues">Per layer [B,H_kv,T,D].</param>
public sealed record DecoderOutputs(double[] Logits, double[][] PresentKeys, double[][] PresentValues);

/// <summary>
/// What a KV-sharing sparse layer attends to when its selection covers every block: each key within
/// the last <paramref name="Window"/> positions of the query from the layer's own K/V, every earlier
/// key from the K/V of layer <paramref name="SharedFrom"/>[l] (−1: the layer's own K/V throughout).
/// </summary>
public sealed record SharedKvReference(int[] SharedFrom, int Window);

/// <summary>
/// Float64 forward pass of a Llama-style decoder written with plain loops from the weights alone, so
/// it shares nothing with the ONNX graph it checks. It follows the semantics the decomposed export
/// has, including its behaviour on padding: positions are cumsum(mask) − 1 (padding at 1), a query
/// with no visible key spreads its attention evenly over all keys (what adding the float32 minimum
/// to every logit does).
/// </summary>
public static class ReferenceLlama
{
    public static DecoderOutputs Forward(LlamaWeights weights, int batch, long[] inputIds, long[] mask, float[][] pastKeys, float[][] pastValues, SharedKvReference? sharing = null)
    {
        var c = weights.Config;
        int h = c.Hidden, d = c.HeadDim, hq = c.Heads, hkv = c.KvHeads;
        var s = inputIds.Length / batch;
        var t = mask.Length / batch;
        var p = t - s;

        var x = Embed(weights, inputIds);
        var positions = Positions(mask, batch, s);

        var presentKeys = new double[c.Layers][];
        var presentValues = new double[c.Layers][];
        for (var l = 0; l < c.Layers; l++)
        {
            var w = weights.Layers[l];
            var normed = RmsNorm(x, w.InputNorm, h, c.RmsEpsilon);
            var q = MatMul(normed, w.Query, h, hq * d);
            var k = MatMul(normed, w.Key, h, hkv * d);
            var v = MatMul(normed, w.Value, h, hkv * d);
            Rope(q, positions, hq, d, c.RopeTheta);
            Rope(k, positions, hkv, d, c.RopeTheta);

            // present[b,g,j,:] = past for j < P, new token j − P after.
            var kc = new double[batch * hkv * t * d];
            var vc = new double[batch * hkv * t * d];
            for (var b = 0; b < batch; b++)
                for (var g = 0; g < hkv; g++)
                    for (var j = 0; j < t; j++)
                        for (var e = 0; e < d; e++)
                        {
                            var dst = ((b * hkv + g) * t + j) * d + e;
                            if (j < p)
                            {
                                var src = ((b * hkv + g) * p + j) * d + e;
                                kc[dst] = pastKeys[l][src];
                                vc[dst] = pastValues[l][src];
                            }
                            else
                            {
                                var src = (b * s + j - p) * hkv * d + g * d + e;
                                kc[dst] = k[src];
                                vc[dst] = v[src];
                            }
                        }
            presentKeys[l] = kc;
            presentValues[l] = vc;

            var source = sharing?.SharedFrom[l] ?? -1;
            var heads = new double[batch * s * hq * d];
            var logits = new double[t];
            var scale = 1.0 / Math.Sqrt(d);
            for (var b = 0; b < batch; b++)
                for (var head = 0; head < hq; head++)
                {
                    var g = head / (hq / hkv);
                    for (var i = 0; i < s; i++)
                    {
                        var anyVisible = false;
                        // Keys at or before this position come from the shared layer's cache.
                        var sharedUpTo = source >= 0 ? p + i - sharing!.Window : -1;
                        double[] KeysAt(int j) => j <= sharedUpTo ? presentKeys[source] : kc;
                        double[] ValuesAt(int j) => j <= sharedUpTo ? presentValues[source] : vc;
                        for (var j = 0; j < t; j++)
                        {
                            var visible = j <= p + i && mask[b * t + j] == 1;
                            anyVisible |= visible;
                            double dot = 0;
                            var keys = KeysAt(j);
                            for (var e = 0; e < d; e++) dot += q[(b * s + i) * hq * d + head * d + e] * keys[((b * hkv + g) * t + j) * d + e];
                            logits[j] = visible ? dot * scale : double.NegativeInfinity;
                        }
                        if (!anyVisible) Array.Fill(logits, 0.0);
                        var max = logits.Max();
                        double sum = 0;
                        for (var j = 0; j < t; j++) sum += logits[j] = Math.Exp(logits[j] - max);
                        for (var e = 0; e < d; e++)
                        {
                            double acc = 0;
                            for (var j = 0; j < t; j++) acc += logits[j] * ValuesAt(j)[((b * hkv + g) * t + j) * d + e];
                            heads[(b * s + i) * hq * d + head * d + e] = acc / sum;
                        }
                    }
                }
            Accumulate(x, MatMul(heads, w.Output, hq * d, h));

            FeedForward(x, w, c);
        }
        return new DecoderOutputs(LmHead(weights, x), presentKeys, presentValues);
    }

    /// <summary>Token embeddings [ids, hidden].</summary>
    internal static double[] Embed(LlamaWeights weights, long[] inputIds)
    {
        var h = weights.Config.Hidden;
        var x = new double[inputIds.Length * h];
        for (var i = 0; i < inputIds.Length; i++)
            for (var j = 0; j < h; j++) x[i * h + j] = weights.Embedding[inputIds[i] * h + j];
        return x;
    }

    /// <summary>Positions of the last <paramref name="newTokens"/> of each row of mask [B,T]: cumsum − 1, padding at 1.</summary>
    internal static long[] Positions(long[] mask, int batch, int newTokens)
    {
        var t = mask.Length / batch;
        var p = t - newTokens;
        var positions = new long[batch * newTokens];
        for (var b = 0; b < batch; b++)
        {
            long running = 0;
            for (var j = 0; j < t; j++)
            {
                running += mask[b * t + j];
                if (j >= p) positions[b * newTokens + j - p] = mask[b * t + j] == 0 ? 1 : running - 1;
            }
        }
        return positions;
    }

    /// <summary>x += SwiGLU(RMSNorm(x)), the feed-forward half of a layer.</summary>
    internal static void FeedForward(double[] x, LlamaLayerWeights w, LlamaConfig c)
    {
        var normed = RmsNorm(x, w.PostAttentionNorm, c.Hidden, c.RmsEpsilon);
        var gate = MatMul(normed, w.Gate, c.Hidden, c.Ffn);
        var up = MatMul(normed, w.Up, c.Hidden, c.Ffn);
        for (var i = 0; i < gate.Length; i++) gate[i] = gate[i] / (1 + Math.Exp(-gate[i])) * up[i];
        Accumulate(x, MatMul(gate, w.Down, c.Ffn, c.Hidden));
    }

    /// <summary>Logits [rows, vocab] of the residual stream x: final RMSNorm, then the LM head (or the tied embedding).</summary>
    internal static double[] LmHead(LlamaWeights weights, double[] x)
    {
        var c = weights.Config;
        var h = c.Hidden;
        var final = RmsNorm(x, weights.FinalNorm, h, c.RmsEpsilon);
        if (weights.LmHead is { } head) return MatMul(final, head, h, c.Vocab);
        var rows = x.Length / h;
        var result = new double[rows * c.Vocab];
        for (var i = 0; i < rows; i++)
            for (var tok = 0; tok < c.Vocab; tok++)
            {
                double acc = 0;
                for (var j = 0; j < h; j++) acc += final[i * h + j] * weights.Embedding[tok * h + j];
                result[i * c.Vocab + tok] = acc;
            }
        return result;
    }

    /// <summary>Runs <paramref name="model"/> in ONNX Runtime and checks logits and every present cache against <see cref="Forward"/>.</summary>
    /// <param name="model">The model to run.</param>
    /// <param name="weights">Its weights.</param>
    /// <param name="inputs">One call's inputs.</param>
    /// <param name="tolerance">Largest accepted difference.</param>
    /// <param name="kvCache">False for a model without KV cache (only logits are compared; it must return no caches).</param>
    public static void AssertModelMatches(byte[] model, LlamaWeights weights, DecoderInputs inputs, double tolerance, bool kvCache = true)
    {
        var actual = DecoderRunner.Run(model, weights.Config, inputs);
        var expected = Forward(weights, inputs.Batch, inputs.InputIds, inputs.Mask, inputs.PastKeys, inputs.PastValues);
        var call = $"(B={inputs.Batch}, P={inputs.Past}, S={inputs.NewTokens})";
        Close.Assert(expected.Logits, actual.Logits, tolerance, $"logits {call}");
        Assert.HasCount(kvCache ? weights.Config.Layers : 0, actual.PresentKeys);
        for (var l = 0; l < actual.PresentKeys.Length; l++)
        {
            Close.Assert(expected.PresentKeys[l], actual.PresentKeys[l], tolerance, $"present.{l}.key {call}");
            Close.Assert(expected.PresentValues[l], actual.PresentValues[l], tolerance, $"present.{l}.value {call}");
        }
    }

    internal static double[] RmsNorm(double[] x, float[] weight, int width, double eps)
    {
        var y = new double[x.Length];
        for (var row = 0; row < x.Length / width; row++)
        {
            double ms = 0;
            for (var j = 0; j < width; j++) ms += x[row * width + j] * x[row * width + j];
            var inv = 1 / Math.Sqrt(ms / width + eps);
            for (var j = 0; j < width; j++) y[row * width + j] = x[row * width + j] * inv * weight[j];
        }
        return y;
    }

    internal static double[] MatMul(double[] x, float[] w, int inWidth, int outWidth)
    {
        var rows = x.Length / inWidth;
        var y = new double[rows * outWidth];
        for (var r = 0; r < rows; r++)
            for (var i = 0; i < inWidth; i++)
            {
                var xv = x[r * inWidth + i];
                for (var o = 0; o < outWidth; o++) y[r * outWidth + o] += xv * w[i * outWidth + o];
            }
        return y;
    }

    /// <summary>Rotates [B·S, heads·D] in place: pair (e, e + D/2) turns by position·θ^(−2e/D).</summary>
    internal static void Rope(double[] x, long[] positions, int heads, int d, double theta)
    {
        var half = d / 2;
        for (var row = 0; row < positions.Length; row++)
            for (var head = 0; head < heads; head++)
                for (var e = 0; e < half; e++)
                {
                    var angle = positions[row] * Math.Pow(theta, -2.0 * e / d);
                    var i1 = row * heads * d + head * d + e;
                    var i2 = i1 + half;
                    double a = x[i1], b = x[i2], cos = Math.Cos(angle), sin = Math.Sin(angle);
                    x[i1] = a * cos - b * sin;
                    x[i2] = b * cos + a * sin;
                }
    }

    internal static void Accumulate(double[] x, double[] delta)
    {
        for (var i = 0; i < x.Length; i++) x[i] += delta[i];
    }
}
