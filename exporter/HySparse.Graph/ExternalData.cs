using HySparse.Graph;
using Google.Protobuf;
using Onnx;

namespace HySparse.Graph;

/// <summary>
/// Moves initializer bytes out of the model protobuf into a side file, as exporters do for models
/// over protobuf's 2 GB limit. ONNX Runtime finds the file relative to the model's directory.
/// </summary>
public static class ExternalData
{
    /// <summary>Offsets are page aligned so ONNX Runtime can memory-map each tensor.</summary>
    public const int Alignment = 4096;

    /// <summary>
    /// Writes the raw data of every initializer of at least <paramref name="minimumBytes"/> bytes to
    /// <paramref name="directory"/>/<paramref name="fileName"/> (replacing the file) and turns the
    /// initializer into an external reference (location, offset, length).
    /// </summary>
    /// <returns>The number of initializers moved.</returns>
    public static int MoveToFile(ModelProto model, string directory, string fileName, long minimumBytes = 1024)
    {
        if (Path.GetFileName(fileName) != fileName) throw new ArgumentException($"'{fileName}' must be a bare file name: ONNX Runtime resolves it relative to the model", nameof(fileName));
        var moved = 0;
        using var file = new FileStream(Path.Combine(directory, fileName), FileMode.Create, FileAccess.Write);
        foreach (var tensor in model.Graph.Initializer)
        {
            if (Tensors.IsExternal(tensor) || tensor.RawData.Length < minimumBytes) continue;
            var offset = Align(file.Position);
            file.Position = offset;
            tensor.RawData.WriteTo(file);
            PointTo(tensor, fileName, offset, tensor.RawData.Length);
            moved++;
        }
        return moved;
    }

    /// <summary>The first <see cref="Alignment"/> boundary at or after <paramref name="offset"/>.</summary>
    public static long Align(long offset) => (offset + Alignment - 1) / Alignment * Alignment;

    /// <summary>
    /// Turns <paramref name="tensor"/> into a reference to <paramref name="length"/> bytes at
    /// <paramref name="offset"/> of <paramref name="fileName"/> and drops its inline bytes; the
    /// caller writes (or, for a measurement, reserves) those bytes.
    /// </summary>
    public static void PointTo(TensorProto tensor, string fileName, long offset, long length)
    {
        tensor.ExternalData.Add(new StringStringEntryProto { Key = LocationKey, Value = fileName });
        tensor.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        tensor.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        tensor.DataLocation = TensorProto.Types.DataLocation.External;
        tensor.RawData = ByteString.Empty;
    }

    /// <summary>The <c>external_data</c> entry naming the file, relative to the model's folder.</summary>
    public const string LocationKey = "location";

    /// <summary>The file <paramref name="tensor"/>'s external data is in ("" when the entry is missing).</summary>
    public static string Location(TensorProto tensor) =>
        tensor.ExternalData.FirstOrDefault(e => e.Key == LocationKey)?.Value ?? "";

    /// <summary>The distinct files the initializers of <paramref name="model"/> keep their data in.</summary>
    public static IReadOnlyList<string> Files(ModelProto model) =>
        model.Graph.Initializer.Where(Tensors.IsExternal).Select(Location).Distinct(StringComparer.Ordinal).ToList();
}
