namespace HySparse.Cli;

/// <summary>The <c>--help</c> pages: what each command does, why, and examples.</summary>
internal static class HelpText
{
    public const string Overview = """
        hysparse - turn exported ONNX transformer decoders into hybrid HySparse models

        A HySparse model keeps a few layers as full attention. Each full layer also acts as an
        oracle: for every token it picks the top-K blocks of B keys with the highest attention. The
        sparse layers after it attend only to those blocks plus a sliding window of the last w
        tokens. When the selected blocks and the window cover the whole context (K*B >= context,
        or w >= context) the hybrid computes exactly what the dense model computes; beyond that, a
        sparse layer reads at most K*B + w keys per token instead of all of them.

        Usage:
          hysparse convert <model.onnx | genai folder> [-o <out>] [layout] [parameters]
          hysparse generate <genai folder> (--prompt TEXT | --ids 1,2,3) [-n 64]
          hysparse inspect <model.onnx | genai folder> [--context 4096,32k] [layout] [parameters]
          hysparse verify <dense> <converted> [--prompt 64] [--steps 8]   (files or genai folders)
          hysparse demo [--dir DIR] [--prompt 256] [--steps 16] [layout] [parameters]
          hysparse native-library [--json]
          hysparse --version
          hysparse <command> --help

        Commands:
          convert   rewrite the attention layers into HySparseFullAttn / HySparseSparseAttn nodes
          inspect   list attention layers, heads and KV bytes, dense against a hybrid layout
          verify    run original and converted side by side in ONNX Runtime and compare
          demo      convert the built-in trained model and run dense and hybrid side by side
          generate  run an onnxruntime-genai model folder (converted or not) on a prompt
          native-library
                    print the path of the HySparse custom-op library this tool carries (for
                    ONNX Runtime from Python or C++: register_custom_ops_library(path))

        Common options:
          --json    machine-readable output on stdout (errors too: {"ok": false, ...})
          --help    help for a command

        Exit codes:
          0 success   2 bad command line or layout   3 input is not a readable ONNX model
          4 model refused (no attention, unconvertible layers, already converted)
          5 output path unusable or not writable   130 interrupted   1 internal error

        Converted models run in ONNX Runtime with the HySparse custom-op library registered
        (C#: sessionOptions.RegisterHySparseOps()).

        """;

    private const string Layout = """
        Layout (choose one; default --ratio 1:3):
          --pattern FSSS        F = full, S = sparse, repeated over the layers (FSSS on 8 layers
                                gives FSSSFSSS, then the last layer is made full: FSSSFSSF)
          --ratio 1:N           one full layer, then N sparse layers, repeated (1:3 = FSSS)
          --full-layers 0,4,8   exactly these layers are full (0-based)
          --sparse-last         keep the last layer sparse if the layout makes it so
                                (by default the last layer is full, as in the paper)
          Layer 0 must be full: a sparse layer needs a preceding full layer to select for it.

        Parameters (defaults from the paper):
          --top-k K         blocks each token selects (16; at most 65536)
          --block-size B    tokens per key block (64; at most 4096)
          --window W        sliding-window tokens of each sparse layer (128)

        Mode (default retrofit: every layer keeps its own full KV cache, interface unchanged):
          --kv-sharing      sparse layers read their selected blocks from the preceding full
                            layer's KV cache and keep only a window cache of their own: their
                            past_key_values.N.* inputs and present.N.* outputs (combined
                            past_N/present_N) keep their names but hold at most W tokens
                            (dim 2, or 3 of past_N, 'past_window_length' /
                            'present_window_length'; start empty, feed each present back as the
                            next past). Exact only while W >= context; beyond, even with every
                            block selected, a key outside the window comes from the full
                            layer's K/V, not the layer's own.
        """;

