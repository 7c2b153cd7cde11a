#!/usr/bin/python3
"""Start a HySparse model from a trained sliding-window (SWA) model's weights.

    /usr/bin/python3 models/train/warm_start.py --swa /work/train-state/swaC/swa-seed1.npz \
        --out /work/train-state/hysFromSwa

Why (models/train/README.md, "Where the head forms"): at this scale HySparse trained from random
weights never forms an induction head in a full layer, so it cannot read back beyond its window,
while SWA with the same two full layers does. Every SWA weight has a place in HySparse: full layers,
MLPs, norms and embeddings are the same modules, and a SWA window layer's q/k/v/o projections and
sinks are a sparse layer's window branch. What SWA lacks is the sparse layers' SA branch (its sink)
and the per-head gates that mix the two branches.

The gates are set from their biases (weights 0): the window branch nearly open, the SA branch nearly
shut, so the new model starts out computing what SWA computes and training decides how much the
selected blocks are worth. Before writing, the script checks that with the gates saturated (window
1, SA 0) the HySparse forward reproduces the SWA model's logits; a mapping that touched anything
else (an earlier inline version also zeroed the MLPs' gate_proj) fails that check.

The output is a train_gpu.py checkpoint (<out>/hysparse-seed<N>.npz) that `train_gpu.py --init-onnx
<out>` continues; its record names the SWA model it came from, so exports say "warm-started".
"""
import argparse
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnx_weights  # noqa: E402  (load_model: .npz or .onnx)
from hysparse_lm import ByteLM, ModelConfig  # noqa: E402
from train_gpu import save_npz  # noqa: E402


def hysparse_from_swa(swa, sa_gate_bias, window_gate_bias, sa_sink):
    """A HySparse ByteLM holding `swa`'s weights; gates and the SA sinks as given."""
    config = ModelConfig(**dict(swa.c.to_dict(), kind="hysparse"))
    model = ByteLM(config)
    target = model.state_dict()
    source = swa.state_dict()
    with torch.no_grad():
        for name, value in source.items():
            layer = name.split(".")[1] if name.startswith("layers.") else None
            if name.endswith("self_attn.sinks") and layer is not None and not config.is_full(int(layer)):
                target[name][1].copy_(value)  # [SA, window]: SWA's sinks are the window branch's
                target[name][0].fill_(sa_sink)
            else:
                target[name].copy_(value)
        for i, layer in enumerate(model.layers):
            if layer.full:
                continue
            gate = layer.self_attn.gate_proj
            gate.weight.zero_()
            gate.bias[: config.heads] = sa_gate_bias
            gate.bias[config.heads:] = window_gate_bias
    missing = [n for n in target if n not in source and "gate_proj" not in n.split("self_attn.")[-1]]
    if missing:
        raise ValueError(f"HySparse parameters with no SWA counterpart besides the gates: {missing}")
    return model


def check_reproduces_swa(swa, model, length=512, seed=0):
    """Largest |logit difference| between `swa` and `model` with its gates saturated to the window
    (the weights that will be written, only the gate biases changed)."""
    saturated = copy.deepcopy(model)
    with torch.no_grad():
        for layer in saturated.layers:
            if not layer.full:
                layer.self_attn.gate_proj.bias[: model.c.heads] = -40.0
                layer.self_attn.gate_proj.bias[model.c.heads:] = 40.0
    ids = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return (saturated.forward_train(ids) - swa.forward_train(ids)).abs().max().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swa", required=True, help="SWA model: a train_gpu.py .npz or an exported .onnx")
    parser.add_argument("--out", required=True, help="directory for hysparse-seed<N>.npz")
    parser.add_argument("--seed", type=int, help="seed in the output's name (default: the SWA model's)")
    parser.add_argument("--sa-gate-bias", type=float, default=-2.0, help="SA gate = sigmoid(bias): 0.12")
    parser.add_argument("--window-gate-bias", type=float, default=4.0, help="window gate = sigmoid(bias): 0.98")
    parser.add_argument("--sa-sink", type=float, default=0.0, help="initial sink logit of the SA branch")
    args = parser.parse_args()

    swa, record = onnx_weights.load_model(args.swa)
    if swa.c.kind != "swa":
        sys.exit(f"{args.swa}: a '{swa.c.kind}' model, not a sliding-window (swa) one")
    swa.eval()
    model = hysparse_from_swa(swa, args.sa_gate_bias, args.window_gate_bias, args.sa_sink).eval()
    error = check_reproduces_swa(swa, model)
    if error > 1e-4:
        sys.exit(f"with its gates saturated to the window branch the HySparse model differs from the SWA "
                 f"model by {error:.3g} in a logit: the weight mapping is wrong")
    seed = args.seed if args.seed is not None else int(record.get("seed", 1))
    steps, tokens = int(record.get("steps", 0)), int(record.get("tokens", 0))
    meta = {"config": model.c.to_dict(), "kind": "hysparse", "seed": seed, "steps": steps, "tokens": tokens,
            "initial": {"from": os.path.relpath(args.swa), "tokens": tokens, "steps": steps,
                        "warm_start": {"from": os.path.relpath(args.swa), "from_kind": "swa", "from_steps": steps,
                                       "sa_gate_bias": args.sa_gate_bias,
                                       "window_gate_bias": args.window_gate_bias, "sa_sink": args.sa_sink}},
            "seconds": 0.0, "final": True}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"hysparse-seed{seed}.npz")
    save_npz(path, model, meta)
    print(f"{path}: HySparse from {args.swa} ({steps} steps, {tokens:,} bytes trained); gates SA "
          f"{torch.sigmoid(torch.tensor(args.sa_gate_bias)).item():.2f}, window "
          f"{torch.sigmoid(torch.tensor(args.window_gate_bias)).item():.2f}; saturated to the window it "
          f"reproduces the SWA logits within {error:.2g}")


if __name__ == "__main__":
    main()
