#!/usr/bin/python3
"""Exports the trained byte-level LMs to ONNX, with the decoder interface every tool in this
project uses: inputs input_ids int64 [B, S], attention_mask int64 [B, T], past_key_values.N.key/value
float32 [B, H_kv, len, D]; outputs logits [B, S, 256] and present.N.key/value.

- dense: exported by torch.onnx.export (opset 14) from an eager-attention forward written the way
  Optimum exports Llama (additive mask, Softmax, MatMul), so it is a real exporter's graph and the
  converter (`hysparse convert`) turns it into retrofit or KV-sharing layouts;
- hysparse: written node by node (onnx.helper) around com.hysparse ops. Full layers are
  HySparseFullAttn emitting block_indices; sparse layers are HySparseSparseAttn with combine=gate,
  sinks, per-head gates, shared_key/value = the preceding full layer's present cache (KV sharing)
  and window_cache=1, so their present.N tensors hold at most `window` tokens;
- swa: the same writer; its window layers are HySparseSparseAttn with an empty selection (every block
  index -1), combine=union and a sink: exactly sliding-window attention, with real window caches.

Weights are stored as float16 initializers followed by a Cast to float32 (ONNX Runtime folds the
casts when the session is created), which halves the files; the PyTorch reference that the
agreement test compares against runs on the same float16-rounded weights (see `rounded_model`).

    /usr/bin/python3 models/train/export_onnx.py --checkpoint build/train/hysparse/model.pt --out models/fixtures/trained/hysparse.onnx \\
        --expected models/fixtures/trained/hysparse.expected.json --text build/corpus/val.bin
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hysparse_lm import ByteLM, ModelConfig, apply_rope, rope_tables  # noqa: E402

OPSET = 17
HYSPARSE_DOMAIN = "com.hysparse"


def load_checkpoint(path):
    """train.py's model.pt, or train_gpu.py's .npz (weights + a JSON record under "meta"), as one dict
    with config, state, steps and tokens."""
    if not path.endswith(".npz"):
        return torch.load(path, map_location="cpu")
    with np.load(path) as arrays:
        checkpoint = json.loads(arrays["meta"].tobytes().decode())
        checkpoint["state"] = {k[len("state/"):]: torch.from_numpy(arrays[k].copy())
                               for k in arrays.files if k.startswith("state/")}
    return checkpoint


def rounded_model(checkpoint_path):
    """The checkpoint's model with every weight rounded to float16 (what the ONNX files store)."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = ByteLM(ModelConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state"])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model.eval(), checkpoint


def repeat_kv(x, n_rep):
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