    private static readonly string Convert = $"""
        hysparse convert - rewrite a dense decoder into a hybrid HySparse model

        Usage:
          hysparse convert <model.onnx> [-o <out.onnx>] [layout] [parameters] [--overwrite] [--json]

        Finds every attention layer: decomposed torch.onnx.export / Optimum style (MatMul(Q,K^T),
        scale, an Add or Where mask, Softmax, MatMul(V); keys transposed [0,1,3,2] or straight from
        the head split with [0,2,3,1]; Q/K/V from separate projections or a fused QKV split by Split
        or Slices; with a KV cache Concat(past, new) or without one); a fused
        com.microsoft.GroupQueryAttention, MultiHeadAttention or Attention node (GPT-2 style: the
        projection, bias and combined past_N/present_N caches are rebuilt around the HySparse op);
        or an ONNX Attention node (opset 23). Masks are checked to be causal + padding on a probe batch. Each layer is replaced
        by a HySparse operator that takes the rotated Q/K/V, the past caches and attention_mask
        (GroupQueryAttention: its shared KV buffers, seqlens_k and total_sequence_length; --kv-sharing
        is refused there). In the
        default retrofit mode every layer keeps its own keys and values, so the model's inputs and
        outputs keep their names and shapes; sparse layers compute one exact softmax over selected
        blocks plus window. With --kv-sharing the sparse layers' caches become window caches (the
        command lists them) and sparse layers read selected blocks from the full layer's cache.
        Initializers and all other nodes are left as they are. The layout, parameters, mode and any
        interface change are recorded in the model's metadata (hysparse.*).

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

        Options:
          -o, --output PATH   output file (default: <model>.hysparse.onnx beside the input), or
                              output folder for a genai model folder (default: <folder>-hysparse)
          --context LIST      contexts to show KV cache bytes at, k = 1024 (default 4096,32768)
          --overwrite         replace an existing output file
          --kv-buffer         keep concatenated caches (present = Concat(past, new)) in buffers
                              updated in place, as GroupQueryAttention models do: every
                              past_key_values.N.* becomes [B, H_kv, C, D] (dim 2
                              'max_sequence_length', C >= the total length), present.N.* has the
                              same shape and may be bound to the same memory (IOBinding), so a
                              decode step writes its new tokens instead of copying each cache.
                              attention_mask keeps its [B, P+S] meaning, but padding may only be
                              on the right of the first prompt. Refused with --kv-sharing and for
                              models without a KV cache.
          -q, --quiet         no progress lines on stderr
          --json              print the result as JSON on stdout (no progress lines)

        {Layout}

        Examples:
          hysparse convert llama.onnx -o llama.hybrid.onnx --ratio 1:3
          hysparse convert llama.onnx --full-layers 0,8,16,24,31 --top-k 8 --window 256
          hysparse convert llama.onnx --pattern FSSSSSSS --json
          hysparse convert llama.onnx -o llama.shared.onnx --ratio 1:3 --kv-sharing --window 256
          hysparse convert ./phi3-genai -o ./phi3-hysparse --ratio 1:3

        """;

    private const string Generate = """
        hysparse generate - run an onnxruntime-genai model folder on a prompt

        Runs the folder through onnxruntime-genai (CPU), as a serving app would: genai keeps the KV
        cache and runs the search; a converted folder loads libhysparse_onnx.so itself. Prints the
        completion (through the folder's tokenizer) or the token ids, time to first token, decode
        tokens/s, the KV-cache bytes genai held at the end and the peak resident memory.

        Usage:
          hysparse generate <folder> (--prompt TEXT | --ids 1,2,3 | --random-prompt N) [options]

        Options:
          -p, --prompt TEXT       prompt text (needs tokenizer.json / tokenizer_config.json)
          --ids LIST              prompt token ids, comma-separated
          --random-prompt N       N random token ids (seeded by --seed), for measurements
          -n, --new-tokens N      tokens to generate (64)
          --batch N               decode N copies of the prompt together (1)
          --sample                sample instead of greedy search, with --temperature T (1),
                                  --top-k K (all), --top-p P (1) and --seed S (1)
          --json                  sequences, timings, KV tensors and memory as JSON

        Examples:
          hysparse generate ./phi3-hysparse --prompt "def fibonacci(n):" -n 48
          hysparse generate ./model-hysparse --random-prompt 8192 -n 16 --json

        """;

    private static readonly string Inspect = $"""
        hysparse inspect - what the converter sees in a model

        Usage:
          hysparse inspect <model.onnx> [--context 4096,32k] [layout] [parameters] [--json]

        Lists the attention layers found (style, heads, head size, cache type) and any that cannot be
        converted with the reason. For a dense model it shows what the layout given (default 1:3)
        would do; for a converted model, the layout and mode it has and which caches are window
        caches (kv-sharing); for a HySparse-native model (hysparse.mode = native, trained with its
        sparse layers), its layout, K, B, w and window caches from its metadata. KV figures at each context T (* marks the model's or requested mode):
          KV cache           bytes the caches hold: dense and retrofit keep T tokens in every layer;
                             kv-sharing keeps T in full layers and only the window in sparse layers
          KV read per token  bytes one decode step reads: T per full layer, at most
                             min(T, K*B + w) per sparse layer
        A layer's cache costs 2 * kv_heads * head_size * element_bytes per token.

        Options:
          --context LIST      context lengths, comma-separated, k = 1024 (default 4096,32768)
          --json              print the report as JSON on stdout

        {Layout}

        Examples:
          hysparse inspect llama.onnx
          hysparse inspect llama.onnx --ratio 1:7 --context 8k,32k,128k --json

        """;

