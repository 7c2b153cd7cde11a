using System.Text.Json;

namespace HySparse.Fidelity;

/// <summary>One retrieval probe of models/fixtures/trained/probes.json (written by models/train/make_probes.py
/// from retrieval.py's evaluation formats): a window of real text with a value planted at
/// <paramref name="Needle"/> and asked for at the window's end.</summary>
/// <param name="Context">Bytes in the window.</param>
/// <param name="Position">Requested needle position, a fraction of the window (0.1, 0.5, 0.9).</param>
/// <param name="Format">The evaluation format (retrieval.evaluation_formats).</param>
/// <param name="Needle">Where the planted line starts.</param>
/// <param name="Distance">Bytes from the planted line to the value in the query: how far back the model has to read.</param>
/// <param name="ValueStart">First byte of the value the model has to predict.</param>
/// <param name="ValueEnd">One past its last byte.</param>
/// <param name="Data">The window, <paramref name="Context"/> bytes.</param>
public sealed record RetrievalProbe(int Context, double Position, string Format, int Needle, int Distance, int ValueStart, int ValueEnd, byte[] Data);

/// <summary>Reads the probe fixture.</summary>
public static class ProbeSet
{
    /// <summary>The fixture's name in the models folder.</summary>
    public const string FileName = "probes.json";

    /// <summary>Every probe of <paramref name="path"/>, checked for consistency.</summary>
    public static IReadOnlyList<RetrievalProbe> Load(string path)
    {
        using var document = JsonDocument.Parse(File.ReadAllBytes(path));
        var probes = new List<RetrievalProbe>();
        foreach (var p in document.RootElement.GetProperty("probes").EnumerateArray())
        {
            var probe = new RetrievalProbe(p.GetProperty("context").GetInt32(), p.GetProperty("position").GetDouble(),
                p.GetProperty("format").GetString()!, p.GetProperty("needle").GetInt32(), p.GetProperty("distance").GetInt32(),
                p.GetProperty("value_start").GetInt32(), p.GetProperty("value_end").GetInt32(), Convert.FromBase64String(p.GetProperty("data").GetString()!));
            if (probe.Data.Length != probe.Context || probe.ValueStart < 1 || probe.ValueEnd <= probe.ValueStart || probe.ValueEnd > probe.Context)
                throw new InvalidDataException($"{path}: probe at context {probe.Context}, needle {probe.Needle} is inconsistent (value {probe.ValueStart}..{probe.ValueEnd}, {probe.Data.Length} bytes)");
            probes.Add(probe);
        }
        return probes;
    }

    /// <summary>The first <paramref name="perCell"/> probes of each (context, position) cell at the given contexts (all when 0).</summary>
    public static IReadOnlyList<RetrievalProbe> Select(IReadOnlyList<RetrievalProbe> probes, IEnumerable<int> contexts, int perCell) =>
        probes.Where(p => contexts.Contains(p.Context))
            .GroupBy(p => (p.Context, p.Position))
            .SelectMany(g => perCell > 0 ? g.Take(perCell) : g)
            .ToList();
}
