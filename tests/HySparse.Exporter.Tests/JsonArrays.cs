namespace HySparse.Exporter.Tests;

/// <summary>Reads the nested number arrays PyTorch fixture scripts write (tensor.tolist()).</summary>
public static class JsonArrays
{
    /// <summary>All numbers of a nested array, in row-major order.</summary>
    public static double[] Flatten(JsonElement element)
    {
        var values = new List<double>();
        void Walk(JsonElement e)
        {
            if (e.ValueKind == JsonValueKind.Array)
                foreach (var item in e.EnumerateArray()) Walk(item);
            else values.Add(e.GetDouble());
        }
        Walk(element);
        return values.ToArray();
    }
}