class DenseExport(nn.Module):
    """ByteLM (kind dense) written as Optimum's eager Llama attention, for torch.onnx.export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, *past):
        m, c = self.model, self.model.c
        b, s = input_ids.shape
        t = attention_mask.shape[1]
        positions = attention_mask.long().cumsum(-1) - 1
        positions = positions.masked_fill(attention_mask == 0, 1)[:, -s:]
        cos, sin = rope_tables(c, positions)
        query_positions = torch.arange(t - s, t)[:, None]
        key_positions = torch.arange(t)[None, :]
        visible = (key_positions <= query_positions)[None, None] & attention_mask[:, None, None, :].bool()
        mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
        x = m.embed_tokens(input_ids)
        presents = []
        for i, layer in enumerate(m.layers):
            h = layer.input_layernorm(x)
            attn = layer.self_attn
            q, k, v = attn.project(h, cos, sin)
            present_key = torch.cat([past[2 * i], k], dim=2)
            present_value = torch.cat([past[2 * i + 1], v], dim=2)
            keys = repeat_kv(present_key, c.group)
            values = repeat_kv(present_value, c.group)
            scores = torch.matmul(q, keys.transpose(2, 3)) / math.sqrt(c.head_dim)
            probs = nn.functional.softmax(scores + mask, dim=-1, dtype=torch.float32)
            out = torch.matmul(probs, values).transpose(1, 2).reshape(b, s, c.heads * c.head_dim)
            x = x + attn.o_proj(out)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            presents += [present_key, present_value]
        return (m.lm_head(m.norm(x)), *presents)


def io_names(c):
    inputs, outputs = ["input_ids", "attention_mask"], ["logits"]
    for i in range(c.layers):
        for kind in ("key", "value"):
            inputs.append(f"past_key_values.{i}.{kind}")
            outputs.append(f"present.{i}.{kind}")
    return inputs, outputs


def export_dense(model, path):
    c = model.c
    b, p, s = 2, 3, 4
    input_ids = torch.randint(0, 256, (b, s))
    attention_mask = torch.ones(b, p + s, dtype=torch.int64)
    past = [torch.randn(b, c.kv_heads, p, c.head_dim) for _ in range(2 * c.layers)]
    inputs, outputs = io_names(c)
    dynamic = {"input_ids": {0: "batch_size", 1: "sequence_length"},
               "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
               "logits": {0: "batch_size", 1: "sequence_length"}}
    for name in inputs[2:]:
        dynamic[name] = {0: "batch_size", 2: "past_sequence_length"}
    for name in outputs[1:]:
        dynamic[name] = {0: "batch_size", 2: "total_sequence_length"}
    torch.onnx.export(DenseExport(model), (input_ids, attention_mask, *past), path, opset_version=14,
                      input_names=inputs, output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
    graph_model = onnx.load(path)
    store_weights_as_float16(graph_model)
    return graph_model


def store_weights_as_float16(model, min_elements=1024):
    """Float32 initializers with at least `min_elements` values become float16 initializers read
    through a Cast, under their original names, so every consumer sees the same float32 tensor."""
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        values = numpy_helper.to_array(init).astype(np.float16)
        stored = numpy_helper.from_array(values, init.name + ".fp16")
        graph.initializer.remove(init)
        graph.initializer.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [init.name], to=TensorProto.FLOAT, name=init.name + ".cast"))
    for i, node in enumerate(casts):
        graph.node.insert(i, node)


class GraphWriter:
    """A small onnx.helper front end: unique names, constants, and the Llama building blocks."""

    def __init__(self):
        self.nodes, self.initializers, self.counter = [], [], 0

    def name(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def const(self, hint, array):
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name, tensor):
        """A float32 weight stored as float16 + Cast."""
        stored = numpy_helper.from_array(tensor.detach().numpy().astype(np.float16), name + ".fp16")
        self.initializers.append(stored)
        self.nodes.append(helper.make_node("Cast", [stored.name], [name], to=TensorProto.FLOAT, name=name + ".cast"))
        return name

    def op(self, op_type, inputs, hint=None, outputs=1, domain=None, **attrs):
        names = [self.name(hint or op_type) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(op_type + "_node"),
                                           domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def linear(self, x, module, name):
        return self.op("MatMul", [x, self.weight(name, module.weight.t())], name)

    def rmsnorm(self, x, module, eps, name):
        squared = self.op("Mul", [x, x])
        mean = self.op("ReduceMean", [squared], axes=[-1], keepdims=1)
        root = self.op("Sqrt", [self.op("Add", [mean, self.const("eps", np.array(eps, np.float32))])])
        return self.op("Mul", [self.op("Div", [x, root]), self.weight(name, module.weight)], name)

    def rope(self, x, heads, head_dim, cos, sin):
        """x [B, S, H·D] -> RoPE'd [B, S, H·D] (Hugging Face's rotate_half form)."""
        shaped = self.op("Reshape", [x, self.const("shape", np.array([0, 0, heads, head_dim], np.int64))])
        half = head_dim // 2
        first, second = self.op("Split", [shaped, self.const("split", np.array([half, half], np.int64))], outputs=2, axis=-1)
        rotated = self.op("Concat", [self.op("Neg", [second]), first], axis=-1)
        mixed = self.op("Add", [self.op("Mul", [shaped, cos]), self.op("Mul", [rotated, sin])])
        return self.op("Reshape", [mixed, self.const("shape", np.array([0, 0, heads * head_dim], np.int64))])


def export_hybrid(model, path, kind):
    """The hysparse and swa models, around com.hysparse operators."""
    c = model.c
    w = GraphWriter()
    inputs, outputs = io_names(c)
    # Positions as Hugging Face derives them from the mask (padding at position 1), last S of them.
    cumulative = w.op("CumSum", ["attention_mask", w.const("axis", np.array(1, np.int64))])
    positions = w.op("Sub", [cumulative, w.const("one", np.array(1, np.int64))])
    is_padding = w.op("Equal", ["attention_mask", w.const("zero", np.array(0, np.int64))])
    positions = w.op("Where", [is_padding, w.const("one", np.array(1, np.int64)), positions])
    ids_shape = w.op("Shape", ["input_ids"])
    batch = w.op("Slice", [ids_shape, w.const("i", np.array([0], np.int64)), w.const("i", np.array([1], np.int64))])
    new_len = w.op("Slice", [ids_shape, w.const("i", np.array([1], np.int64)), w.const("i", np.array([2], np.int64))])
    positions = w.op("Slice", [positions, w.op("Neg", [new_len]), w.const("end", np.array([2 ** 62], np.int64)),
                               w.const("axes", np.array([1], np.int64))])
    inv_freq = 1.0 / (c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float32) / c.head_dim))
    freqs = w.op("Mul", [w.op("Unsqueeze", [w.op("Cast", [positions], to=TensorProto.FLOAT),
                                            w.const("axes", np.array([-1], np.int64))]),
                         w.const("inv_freq", inv_freq.astype(np.float32))])
    emb = w.op("Concat", [freqs, freqs], axis=-1)
    unsq = w.const("axes", np.array([2], np.int64))
    cos = w.op("Unsqueeze", [w.op("Cos", [emb]), unsq], "rope_cos")  # [B, S, 1, D]
    sin = w.op("Unsqueeze", [w.op("Sin", [emb]), unsq], "rope_sin")
    if kind == "swa":
        # An empty selection [B, H_kv, S, 1] of -1: the window layers' SA branch reads nothing.
        shape = w.op("Concat", [batch, w.const("hkv", np.array([c.kv_heads], np.int64)), new_len,
                                w.const("one", np.array([1], np.int64))], axis=0)
        no_blocks = w.op("ConstantOfShape", [shape], "no_blocks", value=helper.make_tensor("v", TensorProto.INT32, [1], [-1]))

    x = w.op("Gather", [w.weight("embed_tokens", model.embed_tokens.weight), "input_ids"], "embeddings", axis=0)
    common = dict(num_heads=c.heads, kv_num_heads=c.kv_heads, scale=1.0 / math.sqrt(c.head_dim))
    shared = None
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        prefix = f"layers.{i}"
        h = w.rmsnorm(x, layer.input_layernorm, c.eps, f"{prefix}.input_layernorm")
        q = w.rope(w.linear(h, attn.q_proj, f"{prefix}.q_proj"), c.heads, c.head_dim, cos, sin)
        k = w.rope(w.linear(h, attn.k_proj, f"{prefix}.k_proj"), c.kv_heads, c.head_dim, cos, sin)
        v = w.linear(h, attn.v_proj, f"{prefix}.v_proj")
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        if layer.full:
            names = [w.name(f"{prefix}.attn"), present_k, present_v]
            if kind == "hysparse":
                names.append(f"{prefix}.block_indices")
            w.nodes.append(helper.make_node("HySparseFullAttn", [q, k, v, past_k, past_v, "attention_mask"], names,
                                            name=f"{prefix}.HySparseFullAttn", domain=HYSPARSE_DOMAIN,
                                            block_size=c.block_size, top_k=c.top_k, **common))
            out = names[0]
            shared = (present_k, present_v, names[3] if kind == "hysparse" else None)
        elif kind == "hysparse":
            gate = w.op("Add", [w.linear(h, attn.gate_proj, f"{prefix}.gate_proj"),
                                w.weight(f"{prefix}.gate_proj.bias", attn.gate_proj.bias)], f"{prefix}.gate")
            sinks = w.weight(f"{prefix}.sinks", attn.sinks)
            out = w.name(f"{prefix}.attn")
            w.nodes.append(helper.make_node(
                "HySparseSparseAttn",
                [q, k, v, past_k, past_v, shared[0], shared[1], shared[2], "attention_mask", gate, sinks],
                [out, present_k, present_v], name=f"{prefix}.HySparseSparseAttn", domain=HYSPARSE_DOMAIN,
                block_size=c.block_size, window=c.window, combine="gate", window_cache=1, **common))
        else:
            sinks = w.op("Unsqueeze", [w.weight(f"{prefix}.sinks", attn.sinks), w.const("axes", np.array([0], np.int64))])
            out = w.name(f"{prefix}.attn")
            w.nodes.append(helper.make_node(
                "HySparseSparseAttn",
                [q, k, v, past_k, past_v, shared[0], shared[1], no_blocks, "attention_mask", "", sinks],
                [out, present_k, present_v], name=f"{prefix}.HySparseSparseAttn", domain=HYSPARSE_DOMAIN,
                block_size=c.block_size, window=c.window, combine="union", window_cache=1, **common))
        x = w.op("Add", [x, w.linear(out, attn.o_proj, f"{prefix}.o_proj")])
        mlp = layer.mlp
        h = w.rmsnorm(x, layer.post_attention_layernorm, c.eps, f"{prefix}.post_attention_layernorm")
        gate_act = w.linear(h, mlp.gate_proj, f"{prefix}.mlp.gate_proj")
        act = w.op("Mul", [gate_act, w.op("Sigmoid", [gate_act])])
        up = w.linear(h, mlp.up_proj, f"{prefix}.mlp.up_proj")
        x = w.op("Add", [x, w.linear(w.op("Mul", [act, up]), mlp.down_proj, f"{prefix}.mlp.down_proj")])
    final = w.rmsnorm(x, model.norm, c.eps, "norm")
    w.nodes.append(helper.make_node("MatMul", [final, w.weight("lm_head", model.lm_head.weight.t())], ["logits"], name="lm_head"))

    def value_info(name, elem, dims):
        return helper.make_tensor_value_info(name, elem, dims)

    graph_inputs = [value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
                    value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])]
    graph_outputs = [value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", c.vocab])]
    for i in range(c.layers):
        past_len = "past_sequence_length" if c.is_full(i) else "past_window_length"
        present_len = "total_sequence_length" if c.is_full(i) else "present_window_length"
        for kind_ in ("key", "value"):
            graph_inputs.append(value_info(f"past_key_values.{i}.{kind_}", TensorProto.FLOAT, ["batch_size", c.kv_heads, past_len, c.head_dim]))
            graph_outputs.append(value_info(f"present.{i}.{kind_}", TensorProto.FLOAT, ["batch_size", c.kv_heads, present_len, c.head_dim]))
    graph = helper.make_graph(w.nodes, f"hysparse_byte_lm_{kind}", graph_inputs, graph_outputs, w.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(HYSPARSE_DOMAIN, 1)],
                                   producer_name="HySparse.Onnx models/train/export_onnx.py")
    onnx_model.ir_version = 8
    return onnx_model


def metadata(model, kind, checkpoint):
    c = model.c
    layout = "".join("F" if c.is_full(i) else "S" for i in range(c.layers))
    # All window-cache inputs, then all outputs: the order the converter and the C# builder write.
    window_caches = [f"{d}.{i}.{kv}" for d in ("past_key_values", "present") for i in range(c.layers)
                     if not c.is_full(i) for kv in ("key", "value")]
    entries = {"training.kind": kind, "training.steps": str(checkpoint["steps"]),
               "training.tokens": str(checkpoint["tokens"]),
               "training.config": json.dumps(c.to_dict())}
    warm_start = (checkpoint.get("initial") or {}).get("warm_start")
    if warm_start:
        # A model that did not start from random weights says so (models/train/warm_start.py).
        entries["training.warm_start"] = json.dumps(warm_start)
    if kind != "dense":
        entries.update({"hysparse.format_version": "1", "hysparse.layout": layout,
                        "hysparse.mode": "native" if kind == "hysparse" else "sliding_window",
                        "hysparse.full_layers": ",".join(str(i) for i in c.full_layers),
                        "hysparse.block_size": str(c.block_size), "hysparse.top_k": str(c.top_k),
                        "hysparse.window": str(c.window),
                        "hysparse.combine": "gate" if kind == "hysparse" else "union",
                        "hysparse.window_caches": ",".join(window_caches), "hysparse.kv_cache": "concatenated",
                        "hysparse.sinks": "1"})
        if kind == "hysparse":
            entries["hysparse.gate"] = "per_head"
    return entries


@torch.no_grad()
def expected_outputs(model, text, prefill=300, decode=4, pad=5):
    """Reference logits for the agreement test: a batch of two rows of real text, the second
    left-padded by `pad` tokens, prefilled with `prefill` tokens, then `decode` single-token steps.
    Logits are kept at every 16th prefill position, the last one and every decode step."""
    b = 2
    ids = torch.stack([text[:prefill + decode], text[1000:1000 + prefill + decode]]).long()
    mask = torch.ones(b, prefill + decode, dtype=torch.int64)
    mask[1, :pad] = 0
    ids[1, :pad] = 0
    keep = sorted(set(range(0, prefill, 16)) | {prefill - 1})
    logits, past, indices = model.forward(ids[:, :prefill], mask[:, :prefill], model.empty_past(b))
    steps = [{"tokens": ids[:, :prefill].tolist(), "mask": mask[:, :prefill].tolist(), "positions": keep,
              "logits": logits[:, keep].tolist(), "cache_lengths": [int(k.shape[2]) for k, _ in past]}]
    for i in range(prefill, prefill + decode):
        logits, past, indices = model.forward(ids[:, i:i + 1], mask[:, :i + 1], past)
        steps.append({"tokens": ids[:, i:i + 1].tolist(), "mask": mask[:, i:i + 1].tolist(), "positions": [0],
                      "logits": logits.tolist(), "cache_lengths": [int(k.shape[2]) for k, _ in past],
                      "block_indices": [ix.tolist() for ix in indices]})
    return {"config": model.c.to_dict(), "batch": b, "steps": steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--expected", help="also write reference logits (JSON) for the agreement test")
    parser.add_argument("--text", help="validation bytes the reference inputs are taken from (required with --expected)")
    args = parser.parse_args()
    if args.expected and not args.text:
        parser.error("--expected needs --text (the validation bytes the reference inputs come from)")
    for path in (args.out, args.expected):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(0)
    model, checkpoint = rounded_model(args.checkpoint)
    kind = model.c.kind
    onnx_model = export_dense(model, args.out + ".tmp") if kind == "dense" else export_hybrid(model, args.out, kind)
    for key, value in metadata(model, kind, checkpoint).items():
        onnx_model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    if kind == "dense":
        onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, args.out + ".tmp")
    os.replace(args.out + ".tmp", args.out)
    print(f"{args.out}: {os.path.getsize(args.out):,} bytes")
    if args.expected:
        with open(args.text, "rb") as f:
            text = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        with open(args.expected + ".tmp", "w") as f:
            json.dump(expected_outputs(model, text), f)
        os.replace(args.expected + ".tmp", args.expected)
        print(f"{args.expected}: {os.path.getsize(args.expected):,} bytes")


if __name__ == "__main__":
    main()
