namespace HySparse.Exporter.Tests;

/// <summary>What the converter does not own passes through it byte for byte.</summary>
[TestClass]
public sealed class PassThroughTests
{
    /// <summary>
    /// Graphs with onnxruntime-extensions pre/post-processing (domain <c>ai.onnx.contrib</c>) run in an
    /// app that registers the extensions; the converter only rewrites attention, so those nodes, their
    /// opset import and the graph outputs they feed must come out unchanged.
    /// </summary>
    [TestMethod]
    public void PreAndPostProcessingNodesPassThroughUntouched()
    {
        var config = new LlamaConfig { Layers = 2, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 16, Ffn = 40, Vocab = 37, Seed = 3 };
        var model = LlamaModelBuilder.Build(config, LlamaAttentionStyle.GroupQueryAttention);
        var pre = new NodeProto { Name = "/pre/StringToIds", OpType = "TokenizerStandIn", Domain = "ai.onnx.contrib", Input = { "text" }, Output = { "text_ids" } };
        pre.Attribute.Add(new AttributeProto { Name = "vocab", Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8("a b c") });
        var post = new NodeProto { Name = "/post/Decode", OpType = "BpeDecoder", Domain = "ai.onnx.contrib", Input = { "logits" }, Output = { "next_text" } };
        model.Graph.Node.Insert(0, pre);
        model.Graph.Node.Add(post);
        model.Graph.Input.Add(new ValueInfoProto { Name = "text", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.String } } });
        model.Graph.Output.Add(new ValueInfoProto { Name = "text_ids", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Int64 } } });
        model.Graph.Output.Add(new ValueInfoProto { Name = "next_text", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.String } } });
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "ai.onnx.contrib", Version = 1 });

        var (converted, report) = HybridConverter.Convert(model, new ConversionOptions());

        Assert.AreEqual(2, report.Layers.Count);
        foreach (var original in new[] { pre, post })
        {
            var kept = converted.Graph.Node.Single(n => n.Name == original.Name);
            CollectionAssert.AreEqual(original.ToByteArray(), kept.ToByteArray(), original.Name);
        }
        Assert.AreEqual(1, converted.OpsetImport.Single(o => o.Domain == "ai.onnx.contrib").Version);
        CollectionAssert.IsSubsetOf(new[] { "text_ids", "next_text" }, converted.Graph.Output.Select(o => o.Name).ToArray());
        Assert.IsTrue(converted.Graph.Input.Any(i => i.Name == "text"));
    }
}
