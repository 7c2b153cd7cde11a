using HySparse.Graph;
using HySparse.Exporter.Recognition;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Rewrite;

/// <summary>
/// <c>--kv-sharing</c> of shared-buffer layers (GroupQueryAttention as onnxruntime-genai's builder emits
/// it): the ops have no window cache in shared-buffer mode, so the layers become concatenating layers
/// instead: past holds the tokens so far, present = past ++ new, the valid lengths come from
/// <c>attention_mask</c> [B, P + S], and each sparse layer's own cache shrinks to its window. RoPE keeps
/// its positions from <c>seqlens_k</c> (computed from the same mask), so the model computes what it
/// computed before. The caller feeds the model as it feeds any concatenating decoder (onnxruntime-genai:
/// <c>past_present_share_buffer = false</c>).
/// </summary>
internal static class ConcatenatedCacheRewrite
{
    /// <summary>
    /// Why the shared-buffer layers among <paramref name="layers"/> cannot become concatenating ones
    /// (empty when they can, or when there are none).
    /// </summary>
    public static IReadOnlyList<UnconvertibleLayer> Refusals(ModelProto model, IReadOnlyList<AttentionLayer> layers)
    {
        var buffered = layers.Where(l => l.Buffer is not null).ToList();
        if (buffered.Count == 0) return [];
        var name = DecomposedAttentionPattern.AttentionMaskInput;
        var mask = model.Graph.Input.FirstOrDefault(i => i.Name == name);
        var type = mask?.Type?.TensorType;
        if (type is null || type.ElemType != (int)DataType.Int64 || type.Shape?.Dim.Count != 2)
            return buffered.Select(l => new UnconvertibleLayer(l.AnchorNode,
                $"--kv-sharing turns the layer's shared buffer into a concatenated cache whose valid lengths the ops read from an int64 [B, total] '{name}' graph input, " +
                "which this model does not have")).ToList();
        var graph = new GraphIndex(model.Graph, model);
        var refusals = buffered.Where(l => !graph.DependsOn(l.Buffer!.SeqlensK, name))
            .Select(l => new UnconvertibleLayer(l.AnchorNode,
                $"--kv-sharing: the layer's seqlens_k '{l.Buffer!.SeqlensK}' is not computed from '{name}', so the lengths the concatenated cache would take from the mask might differ from it"))
            .ToList();
        refusals.AddRange(KvBufferRewrite.PastReadersLeft(model.Graph, layers, buffered,
            "--kv-sharing turns the shared buffers into concatenated caches; the node would see the tokens so far instead of the buffer's capacity"));
        return refusals;
    }

    /// <summary>
    /// Returns <paramref name="layers"/> with every shared-buffer layer made a concatenating one
    /// (nothing in the model changes; the rewriter then wires the ops in their concatenating mode).
    /// </summary>
    /// <exception cref="ConversionException">Some layer cannot be made concatenating (<see cref="Refusals"/>).</exception>
    public static IReadOnlyList<AttentionLayer> Plan(ModelProto model, IReadOnlyList<AttentionLayer> layers)
    {
        var refusals = Refusals(model, layers);
        if (refusals.Count > 0)
            throw new ConversionException(ConversionError.UnconvertibleLayers,
                $"{refusals.Count} shared-buffer layer(s) cannot use KV sharing, first: {refusals[0]}", refusals);
        return layers.Select(l => l.Buffer is null ? l : l with { Buffer = null, AttentionMask = DecomposedAttentionPattern.AttentionMaskInput }).ToList();
    }
}
