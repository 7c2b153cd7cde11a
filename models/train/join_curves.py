#!/usr/bin/python3
"""Joins the loss curves of training stages that continued one another (train_gpu.py --init-onnx)
into the one curve a fixture ships: steps, bytes and seconds cumulative, each record tagged with the
index of its stage.

    python3 models/train/join_curves.py --out models/fixtures/trained/dense.loss.jsonl \
        /work/gpu1/train/dense-seed1.loss.jsonl /work/gpu2/train/dense-seed1.loss.jsonl

Why a script: a curve whose second stage restarts at step 0 plots as two overlapping lines, and the
fixtures' README promises cumulative counts. A record that already carries a "stage" (a joined curve
given as the first input) keeps it, and later inputs are numbered after the last one seen.
"""
import argparse
import json
import os


def join(paths):
    joined = []
    offset = {"step": 0, "tokens": 0, "seconds": 0.0}
    next_stage = 0
    for path in paths:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        if not records:
            raise SystemExit(f"{path}: no records")
        stage = next_stage
        last = dict(offset)
        for record in records:
            out = dict(record)
            for key in offset:
                if key in out:
                    out[key] = out[key] + offset[key]
                    last[key] = max(last[key], out[key])
            out.setdefault("stage", stage)
            if isinstance(out.get("seconds"), float):
                out["seconds"] = round(out["seconds"], 1)
            next_stage = max(next_stage, out["stage"] + 1)
            joined.append(out)
        offset = last
    return joined


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("curves", nargs="+", help="loss.jsonl files, in training order")
    args = parser.parse_args()
    records = join(args.curves)
    with open(args.out + ".tmp", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(args.out + ".tmp", args.out)
    print(f"{args.out}: {len(records)} records, {len(args.curves)} stages, "
          f"{records[-1].get('tokens', 0):,} bytes, step {records[-1].get('step', 0)}")


if __name__ == "__main__":
    main()
