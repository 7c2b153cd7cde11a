using System.Globalization;
using HySparse.Onnx;

namespace HySparse.Exporter.Layout;

/// <summary>Why a layout request is invalid (a pattern, ratio or full-layer list, or one that does not fit the model).</summary>
public sealed class LayoutException(string message) : ConversionSettingsException(message);

/// <summary>
/// A layout request as the user wrote it: a pattern (<c>FSSS</c>, repeated over the layers), a
/// ratio (<c>1:3</c>, the same as <c>FSSS</c>), or the explicit list of full layers. Layer 0 must be
/// full (a sparse layer needs a preceding full layer); the last layer is made full unless
/// <see cref="SparseLast"/> is set, as the paper does.
/// </summary>
public sealed record LayoutSpec
{
    private LayoutSpec(string description, string? pattern, IReadOnlyList<int>? fullLayers, bool sparseLast)
    {
        Description = description;
        Letters = pattern;
        FullLayers = fullLayers;
        SparseLast = sparseLast;
    }

    /// <summary>The request in the user's words (for messages and metadata).</summary>
    public string Description { get; }
    /// <summary>
    /// The F/S letters to repeat (the CLI's <c>--pattern</c>), or null when full layers are listed. Called
    /// letters in code because "pattern" there means a graph-recognition rule (<c>IAttentionPattern</c>).
    /// </summary>
    public string? Letters { get; }
    /// <summary>The listed full layers, or null for a pattern.</summary>
    public IReadOnlyList<int>? FullLayers { get; }
    /// <summary>When true the last layer keeps the kind the pattern gives it.</summary>
    public bool SparseLast { get; }

    /// <summary>The default: one full layer then three sparse (the paper's 7B ratio).</summary>
    public static LayoutSpec Default { get; } = Ratio("1:3");

    /// <summary>Layer letters <c>F</c> and <c>S</c> (either case; the CLI's <c>--pattern</c>), repeated to cover the layers.</summary>
    public static LayoutSpec FromLetters(string pattern, bool sparseLast = false)
    {
        var normalized = pattern.Trim().ToUpperInvariant();
        if (normalized.Length == 0) throw new LayoutException("the layout pattern is empty; write it as F and S letters, e.g. FSSS");
        var bad = normalized.FirstOrDefault(ch => ch is not ('F' or 'S'));
        if (bad != default) throw new LayoutException($"layout pattern '{pattern}' holds '{bad}'; use only F (full) and S (sparse), e.g. FSSS");
        if (normalized[0] != 'F') throw new LayoutException($"layout pattern '{pattern}' starts with S; layer 0 must be full because a sparse layer needs a preceding full layer");
        return new LayoutSpec($"pattern {normalized}", normalized, null, sparseLast);
    }

    /// <summary>A ratio <c>1:N</c>: one full layer followed by N sparse layers, repeated.</summary>
    public static LayoutSpec Ratio(string ratio, bool sparseLast = false)
    {
        var parts = ratio.Trim().Split(':');
        if (parts.Length != 2 || parts[0].Trim() != "1" || !int.TryParse(parts[1].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var sparse))
            throw new LayoutException($"layout ratio '{ratio}' is not of the form 1:N (one full layer per N sparse layers), e.g. 1:3");
        if (sparse < 1) throw new LayoutException($"layout ratio '{ratio}' has no sparse layers; N must be at least 1");
        return new LayoutSpec($"ratio 1:{sparse}", "F" + new string('S', sparse), null, sparseLast);
    }

    /// <summary>A comma-separated list of the full layers (0-based), e.g. <c>0,4,8</c>.</summary>
    public static LayoutSpec FromFullLayers(string list, bool sparseLast = false)
    {
        var layers = new List<int>();
        foreach (var item in list.Split(','))
        {
            if (!int.TryParse(item.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var layer))
                throw new LayoutException($"full-layer list '{list}' holds '{item.Trim()}', which is not a layer number; write e.g. 0,4,8");
            if (layers.Contains(layer)) throw new LayoutException($"full-layer list '{list}' names layer {layer} twice");
            layers.Add(layer);
        }
        if (!layers.Contains(0)) throw new LayoutException($"full-layer list '{list}' omits layer 0; layer 0 must be full because a sparse layer needs a preceding full layer");
        layers.Sort();
        return new LayoutSpec($"full layers {string.Join(",", layers)}", null, layers, sparseLast);
    }

    /// <summary>Applies the request to a model with <paramref name="layerCount"/> attention layers.</summary>
    public LayerLayout Plan(int layerCount)
    {
        if (layerCount < 1) throw new LayoutException("the model has no attention layers to lay out");
        var kinds = new LayerKind[layerCount];
        if (Letters is { } pattern)
        {
            for (var i = 0; i < layerCount; i++) kinds[i] = pattern[i % pattern.Length] == 'F' ? LayerKind.Full : LayerKind.Sparse;
        }
        else
        {
            Array.Fill(kinds, LayerKind.Sparse);
            foreach (var layer in FullLayers!)
            {
                if (layer >= layerCount)
                    throw new LayoutException($"full layer {layer} does not exist; the model has {layerCount} attention layers (0 to {layerCount - 1})");
                kinds[layer] = LayerKind.Full;
            }
        }
        if (!SparseLast) kinds[^1] = LayerKind.Full;
        return new LayerLayout(kinds);
    }
}

/// <summary>The kind of every attention layer, in graph order.</summary>
public sealed class LayerLayout
{
    /// <summary>Wraps per-layer kinds; layer 0 must be full.</summary>
    public LayerLayout(IReadOnlyList<LayerKind> kinds)
    {
        if (kinds.Count == 0 || kinds[0] != LayerKind.Full) throw new LayoutException("layer 0 must be full");
        Kinds = kinds;
    }

    /// <summary>Kind of each layer.</summary>
    public IReadOnlyList<LayerKind> Kinds { get; }

    /// <summary>Number of layers.</summary>
    public int Count => Kinds.Count;

    /// <summary>One letter per layer: <c>FSSSFSSF</c>.</summary>
    public string Letters => new(Kinds.Select(k => k == LayerKind.Full ? 'F' : 'S').ToArray());

    /// <summary>Indices of the full layers.</summary>
    public IReadOnlyList<int> FullLayers => Enumerable.Range(0, Count).Where(i => Kinds[i] == LayerKind.Full).ToArray();

    /// <summary>Number of sparse layers.</summary>
    public int SparseCount => Kinds.Count(k => k == LayerKind.Sparse);

    /// <summary>The full layer whose selection sparse layer <paramref name="layer"/> uses: the nearest one before it.</summary>
    public int OracleOf(int layer)
    {
        if (Kinds[layer] != LayerKind.Sparse) throw new ArgumentException($"layer {layer} is full, not sparse");
        for (var i = layer - 1; i >= 0; i--)
            if (Kinds[i] == LayerKind.Full) return i;
        throw new InvalidOperationException("unreachable: layer 0 is full");
    }

    /// <summary>True when full layer <paramref name="layer"/> is followed by a sparse layer that reads its selection.</summary>
    public bool FeedsSparseLayers(int layer) =>
        Kinds[layer] == LayerKind.Full && layer + 1 < Count && Kinds[layer + 1] == LayerKind.Sparse;
}
