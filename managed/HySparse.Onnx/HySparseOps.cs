namespace HySparse.Onnx;

/// <summary>
/// Names of the HySparse custom operators, their domain and their attributes, exactly as
/// <c>docs/ops.md</c> specifies them. Model builders and the converter use these constants so a typo
/// cannot produce a node the native library does not recognise.
/// </summary>
public static class HySparseOps
{
    /// <summary>Operator domain of both ops (version 1).</summary>
    public const string Domain = "com.hysparse";

    /// <summary>Opset version of <see cref="Domain"/>.</summary>
    public const int DomainVersion = 1;

    /// <summary>Full-attention layer that also selects the top-K key blocks per token (the oracle).</summary>
    public const string FullAttn = "HySparseFullAttn";

    /// <summary>Sparse layer: attends to the selected blocks plus a sliding window.</summary>
    public const string SparseAttn = "HySparseSparseAttn";

    /// <summary>Attribute names (see docs/ops.md for types and defaults).</summary>
    public static class Attributes
    {
        /// <summary>int: number of query heads H_q.</summary>
        public const string NumHeads = "num_heads";
        /// <summary>int: number of key/value heads H_kv; must divide <see cref="NumHeads"/>.</summary>
        public const string KvNumHeads = "kv_num_heads";
        /// <summary>float: logit scale; 0 or absent means 1/sqrt(head size).</summary>
        public const string Scale = "scale";
        /// <summary>int: tokens per key block (default 64).</summary>
        public const string BlockSize = "block_size";
        /// <summary>int: blocks selected per token (default 16); full op only.</summary>
        public const string TopK = "top_k";
        /// <summary>int: sliding-window length in tokens (default 128); sparse op only.</summary>
        public const string Window = "window";
        /// <summary>string: "union" (retrofit, one softmax) or "gate" (HySparse-native); sparse op only.</summary>
        public const string Combine = "combine";
        /// <summary>int 0/1: keep only the last <see cref="Window"/> tokens in the sparse op's present cache.</summary>
        public const string WindowCache = "window_cache";
    }

    /// <summary>Values of <see cref="Attributes.Combine"/>.</summary>
    public static class CombineModes
    {
        /// <summary>One exact softmax over selected ∪ window tokens (training-free retrofit).</summary>
        public const string Union = "union";
        /// <summary>Two softmaxes combined by sigmoid gates, with sinks (HySparse-native models).</summary>
        public const string Gate = "gate";
    }

    /// <summary>Input and output positions of <see cref="FullAttn"/>.</summary>
    public static class FullAttnIO
    {
        /// <summary>
        /// Input names in order; optional ones may be empty strings in a node. The last two
        /// (<c>seqlens_k</c>, <c>total_sequence_length</c>) select the shared-buffer mode of docs/ops.md.
        /// </summary>
        public static readonly IReadOnlyList<string> Inputs =
            ["query", "key", "value", "past_key", "past_value", "attention_mask", "seqlens_k", "total_sequence_length"];
        /// <summary>Output names in order; outputs 3 to 6 are optional.</summary>
        public static readonly IReadOnlyList<string> Outputs =
            ["output", "present_key", "present_value", "block_indices", "block_scores", "selected_key", "selected_value"];
    }

    /// <summary>Input and output positions of <see cref="SparseAttn"/>.</summary>
    public static class SparseAttnIO
    {
        /// <summary>
        /// Input names in order; optional ones may be empty strings in a node. The last two
        /// (<c>seqlens_k</c>, <c>total_sequence_length</c>) select the shared-buffer mode of docs/ops.md.
        /// </summary>
        public static readonly IReadOnlyList<string> Inputs =
            ["query", "key", "value", "past_key", "past_value", "shared_key", "shared_value", "block_indices",
             "attention_mask", "gate", "sinks", "selected_key", "selected_value", "seqlens_k", "total_sequence_length"];
        /// <summary>Output names in order.</summary>
        public static readonly IReadOnlyList<string> Outputs = ["output", "present_key", "present_value"];
    }
}
