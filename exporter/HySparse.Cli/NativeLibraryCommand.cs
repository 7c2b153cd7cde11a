using HySparse.Onnx;

namespace HySparse.Cli;

/// <summary>
/// <c>hysparse native-library</c>: prints the path of the HySparse custom-op library this tool carries,
/// for users of ONNX Runtime from Python or C++ (<c>SessionOptions.register_custom_ops_library(path)</c>,
/// <c>Ort::SessionOptions::RegisterCustomOpsLibrary</c>) and for onnxruntime-genai's
/// <c>custom_ops_library</c>.
/// </summary>
internal static class NativeLibraryCommand
{
    public static int Run(ArgumentReader reader, TextWriter stdout)
    {
        var json = reader.Flag("--json");
        if (reader.Positionals().Count > 0) throw new UsageException("native-library takes no arguments");
        var path = HySparseNativeLibrary.Locate();
        if (json)
        {
            CliApp.WriteJson(stdout, new
            {
                ok = true,
                path,
                version = CliApp.Version,
                runtimeIdentifier = HySparseNativeLibrary.PortableRuntimeIdentifier,
                onnxRuntime = Microsoft.ML.OnnxRuntime.OrtEnv.Instance().GetVersionString(),
            });
        }
        else
        {
            // The bare path, so that `$(hysparse native-library)` works in a shell.
            stdout.WriteLine(path);
        }
        return ExitCodes.Success;
    }
}
