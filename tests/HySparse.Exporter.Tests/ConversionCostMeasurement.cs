using System.Diagnostics;
using System.Globalization;

namespace HySparse.Exporter.Tests;

/// <summary>
/// Measures what converting a 7B-class decoder stored with external data costs: wall time and peak
/// resident memory of <c>hysparse convert</c> in its own process, against the size of the graph
/// protobuf. Not a test of behaviour and far too heavy for every run, so it only runs when
/// <c>HYSPARSE_MEASURE_DIR</c> names a scratch directory (it writes a 26 GB sparse data file there,
/// which takes no disk blocks); otherwise it reports itself inconclusive.
/// </summary>
[TestClass]
[TestCategory(Category)]
public sealed class ConversionCostMeasurement
{
    /// <summary>Run with <c>--filter TestCategory=Measurement</c>.</summary>
    public const string Category = "Measurement";

    /// <summary>Llama-2-7B shape with GQA 32:8 (as Llama-3/Mistral-7B-class models have).</summary>
    private static readonly LlamaConfig Shape = new() { Layers = 32, Hidden = 4096, Heads = 32, KvHeads = 8, HeadDim = 128, Ffn = 11008, Vocab = 32000 };

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void ConvertingA7BClassModelWithExternalDataTakesSecondsAndGraphSizedMemory()
    {
        if (Environment.GetEnvironmentVariable("HYSPARSE_MEASURE_DIR") is not { Length: > 0 } root)
        {
            Assert.Inconclusive("set HYSPARSE_MEASURE_DIR to a scratch directory to run this measurement");
            return;
        }
        var dir = Path.Combine(root, "llama7b-external");
        Directory.CreateDirectory(dir);
        var model = Path.Combine(dir, "model.onnx");
        var dataBytes = WriteSevenBClassModel(model);
        var hybrid = Path.Combine(dir, "model.hybrid.onnx");

        var cli = Path.Combine(AppContext.BaseDirectory, "hysparse.dll");
        var (wallSeconds, peakKb, output) = RunMeasured("dotnet", [cli, "convert", model, "-o", hybrid, "--ratio", "1:3", "--overwrite"]);
        // What the process costs before it reads any model: the .NET runtime, JIT and the CLI itself.
        var (baselineSeconds, baselineKb, _) = RunMeasured("dotnet", [cli, "--help"]);

        var graphBytes = new FileInfo(model).Length;
        var report = string.Create(CultureInfo.InvariantCulture,
            $"graph protobuf {graphBytes:N0} bytes, external data {dataBytes:N0} bytes (sparse), converted graph {new FileInfo(hybrid).Length:N0} bytes; " +
            $"hysparse convert: {wallSeconds:F2} s wall, peak RSS {peakKb / 1024.0:F0} MiB; hysparse --help: {baselineSeconds:F2} s, {baselineKb / 1024.0:F0} MiB");
        TestContext.WriteLine(report);
        TestContext.WriteLine(output);
        Console.WriteLine(report);
        var converted = ModelFile.Load(hybrid);
        Assert.AreEqual(32, converted.Graph.Node.Count(n => n.Domain == HySparse.Onnx.HySparseOps.Domain));
        Assert.IsTrue(converted.Graph.Initializer.Where(i => i.Dims.Count >= 2).All(Tensors.IsExternal), "weights stay external");
    }

    /// <summary>
    /// Writes the decomposed export of <see cref="Shape"/> with every weight matrix and norm vector in
    /// <c>model.onnx.data</c>. The weights' values do not matter to the converter (it never reads
    /// them), so the graph is built with tiny placeholder widths (hidden 7, FFN 11, vocab 13: sizes
    /// no real dimension of the shape has), then every such dimension is set to the real one and the
    /// tensor pointed into a data file of the real total size, extended without writing (sparse).
    /// The head split, RoPE table, cache and logits declarations are built at real size.
    /// </summary>
    private static long WriteSevenBClassModel(string path)
    {
        var placeholders = new Dictionary<long, long> { [7] = Shape.Hidden, [11] = Shape.Ffn, [13] = Shape.Vocab };
        var model = LlamaModelBuilder.Build(Shape with { Hidden = 7, Ffn = 11, Vocab = 13 });
        var dataName = Path.GetFileName(path) + ".data";
        long offset = 0;
        foreach (var tensor in model.Graph.Initializer)
        {
            if (!tensor.Dims.Any(placeholders.ContainsKey)) continue;
            for (var i = 0; i < tensor.Dims.Count; i++) tensor.Dims[i] = placeholders.GetValueOrDefault(tensor.Dims[i], tensor.Dims[i]);
            var length = Tensors.ElementCount(tensor) * Tensors.ElementSize((TensorProto.Types.DataType)tensor.DataType);
            offset = ExternalData.Align(offset);
            ExternalData.PointTo(tensor, dataName, offset, length);
            offset += length;
        }
        foreach (var dim in model.Graph.Output.Single(o => o.Name == DecoderNames.Logits).Type.TensorType.Shape.Dim.Where(d => d.DimValue == 13))
            dim.DimValue = Shape.Vocab;
        using (var data = new FileStream(Path.Combine(Path.GetDirectoryName(path)!, dataName), FileMode.Create, FileAccess.Write))
            data.SetLength(offset);
        File.WriteAllBytes(path, model.ToByteArray());
        return offset;
    }

    /// <summary>Runs a command under <c>/usr/bin/time -v</c>: wall seconds, peak RSS in KiB, its output.</summary>
    private static (double WallSeconds, long PeakKb, string Output) RunMeasured(string command, string[] arguments)
    {
        var start = new ProcessStartInfo("/usr/bin/time") { RedirectStandardError = true, RedirectStandardOutput = true };
        start.ArgumentList.Add("-v");
        start.ArgumentList.Add(command);
        foreach (var argument in arguments) start.ArgumentList.Add(argument);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        Assert.AreEqual(0, process.ExitCode, stdout.Result + stderr);
        string Field(string name) => stderr.Split('\n').Select(l => l.Trim()).Single(l => l.StartsWith(name, StringComparison.Ordinal))[(name.Length + 1)..].Trim();
        var wall = Field("Elapsed (wall clock) time (h:mm:ss or m:ss):").Split(':').Aggregate(0.0, (total, part) => total * 60 + double.Parse(part, CultureInfo.InvariantCulture));
        return (wall, long.Parse(Field("Maximum resident set size (kbytes):"), CultureInfo.InvariantCulture), stdout.Result);
    }
}
