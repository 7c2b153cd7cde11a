using HySparse.Exporter;

namespace HySparse.Cli;

/// <summary>Process exit codes of <c>hysparse</c>; <c>--help</c> lists them.</summary>
public static class ExitCodes
{
    /// <summary>Done.</summary>
    public const int Success = 0;
    /// <summary>A bug: an unexpected exception (its message is printed).</summary>
    public const int InternalError = 1;
    /// <summary>Bad command line: unknown verb or option, missing or malformed value, invalid layout.</summary>
    public const int Usage = 2;
    /// <summary>The input is missing, unreadable, or not a complete ONNX model.</summary>
    public const int InvalidModel = 3;
    /// <summary>The model cannot be converted: no attention, unconvertible layers, already converted, external data.</summary>
    public const int Refused = 4;
    /// <summary>The output path cannot be used (exists, is the input, directory missing) or cannot be written
    /// (permission denied, read-only file system, disk full, another conversion created it meanwhile).</summary>
    public const int InvalidOutput = 5;
    /// <summary>A signal (SIGINT, SIGTERM, SIGHUP) interrupted the write; the temporary file was removed and the output left as it was.</summary>
    public const int Interrupted = 130;

    /// <summary>The exit code for a refused conversion.</summary>
    public static int For(ConversionError error) => error switch
    {
        ConversionError.InvalidModel => InvalidModel,
        ConversionError.InvalidLayout => Usage,
        ConversionError.InvalidOutput => InvalidOutput,
        _ => Refused,
    };
}
