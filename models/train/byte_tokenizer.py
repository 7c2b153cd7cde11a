#!/usr/bin/python3
"""Writes the onnxruntime-genai files of the byte-level fidelity models into a folder.

    /usr/bin/python3 models/train/byte_tokenizer.py models/fixtures/trained/genai

The models read and predict raw bytes (token id = byte value, vocabulary 256; files of the corpus are
joined by a NUL byte, so id 0 is the end of a file and serves as eos). onnxruntime-genai tokenizes with
Hugging Face tokenizer files, so the byte mapping is written as a byte-level BPE with no merges: GPT-2's
reversible byte-to-character table gives every byte a printable character, and that character's id is
the byte. genai_config.json describes the models' decoder interface (the dense export and its
conversions share it); a folder is complete once a model is copied in as model.onnx.
"""
import json
import os
import sys


def byte_characters():
    """GPT-2's table: printable bytes map to themselves, the others to code points from 256 on."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def main(folder, config_path):
    with open(config_path) as f:
        config = json.load(f)
    os.makedirs(folder, exist_ok=True)
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": level, "post_processor": None, "decoder": level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {ch: b for b, ch in sorted(byte_characters().items())}, "merges": []},
    }
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=1)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "model_max_length": config["context"], "add_prefix_space": False,
                   "bos_token": None, "unk_token": None, "eos_token": byte_characters()[0]}, f, ensure_ascii=False, indent=1)
    genai = {
        "model": {
            "type": "llama", "context_length": config["context"], "vocab_size": config["vocab"],
            "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
            "decoder": {
                "filename": "model.onnx", "head_size": config["head_dim"], "hidden_size": config["hidden"],
                "num_attention_heads": config["heads"], "num_hidden_layers": config["layers"],
                "num_key_value_heads": config["kv_heads"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": config["context"], "num_beams": 1, "past_present_share_buffer": False},
    }
    with open(os.path.join(folder, "genai_config.json"), "w") as f:
        json.dump(genai, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1], os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json"))
