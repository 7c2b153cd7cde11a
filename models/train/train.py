#!/usr/bin/python3
"""Trains one of the three byte-level LMs (dense, hysparse, swa) on the corpus built by corpus.py.

    /usr/bin/python3 models/train/train.py --kind hysparse --corpus build/corpus --out build/train/hysparse \
        --config models/train/config.json --phases 512x8:250,2048x2:40

Training runs in phases of sequence length x batch : steps (short sequences first, where attention is
cheap; then the full context so every RoPE position and the long-range selection are trained).
Same data order for every kind (batches come from a generator seeded by --seed), AdamW with linear
warm-up and cosine decay to 10 %, gradient clipping at 1. Every --log-every steps it appends the
training loss to <out>/loss.jsonl; every --eval-every steps it also measures validation bits per byte
on fixed windows. The checkpoint (<out>/model.pt: config, weights, steps done) is rewritten at each
evaluation, so a run stopped early still leaves a usable model. Runs on CUDA when available
(--device auto), else on the CPU with --threads threads.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hysparse_lm import ByteLM, ModelConfig  # noqa: E402


def load_bytes(path):
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def batches(data, batch, seq, seed):
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=generator)
        window = torch.stack([data[s:s + seq + 1] for s in starts.tolist()]).long()
        yield window[:, :-1], window[:, 1:]


@torch.no_grad()
def validation_bpb(model, val, seq, windows, device):
    """Mean next-byte loss in bits over `windows` evenly spaced windows of the validation text."""
    model.eval()
    stride = (len(val) - seq - 1) // windows
    total, count = 0.0, 0
    for i in range(windows):
        chunk = val[i * stride: i * stride + seq + 1].long().to(device)
        logits = model.forward_train(chunk[None, :-1])
        total += F.cross_entropy(logits[0].float(), chunk[1:], reduction="sum").item()
        count += seq
    model.train()
    return total / count / math.log(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["dense", "hysparse", "swa"], required=True)
    parser.add_argument("--corpus", required=True, help="directory with train.bin and val.bin")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", help="JSON file of ModelConfig fields (kind is taken from --kind)")
    parser.add_argument("--phases", required=True, help="comma-separated SEQxBATCH:STEPS, e.g. 512x8:250,2048x2:40")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    phases = []
    for part in args.phases.split(","):
        shape, steps = part.split(":")
        seq, batch = shape.split("x")
        phases.append((int(seq), int(batch), int(steps)))
    args.steps = sum(p[2] for p in phases)
    args.seq = phases[-1][0]

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    fields = {}
    if args.config:
        with open(args.config) as f:
            fields = json.load(f)
    fields["kind"] = args.kind
    config = ModelConfig(**fields)
    model = ByteLM(config).to(device)
    os.makedirs(args.out, exist_ok=True)
    train = load_bytes(os.path.join(args.corpus, "train.bin"))
    val = load_bytes(os.path.join(args.corpus, "val.bin"))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    log = open(os.path.join(args.out, "loss.jsonl"), "w")
    print(f"{args.kind}: {model.parameter_count():,} parameters, phases {args.phases} on {device}", flush=True)
    schedule = [(seq, batch) for seq, batch, steps in phases for _ in range(steps)]
    streams = {}
    tokens = 0
    started = time.time()
    model.train()

    def save(step, bpb):
        path = os.path.join(args.out, "model.pt")
        torch.save({"config": config.to_dict(), "state": model.state_dict(), "steps": step,
                    "tokens": tokens, "validation_bpb": bpb,
                    "args": vars(args), "seconds": time.time() - started}, path + ".tmp")
        os.replace(path + ".tmp", path)

    for step in range(args.steps):
        seq, batch = schedule[step]
        if (seq, batch) not in streams:
            streams[(seq, batch)] = batches(train, batch, seq, args.seed + seq)
        inputs, targets = next(streams[(seq, batch)])
        tokens += seq * batch
        inputs, targets = inputs.to(device), targets.to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        logits = model.forward_train(inputs)
        loss = F.cross_entropy(logits.reshape(-1, config.vocab).float(), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        done = step + 1
        record = None
        if done % args.log_every == 0 or done == args.steps:
            record = {"step": done, "seq": seq, "tokens": tokens, "seconds": round(time.time() - started, 1),
                      "train_bpb": loss.item() / math.log(2), "lr": lr_at(step)}
        if done % args.eval_every == 0 or done == args.steps:
            record = record or {"step": done, "seq": seq, "tokens": tokens,
                                "seconds": round(time.time() - started, 1), "train_bpb": loss.item() / math.log(2)}
            record["validation_bpb"] = validation_bpb(model, val, seq, args.eval_windows, device)
            save(done, record["validation_bpb"])
        if record:
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
