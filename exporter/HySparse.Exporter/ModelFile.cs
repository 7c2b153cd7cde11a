using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Google.Protobuf;
using HySparse.Graph;
using HySparse.Onnx;
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
        CheckUnique(model.Graph.Input.Select(i => i.Name), "graph input", source);
        CheckUnique(model.Graph.Initializer.Select(i => i.Name), "initializer", source);
        CheckUnique(model.MetadataProps.Select(p => p.Key), "metadata key", source);
        foreach (var value in model.Graph.Input.Concat(model.Graph.Output).Concat(model.Graph.ValueInfo))
            if (value.Type?.TensorType?.Shape?.Dim.FirstOrDefault(d => d.HasDimValue && d.DimValue is < 0 or > int.MaxValue) is { } dim)
                throw new ConversionException(ConversionError.InvalidModel,
                    $"'{source}' is not a valid ONNX model: '{value.Name}' declares a dimension of {dim.DimValue} (negative, or beyond what a tensor axis can hold)");
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
        foreach (var node in model.Graph.Node.Where(n => n.Domain == HySparseOps.Domain)) CheckHySparseNode(node, source);
        foreach (var initializer in model.Graph.Initializer.Where(Tensors.IsExternal))
        {
            var location = ExternalData.Location(initializer);
            if (EscapesModelFolder(location))
                throw new ConversionException(ConversionError.InvalidModel,
                    $"'{source}': initializer '{initializer.Name}' keeps its data at '{location}', which is not a file inside the model's folder; ONNX Runtime refuses such paths, and so does this tool: move the data file beside the model and give its bare name");
        }
        foreach (var initializer in model.Graph.Initializer.Where(i => !Tensors.IsExternal(i)))
        {
            if (ElementCountOrNull(initializer) is not { } count)
                throw new ConversionException(ConversionError.InvalidModel,
                    $"'{source}' is corrupt: initializer '{initializer.Name}' has dimensions [{string.Join(", ", initializer.Dims)}] (negative, or more elements than a tensor can hold)");
            var size = Tensors.ElementSize((TensorProto.Types.DataType)initializer.DataType);
            if (size > 0 && initializer.RawData.Length > 0 && initializer.RawData.Length != count * size)
                throw new ConversionException(ConversionError.InvalidModel,
                    $"'{source}' is corrupt: initializer '{initializer.Name}' holds {initializer.RawData.Length} bytes for {count} elements");
            // Values in the typed fields (float_data, int64_data, ...): one entry per element for the types the tools read.
            var typed = initializer.FloatData.Count + initializer.Int32Data.Count + initializer.Int64Data.Count + initializer.DoubleData.Count + initializer.Uint64Data.Count;
            if (size > 0 && initializer.RawData.Length == 0 && typed != count)
                throw new ConversionException(ConversionError.InvalidModel,
                    $"'{source}' is corrupt: initializer '{initializer.Name}' holds {typed} values for {count} elements");
        }
    }

    /// <summary>The element count of <paramref name="tensor"/>, or null when a dimension is negative or the product overflows.</summary>
    private static long? ElementCountOrNull(TensorProto tensor)
    {
        long count = 1;
        foreach (var d in tensor.Dims)
        {
            if (d < 0 || (d > 0 && count > int.MaxValue / d)) return null;
            count *= d;
        }
        return count;
    }

    private static void CheckUnique(IEnumerable<string> names, string what, string source)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var name in names)
            if (!seen.Add(name))
                throw new ConversionException(ConversionError.InvalidModel, $"'{source}' is not a valid ONNX model: {what} '{name}' is declared twice");
    }

    /// <summary>True when an external-data location is absolute, empty or leads out of the model's folder ("../x").</summary>
    internal static bool EscapesModelFolder(string location)
    {
        if (location.Length == 0 || Path.IsPathRooted(location) || location.Contains('\0')) return true;
        var depth = 0;
        foreach (var part in location.Split('/'))
        {
            if (part is "" or ".") continue;
            depth += part == ".." ? -1 : 1;
            if (depth < 0) return true;
        }
        return depth == 0;
    }

    /// <summary>The attributes of each HySparse operator and their types (docs/ops.md).</summary>
    private static readonly Dictionary<string, Dictionary<string, AttributeProto.Types.AttributeType>> HySparseAttributes = new(StringComparer.Ordinal)
    {
        [HySparseOps.FullAttn] = OpAttributes((HySparseOps.Attributes.TopK, AttributeProto.Types.AttributeType.Int)),
        [HySparseOps.SparseAttn] = OpAttributes(
            (HySparseOps.Attributes.Window, AttributeProto.Types.AttributeType.Int),
            (HySparseOps.Attributes.Combine, AttributeProto.Types.AttributeType.String),
            (HySparseOps.Attributes.WindowCache, AttributeProto.Types.AttributeType.Int)),
    };

    /// <summary>The attributes both operators take, and <paramref name="own"/>.</summary>
    private static Dictionary<string, AttributeProto.Types.AttributeType> OpAttributes(params (string Name, AttributeProto.Types.AttributeType Type)[] own)
    {
        (string Name, AttributeProto.Types.AttributeType Type)[] common =
        [
            (HySparseOps.Attributes.NumHeads, AttributeProto.Types.AttributeType.Int),
            (HySparseOps.Attributes.KvNumHeads, AttributeProto.Types.AttributeType.Int),
            (HySparseOps.Attributes.Scale, AttributeProto.Types.AttributeType.Float),
            (HySparseOps.Attributes.BlockSize, AttributeProto.Types.AttributeType.Int),
        ];
        return common.Concat(own).ToDictionary(a => a.Name, a => a.Type, StringComparer.Ordinal);
    }

    /// <summary>
    /// A node of the com.hysparse domain must be one of its two operators with known attributes of the
    /// right types. The operators check types themselves, but ONNX Runtime gives them no way to list a
    /// node's attributes, so a misspelt one (<c>topk</c>) is caught here, when the model is read.
    /// </summary>
    private static void CheckHySparseNode(NodeProto node, string source)
    {
        if (!HySparseAttributes.TryGetValue(node.OpType, out var known))
            throw new ConversionException(ConversionError.InvalidModel,
                $"'{source}': node '{node.Name}' has operator type '{node.OpType}' in domain {HySparseOps.Domain}, which has only {HySparseOps.FullAttn} and {HySparseOps.SparseAttn}");
        foreach (var attribute in node.Attribute)
        {
            if (!known.TryGetValue(attribute.Name, out var type))
                throw new ConversionException(ConversionError.InvalidModel,
                    $"'{source}': {node.OpType} node '{node.Name}' has an unknown attribute '{attribute.Name}' (known: {string.Join(", ", known.Keys)})");
            if (attribute.Type != type)
                throw new ConversionException(ConversionError.InvalidModel,
                    $"'{source}': {node.OpType} node '{node.Name}': attribute '{attribute.Name}' must be {type.ToString().ToLowerInvariant()}, got {attribute.Type.ToString().ToLowerInvariant()}");
        }
    }

    /// <summary>
    /// Writes <paramref name="model"/> to <paramref name="path"/> through a temporary file in the same
    /// directory, flushed to disk and renamed over the target, so the target is either absent/old or
    /// complete — never half written. SIGINT, SIGTERM or SIGHUP during the write remove the temporary
    /// file (the process then ends as the signal asks); temporary files left next to the target by an
    /// earlier process that was killed outright are removed first, each named to <paramref name="report"/>.
    /// </summary>
    /// <exception cref="ConversionException"><see cref="ConversionError.InvalidOutput"/> when the file cannot be
    /// written (permission denied, read-only file system, disk full) or, without <paramref name="overwrite"/>,
    /// another writer created the target meanwhile.</exception>
    public static void WriteAtomically(ModelProto model, string path, bool overwrite, Action<string>? report = null)
    {
        var full = Path.GetFullPath(path);
        var directory = Path.GetDirectoryName(full)!;
        RemoveStaleTemporaries(directory, Path.GetFileName(full), report);
        using var temporary = new TemporaryFile(Path.Combine(directory, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.{Environment.ProcessId}.tmp"));
        try
        {
            using (var stream = new FileStream(temporary.Path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                model.WriteTo(stream);
                stream.Flush(flushToDisk: true);
            }
            BeforeRename?.Invoke(temporary.Path);
            temporary.MoveTo(full, overwrite);
        }
        catch (IOException) when (!overwrite && File.Exists(full) && !temporary.Interrupted)
        {
            throw new ConversionException(ConversionError.InvalidOutput,
                $"output '{path}' was created by another process while this conversion ran (two conversions to one path?); pass --overwrite to replace it");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException && !temporary.Interrupted)
        {
            throw new ConversionException(ConversionError.InvalidOutput, $"cannot write '{path}': {e.Message}", inner: e);
        }
    }

    /// <summary>Tests only: called with the temporary file's path once it is complete, before the rename.</summary>
    internal static Action<string>? BeforeRename { get; set; }

    /// <summary>What the signal handlers do: removes the temporary file of every write in flight in this
    /// process; those writes then end with <see cref="OperationCanceledException"/> instead of renaming.</summary>
    internal static void InterruptWrites()
    {
        lock (InFlight)
            foreach (var write in InFlight) write.Interrupt();
    }

    private static readonly HashSet<TemporaryFile> InFlight = [];

    /// <summary>A temporary file that disappears on dispose or when the process is interrupted.</summary>
    private sealed class TemporaryFile : IDisposable
    {
        private readonly List<PosixSignalRegistration> signals = [];

        public TemporaryFile(string path)
        {
            Path = path;
            lock (InFlight) InFlight.Add(this);
            foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP })
            {
                try
                {
                    signals.Add(PosixSignalRegistration.Create(signal, _ => Interrupt()));
                }
                catch (PlatformNotSupportedException)
                {
                }
            }
        }

        public string Path { get; }
        public bool Interrupted { get; private set; }

        /// <summary>Removes the file; a later <see cref="MoveTo"/> throws instead of publishing it.</summary>
        public void Interrupt()
        {
            lock (this)
            {
                Interrupted = true;
                TryDelete(Path);
            }
        }

        public void MoveTo(string target, bool overwrite)
        {
            // Under the lock a signal either removed the file first (and nothing is published) or waits
            // until the rename is done (and there is no temporary left to remove).
            lock (this)
            {
                if (Interrupted) throw new OperationCanceledException($"interrupted while writing '{target}'; the temporary file was removed");
                File.Move(Path, target, overwrite);
            }
        }

        public void Dispose()
        {
            foreach (var registration in signals) registration.Dispose();
            lock (InFlight) InFlight.Remove(this);
            TryDelete(Path);
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    /// <summary>
    /// Removes the temporary files (<c>.NAME.GUID.PID.tmp</c>) of earlier writes of <paramref name="name"/>
    /// whose process no longer runs, and those of the older format <c>.NAME.GUID.tmp</c> untouched for
    /// ten minutes; each one removed, or left because it may still be written, is told to <paramref name="report"/>.
    /// </summary>
    internal static void RemoveStaleTemporaries(string directory, string name, Action<string>? report)
    {
        var pattern = new Regex($"^\\.{Regex.Escape(name)}\\.[0-9a-f]{{32}}(?:\\.(?<pid>[0-9]{{1,10}}))?\\.tmp$", RegexOptions.CultureInvariant);
        string[] candidates;
        try
        {
            candidates = Directory.GetFiles(directory, $".{name}.*.tmp");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return;
        }
        foreach (var file in candidates)
        {
            var match = pattern.Match(System.IO.Path.GetFileName(file));
            if (!match.Success) continue;
            var stale = match.Groups["pid"].Success
                ? int.TryParse(match.Groups["pid"].Value, out var pid) && !ProcessRuns(pid)
                : DateTime.UtcNow - File.GetLastWriteTimeUtc(file) > TimeSpan.FromMinutes(10);
            if (!stale)
            {
                report?.Invoke($"left {file}: a temporary file that another conversion may still be writing");
                continue;
            }
            TryDelete(file);
            report?.Invoke(File.Exists(file) ? $"could not remove {file}, a temporary file left by an interrupted conversion"
                                             : $"removed {file}, a temporary file left by an interrupted conversion");
        }
    }

    private static bool ProcessRuns(int pid)
    {
        if (pid == Environment.ProcessId) return true;
        if (OperatingSystem.IsLinux()) return Directory.Exists($"/proc/{pid}");
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }
}
