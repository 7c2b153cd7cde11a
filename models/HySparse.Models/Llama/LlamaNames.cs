namespace HySparse.Models.Llama;

/// <summary>
/// Graph input and output names of exported decoders, as Optimum and the onnxruntime-genai model
/// builder spell them.
/// </summary>
public static class LlamaNames
{
    /// <summary>Token ids, int64 [batch, sequence].</summary>
    public const string InputIds = "input_ids";
    /// <summary>1 for a real token, 0 for padding, int64 [batch, past + sequence].</summary>
    public const string AttentionMask = "attention_mask";
    /// <summary>Positions of the new tokens, int64 [batch, sequence], where a model takes them as an input.</summary>
    public const string PositionIds = "position_ids";
    /// <summary>Next-token logits, [batch, sequence, vocab].</summary>
    public const string Logits = "logits";

    /// <summary>Past key cache input of a layer, [batch, kv heads, past, head size].</summary>
    public static string PastKey(int layer) => $"past_key_values.{layer}.key";
    /// <summary>Past value cache input of a layer.</summary>
    public static string PastValue(int layer) => $"past_key_values.{layer}.value";
    /// <summary>Present key cache output of a layer, [batch, kv heads, past + sequence, head size].</summary>
    public static string PresentKey(int layer) => $"present.{layer}.key";
    /// <summary>Present value cache output of a layer.</summary>
    public static string PresentValue(int layer) => $"present.{layer}.value";
    /// <summary>
    /// Combined past key/value cache input of a layer, [2, batch, heads, past, head size] (keys at index 0),
    /// as ONNX Runtime's GPT-2 tools and onnxruntime-genai's <c>gpt2</c> type name it.
    /// </summary>
    public static string CombinedPast(int layer) => $"past_{layer}";
    /// <summary>Combined present key/value cache output of a layer, [2, batch, heads, past + sequence, head size].</summary>
    public static string CombinedPresent(int layer) => $"present_{layer}";
}
