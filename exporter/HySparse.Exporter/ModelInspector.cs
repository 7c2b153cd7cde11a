using System.Globalization;
using HySparse.Graph;
using HySparse.Exporter.Layout;
using HySparse.Exporter.Recognition;
using HySparse.Onnx;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter;

/// <summary>One attention layer as <c>inspect</c> reports it.</summary>
/// <param name="Index">Position among the attention layers.</param>
/// <param name="CacheIndex">N of <c>past_key_values.N</c>, when named that way.</param>
/// <param name="Node">The node the layer was found at.</param>
/// <param name="Kind">"dense", "full" or "sparse".</param>
/// <param name="NumHeads">Query heads.</param>
/// <param name="KvNumHeads">Key/value heads.</param>
/// <param name="HeadSize">Head size.</param>
/// <param name="CacheType">Element type of the KV cache.</param>
/// <param name="HasKvCache">False when the export has no past/present cache for this layer (prefill-only
/// exports): its KV figures are then what a cache would hold, not what the model keeps.</param>
public sealed record InspectedLayer(int Index, int? CacheIndex, string Node, string Kind, int NumHeads, int KvNumHeads, int HeadSize, DataType CacheType, bool HasKvCache = true)
{
    /// <summary>Bytes one token adds to this layer's K and V caches.</summary>
    public long BytesPerToken => 2L * KvNumHeads * HeadSize * Tensors.ElementSize(CacheType);
}

/// <summary>What <c>inspect</c> found.</summary>
public sealed record InspectionReport
{
    /// <summary>True when the model already holds HySparse operators.</summary>
    public required bool Converted { get; init; }
    /// <summary>
    /// True for a HySparse-native model (<see cref="HybridMetadata.NativeMode"/>): trained with its sparse
    /// layers, which keep window caches as under KV sharing (<see cref="Mode"/> is then <see cref="HybridMode.KvSharing"/>).
    /// </summary>
    public bool Native { get; init; }
    /// <summary>Attention style of the dense source (from metadata for a converted model), or null if unknown.</summary>
    public required string? SourceStyle { get; init; }
    /// <summary>The attention layers.</summary>
    public required IReadOnlyList<InspectedLayer> Layers { get; init; }
    /// <summary>Attention-like subgraphs that cannot be converted.</summary>
    public required IReadOnlyList<UnconvertibleLayer> Failures { get; init; }
    /// <summary>The model's layout (converted) or the one the request would give (dense).</summary>
    public required LayerLayout? Layout { get; init; }
    /// <summary>K, B, w of the model (converted) or of the request (dense).</summary>
    public required HybridParameters Parameters { get; init; }
    /// <summary>The model's mode (converted) or the requested one (dense).</summary>
    public HybridMode Mode => Parameters.Mode;
    /// <summary>Cache inputs and outputs that are window caches (a converted KV-sharing model; else empty).</summary>
    public required IReadOnlyList<string> WindowCaches { get; init; }
    /// <summary>KV figures at the requested contexts (empty without layers).</summary>
    public required IReadOnlyList<KvFigures> Kv { get; init; }
    /// <summary>The model's hysparse.* metadata.</summary>
    public required IReadOnlyDictionary<string, string> Metadata { get; init; }
}

/// <summary>Describes a model's attention layers and what a hybrid layout would change.</summary>
public static class ModelInspector
{
    /// <summary>Inspects <paramref name="model"/>; for a dense model, <paramref name="options"/> is the layout to project.</summary>
    /// <exception cref="ConversionException"><see cref="ConversionError.NoAttention"/> when no attention is found.</exception>
    public static InspectionReport Inspect(ModelProto model, ConversionOptions options, IReadOnlyList<long> contexts)
    {
        ModelFile.Validate(model, "model");
        var metadata = model.MetadataProps.Where(p => p.Key.StartsWith(HybridMetadata.Prefix, StringComparison.Ordinal))
            .ToDictionary(p => p.Key, p => p.Value);
        return HybridConverter.IsConverted(model)
            ? InspectConverted(model, metadata, contexts)
            : InspectDense(model, options, metadata, contexts);
    }

    private static InspectionReport InspectDense(ModelProto model, ConversionOptions options, Dictionary<string, string> metadata, IReadOnlyList<long> contexts)
    {
        var analysis = HybridConverter.Analyse(model);
        if (analysis.Layers.Count == 0 && analysis.Failures.Count == 0)
            throw new ConversionException(ConversionError.NoAttention, "no attention layer found: the model has no MatMul → Softmax → MatMul attention, GroupQueryAttention, MultiHeadAttention, com.microsoft.Attention or ONNX Attention node the converter recognises");
        options.Parameters.Validate();
        var layers = analysis.Layers.Select((l, i) => new InspectedLayer(i, l.CacheIndex, l.AnchorNode, "dense", l.NumHeads, l.KvNumHeads, l.HeadSize, l.ElementType, l.HasKvCache)).ToList();
        // A projection of a mode the conversion would refuse would mislead: report why instead.
        IReadOnlyList<UnconvertibleLayer> failures = options.Parameters.Mode == HybridMode.KvSharing
            ? [.. analysis.Failures, .. HybridConverter.KvSharingRefusals(model, analysis.Layers)]
            : analysis.Failures;
        var layout = failures.Count == 0 && layers.Count > 0 ? options.Layout.Plan(layers.Count) : null;
        return new InspectionReport
        {
            Converted = false,
            SourceStyle = analysis.Style?.ToString().ToLowerInvariant(),
            Layers = layers,
            Failures = failures,
            Layout = layout,
            Parameters = options.Parameters,
            WindowCaches = [],
            Kv = Figures(layers, layout, options.Parameters, contexts),
            Metadata = metadata,
        };
    }

