"""Writes the fidelity evaluator's retrieval probes (models/fixtures/trained/probes.json).

Every probe is a window of the validation text with a value planted at 10 %, 50 % or 90 % of the window
and asked for at its end, built by retrieval.make_example from retrieval.evaluation_formats (formats the
training mix never contains), so the probes and the training examples come from one definition.

For each context and probe index the filler text, the format and the value are the same at the three
needle positions (one random.Random per (context, index)): only the distance changes. Formats take
turns (index mod 3), so each holds a third of the probes.

    /usr/bin/python3 models/train/make_probes.py                      # the committed fixture
    /usr/bin/python3 models/train/make_probes.py --per-cell 4 --out /tmp/probes.json
"""
import argparse
import base64
import json
import os
import random

import retrieval

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "trained")


def make_probes(text, contexts, positions, per_cell, seed):
    names = sorted(retrieval.evaluation_formats)
    probes = []
    for context in contexts:
        if len(text) < context:
            raise ValueError(f"the validation text has {len(text)} bytes, fewer than a window of {context}")
        for index in range(per_cell):
            # Evenly spaced filler windows, the same for every needle position of this index.
            offset = (len(text) - context) * (2 * index + 1) // (2 * per_cell)
            window = text[offset:offset + context]
            name = names[index % len(names)]
            for position in positions:
                rng = random.Random(seed * 1_000_003 + context * 101 + index)
                # distance=context: the query goes as late as the window allows, i.e. at its end.
                example = retrieval.make_example(rng, window, context, {name: retrieval.evaluation_formats[name]},
                                                 position=position, distance=context)
                assert len(example.data) == context
                assert example.data[example.value_start:example.value_end] == example.value
                probes.append({
                    "context": context,
                    "position": position,
                    "index": index,
                    "format": example.format,
                    "text_offset": offset,
                    "needle": example.plant_start,
                    "distance": example.distance,
                    "value_start": example.value_start,
                    "value_end": example.value_end,
                    "data": base64.b64encode(example.data).decode("ascii"),
                })
    return probes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", default=os.path.join(FIXTURES, "validation.bin"))
    parser.add_argument("--out", default=os.path.join(FIXTURES, "probes.json"))
    parser.add_argument("--contexts", default="1024,2048,4096")
    parser.add_argument("--positions", default="0.1,0.5,0.9", help="needle positions, fractions of the window")
    parser.add_argument("--per-cell", type=int, default=48, help="probes per (context, needle position)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with open(args.text, "rb") as f:
        text = f.read()
    contexts = [int(c) for c in args.contexts.split(",")]
    positions = [float(p) for p in args.positions.split(",")]
    probes = make_probes(text, contexts, positions, args.per_cell, args.seed)
    fixture = {
        "generator": "models/train/make_probes.py",
        "formats": sorted(retrieval.evaluation_formats),
        "seed": args.seed,
        "text": os.path.basename(args.text),
        "text_bytes": len(text),
        "contexts": contexts,
        "positions": positions,
        "per_cell": args.per_cell,
        "probes": probes,
    }
    with open(args.out, "w") as f:
        # One probe per line: the file diffs line by line when it is regenerated.
        header = json.dumps({k: v for k, v in fixture.items() if k != "probes"})
        f.write(header[:-1] + ', "probes": [\n')
        f.write(",\n".join(json.dumps(p) for p in probes))
        f.write("\n]}\n")
    for context in contexts:
        for position in positions:
            cell = [p for p in probes if p["context"] == context and p["position"] == position]
            needles = [p["needle"] / context for p in cell]
            print(f"context {context} needle {position:.0%}: {len(cell)} probes, needle at "
                  f"{min(needles):.1%}-{max(needles):.1%}, distance {min(p['distance'] for p in cell)}-"
                  f"{max(p['distance'] for p in cell)} bytes, value end {max(p['value_end'] for p in cell)}")
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes)")


if __name__ == "__main__":
    main()
