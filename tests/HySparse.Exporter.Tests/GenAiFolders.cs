using System.Text.Json.Nodes;

namespace HySparse.Exporter.Tests;

/// <summary>Test-side edits of genai model folders (written by <see cref="HySparse.Models.GenAi.GenAiFolderWriter"/>).</summary>
internal static class GenAiFolders
{
    /// <summary>
    /// Sets every folder's eos id to a token none of <paramref name="sequences"/> holds, so genai decodes
    /// to max_length and its tokens compare one to one with another decoder's (genai stops a row at eos
    /// and pads it afterwards).
    /// </summary>
    public static void SetEosOutside(IEnumerable<string> folders, params int[][][] sequences)
    {
        var used = sequences.SelectMany(s => s).SelectMany(r => r).ToHashSet();
        foreach (var folder in folders)
        {
            var path = Path.Combine(folder, "genai_config.json");
            var config = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            var vocab = config["model"]!["vocab_size"]!.GetValue<int>();
            var eos = Enumerable.Range(1, vocab - 1).Reverse().First(t => !used.Contains(t));
            config["model"]!["eos_token_id"] = eos;
            File.WriteAllText(path, config.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        }
    }
}
