using System.Globalization;
using System.Reflection;
using HySparse.Graph;
using HySparse.Exporter.Layout;
using HySparse.Exporter.Recognition;
using HySparse.Exporter.Rewrite;
using HySparse.Onnx;
using Onnx;

namespace HySparse.Exporter;

/// <summary>
/// Converts exported decoders into hybrid HySparse models. The rewrite changes graph structure only:
/// weights are never decoded or copied beyond what parsing the graph protobuf takes.
/// </summary>
public static class HybridConverter
{
    /// <summary>Every attention style the converter recognises.</summary>
    public static IReadOnlyList<IAttentionPattern> Patterns { get; } =
        [new DecomposedAttentionPattern(), new GroupQueryAttentionPattern(), new MultiHeadAttentionPattern(), new ContribAttentionPattern(), new OnnxAttentionPattern()];

    /// <summary>Finds the attention layers of <paramref name="model"/> (it is not modified).</summary>
    public static ModelAnalysis Analyse(ModelProto model)
    {
        var graph = new GraphIndex(model.Graph, model);
        var found = new List<(int Position, AttentionLayer Layer)>();
        var failures = new List<(int Position, UnconvertibleLayer Failure)>();
        foreach (var pattern in Patterns)
            foreach (var anchor in pattern.Anchors(graph))
            {
                var match = pattern.Match(graph, anchor);
                if (match.Layer is { } layer) found.Add((graph.PositionOf(anchor), layer));
                else failures.Add((graph.PositionOf(anchor), match.Failure!));
            }
        // Two layers claiming one node (a cache or mask path shared across layers) cannot both be
        // replaced: refuse both rather than rewrite one and starve the other.
        var owners = new Dictionary<NodeProto, AttentionLayer>(ReferenceEqualityComparer.Instance);
        var clashing = new HashSet<AttentionLayer>(ReferenceEqualityComparer.Instance);
        foreach (var (position, layer) in found)
            foreach (var node in layer.ReplacedNodes)
            {
                if (owners.TryAdd(node, layer)) continue;
                if (clashing.Add(layer))
                    failures.Add((position, new UnconvertibleLayer(layer.AnchorNode, $"shares node '{AttentionMatch.NodeLabel(node)}' with the layer at '{owners[node].AnchorNode}'")));
                if (clashing.Add(owners[node]))
                    failures.Add((found.First(f => f.Layer == owners[node]).Position,
                        new UnconvertibleLayer(owners[node].AnchorNode, $"shares node '{AttentionMatch.NodeLabel(node)}' with the layer at '{layer.AnchorNode}'")));
            }
        return new ModelAnalysis(
            found.Where(f => !clashing.Contains(f.Layer)).OrderBy(f => f.Position).Select(f => f.Layer).ToList(),
            failures.OrderBy(f => f.Position).Select(f => f.Failure).ToList());
    }

    /// <summary>True when the model already carries HySparse operators or conversion metadata.</summary>
    public static bool IsConverted(ModelProto model) =>
        model.OpsetImport.Any(o => o.Domain == HySparseOps.Domain)
        || model.Graph?.Node.Any(n => n.Domain == HySparseOps.Domain) == true
        || model.MetadataProps.Any(p => p.Key.StartsWith(HybridMetadata.Prefix, StringComparison.Ordinal));

    /// <summary>True when the model says it was built or trained as a hybrid (<see cref="HybridMetadata.NativeMode"/>
    /// or <see cref="HybridMetadata.SlidingWindowMode"/>): it has no dense original.</summary>
    public static bool IsNative(ModelProto model) =>
        model.MetadataProps.Any(p => p.Key == HybridMetadata.Mode && p.Value is HybridMetadata.NativeMode or HybridMetadata.SlidingWindowMode);

    /// <summary>Converts a copy of <paramref name="source"/>; the source is left as it was.</summary>
    public static (ModelProto Model, ConversionReport Report) Convert(ModelProto source, ConversionOptions options)
    {
        var copy = source.Clone();
        return (copy, ConvertInPlace(copy, options));
    }

