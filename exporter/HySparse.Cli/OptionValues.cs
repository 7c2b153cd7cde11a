using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;

namespace HySparse.Cli;

/// <summary>
/// Custom parsers of option values (<see cref="Option{T}.CustomParser"/>). Each reports a bad value as
/// one parse error in the tool's words ("option --top-k needs a positive integer, not '0'"), which
/// <see cref="CommandLineSyntax.UsageError"/> passes on unchanged.
/// </summary>
internal static class OptionValues
{
    /// <summary>An integer ≥ 1.</summary>
    public static int PositiveInt(ArgumentResult result)
    {
        var text = Text(result);
        if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value) && value >= 1) return value;
        result.AddError($"option {OptionName(result)} needs a positive integer, not '{text}'");
        return 0;
    }

    /// <summary>A number &gt; 0.</summary>
    public static double PositiveNumber(ArgumentResult result)
    {
        var text = Text(result);
        if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && value > 0) return value;
        result.AddError($"option {OptionName(result)} needs a positive number, not '{text}'");
        return 0;
    }

    /// <summary>A number ≥ 0.</summary>
    public static double NonNegativeNumber(ArgumentResult result)
    {
        var text = Text(result);
        if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && value >= 0 && double.IsFinite(value)) return value;
        result.AddError($"option {OptionName(result)} needs a number ≥ 0, not '{text}'");
        return 0;
    }

    /// <summary>Comma-separated integers ≥ 1; a k suffix multiplies by 1024 (4k, 32k: how people write context lengths).</summary>
    public static long[] PositiveIntList(ArgumentResult result)
    {
        var text = Text(result);
        var values = new List<long>();
        foreach (var item in text.Split(','))
        {
            var trimmed = item.Trim().ToLowerInvariant();
            var multiplier = trimmed.EndsWith('k') ? 1024L : 1L;
            if (!long.TryParse(trimmed.TrimEnd('k'), NumberStyles.None, CultureInfo.InvariantCulture, out var value) || value < 1)
            {
                result.AddError($"option {OptionName(result)} needs positive integers separated by commas (e.g. 4096,32k), not '{text}'");
                return [];
            }
            values.Add(value * multiplier);
        }
        return values.ToArray();
    }

    /// <summary>
    /// The value of <paramref name="option"/>, or null when the command line does not give it
    /// (System.CommandLine's value of an absent array option is an empty array).
    /// </summary>
    public static T? GivenValue<T>(this ParseResult parse, Option<T> option) where T : class =>
        parse.GetResult(option) is null ? null : parse.GetValue(option);

    /// <summary>The option's value as given (its arity is one token).</summary>
    public static string Text(ArgumentResult result) => result.Tokens.Count > 0 ? result.Tokens[0].Value : "";

    /// <summary>The option's first name (<c>--new-tokens</c> also when given as <c>-n</c>).</summary>
    public static string OptionName(ArgumentResult result) =>
        result.Parent is OptionResult option ? option.Option.Name : result.Argument.Name;
}
