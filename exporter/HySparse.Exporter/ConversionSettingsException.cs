namespace HySparse.Exporter;

/// <summary>
/// A setting the user chose is invalid: the layer layout (<see cref="Layout.LayoutException"/>), the
/// sparse-attention parameters (<see cref="HybridParametersException"/>) or the test prompt of a
/// verification (<see cref="VerifySettingsException"/>). Thrown before any file is written; the CLI
/// reports it as a usage error with the message as it is, so messages name the option at fault.
/// </summary>
public abstract class ConversionSettingsException(string message) : ArgumentException(message);

/// <summary>A top-K, block size or window out of the operators' range (<see cref="HybridParameters.Validate"/>).</summary>
public sealed class HybridParametersException(string message) : ConversionSettingsException(message);

/// <summary>
/// A verification's prompt settings out of range (<see cref="VerifyOptions"/>): prompt length, batch or
/// decode steps, a copy test's prompt too short to repeat, or a token range outside the model's
/// vocabulary — the last known only once the model is read.
/// </summary>
public sealed class VerifySettingsException(string message) : ConversionSettingsException(message);
