using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Tests;

/// <summary>The float16 form of the GroupQueryAttention decoder (<see cref="Float16Conversion"/>).</summary>
[TestClass]
public sealed class Float16ConversionTests
{
    private static readonly LlamaConfig Config = new() { Layers = 2, Hidden = 64, Heads = 4, KvHeads = 2, HeadDim = 16, Ffn = 96, Vocab = 97, Seed = 5 };

    [TestMethod]
    [DataRow(false, DisplayName = "RoPE inside the op")]
    [DataRow(true, DisplayName = "RotaryEmbedding on a position_ids input")]
    public void Float16Model_DeclaresFloat16_RunsAttentionInFloat16_AndTracksTheFloat32Model(bool positionIds)
    {
        var options = new GroupQueryAttentionOptions { DoRotary = !positionIds, PositionIdsInput = positionIds };
        var single = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention, groupQuery: options);
        var half = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention, groupQuery: options with { Float16 = true });

        var graph = half.Graph;
        Assert.IsFalse(graph.Initializer.Any(i => i.DataType == (int)DataType.Float), "a float32 initializer is left");
        foreach (var value in graph.Input.Concat(graph.Output))
        {
            var expected = single.Graph.Input.Concat(single.Graph.Output).Single(v => v.Name == value.Name).Type.TensorType.ElemType == (int)DataType.Float
                ? DataType.Float16 : (DataType)value.Type.TensorType.ElemType;
            Assert.AreEqual(expected, (DataType)value.Type.TensorType.ElemType, value.Name);
        }
        // Every float input of the attention operators is float16: an initializer, a graph input, a
        // Cast to float16, or the output of another float16 operator.
        var float16Tensors = graph.Initializer.Select(i => i.Name).Concat(graph.Input.Where(IsFloat16).Select(i => i.Name))
            .Concat(graph.Node.Where(n => n.OpType == "Cast" && Attr.GetInt(n, "to", 0) == (long)DataType.Float16).Select(n => n.Output[0]))
            .Concat(graph.Node.Where(n => n.OpType is "RotaryEmbedding" or "GroupQueryAttention").SelectMany(n => n.Output)).ToHashSet();
        foreach (var node in graph.Node.Where(n => n.OpType is "RotaryEmbedding" or "GroupQueryAttention"))
        {
            int[] floatInputs = node.OpType == "RotaryEmbedding" ? [0, 2, 3] : [0, 1, 2, 3, 4, 7, 8];
            foreach (var i in floatInputs.Where(i => i < node.Input.Count && node.Input[i].Length > 0))
                Assert.Contains(node.Input[i], float16Tensors, $"{node.Name} input {i}");
        }

        // Prefill of 24 tokens, then 8 steps on the same tokens: with float16 weights, caches and
        // attention the logits stay within 3% (0.03 absolute below 1) of the float32 model's. The
        // prefill's largest difference was 0.004, one float16 step at its largest logit (4.2).
        var prompt = Enumerable.Range(0, 2 * 24).Select(i => (long)(i * 37 % Config.Vocab)).ToArray();
        var expectedLogits = Logits(single, prompt);
        var actualLogits = Logits(half, prompt);
        for (var step = 0; step < expectedLogits.Count; step++)
            Close.Assert(expectedLogits[step].Select(v => (double)v).ToArray(), actualLogits[step].Select(v => (double)v).ToArray(), 3e-2, $"logits of step {step}");
    }

    [TestMethod]
    public void OperatorWithoutATypingRule_OrNodesOutOfOrder_AreRefused()
    {
        var builder = new GraphBuilder("g");
        builder.AddInput("x", DataType.Float, 2);
        builder.Node("Mystery", ["x"], ["y"]);
        builder.AddOutput("y", DataType.Float, 2);
        var model = builder.BuildModel(new Dictionary<string, long> { [""] = 17 }, 8, "test");
        StringAssert.Contains(Assert.ThrowsExactly<NotSupportedException>(() => Float16Conversion.Convert(model)).Message, "Mystery");

        var reversed = LlamaModelBuilder.Build(Config, LlamaAttentionStyle.GroupQueryAttention);
        var nodes = reversed.Graph.Node.Reverse().ToList();
        reversed.Graph.Node.Clear();
        reversed.Graph.Node.AddRange(nodes);
        StringAssert.Contains(Assert.ThrowsExactly<NotSupportedException>(() => Float16Conversion.Convert(reversed)).Message, "topological");
    }

    private static bool IsFloat16(ValueInfoProto value) => value.Type.TensorType.ElemType == (int)DataType.Float16;

    /// <summary>The logits of the prompt's tokens, then of each of 8 one-token steps, batch 2.</summary>
    private static List<float[]> Logits(ModelProto model, long[] prompt)
    {
        using var session = TestSessions.Open(model.ToByteArray(), registerOps: false);
        using var decoder = new KvCacheDecoder(session, batchSize: 2, bufferCapacity: 64);
        var steps = new List<float[]> { decoder.Step(prompt) };
        for (var step = 0; step < 8; step++) steps.Add(decoder.Step([step * 5 + 1, step * 7 + 2]));
        return steps;
    }
}
