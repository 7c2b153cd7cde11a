using System.Globalization;

namespace HySparse.Cli;

/// <summary>A command line the user got wrong; exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>
/// Reads options and positional arguments. Each command asks for the options it knows; what is left
/// must be positional, so a misspelt option is an error rather than a file name.
/// Accepts <c>--name value</c> and <c>--name=value</c>.
/// </summary>
internal sealed class ArgumentReader
{
    private readonly List<string> _remaining;

    public ArgumentReader(IEnumerable<string> args)
    {
        _remaining = [];
        foreach (var arg in args)
        {
            var equals = arg.IndexOf('=');
            if (arg.StartsWith("--", StringComparison.Ordinal) && equals > 2)
            {
                _remaining.Add(arg[..equals]);
                _remaining.Add(arg[(equals + 1)..]);
            }
            else
            {
                _remaining.Add(arg);
            }
        }
    }

    /// <summary>True when the flag (or one of its aliases) is present; it is consumed.</summary>
    public bool Flag(params string[] names)
    {
        var found = false;
        for (var i = _remaining.Count - 1; i >= 0; i--)
        {
            if (!names.Contains(_remaining[i])) continue;
            found = true;
            _remaining.RemoveAt(i);
        }
        return found;
    }

    /// <summary>The value of an option given at most once, or null when absent.</summary>
    public string? Option(params string[] names)
    {
        string? value = null;
        for (var i = 0; i < _remaining.Count; i++)
        {
            if (!names.Contains(_remaining[i])) continue;
            if (value is not null) throw new UsageException($"option {names[0]} is given twice");
            if (i + 1 >= _remaining.Count) throw new UsageException($"option {names[0]} needs a value");
            value = _remaining[i + 1];
            _remaining.RemoveRange(i, 2);
            i--;
        }
        return value;
    }

    /// <summary>A positive integer option, or null when absent.</summary>
    public int? PositiveInt(params string[] names)
    {
        if (Option(names) is not { } text) return null;
        if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value) || value < 1)
            throw new UsageException($"option {names[0]} needs a positive integer, not '{text}'");
        return value;
    }

    /// <summary>A comma-separated list of positive integers, or null when absent.</summary>
    public long[]? PositiveIntList(params string[] names)
    {
        if (Option(names) is not { } text) return null;
        var values = new List<long>();
        foreach (var item in text.Split(','))
        {
            var trimmed = item.Trim().ToLowerInvariant();
            // 4k / 32k are how people write context lengths.
            var multiplier = trimmed.EndsWith('k') ? 1024L : 1L;
            if (!long.TryParse(trimmed.TrimEnd('k'), NumberStyles.None, CultureInfo.InvariantCulture, out var value) || value < 1)
                throw new UsageException($"option {names[0]} needs positive integers separated by commas (e.g. 4096,32k), not '{text}'");
            values.Add(value * multiplier);
        }
        return values.ToArray();
    }

    /// <summary>The remaining arguments, which must all be positional.</summary>
    public IReadOnlyList<string> Positionals()
    {
        var unknown = _remaining.FirstOrDefault(a => a.StartsWith('-') && a.Length > 1);
        if (unknown is not null) throw new UsageException($"unknown option {unknown}");
        return _remaining;
    }
}
