using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;

namespace HySparse.Cli;

/// <summary>A command line the user got wrong; exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>
/// The <c>hysparse</c> command line on System.CommandLine: the root command and its verbs, the help
/// and version actions, and the translation of System.CommandLine's parse errors into the tool's
/// one-line usage errors (<see cref="UsageError"/>).
/// </summary>
internal static class CommandLineSyntax
{
    /// <summary>Response files are off: an argument starting with @ is a path like any other.</summary>
    public static readonly ParserConfiguration Parser = new() { ResponseFileTokenReplacer = null };

    /// <summary>
    /// The root command: the verbs, <c>--help</c> (System.CommandLine's help, then the verb's
    /// <see cref="Verb.Details"/>), <c>--version</c> and the <c>[suggest]</c> directive that shell
    /// completion (dotnet-suggest) uses.
    /// </summary>
    public static RootCommand Root()
    {
        var root = new RootCommand(Overview);
        foreach (var verb in new Verb[] { new ConvertCommand(), new GenerateCommand(), new InspectCommand(), new VerifyCommand(), new ScanLayersCommand(), new DemoCommand(), new NativeLibraryCommand() })
            root.Subcommands.Add(verb);
        foreach (var option in root.Options)
        {
            if (option is HelpOption { Action: HelpAction generated } help) help.Action = new HelpWithDetails(generated);
            if (option is VersionOption version) version.Action = new PrintVersion();
        }
        return root;
    }

    /// <summary>
    /// The tool's one-line usage error for <paramref name="parse"/>, or null when the command line is
    /// fine. System.CommandLine words some problems its own way; these are translated into the messages
    /// the tool has always printed (tests and scripts match them):
    /// <list type="bullet">
    /// <item>no verb matched → <c>unknown command 'X'</c>;</item>
    /// <item>a value <see cref="OptionValues"/> refused → its message, as it is;</item>
    /// <item>"expects a single argument but 2 were provided" → <c>option --x is given twice</c>;</item>
    /// <item>"Required argument missing for option" → <c>option --x needs a value</c>;</item>
    /// <item>a positional argument starting with '-' (no option of the verb took it) → <c>unknown option --x</c>;</item>
    /// <item>too few or too many positional arguments → the verb's <see cref="Verb.PositionalError"/>.</item>
    /// </list>
    /// </summary>
    public static string? UsageError(ParseResult parse)
    {
        if (parse.CommandResult.Command is not Verb verb)
            return parse.Errors.Count == 0 ? null : $"unknown command '{(parse.Tokens.Count > 0 ? parse.Tokens[0].Value : "")}'";
        foreach (var error in parse.Errors)
        {
            if (error.SymbolResult is not OptionResult option) continue;
            var arity = option.Option.Arity;
            return option.Tokens.Count > arity.MaximumNumberOfValues ? $"option {option.Option.Name} is given twice"
                : option.Tokens.Count < arity.MinimumNumberOfValues ? $"option {option.Option.Name} needs a value"
                : error.Message;
        }
        // Positional arguments fill the verb's arguments in order; the rest are unmatched tokens.
        var positionals = verb.Arguments.SelectMany(a => parse.GetResult(a)?.Tokens ?? []).Select(t => t.Value)
            .Concat(parse.UnmatchedTokens).ToList();
        if (positionals.FirstOrDefault(a => a.StartsWith('-') && a.Length > 1) is { } unknown)
            return $"unknown option {(unknown.StartsWith("--", StringComparison.Ordinal) ? unknown.Split('=')[0] : unknown)}";
        return parse.Errors.Count > 0 ? verb.PositionalError(positionals) : null;
    }

    /// <summary>The description <c>hysparse --help</c> starts with.</summary>
    private const string Overview = """
        hysparse - turn exported ONNX transformer decoders into hybrid HySparse models

        A HySparse model keeps a few layers as full attention. Each full layer also acts as an
        oracle: for every token it picks the top-K blocks of B keys with the highest attention. The
        sparse layers after it attend only to those blocks plus a sliding window of the last w
        tokens. When the selected blocks and the window cover the whole context (K*B >= context,
        or w >= context) the hybrid computes exactly what the dense model computes; beyond that, a
        sparse layer reads at most K*B + w keys per token instead of all of them.
        """;

    /// <summary>What <c>hysparse --help</c> prints after the generated sections.</summary>
    private const string OverviewDetails = """
        Synopsis:
          hysparse convert <model.onnx | genai folder> [-o <out>] [layout] [parameters]
          hysparse generate <genai folder> (--prompt TEXT | --ids 1,2,3) [-n 64]
          hysparse inspect <model.onnx | genai folder> [--context 4096,32k] [layout] [parameters]
          hysparse verify <dense> <converted> [--prompt 64] [--steps 8]   (files or genai folders)
          hysparse demo [--dir DIR] [--prompt 256] [--steps 16] [layout] [parameters]
          hysparse native-library [--json]
          hysparse --version
          hysparse <command> --help

        Common options:
          --json    machine-readable output on stdout (errors too: {"ok": false, ...})
          --help    help for a command

        Exit codes:
          0 success   2 bad command line or layout   3 input is not a readable ONNX model
          4 model refused (no attention, unconvertible layers, already converted)
          5 output path unusable or not writable   130 interrupted   1 internal error

        Converted models run in ONNX Runtime with the HySparse custom-op library registered
        (C#: sessionOptions.RegisterHySparseOps()).

        """;

    /// <summary>System.CommandLine's help, then the verb's <see cref="Verb.Details"/> (the overview's for the root).</summary>
    private sealed class HelpWithDetails(HelpAction generated) : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parse)
        {
            generated.MaxWidth = Width();
            generated.Invoke(parse);
            parse.InvocationConfiguration.Output.Write(parse.CommandResult.Command is Verb verb ? verb.Details : OverviewDetails);
            return 0;
        }

        // The terminal's width up to 100 columns (the hand-wrapped details are as wide); 100 when redirected.
        private static int Width()
        {
            if (Console.IsOutputRedirected) return 100;
            try
            {
                return Console.WindowWidth is var width and >= 40 ? Math.Min(width, 100) : 100;
            }
            catch (IOException)
            {
                return 100;
            }
        }
    }

    /// <summary><c>--version</c>: the package version, without the build metadata System.CommandLine would add.</summary>
    private sealed class PrintVersion : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parse)
        {
            parse.InvocationConfiguration.Output.WriteLine(CliApp.Version);
            return 0;
        }
    }
}
