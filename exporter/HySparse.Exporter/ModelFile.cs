using Google.Protobuf;
using HySparse.Graph;
using Onnx;

namespace HySparse.Exporter;

/// <summary>Reads ONNX models defensively and writes them atomically.</summary>
public static class ModelFile
{
    /// <summary>
    /// Parses the model at <paramref name="path"/> and checks it is complete: a graph, an opset, and
    /// every node input defined before use. External tensor data stays on disk; only the graph
    /// protobuf is read.
    /// </summary>
    /// <exception cref="ConversionException"><see cref="ConversionError.InvalidModel"/> with the reason.</exception>
    public static ModelProto Load(string path)
    {
        ModelProto model;
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
            if (stream.Length == 0) throw new ConversionException(ConversionError.InvalidModel, $"'{path}' is empty, not an ONNX model");
            model = ModelProto.Parser.ParseFrom(stream);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new ConversionException(ConversionError.InvalidModel, $"'{path}' is not a valid ONNX model (truncated or not protobuf: {e.Message})", inner: e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ConversionException(ConversionError.InvalidModel, $"cannot read '{path}': {e.Message}", inner: e);
        }
        Validate(model, path);
        return model;
    }

    /// <summary>Checks the structural completeness <see cref="Load"/> checks, for a model already in memory.</summary>
    public static void Validate(ModelProto model, string source)
    {
        // A protobuf parser accepts many byte strings that are not ONNX (unknown fields are skipped),
        // and a file cut at a field boundary parses cleanly: the checks below catch both.
        if (model.IrVersion <= 0 || model.Graph is null || model.OpsetImport.Count == 0)
            throw new ConversionException(ConversionError.InvalidModel, $"'{source}' is not an ONNX model (no IR version, graph or opset import)");
        var defined = new HashSet<string>(model.Graph.Input.Select(i => i.Name).Concat(model.Graph.Initializer.Select(i => i.Name)), StringComparer.Ordinal);
        foreach (var node in model.Graph.Node)
        {
            foreach (var input in node.Input)
            {
                if (input.Length > 0 && !defined.Contains(input))
                    throw new ConversionException(ConversionError.InvalidModel,
                        $"'{source}' is incomplete or not topologically sorted: node '{node.Name}' ({node.OpType}) reads '{input}' before anything defines it");
            }
            defined.UnionWith(node.Output);
        }
        foreach (var output in model.Graph.Output.Where(o => !defined.Contains(o.Name)))
            throw new ConversionException(ConversionError.InvalidModel, $"'{source}' is incomplete: graph output '{output.Name}' is never produced");
        foreach (var initializer in model.Graph.Initializer.Where(i => !Tensors.IsExternal(i)))
        {
            var size = Tensors.ElementSize((TensorProto.Types.DataType)initializer.DataType);
            if (size > 0 && initializer.RawData.Length > 0 && initializer.RawData.Length != Tensors.ElementCount(initializer) * size)
                throw new ConversionException(ConversionError.InvalidModel,
                    $"'{source}' is corrupt: initializer '{initializer.Name}' holds {initializer.RawData.Length} bytes for {Tensors.ElementCount(initializer)} elements");
        }
    }

    /// <summary>
    /// Writes <paramref name="model"/> to <paramref name="path"/> through a temporary file in the same
    /// directory, flushed to disk and renamed over the target, so the target is either absent/old or
    /// complete — never half written.
    /// </summary>
    public static void WriteAtomically(ModelProto model, string path, bool overwrite)
    {
        var full = Path.GetFullPath(path);
        var directory = Path.GetDirectoryName(full)!;
        var temporary = Path.Combine(directory, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                model.WriteTo(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, full, overwrite);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
    }
}