    /// <summary>KV figures when every layer has the same cache geometry (as in every real decoder); else none.</summary>
    private static IReadOnlyList<KvFigures> Figures(List<InspectedLayer> layers, LayerLayout? layout, HybridParameters parameters, IReadOnlyList<long> contexts, bool sparseLayersSelect = true) =>
        layout is not null && CacheGeometry.Common(layers.Select(l => new CacheGeometry(l.KvNumHeads, l.HeadSize, Tensors.ElementSize(l.CacheType)))) is { } cache
            ? KvAccounting.Compute(cache, layout, parameters, contexts, sparseLayersSelect)
            : [];

    private static InspectionReport InspectConverted(ModelProto model, Dictionary<string, string> metadata, IReadOnlyList<long> contexts)
    {
        var inputs = model.Graph.Input.ToDictionary(i => i.Name);
        var ops = model.Graph.Node.Where(n => n.Domain == HySparseOps.Domain).ToList();
        var layers = new List<InspectedLayer>();
        GraphIndex? graph = null;
        foreach (var op in ops)
        {
            var full = op.OpType == HySparseOps.FullAttn;
            var past = op.Input.Count > 3 ? op.Input[3] : "";
            if (past.Length > 0 && !inputs.ContainsKey(past))
            {
                // A combined cache [2,B,H,P,D] (com.microsoft.Attention) reaches the op through the Gather of its half.
                graph ??= new GraphIndex(model.Graph);
                if (graph.Producer(past) is { OpType: "Gather" } gather && inputs.ContainsKey(gather.Input[0])) past = gather.Input[0];
            }
            var dims = inputs.GetValueOrDefault(past)?.Type?.TensorType?.Shape?.Dim;
            var headSize = dims is { Count: 4 or 5 } ? (int)dims[^1].DimValue : 0;
            var type = inputs.GetValueOrDefault(past)?.Type?.TensorType is { } t ? (DataType)t.ElemType : DataType.Float;
            if (past.Length == 0)
            {
                // An export without KV cache: geometry from the head split feeding the op's key.
                graph ??= new GraphIndex(model.Graph);
                headSize = HeadSplit.HeadSizeOf(graph, op.Input[1], (int)Attr.GetInt(op, HySparseOps.Attributes.KvNumHeads, 0)) ?? 0;
                type = Upstream.FloatType(graph, op.Input[2]) ?? DataType.Float;
            }
            layers.Add(new InspectedLayer(layers.Count, null, op.Name, full ? "full" : "sparse",
                (int)Attr.GetInt(op, HySparseOps.Attributes.NumHeads, 0), (int)Attr.GetInt(op, HySparseOps.Attributes.KvNumHeads, 0), headSize, type));
        }
        int Meta(string key, int fallback) =>
            metadata.TryGetValue(key, out var v) && int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : fallback;
        var defaults = new HybridParameters();
        var native = HybridConverter.IsNative(model);
        var parameters = new HybridParameters
        {
            TopK = Meta(HybridMetadata.TopK, defaults.TopK),
            BlockSize = Meta(HybridMetadata.BlockSize, defaults.BlockSize),
            Window = Meta(HybridMetadata.Window, defaults.Window),
            // A native model keeps its caches as a KV-sharing conversion does: full layers T, sparse layers w.
            Mode = native ? HybridMode.KvSharing : HybridParameters.ParseMode(metadata.GetValueOrDefault(HybridMetadata.Mode)) ?? HybridMode.Retrofit,
        };
        var windowCaches = metadata.GetValueOrDefault(HybridMetadata.WindowCaches) is { Length: > 0 } list ? list.Split(',') : [];
        LayerLayout? layout = layers.Count > 0 && layers[0].Kind == "full"
            ? new LayerLayout(layers.Select(l => l.Kind == "full" ? LayerKind.Full : LayerKind.Sparse).ToList())
            : null;
        return new InspectionReport
        {
            Converted = true,
            Native = native,
            SourceStyle = metadata.GetValueOrDefault(HybridMetadata.SourceStyle),
            Layers = layers,
            Failures = [],
            Layout = layout,
            Parameters = parameters,
            WindowCaches = windowCaches,
            Kv = Figures(layers, layout, parameters, contexts, sparseLayersSelect: metadata.GetValueOrDefault(HybridMetadata.Mode) != HybridMetadata.SlidingWindowMode),
            Metadata = metadata,
        };
    }
}