    /// <summary>
    /// Reads <paramref name="inputPath"/>, converts it and writes <paramref name="outputPath"/>
    /// atomically. The input file is only read. Nothing is written when the conversion is refused.
    /// </summary>
    /// <param name="inputPath">Dense model to read.</param>
    /// <param name="outputPath">Where to write the hybrid model.</param>
    /// <param name="options">Layout and parameters.</param>
    /// <param name="overwrite">Replace an existing output file.</param>
    /// <param name="progress">Told when each step (read, rewrite, write) starts, for long conversions.</param>
    public static ConversionReport ConvertFile(string inputPath, string outputPath, ConversionOptions options, bool overwrite = false, Action<string>? progress = null)
    {
        var input = Path.GetFullPath(inputPath);
        var output = Path.GetFullPath(outputPath);
        if (string.Equals(input, output, StringComparison.Ordinal) || FileIdentity.Same(input, output))
            throw new ConversionException(ConversionError.InvalidOutput, $"output '{outputPath}' is the input file; the converter never modifies its input, choose another path");
        if (!Directory.Exists(Path.GetDirectoryName(output)))
            throw new ConversionException(ConversionError.InvalidOutput, $"output directory '{Path.GetDirectoryName(output)}' does not exist");
        if (Directory.Exists(output))
            throw new ConversionException(ConversionError.InvalidOutput, $"output '{outputPath}' is a directory; give a file path");
        if (File.Exists(output) && !overwrite)
            throw new ConversionException(ConversionError.InvalidOutput, $"output '{outputPath}' exists; pass --overwrite to replace it");

        if (!File.Exists(input))
            throw new ConversionException(ConversionError.InvalidModel, Directory.Exists(input) ? $"'{inputPath}' is a directory, not a model file" : $"cannot read '{inputPath}': no such file");
        progress?.Invoke($"reading {inputPath} ({new FileInfo(input).Length:N0} bytes)");
        var model = ModelFile.Load(input);
        if (!string.Equals(Path.GetDirectoryName(input), Path.GetDirectoryName(output), StringComparison.Ordinal))
        {
            // External data is found relative to the model file: written elsewhere, the output is valid
            // only where the same files stand beside it (a model folder conversion copies them first).
            var missing = ExternalData.Files(model).Where(f => !File.Exists(Path.Combine(Path.GetDirectoryName(output)!, f))).ToList();
            if (missing.Count > 0)
                throw new ConversionException(ConversionError.UnsupportedExternalData,
                    $"the model keeps weights in external data files found relative to its directory ({string.Join(", ", missing)}); " +
                    $"write the output into '{Path.GetDirectoryName(input)}' or copy those files beside the output first");
        }
        progress?.Invoke($"rewriting {model.Graph.Node.Count:N0} nodes");
        var report = ConvertInPlace(model, options);
        progress?.Invoke($"writing {outputPath}");
        ModelFile.WriteAtomically(model, output, overwrite, progress);
        return report;
    }

