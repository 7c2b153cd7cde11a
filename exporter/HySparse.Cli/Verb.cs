using System.CommandLine;

namespace HySparse.Cli;

/// <summary>
/// One <c>hysparse</c> command (convert, inspect, …): its arguments and options, declared once as
/// fields of the subclass, the text its <c>--help</c> adds after the generated sections, and what it
/// does with a parsed command line.
/// </summary>
internal abstract class Verb : Command
{
    /// <summary>A verb named <paramref name="name"/>; <paramref name="summary"/> is the line <c>hysparse --help</c> lists it with.</summary>
    protected Verb(string name, string summary) : base(name, summary) =>
        SetAction(parse => Run(parse, parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error));

    /// <summary>What <c>--help</c> prints after Usage, Arguments and Options: how it works, examples.</summary>
    public string Details { get; protected init; } = "";

    /// <summary>
    /// The usage error for positional arguments that do not fit (too few, too many, or any for a
    /// verb that takes none); <paramref name="given"/> are all the non-option arguments.
    /// </summary>
    public abstract string PositionalError(IReadOnlyList<string> given);

    /// <summary>Runs the verb; returns the exit code (see <see cref="ExitCodes"/>).</summary>
    protected abstract int Run(ParseResult parse, TextWriter stdout, TextWriter stderr);
}
