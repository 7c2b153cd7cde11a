namespace HySparse.Exporter;

/// <summary>
/// A conversion setting the user chose is invalid: the layer layout (<see cref="Layout.LayoutException"/>)
/// or the sparse-attention parameters (<see cref="HybridParametersException"/>). Thrown before any
/// file is read or written; the CLI reports it as a usage error.
/// </summary>
public abstract class ConversionSettingsException(string message) : ArgumentException(message);

/// <summary>A top-K, block size or window out of the operators' range (<see cref="HybridParameters.Validate"/>).</summary>
public sealed class HybridParametersException(string message) : ConversionSettingsException(message);
