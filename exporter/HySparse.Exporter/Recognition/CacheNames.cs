using System.Globalization;
using System.Text.RegularExpressions;
using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter.Recognition;

/// <summary>The layer number exporters put in cache names.</summary>
internal static class CacheNames
{
    private static readonly Regex CacheName = new(@"(?:^|[._/])(\d+)[._/](?:key|value)$", RegexOptions.CultureInvariant);
    private static readonly Regex CombinedCacheName = new(@"^past[._](\d+)$", RegexOptions.CultureInvariant);

    /// <summary>N of a cache named like <c>past_key_values.N.key</c>, or null.</summary>
    public static int? LayerNumber(string past) => Number(CacheName, past);

    /// <summary>N of a combined key/value cache named like <c>past_N</c> (onnxruntime-genai's and ONNX Runtime's GPT-2 naming), or null.</summary>
    public static int? CombinedLayerNumber(string past) => Number(CombinedCacheName, past);

    private static int? Number(Regex pattern, string name)
    {
        var match = pattern.Match(name);
        return match.Success ? int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture) : null;
    }
}
