using System.Security.Cryptography;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Tests;

/// <summary>A temporary directory holding model files for one test; deleted on dispose.</summary>
public sealed class ModelDirectory : IDisposable
{
    public ModelDirectory()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "hysparse-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public string Write(string name, byte[] bytes)
    {
        System.IO.File.WriteAllBytes(File(name), bytes);
        return File(name);
    }

    public string WriteModel(string name, ModelProto model) => Write(name, model.ToByteArray());

    /// <summary>A small decoder file (4 layers, GQA 4:2).</summary>
    public string WriteLlama(string name = "llama.onnx", int layers = 4) =>
        WriteModel(name, LlamaModelBuilder.Build(new LlamaConfig { Layers = layers, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Ffn = 48, Vocab = 41, Seed = 11 }));

    /// <summary>A valid model without attention: y = Relu(x·W).</summary>
    public string WriteMlp(string name = "mlp.onnx")
    {
        var g = new GraphBuilder("mlp");
        g.AddInput("x", DataType.Float, "batch", 4);
        var w = g.AddInitializer("w", [4, 3], [0.5f, -1, 2, 0.25f, 1, -0.5f, 3, 0, 1, -2, 0.75f, 1.5f]);
        g.OpNamed("y", "Relu", [g.Op("MatMul", "x", w)]);
        g.AddOutput("y", DataType.Float, "batch", 3);
        return WriteModel(name, g.BuildModel(new Dictionary<string, long> { [""] = 17 }, 8, "test"));
    }

    /// <summary>Files in the directory other than <paramref name="expected"/> (leftovers such as temporaries).</summary>
    public string[] FilesExcept(params string[] expected) =>
        Directory.GetFiles(Path).Select(System.IO.Path.GetFileName).Where(f => !expected.Contains(f)).ToArray()!;

    public static string Sha256(string path) => Convert.ToHexString(SHA256.HashData(System.IO.File.ReadAllBytes(path)));

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
