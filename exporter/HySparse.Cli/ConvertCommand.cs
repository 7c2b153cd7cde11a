using System.CommandLine;
using System.Diagnostics;
using HySparse.Exporter;
using HySparse.Exporter.Folders;
using HySparse.Exporter.Layout;
using HySparse.Onnx;

namespace HySparse.Cli;

/// <summary><c>hysparse convert</c>: rewrite a dense decoder into a hybrid one.</summary>
internal sealed class ConvertCommand : Verb
{
    private readonly Argument<string> _model = SharedOptions.Model("model", "the ONNX model file, or an onnxruntime-genai model folder (a folder with genai_config.json)");
    private readonly Option<string> _output = new("--output", "-o")
    {
        HelpName = "PATH",
        Description = "output file (default: <model>.hysparse.onnx beside the input), or output folder for a genai model folder (default: <folder>-hysparse)",
    };
    private readonly Option<long[]> _contexts = SharedOptions.Contexts("contexts to show KV cache bytes at");
    private readonly Option<bool> _overwrite = new("--overwrite") { Description = "replace an existing output file" };
    private readonly Option<bool> _kvBuffer = new("--kv-buffer")
    {
        Description = "keep concatenated caches (present = Concat(past, new)) in buffers updated in place, as GroupQueryAttention models do: every "
            + "past_key_values.N.* becomes [B, H_kv, C, D] (dim 2 'max_sequence_length', C >= the total length), present.N.* has the same shape and may be "
            + "bound to the same memory (IOBinding), so a decode step writes its new tokens instead of copying each cache. attention_mask keeps its [B, P+S] "
            + "meaning, but padding may only be on the right of the first prompt. Refused with --kv-sharing and for models without a KV cache",
    };
    private readonly Option<bool> _keepRope = new("--keep-decomposed-rope")
    {
        Description = "leave the decomposed RoPE of torch exports (Slice, Neg, Concat, Mul, Add on Q and K) as it is; by default it becomes one "
            + "com.microsoft.RotaryEmbedding per Q and K (the same rotation up to float rounding, in one pass instead of seven)",
    };
    private readonly Option<bool> _quiet = SharedOptions.Quiet();
    private readonly Option<bool> _json = SharedOptions.Json("print the result as JSON on stdout (no progress lines)");
    private readonly LayoutOptions _layout = new(new HybridParameters());

    public ConvertCommand() : base("convert", "rewrite a dense decoder into a hybrid HySparse model")
    {
        Arguments.Add(_model);
        foreach (var option in new Option[] { _output, _contexts, _overwrite, _kvBuffer, _keepRope, _quiet, _json }) Options.Add(option);
        _layout.AddTo(this);
        Details = $"""
            Details:
              Rewrites the attention layers into HySparseFullAttn / HySparseSparseAttn nodes. Finds every
              attention layer: decomposed torch.onnx.export / Optimum style (MatMul(Q,K^T), scale, an Add or
              Where mask, Softmax, MatMul(V); keys transposed [0,1,3,2] or straight from the head split with
              [0,2,3,1]; Q/K/V from separate projections or a fused QKV split by Split or Slices; with a KV
              cache Concat(past, new) or without one); a fused com.microsoft.GroupQueryAttention,
              MultiHeadAttention or Attention node (GPT-2 style: the projection, bias and combined
              past_N/present_N caches are rebuilt around the HySparse op); or an ONNX Attention node (opset
              23). Masks are checked to be causal + padding on a probe batch. Each layer is replaced by a
              HySparse operator that takes the rotated Q/K/V, the past caches and attention_mask
              (GroupQueryAttention: its shared KV buffers, seqlens_k and total_sequence_length; --kv-sharing
              is refused there). In the default retrofit mode every layer keeps its own keys and values, so
              the model's inputs and outputs keep their names and shapes; sparse layers compute one exact
              softmax over selected blocks plus window. With --kv-sharing the sparse layers' caches become
              window caches (the command lists them) and sparse layers read selected blocks from the full
              layer's cache. The decomposed RoPE in front of Q and K (torch exports) becomes one
              com.microsoft.RotaryEmbedding each, reading the model's own cos/sin tables
              (--keep-decomposed-rope keeps it). Initializers and all other nodes are left as they are. The layout, parameters,
              mode and any interface change are recorded in the model's metadata (hysparse.*).

              An onnxruntime-genai model folder (a folder with genai_config.json) converts into a new
              folder: the decoder it names is converted (external data files are copied beside it), every
              other file (tokenizer, configs) is copied, libhysparse_onnx.so is put in the folder and named
              in the decoder's session options (custom_ops_library), and the cache settings genai needs
              are written: past_present_share_buffer to match the converted caches and, with
              --kv-sharing, the sparse layers declared as sliding-window layers of w tokens so genai
              allocates only the window for them. The folder appears whole or not at all.

              The input file is only read. The output is written to a temporary file and renamed, so it is
              never half written; nothing is written when the conversion is refused. A layer that cannot be
              converted is reported with its node and the reason, and the conversion is refused: a model is
              never left partly dense.

            {LayoutOptions.Notes}

            Examples:
              hysparse convert llama.onnx -o llama.hybrid.onnx --ratio 1:3
              hysparse convert llama.onnx --full-layers 0,8,16,24,31 --top-k 8 --window 256
              hysparse convert llama.onnx --pattern FSSSSSSS --json
              hysparse convert llama.onnx -o llama.shared.onnx --ratio 1:3 --kv-sharing --window 256
              hysparse convert ./phi3-genai -o ./phi3-hysparse --ratio 1:3

            """;
    }

