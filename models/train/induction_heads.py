#!/usr/bin/python3
"""Which attention heads are induction heads, and which read the previous token?

A row of random letters is written twice (`--length` letters each, `--rows` rows). For every query in
the second copy, the script averages, per head of each layer with whole-context attention, the
probability the head puts on the key right after the query's previous occurrence (the *induction*
score: what a head that finds where the current letters occurred before and reads on does) and on the
key just before the query (*previous token*). A score near 1 names the head; random attention puts
~1/position on any one key.

    /usr/bin/python3 models/train/induction_heads.py /work/train-state/G2/dense-seed1.npz models/fixtures/trained/swa.onnx

Why it matters (models/train/README.md, "Where the head forms"): a retrofit that makes the induction
layer sparse loses retrieval unless the oracle of the preceding full layer happens to select the
blocks that layer reads; a hybrid model whose full layers never form the head cannot retrieve at all.
Only full layers are scored: the dense model's eight, the hybrids' layers 0 and 4 (their other layers
see a window and selected blocks, not the whole row). For HySparse models it also prints each sparse
layer's attention gates on the same queries: whether the layer uses the selected blocks at all.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hysparse_lm  # noqa: E402
import onnx_weights  # noqa: E402  (load_model: .npz or .onnx)
from retrieval import COPY_ALPHABET  # noqa: E402


def head_scores(model, length, rows, seed):
    """({layer: (induction [heads], previous token [heads])}, {sparse layer: (SA gate [heads], window
    gate [heads])}) averaged over rows and the second copy's queries. Gates exist in HySparse models
    only: how much of each sparse layer's output comes from the selected blocks and from the window."""
    captured = []
    gates = {}
    hooks = [layer.self_attn.gate_proj.register_forward_hook(
                 lambda module, inputs, output, index=i: gates.__setitem__(index, torch.sigmoid(output[0])))
             for i, layer in enumerate(model.layers) if hasattr(layer.self_attn, "gate_proj")]
    gate_sums = {}
    original = hysparse_lm.full_attention_train

    def recording(q, k, v, c, chunk=None):
        out, probs = original(q, k, v, c, chunk)
        captured.append(torch.cat([p for _, p in probs], dim=3)[0])  # [Hkv, G, S, T]
        return out, probs

    alphabet = torch.tensor(list(COPY_ALPHABET))
    generator = torch.Generator().manual_seed(seed)
    full_layers = [i for i, layer in enumerate(model.layers) if layer.full]
    sums = {layer: [0.0, 0.0] for layer in full_layers}
    hysparse_lm.full_attention_train = recording
    try:
        for _ in range(rows):
            letters = alphabet[torch.randint(len(alphabet), (length,), generator=generator)]
            ids = torch.cat([letters, letters])[None]
            captured.clear()
            with torch.no_grad():
                model.forward_train(ids, chunk=None)
            queries = torch.arange(length + 1, 2 * length)
            for layer, probs in zip(full_layers, captured):
                heads = probs.reshape(-1, probs.shape[-2], probs.shape[-1])  # query heads in order
                sums[layer][0] = sums[layer][0] + heads[:, queries, queries - length + 1].mean(-1).numpy()
                sums[layer][1] = sums[layer][1] + heads[:, queries, queries - 1].mean(-1).numpy()
            for layer, values in gates.items():  # [S, 2H]: SA logits, then window logits
                gate_sums[layer] = gate_sums.get(layer, 0) + values[queries].mean(0).numpy()
    finally:
        hysparse_lm.full_attention_train = original
        for hook in hooks:
            hook.remove()
    heads = model.c.heads
    return ({layer: (s[0] / rows, s[1] / rows) for layer, s in sums.items()},
            {layer: (g[:heads] / rows, g[heads:] / rows) for layer, g in gate_sums.items()})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="train_gpu.py .npz files or exported .onnx models")
    parser.add_argument("--length", type=int, default=200, help="letters per copy (the row is twice as long)")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.length < 2 or args.rows < 1:
        parser.error("--length must be at least 2 and --rows at least 1")
    torch.set_num_threads(1)
    for path in args.models:
        model, _ = onnx_weights.load_model(path)
        model.eval()
        print(f"{path} ({model.c.kind}): per query head, induction / previous token")
        scores, gates = head_scores(model, args.length, args.rows, args.seed)
        for layer, (induction, previous) in scores.items():
            cells = "  ".join(f"{i:.2f}/{p:.2f}" for i, p in zip(induction, previous))
            print(f"  layer {layer}: {cells}")
        if gates:
            print("  sparse layers' gates per query head, SA (selected blocks) / window:")
        for layer, (sa, window) in gates.items():
            cells = "  ".join(f"{a:.2f}/{w:.2f}" for a, w in zip(sa, window))
            print(f"  layer {layer}: {cells}")


if __name__ == "__main__":
    main()
