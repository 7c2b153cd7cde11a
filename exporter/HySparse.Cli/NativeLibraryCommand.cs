using System.CommandLine;
using HySparse.Onnx;

namespace HySparse.Cli;

/// <summary>
/// <c>hysparse native-library</c>: prints the path of the HySparse custom-op library this tool carries,
/// for users of ONNX Runtime from Python or C++ (<c>SessionOptions.register_custom_ops_library(path)</c>,
/// <c>Ort::SessionOptions::RegisterCustomOpsLibrary</c>) and for onnxruntime-genai's
/// <c>custom_ops_library</c>.
/// </summary>
internal sealed class NativeLibraryCommand : Verb
{
    private readonly Option<bool> _json = SharedOptions.Json("path, tool version, runtime identifier and ONNX Runtime version");

    public NativeLibraryCommand() : base("native-library", "print the path of the HySparse custom-op library this tool carries")
    {
        Options.Add(_json);
        Details = """
            Details:
              Converted models need the com.hysparse operators registered in ONNX Runtime. From C#, the
              HySparse.Onnx package does it (sessionOptions.RegisterHySparseOps()); from Python or C++,
              register this file (onnxruntime-genai: custom_ops_library):
                python:  so.register_custom_ops_library(path)
                C++:     session_options.RegisterCustomOpsLibrary(path)

            """;
    }

    public override string PositionalError(IReadOnlyList<string> given) => "native-library takes no arguments";

    protected override int Run(ParseResult parse, TextWriter stdout, TextWriter stderr)
    {
        var json = parse.GetValue(_json);
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