    public override string PositionalError(IReadOnlyList<string> given) => SharedOptions.OneModelError(Name, given);

    protected override int Run(ParseResult parse, TextWriter stdout, TextWriter stderr)
    {
        var json = parse.GetValue(_json);
        var input = parse.GetRequiredValue(_model);
        var options = _layout.Read(parse) with { KvBuffer = parse.GetValue(_kvBuffer), FuseRotary = !parse.GetValue(_keepRope) };
        var overwrite = parse.GetValue(_overwrite);
        var isFolder = GenAiModelFolder.IsModelFolder(input);
        var output = parse.GetValue(_output) ?? (isFolder ? Path.TrimEndingDirectorySeparator(input) + "-hysparse" : DefaultOutput(input));

        var clock = Stopwatch.StartNew();
        Action<string>? progress = json || parse.GetValue(_quiet) ? null : step => stderr.WriteLine($"[{clock.Elapsed.TotalSeconds,6:0.00} s] {step}");
        FolderConversionReport? folder = null;
        ConversionReport report;
        if (isFolder)
        {
            folder = ModelFolderConverter.Convert(input, output, options, overwrite, progress: progress);
            report = folder.Decoder;
        }
        else
        {
            report = HybridConverter.ConvertFile(input, output, options, overwrite, progress);
        }
        progress?.Invoke("done");
        var kv = report.KvAt(parse.GetValue(_contexts)!);

        if (json)
        {
            CliApp.WriteJson(stdout, new
            {
                ok = true,
                input,
                output,
                sourceAttention = report.Style,
                layout = report.Layout.Letters,
                fullLayers = report.Layout.FullLayers,
                parameters = new { mode = report.Parameters.ModeName, topK = report.Parameters.TopK, blockSize = report.Parameters.BlockSize, window = report.Parameters.Window, combine = "union" },
                interfaceChanges = report.InterfaceChanges,
                windowCaches = report.WindowCaches,
                fusedRotaries = report.FusedRotaries,
                rotariesLeftDecomposed = report.RotariesLeftDecomposed,
                kv,
                layers = report.Layers,
                metadata = report.Metadata,
                genai = folder is null ? null : new { copiedFiles = folder.CopiedFiles, configChanges = folder.ConfigChanges },
            });
            return ExitCodes.Success;
        }

        var p = report.Parameters;
        stdout.WriteLine($"Converted {input} -> {output}");
        if (folder is not null)
        {
            stdout.WriteLine($"  genai      model folder: decoder {folder.DecoderFile} converted, {folder.CopiedFiles.Count} other file(s) copied, {HySparseNativeLibrary.FileName} added");
            foreach (var change in folder.ConfigChanges) stdout.WriteLine($"             {GenAiModelFolder.ConfigFileName}: {change}");
        }
        stdout.WriteLine($"  attention  {report.Style.ToString().ToLowerInvariant()}, {report.Layers.Count} layers");
        stdout.WriteLine($"  layout     {report.Layout.Letters}  ({options.Layout.Description}{(options.Layout.SparseLast ? "" : ", last layer full")}; full layers {string.Join(",", report.Layout.FullLayers)})");
        stdout.WriteLine($"  sparse     top-k {p.TopK} blocks x block size {p.BlockSize} + window {p.Window} = at most {p.SparseReach} keys per token per sparse layer");
        stdout.WriteLine($"  mode       {SharedOptions.ModeLine(p.Mode)}");
        if (report.FusedRotaries > 0)
            stdout.WriteLine($"  rope       {report.FusedRotaries} decomposed rotations (Q and K) fused into com.microsoft.RotaryEmbedding");
        foreach (var reason in report.RotariesLeftDecomposed) stdout.WriteLine($"  rope       left decomposed: {reason}");
        if (report.WindowCaches.Count == 0)
        {
            stdout.WriteLine(report.InterfaceChanges == "none"
                ? "             model inputs and outputs are unchanged (same names, shapes and types)"
                : $"             model interface changed: {report.InterfaceChanges}");
        }
        else
        {
            // The interface changed: whoever feeds the model must know which caches stay short.
            if (report.BuffersConcatenated)
                stdout.WriteLine("             model interface changed: the shared KV buffers become concatenated caches (past = the tokens so far, present = past ++ new; onnxruntime-genai: past_present_share_buffer = false)");
            stdout.WriteLine($"             model interface changed: {report.WindowCaches.Count} cache inputs/outputs keep their names but become window caches");
            stdout.WriteLine($"             (past: last min({p.Window}, T-S) tokens, length dim '{HybridMetadata.PastWindowDim}' (dim 2; dim 3 of a combined past_N); present: last min({p.Window}, T), '{HybridMetadata.PresentWindowDim}'; start empty, feed present back as past):");
            foreach (var name in report.WindowCaches) stdout.WriteLine($"               {name}");
        }
        foreach (var figures in kv)
        {
            var hybrid = p.Mode == HybridMode.KvSharing ? figures.KvSharingCache : figures.RetrofitCache;
            stdout.WriteLine($"  KV cache   at {figures.Context} tokens: {SharedOptions.Bytes(figures.DenseCache)} dense, {SharedOptions.Bytes(hybrid)} this model ({(double)hybrid / figures.DenseCache:P0}) per sequence");
        }
        stdout.WriteLine();
        var sharing = p.Mode == HybridMode.KvSharing;
        stdout.WriteLine($"  layer  kind    selection from  {(sharing ? "own cache  " : "")}node");
        foreach (var layer in report.Layers)
        {
            var from = layer.OracleLayer is { } oracle ? $"layer {oracle}" : "-";
            var cache = !sharing ? "" : layer.Kind == LayerKind.Full ? "full       " : "window     ";
            stdout.WriteLine($"  {layer.Index,5}  {(layer.Kind == LayerKind.Full ? "full" : "sparse"),-6}  {from,-14}  {cache}{layer.Node}");
        }
        return ExitCodes.Success;
    }

    /// <summary><c>model.onnx</c> → <c>model.hysparse.onnx</c> beside it.</summary>
    private static string DefaultOutput(string input)
    {
        var directory = Path.GetDirectoryName(input) ?? "";
        var stem = Path.GetFileNameWithoutExtension(input);
        return Path.Combine(directory, $"{stem}.hysparse.onnx");
    }
}
