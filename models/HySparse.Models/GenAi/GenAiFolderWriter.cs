using System.Text.Json.Nodes;
using HySparse.Models.Llama;
using Onnx;

namespace HySparse.Models.GenAi;

/// <summary>
/// onnxruntime-genai model folders as genai's model builder lays them out: the decoder file and a
/// genai_config.json naming it, its inputs/outputs and the search options (no tokenizer: callers feed
/// token ids). The tests and the genai memory measurement run converted copies of such folders.
/// </summary>
public static class GenAiFolderWriter
{
    /// <summary>Writes <paramref name="model"/> and its genai_config.json into <paramref name="folder"/>.</summary>
    /// <param name="folder">Created if missing.</param>
    /// <param name="model">The decoder, written as model.onnx.</param>
    /// <param name="config">Its shape (heads, head size, layers, vocabulary).</param>
    /// <param name="type">genai's model.type; <c>gpt2</c> names the combined past_N / present_N caches.</param>
    /// <param name="shareBuffer">search.past_present_share_buffer: true for GroupQueryAttention's shared buffers.</param>
    /// <param name="contextLength">model.context_length and search.max_length.</param>
    /// <param name="positionIds">Declare a position_ids input in the config.</param>
    public static void Write(string folder, ModelProto model, LlamaConfig config, string type = "llama", bool shareBuffer = true,
                             int contextLength = LlamaModelBuilder.RotaryCacheLength, bool positionIds = false)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllBytes(Path.Combine(folder, "model.onnx"), Google.Protobuf.MessageExtensions.ToByteArray(model));
        // genai's gpt2 type reads one combined cache per layer (past_N / present_N, [2, B, H, T, D]).
        var combined = type == "gpt2";
        var inputs = combined
            ? new JsonObject { ["input_ids"] = "input_ids", ["attention_mask"] = "attention_mask", ["past_names"] = "past_%d" }
            : new JsonObject
            {
                ["input_ids"] = "input_ids",
                ["attention_mask"] = "attention_mask",
                ["past_key_names"] = "past_key_values.%d.key",
                ["past_value_names"] = "past_key_values.%d.value",
            };
        if (positionIds) inputs["position_ids"] = "position_ids";
        var genai = new JsonObject
        {
            ["model"] = new JsonObject
            {
                ["bos_token_id"] = 1,
                ["context_length"] = contextLength,
                ["decoder"] = new JsonObject
                {
                    ["session_options"] = new JsonObject { ["log_id"] = "onnxruntime-genai", ["provider_options"] = new JsonArray() },
                    ["filename"] = "model.onnx",
                    ["head_size"] = config.HeadDim,
                    ["hidden_size"] = config.Hidden,
                    ["inputs"] = inputs,
                    ["outputs"] = combined
                        ? new JsonObject { ["logits"] = "logits", ["present_names"] = "present_%d" }
                        : new JsonObject
                        {
                            ["logits"] = "logits",
                            ["present_key_names"] = "present.%d.key",
                            ["present_value_names"] = "present.%d.value",
                        },
                    ["num_attention_heads"] = config.Heads,
                    ["num_hidden_layers"] = config.Layers,
                    ["num_key_value_heads"] = config.KvHeads,
                },
                // Tests that compare tokens move it off every token the run produces (SetEosOutside).
                ["eos_token_id"] = config.Vocab - 1,
                ["pad_token_id"] = 0,
                ["type"] = type,
                ["vocab_size"] = config.Vocab,
            },
            ["search"] = new JsonObject
            {
                ["do_sample"] = false,
                ["max_length"] = contextLength,
                ["min_length"] = 0,
                ["num_beams"] = 1,
                ["num_return_sequences"] = 1,
                ["past_present_share_buffer"] = shareBuffer,
                ["top_k"] = 1,
                ["top_p"] = 1.0,
                ["temperature"] = 1.0,
                ["repetition_penalty"] = 1.0,
            },
        };
        File.WriteAllText(Path.Combine(folder, "genai_config.json"), genai.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }
}
