#!/usr/bin/python3
"""Copy accuracy by distance: does a model read back, and how far?

For each gap, `--windows` windows of the validation text get a 48-byte span (a piece of the text
itself, or random lowercase letters written over it) repeated `gap` bytes after the span ends. The
model's arg-max accuracy on the copy's bytes from the 9th on is printed beside its accuracy on the
same bytes where they first occur. A model with an induction head gets the copy right whatever the
text (letters: ~1.0 against ~0.04); one without scores the same on both. train.copy_accuracy gives
one number per evaluation; this says at which distances the mechanism works (models/train/README.md,
"Induction first"):

    /usr/bin/python3 models/train/copy_by_distance.py --model RUN/dense-seed1.npz --window 2048 \\
        --gaps 0,64,400,1000,1800
"""
import argparse
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnx_weights  # noqa: E402  (load_model: .npz or .onnx)
import train  # noqa: E402  (copy_hits: the trainer's copy test scores probes the same way)
from retrieval import COPY_ALPHABET  # noqa: E402  (the letters of the copy rows)

SPAN = 48


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a train_gpu.py .npz or an exported .onnx")
    parser.add_argument("--text", default="build/corpus/val.bin", help="validation text")
    parser.add_argument("--window", type=int, default=512, help="bytes per window")
    parser.add_argument("--gaps", default="0,16,64,128,256,400", help="bytes between the span and its copy")
    parser.add_argument("--windows", type=int, default=24, help="windows per cell")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    gaps = [int(g) for g in args.gaps.split(",")]
    if max(gaps) > args.window - 2 * SPAN - 1:
        sys.exit(f"--gaps: {max(gaps)} leaves no room for two {SPAN}-byte spans in a {args.window}-byte window")

    torch.set_num_threads(1)
    model, _ = onnx_weights.load_model(args.model)
    model.eval()
    with open(args.text, "rb") as f:
        val = f.read()
    rng = random.Random(args.seed)
    print(f"{'span':8s} {'gap':>5s} {'copy':>6s} {'first':>6s}")
    for kind in ("text", "letters"):
        for gap in gaps:
            right = first = total = 0
            for _ in range(args.windows):
                start = rng.randrange(0, len(val) - args.window - 1)
                row = bytearray(val[start:start + args.window])
                at = rng.randrange(0, args.window - 2 * SPAN - gap)
                if kind == "letters":
                    row[at:at + SPAN] = bytes(rng.choice(COPY_ALPHABET) for _ in range(SPAN))
                copy = at + SPAN + gap
                row[copy:copy + SPAN] = row[at:at + SPAN]
                ids = torch.tensor(list(row))
                with torch.no_grad():
                    predicted = model.forward_train(ids[None])[0].argmax(-1)
                hits = train.copy_hits(predicted, ids, at, copy, SPAN)
                right, first, total = right + hits[0], first + hits[1], total + hits[2]
            print(f"{kind:8s} {gap:5d} {right / total:6.3f} {first / total:6.3f}", flush=True)


if __name__ == "__main__":
    main()