    /// <summary>Converts <paramref name="model"/> itself; on refusal it is left unchanged.</summary>
    public static ConversionReport ConvertInPlace(ModelProto model, ConversionOptions options)
    {
        ModelFile.Validate(model, model.Graph?.Name is { Length: > 0 } name ? $"model '{name}'" : "model");
        if (IsNative(model))
            throw new ConversionException(ConversionError.AlreadyConverted,
                "the model is HySparse-native (hysparse.mode = native): its layers already are HySparse full and sparse layers, so there is nothing to convert");
        if (IsConverted(model))
            throw new ConversionException(ConversionError.AlreadyConverted,
                "the model is already converted (it holds com.hysparse operators or hysparse.* metadata); convert the original dense model instead");
        options.Parameters.Validate();

        var analysis = Analyse(model);
        if (analysis.Failures.Count > 0)
            throw new ConversionException(ConversionError.UnconvertibleLayers,
                $"{analysis.Failures.Count} attention layer(s) cannot be converted, first: {analysis.Failures[0]}", analysis.Failures);
        if (analysis.Layers.Count == 0)
            throw new ConversionException(ConversionError.NoAttention,
                "no attention layer found: the model has no MatMul → Softmax → MatMul, GroupQueryAttention, MultiHeadAttention, com.microsoft.Attention or ONNX Attention layer the converter recognises");
        var layout = options.Layout.Plan(analysis.Layers.Count);
        SharedKvBuffer? kvBuffer = null;
        if (options.KvBuffer)
        {
            analysis = analysis with { Layers = KvBufferRewrite.Plan(model, analysis.Layers, options.Parameters, out var buffer) };
            kvBuffer = buffer;
        }
        var buffersConcatenated = false;
        if (options.Parameters.Mode == HybridMode.KvSharing)
        {
            if (analysis.Layers.Any(l => l.Buffer is not null))
            {
                analysis = analysis with { Layers = ConcatenatedCacheRewrite.Plan(model, analysis.Layers) };
                buffersConcatenated = true;
            }
            CheckSharedCaches(analysis.Layers, layout);
        }

        if (kvBuffer is not null) KvBufferRewrite.Apply(model, analysis.Layers, kvBuffer);
        var (ops, windowCaches) = HybridRewriter.Apply(model, analysis.Layers, layout, options.Parameters);
        var rotary = options.FuseRotary ? RotaryFusionRewrite.Apply(model, analysis.Layers) : new RotaryFusionRewrite.Result(0, []);
        var metadata = Metadata(analysis, layout, options, windowCaches, buffersConcatenated);
        foreach (var (key, value) in metadata) model.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });

        var layers = analysis.Layers.Select((layer, i) => new ConvertedLayer(
            i, layer.CacheIndex, layout.Kinds[i], layer.AnchorNode, ops[i].Name,
            layout.Kinds[i] == LayerKind.Sparse ? layout.OracleOf(i) : null)).ToList();
        return new ConversionReport { Style = analysis.Style!.Value, Layout = layout, Parameters = options.Parameters, Layers = layers, Metadata = metadata, WindowCaches = windowCaches,
            BuffersConcatenated = buffersConcatenated,
            FusedRotaries = rotary.Fused,
            RotariesLeftDecomposed = rotary.LeftDecomposed,
            Cache = CacheGeometry.Common(analysis.Layers.Select(l => new CacheGeometry(l.KvNumHeads, l.HeadSize, Tensors.ElementSize(l.ElementType)))),
        };
    }

    private static Dictionary<string, string> Metadata(ModelAnalysis analysis, LayerLayout layout, ConversionOptions options, IReadOnlyList<string> windowCaches,
                                                       bool buffersConcatenated)
    {
        string Number(long n) => n.ToString(CultureInfo.InvariantCulture);
        var p = options.Parameters;
        var sharedBuffers = analysis.Layers.Any(l => l.Buffer is not null);
        var metadata = new Dictionary<string, string>
        {
            [HybridMetadata.FormatVersion] = "1",
            [HybridMetadata.Mode] = p.ModeName,
            [HybridMetadata.Layout] = layout.Letters,
            [HybridMetadata.FullLayers] = string.Join(",", layout.FullLayers),
            [HybridMetadata.TopK] = Number(p.TopK),
            [HybridMetadata.BlockSize] = Number(p.BlockSize),
            [HybridMetadata.Window] = Number(p.Window),
            [HybridMetadata.Combine] = HySparseOps.CombineModes.Union,
            [HybridMetadata.SourceStyle] = analysis.Style!.Value.ToString().ToLowerInvariant(),
            [HybridMetadata.Request] = options.Layout.Description + (options.Layout.SparseLast ? ", sparse last" : ""),
            [HybridMetadata.InterfaceChanges] = windowCaches.Count > 0 ? (buffersConcatenated ? BuffersConcatenatedChange : "") + WindowCacheChange(p.Window, WindowCacheLayers(analysis.Layers, layout))
                : options.KvBuffer ? KvBufferChange : sharedBuffers ? SharedBufferChange : "none",
            [HybridMetadata.KvCache] = sharedBuffers ? HybridMetadata.SharedBufferCache : HybridMetadata.ConcatenatedCache,
            [HybridMetadata.Converter] = $"HySparse.Exporter {typeof(HybridConverter).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown"}",
        };
        if (windowCaches.Count > 0) metadata[HybridMetadata.WindowCaches] = string.Join(",", windowCaches);
        return metadata;
    }

    /// <summary>Why KV sharing cannot convert some of <paramref name="layers"/> (shared buffers that cannot become concatenated caches).</summary>
    internal static IReadOnlyList<UnconvertibleLayer> KvSharingRefusals(ModelProto model, IReadOnlyList<AttentionLayer> layers) =>
        ConcatenatedCacheRewrite.Refusals(model, layers);

    /// <summary>
    /// With KV sharing a sparse layer reads the full layer's cache as its own keys: heads, head size
    /// and element type must agree, or the op would refuse the model when a session loads it.
    /// </summary>
    private static void CheckSharedCaches(IReadOnlyList<AttentionLayer> layers, LayerLayout layout)
    {
        static string Geometry(AttentionLayer l) => $"{l.KvNumHeads} KV heads of size {l.HeadSize}, {l.ElementType.ToString().ToLowerInvariant()}";
        var mismatches = new List<UnconvertibleLayer>();
        for (var i = 0; i < layers.Count; i++)
        {
            if (layout.Kinds[i] != LayerKind.Sparse) continue;
            var (own, shared) = (layers[i], layers[layout.OracleOf(i)]);
            if (own.KvNumHeads != shared.KvNumHeads || own.HeadSize != shared.HeadSize || own.ElementType != shared.ElementType)
                mismatches.Add(new UnconvertibleLayer(own.AnchorNode,
                    $"--kv-sharing: its cache ({Geometry(own)}) differs from that of full layer {layout.OracleOf(i)} ({Geometry(shared)}), which it would read"));
        }
        if (mismatches.Count > 0)
            throw new ConversionException(ConversionError.UnconvertibleLayers,
                $"{mismatches.Count} sparse layer(s) cannot share their full layer's cache, first: {mismatches[0]}", mismatches);
    }

    /// <summary>What converting a shared-buffer (GroupQueryAttention) model changes for whoever feeds it.</summary>
    private const string SharedBufferChange =
        "the KV caches are shared buffers only: each past_key_values.N.* must have room for the whole sequence (capacity C >= the total length, " +
        "as onnxruntime-genai allocates them with past_present_share_buffer), present.N.* has the past's shape [B, H_kv, C, D] and may be bound to the same memory; " +
        "caches holding just the tokens so far (past length P < P + S), which GroupQueryAttention also accepts, are refused by the HySparse operators";

    /// <summary>What KV sharing of a shared-buffer (GroupQueryAttention) model changes first: the caches stop being buffers.</summary>
    private const string BuffersConcatenatedChange =
        "the shared KV buffers become concatenated caches (the HySparse ops keep window caches only in that convention): each past_key_values.N.* holds the tokens so far " +
        "and present.N.* = past ++ new, with valid lengths from attention_mask [B, P + S] (onnxruntime-genai: past_present_share_buffer = false); ";

    /// <summary>What converting concatenated caches into in-place buffers (<c>--kv-buffer</c>) changes for whoever feeds the model.</summary>
    private const string KvBufferChange =
        "the KV caches are buffers updated in place (--kv-buffer): each past_key_values.N.* is [B, H_kv, C, D] with room for the whole sequence " +
        $"(dim 2 '{KvBufferRewrite.CapacityDim}', C >= the total length; caches holding just the tokens so far are refused), present.N.* has the same shape and may be bound to the same memory; " +
        "attention_mask keeps its [B, P + S] meaning but padding may only be on the right of the first prompt (left padding cannot be expressed: row b's tokens sit at [0, total_b) of its buffer)";

    /// <summary>Sparse layers with a cache, whose caches KV sharing turns into window caches.</summary>
    private static int WindowCacheLayers(IReadOnlyList<AttentionLayer> layers, LayerLayout layout) =>
        Enumerable.Range(0, layers.Count).Count(i => layout.Kinds[i] == LayerKind.Sparse && layers[i].HasKvCache);

    /// <summary>What a KV-sharing conversion changes for whoever feeds the model, in one sentence.</summary>
    private static string WindowCacheChange(int window, int sparseLayers) =>
        $"the past/present caches of the {sparseLayers} sparse layer(s) (listed in {HybridMetadata.WindowCaches}) are window caches: " +
        $"a past input holds the last min({window}, T - S) tokens (length dim '{HybridMetadata.PastWindowDim}': dim 2, or 3 of a combined [2, B, H, T, D] cache; empty at the first call), " +
        $"a present output the last min({window}, T) (length dim '{HybridMetadata.PresentWindowDim}'); feed each present back as the next past; " +
        "full layers' caches keep the whole sequence";
}
