#!/usr/bin/python3
"""Builds the byte-level training corpus from text every Debian machine has: the Python standard
library's sources (package libpython3.11-stdlib on bookworm).

Deterministic: files are walked in sorted path order, split into train and validation *by file*
(a file goes to validation when the SHA-256 of its relative path, read as a number, is 0 mod 20), and
joined with a NUL byte between files (byte 0 never occurs in these sources, so it marks a document
boundary the model can learn). Writes train.bin, val.bin and manifest.json (every file with its size,
split and SHA-256, and a hash of each split) to the output directory.

    /usr/bin/python3 models/train/corpus.py --out build/corpus
    /usr/bin/python3 models/train/corpus.py --out build/corpus --check models/train/corpus-manifest.json

--check compares the result with a committed manifest and fails if the corpus differs, so a report
is never computed on different text by accident.
"""
import argparse
import hashlib
import json
import os
import sys
import sysconfig

SEPARATOR = b"\x00"
VALIDATION_MODULUS = 20


def default_root():
    return sysconfig.get_paths()["stdlib"]


def collect(root):
    """Every .py file under root except caches and site-packages, as sorted relative paths."""
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("__pycache__", "site-packages", "dist-packages"))
        for name in sorted(names):
            if name.endswith(".py"):
                files.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(files)


def is_validation(relative_path):
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % VALIDATION_MODULUS == 0


def build(root, out):
    os.makedirs(out, exist_ok=True)
    splits = {"train": [], "validation": []}
    entries = []
    for relative in collect(root):
        with open(os.path.join(root, relative), "rb") as f:
            data = f.read()
        if SEPARATOR in data or not data:
            continue  # binary or empty: not text for a byte-level LM
        split = "validation" if is_validation(relative) else "train"
        splits[split].append(data)
        entries.append({"path": relative, "bytes": len(data), "split": split,
                        "sha256": hashlib.sha256(data).hexdigest()})
    summary = {"root": root, "python": sys.version.split()[0], "separator": 0,
               "validation_rule": f"sha256(relative path) mod {VALIDATION_MODULUS} == 0", "splits": {}}
    for split, name in (("train", "train.bin"), ("validation", "val.bin")):
        blob = SEPARATOR.join(splits[split])
        with open(os.path.join(out, name), "wb") as f:
            f.write(blob)
        summary["splits"][split] = {"file": name, "files": len(splits[split]), "bytes": len(blob),
                                    "sha256": hashlib.sha256(blob).hexdigest()}
    summary["files"] = entries
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=default_root(), help="directory of .py files (default: this Python's stdlib)")
    parser.add_argument("--out", required=True, help="output directory for train.bin, val.bin, manifest.json")
    parser.add_argument("--check", help="a committed manifest the result must match")
    args = parser.parse_args()
    summary = build(args.root, args.out)
    for split, info in summary["splits"].items():
        print(f"{split}: {info['files']} files, {info['bytes']} bytes, sha256 {info['sha256'][:16]}")
    if args.check:
        with open(args.check) as f:
            expected = json.load(f)
        for split in ("train", "validation"):
            if expected["splits"][split]["sha256"] != summary["splits"][split]["sha256"]:
                sys.exit(f"corpus differs from {args.check} in split '{split}' (Python {summary['python']} at "
                         f"{args.root}; the manifest was made from Python {expected['python']}): the numbers "
                         "computed on it are not comparable with the committed ones")
        print(f"matches {args.check}")


if __name__ == "__main__":
    main()
