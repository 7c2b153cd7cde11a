#!/usr/bin/python3
"""Writes the retrieval probes the fidelity evaluator (bench/HySparse.Fidelity) reads: windows of the
held-out text with a value planted at 10 %, 50 % or 90 % of the window and asked for at its end, in
retrieval.py's *evaluation* formats only (training never shows them), at contexts 1k, 2k and 4k.

    /usr/bin/python3 models/train/make_probes.py --text models/fixtures/trained/validation.bin \
        --out models/fixtures/trained/probes.json

One source of truth for the formats (retrieval.py); the C# side only reads bytes and value spans.
"""
import argparse
import base64
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import retrieval  # noqa: E402

CONTEXTS = (1024, 2048, 4096)
POSITIONS = (0.1, 0.5, 0.9)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True, help="validation bytes (files joined by NUL)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-cell", type=int, default=16, help="probes per (context, position)")
    args = parser.parse_args()
    with open(args.text, "rb") as f:
        text = f.read()
    probes = []
    for context in CONTEXTS:
        for position in POSITIONS:
            rng = random.Random(f"probes-{context}-{position}")
            for i in range(args.per_cell):
                # Windows spread evenly over the held-out text, shifted per cell so cells differ.
                start = (len(text) - context - 1) * (2 * i + 1) // (2 * args.per_cell)
                start = (start + int(position * 997)) % (len(text) - context - 1)
                # position is where the plant goes; distance = context puts the query at the window's end.
                example = retrieval.make_example(rng, text[start:start + context], context, retrieval.evaluation_formats,
                                                 position=position, distance=context)
                probes.append({"context": context, "position": position, "format": example.format,
                               "data": base64.b64encode(example.data).decode(), "value_start": example.value_start,
                               "value_end": example.value_end, "plant_start": example.plant_start})
    with open(args.out, "w") as f:
        json.dump({"generator": "models/train/make_probes.py", "formats": sorted(retrieval.evaluation_formats),
                   "contexts": list(CONTEXTS), "positions": list(POSITIONS), "probes": probes}, f, indent=0)
    print(f"{args.out}: {len(probes)} probes")


if __name__ == "__main__":
    main()
