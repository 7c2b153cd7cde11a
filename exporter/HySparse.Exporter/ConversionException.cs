using HySparse.Exporter.Recognition;

namespace HySparse.Exporter;

/// <summary>Why a conversion or inspection was refused.</summary>
public enum ConversionError
{
    /// <summary>The file is missing, unreadable or not a complete ONNX model.</summary>
    InvalidModel,
    /// <summary>The model has no attention layer the converter recognises.</summary>
    NoAttention,
    /// <summary>The model already holds HySparse operators.</summary>
    AlreadyConverted,
    /// <summary>Some attention layers cannot be converted (see <see cref="ConversionException.Layers"/>).</summary>
    UnconvertibleLayers,
    /// <summary>The layout or a sparse parameter is invalid for this model.</summary>
    InvalidLayout,
    /// <summary>The output path is unusable (exists, equals the input, directory missing).</summary>
    InvalidOutput,
    /// <summary>The model keeps weights in external files in a way this converter cannot carry over.</summary>
    UnsupportedExternalData,
}

/// <summary>A refused conversion, with a one-line message and, for layers, the node-level reasons.</summary>
public sealed class ConversionException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ConversionException(ConversionError error, string message, IReadOnlyList<UnconvertibleLayer>? layers = null, Exception? inner = null)
        : base(message, inner)
    {
        Error = error;
        Layers = layers ?? [];
    }

    /// <summary>The kind of refusal.</summary>
    public ConversionError Error { get; }

    /// <summary>For <see cref="ConversionError.UnconvertibleLayers"/>: every layer that failed and why.</summary>
    public IReadOnlyList<UnconvertibleLayer> Layers { get; }
}
