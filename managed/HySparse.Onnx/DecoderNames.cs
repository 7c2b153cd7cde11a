namespace HySparse.Onnx;

/// <summary>
/// Graph input and output names of exported decoders, as Optimum, torch exports and the
/// onnxruntime-genai model builder spell them. The converter keeps them, <see cref="KvCacheDecoder"/>
/// feeds them, and the model builders write them.
/// </summary>
public static class DecoderNames
{
    /// <summary>Token ids, int64 [batch, sequence].</summary>
    public const string InputIds = "input_ids";
    /// <summary>1 for a real token, 0 for padding, [batch, past + sequence].</summary>
    public const string AttentionMask = "attention_mask";
    /// <summary>Positions of the new tokens, int64 [batch, sequence], where a model takes them as an input.</summary>
    public const string PositionIds = "position_ids";
    /// <summary>Next-token logits, [batch, sequence, vocab].</summary>
    public const string Logits = "logits";
    /// <summary>Prefix of the separate past caches (<see cref="PastKey"/>, <see cref="PastValue"/>).</summary>
    public const string PastPrefix = "past_key_values.";
    /// <summary>Prefix of the separate present caches (<see cref="PresentKey"/>, <see cref="PresentValue"/>).</summary>
    public const string PresentPrefix = "present.";
    /// <summary>Prefix of the combined past caches (<see cref="CombinedPast"/>).</summary>
    public const string CombinedPastPrefix = "past_";
    /// <summary>Prefix of the combined present caches (<see cref="CombinedPresent"/>).</summary>
    public const string CombinedPresentPrefix = "present_";

    /// <summary>Past key cache input of a layer, [batch, kv heads, past, head size].</summary>
    public static string PastKey(int layer) => $"{PastPrefix}{layer}.key";
    /// <summary>Past value cache input of a layer.</summary>
    public static string PastValue(int layer) => $"{PastPrefix}{layer}.value";
    /// <summary>Present key cache output of a layer, [batch, kv heads, past + sequence, head size].</summary>
    public static string PresentKey(int layer) => $"{PresentPrefix}{layer}.key";
    /// <summary>Present value cache output of a layer.</summary>
    public static string PresentValue(int layer) => $"{PresentPrefix}{layer}.value";
    /// <summary>
    /// Combined past key/value cache input of a layer, [2, batch, heads, past, head size] (keys at index 0),
    /// as ONNX Runtime's GPT-2 tools and onnxruntime-genai's <c>gpt2</c> type name it.
    /// </summary>
    public static string CombinedPast(int layer) => $"{CombinedPastPrefix}{layer}";
    /// <summary>Combined present key/value cache output of a layer, [2, batch, heads, past + sequence, head size].</summary>
    public static string CombinedPresent(int layer) => $"{CombinedPresentPrefix}{layer}";
}
