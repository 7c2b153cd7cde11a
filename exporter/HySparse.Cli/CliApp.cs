using System.CommandLine;
using System.CommandLine.Invocation;
using System.Text.Json;
using System.Text.Json.Serialization;
using HySparse.Exporter;
using HySparse.Exporter.Layout;

namespace HySparse.Cli;

/// <summary>The <c>hysparse</c> command line: dispatch, error reporting, exit codes.</summary>
public static class CliApp
{
    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        // Paths and messages hold quotes and non-ASCII; stdout is not HTML, so keep them readable.
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.CamelCase) },
    };

    /// <summary>Runs one command; returns the process exit code (see <see cref="ExitCodes"/>).</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var json = args.Contains("--json");
        var root = CommandLineSyntax.Root();
        var verb = args.FirstOrDefault();
        try
        {
            // `hysparse` alone prints the overview as a usage error; `hysparse help` as the answer.
            var parse = root.Parse(verb is null or "help" ? ["--help"] : args, CommandLineSyntax.Parser);
            // Help, --version and directives are System.CommandLine's; a verb's own action runs only
            // on a command line without usage errors.
            if (parse.Action is null or ParseErrorAction || parse.Action == parse.CommandResult.Command.Action)
            {
                if (CommandLineSyntax.UsageError(parse) is { } message) throw new UsageException(message);
            }
            var code = parse.Invoke(new InvocationConfiguration
            {
                Output = stdout,
                Error = stderr,
                // Errors are reported below; signals are the converter's to handle (ExitCodes.Interrupted).
                EnableDefaultExceptionHandler = false,
                ProcessTerminationTimeout = null,
            });
            return verb is null ? ExitCodes.Usage : code;
        }
        catch (UsageException e)
        {
            return Fail(stdout, stderr, json, ExitCodes.Usage, "usage", e.Message,
                $"run 'hysparse {(root.Subcommands.Any(c => c.Name == verb) ? verb + " " : "")}--help' for usage");
        }
        catch (ConversionSettingsException e)
        {
            return Fail(stdout, stderr, json, ExitCodes.Usage, e switch
            {
                HybridParametersException => "invalidParameters",
                VerifySettingsException => "invalidVerifySettings",
                _ => "invalidLayout",
            }, e.Message, null);
        }
        catch (ConversionException e)
        {
            var code = Fail(stdout, stderr, json, ExitCodes.For(e.Error), JsonNamingPolicy.CamelCase.ConvertName(e.Error.ToString()), e.Message, null,
                e.Layers.Count > 0 ? e.Layers : null);
            foreach (var layer in e.Layers) stderr.WriteLine($"  {layer.Node}: {layer.Reason}");
            return code;
        }
        catch (Microsoft.ML.OnnxRuntimeGenAI.OnnxRuntimeGenAIException e)
        {
            // genai refuses folders it cannot run (config errors, missing files, shapes): the input's fault.
            return Fail(stdout, stderr, json, ExitCodes.InvalidModel, "genai", $"onnxruntime-genai: {e.Message}", null);
        }
        catch (OperationCanceledException e)
        {
            // A signal interrupted a write: its temporary file is gone and the output untouched.
            return Fail(stdout, stderr, json, ExitCodes.Interrupted, "interrupted", e.Message, null);
        }
        catch (Exception e)
        {
            return Fail(stdout, stderr, json, ExitCodes.InternalError, "internal", $"{e.GetType().Name}: {e.Message}", "this is a bug; please report it with the command line");
        }
    }

    /// <summary>The tool's version (the package version, without build metadata).</summary>
    internal static string Version
    {
        get
        {
            var informational = typeof(CliApp).Assembly
                .GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
                .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion;
            return informational?.Split('+')[0] ?? typeof(CliApp).Assembly.GetName().Version?.ToString() ?? "unknown";
        }
    }

    /// <summary>Writes <paramref name="value"/> as indented camelCase JSON.</summary>
    internal static void WriteJson(TextWriter stdout, object value) => stdout.WriteLine(JsonSerializer.Serialize(value, Json));

    private static int Fail(TextWriter stdout, TextWriter stderr, bool json, int code, string kind, string message, string? hint, object? details = null)
    {
        // One line on stderr whatever else is printed, so scripts and people both see the reason.
        stderr.WriteLine($"hysparse: error: {message}");
        if (hint is not null && !json) stderr.WriteLine($"hysparse: {hint}");
        if (json) WriteJson(stdout, new { ok = false, exitCode = code, error = new { kind, message, layers = details } });
        return code;
    }
}