    private const string Verify = """
        hysparse verify - run a dense model and its conversion side by side

        Usage:
          hysparse verify <dense.onnx> <converted.onnx> [--prompt N] [--steps N] [--batch N] [--seed N] [--json]

        Feeds both models the same random prompt (prefill), then decodes greedily: the dense model's
        next token goes to both, and each model gets back its own caches. For every call it reports
        the largest absolute and relative logit difference, how often the arg-max token agrees, and
        the wall time of each model (ONNX Runtime, CPU). The converted model runs with the HySparse
        operator library registered. Both models need the exported-decoder interface: input_ids,
        attention_mask, past_key_values.N.key/value in; logits, present.N.key/value out (float32).

        A retrofit conversion is exact (errors at float rounding level) while the selected blocks
        and the window cover the context, i.e. K*B >= context or w >= context; past that it
        approximates, which the top-1 agreement measures. A kv-sharing conversion is exact only
        while w >= context; its window caches are fed back at whatever length they come out, and
        the KV bytes both models returned at the last call are printed.

        A HySparse-native model (hysparse.mode = native) has no dense original, so verify refuses it
        on either side; inspect it instead.

        Options:
          --prompt N   prompt tokens per sequence (64)
          --steps N    decode steps after the prompt (8)
          --batch N    sequences per call (1)
          --seed N     seed of the random prompt (1)
          -q, --quiet  no progress lines on stderr

        Example:
          hysparse convert llama.onnx -o hybrid.onnx --top-k 2 --block-size 16 --window 32
          hysparse verify llama.onnx hybrid.onnx --prompt 256 --steps 16

        """;

    private static readonly string Demo = $"""
        hysparse demo - the whole pipeline on a built-in model

        Usage:
          hysparse demo [--dir DIR] [--prompt N] [--steps N] [--native] [layout] [parameters] [--json]
          hysparse demo --synthetic [--layers N] [--prompt N] [--steps N] [--native] [layout] [parameters] [--json]

        Converts the built-in trained model - a byte-level language model of Python source (8 layers,
        1.6 M parameters, models/fixtures/trained) - and lets dense and hybrid continue the same
        held-out Python prompt: it prints both continuations, how often the hybrid predicts the byte
        dense wrote, KV bytes and speed. Defaults: ratio 1:3, top-k 8, block size 16, window 64 (what
        the model's HySparse twin was trained with); add --kv-sharing for that mode's smaller cache,
        --native to also run the model trained as HySparse.

        --synthetic runs the earlier demo instead: a Llama-style decoder with random weights (hidden
        256, 8 query / 2 KV heads, head size 32) on a random prompt and greedy decode steps (as verify
        does), with defaults top-k 4, block size 16, window 32 so that the sparse layers skip keys
        within its context; --native there builds a HySparse-native model of the same sizes.

        Options:
          --dir DIR     keep the models in DIR (default: a temporary directory, deleted)
          --native      also run the HySparse-native model
          --prompt N    prompt bytes (1024; --synthetic: tokens, 256)
          --steps N     bytes to generate (120; --synthetic: decode steps, 16)
          --synthetic   random-weight decoder instead of the trained model
          --layers N    --synthetic: decoder layers (8)

        {Layout}

        """;

    private const string NativeLibrary = """
        hysparse native-library - print the path of the HySparse custom-op library

        Converted models need the com.hysparse operators registered in ONNX Runtime. From C#, the
        HySparse.Onnx package does it (sessionOptions.RegisterHySparseOps()); from Python or C++,
        register this file:
          python:  so.register_custom_ops_library(path)
          C++:     session_options.RegisterCustomOpsLibrary(path)

        Options:
          --json    path, tool version, runtime identifier and ONNX Runtime version

        """;

    /// <summary>The help page of <paramref name="verb"/>, or null for an unknown verb.</summary>
    public static string? For(string verb) => verb switch
    {
        "convert" => Convert,
        "inspect" => Inspect,
        "verify" => Verify,
        "demo" => Demo,
        "native-library" => NativeLibrary,
        "generate" => Generate,
        _ => null,
    };
}
