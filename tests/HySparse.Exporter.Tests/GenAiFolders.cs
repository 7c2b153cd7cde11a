using HySparse.Exporter.Folders;

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
            var genai = GenAiModelFolder.Open(folder);
            var vocab = genai.Config["model"]!["vocab_size"]!.GetValue<int>();
            genai.Config["model"]!["eos_token_id"] = Enumerable.Range(1, vocab - 1).Reverse().First(t => !used.Contains(t));
            genai.WriteConfig(folder);
        }
    }
}
