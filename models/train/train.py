#!/usr/bin/python3
"""Trains one of the three byte-level LMs (dense, hysparse, swa) on the corpus built by corpus.py.

    /usr/bin/python3 models/train/train.py --kind hysparse --corpus build/corpus --out build/train/hysparse \
        --config models/train/config.json --phases 512x8:250,2048x2:40

Training runs in phases of sequence length x batch : steps (short sequences first, where attention is
cheap; then the full context so every RoPE position and the long-range selection are trained).
Same data order for every kind: the batch of step i is a function of (--seed, i) alone, and
--retrieval-share of its rows are long-range retrieval examples (retrieval.py, training formats).
AdamW with linear warm-up and cosine decay to 10 %, gradient clipping at 1. Every --log-every steps
it appends the training loss to <out>/loss.jsonl; every --eval-every steps it also measures
validation bits per byte on fixed windows and retrieval accuracy on the *evaluation* formats.

Checkpoints: <out>/model.pt holds the weights, the optimizer state, the steps done and the arguments;
it is rewritten every --save-minutes and at each evaluation. Started again with the same --out, a
run resumes where the checkpoint left it (same schedule, same data from the next step on; the
arguments that shape the run must match). --init-from PATH starts a new run from the weights of
another checkpoint only (e.g. when the optimizer state is lost), with its own warm-up.

Runs on CUDA when available (--device auto), else on the CPU with --threads threads (see tune_cpu:
the CPU settings are worth 10x on the build machines).
"""
import argparse
import ctypes
import json
import math
import os
import random
import sys
import time

if "torch" not in sys.modules:
    # Read once, when torch loads libgomp and OpenBLAS: pool threads that wait for work sleep instead
    # of spinning. On the shared 2-core VMs a spinning pool waiting at each barrier for a descheduled
    # partner made 2-thread steps 8x slower than with sleeping waiters (README, "Throughput").
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import retrieval  # noqa: E402
from hysparse_lm import ByteLM, ModelConfig  # noqa: E402

# Arguments that define a run: resuming with any of them changed would not continue the same run.
RUN_DEFINING = ("kind", "config", "phases", "lr", "warmup", "seed", "retrieval_share", "init_from")


def tune_cpu(threads):
    """CPU settings measured on the 2-core build VMs (models/train/README.md, "Throughput"):
    - glibc returns freed blocks above 32 MB to the kernel (mmap/munmap, then trims the heap), and
      every [B, H, T, T] attention tensor is that large, so each step page-faulted its whole working
      set again; first touches of fresh pages are slow on these VMs (30 M floats/s for a copy,
      against 2.7 G in a reused buffer). Keeping freed memory in the heap removes that.
    - Debian's PyTorch 1.13 sends some float32 batched GEMMs to oneDNN, which is 5x slower here than
      the OpenBLAS loop it otherwise uses (Q·Kᵀ with a head size of 32).
    - OpenBLAS has its own thread pool, sized to every core regardless of torch.set_num_threads; two
      "1-thread" trainings would then run four threads on two cores."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)   # M_MMAP_MAX: no mmap'd blocks, large tensors come from the heap too
        libc.mallopt(-1, -1)  # M_TRIM_THRESHOLD: (size_t)-1, never give the heap's top back
    except OSError:
        pass  # not glibc: nothing to tune
    try:
        ctypes.CDLL("libopenblas.so.0").openblas_set_num_threads(threads)
    except (OSError, AttributeError):
        pass  # another BLAS: torch.set_num_threads is all there is
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = False


def load_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def parse_phases(text):
    phases = []
    for part in text.split(","):
        shape, steps = part.split(":")
        seq, batch = shape.split("x")
        phases.append((int(seq), int(batch), int(steps)))
    return phases


def batch_at(data, step, seq, batch, seed, retrieval_share, pairs_per_kb=0.0, spans=None, echo_share=0.0,
             echoes_per_kb=2.0, copy_share=0.0, copy_gap=0, copy_text=0.0, copy_halves=False,
             distances="positions"):
    """The batch of training step `step`: `batch` random windows of seq + 1 bytes, a share of them
    turned into retrieval examples. A pure function of its arguments, so a resumed run reads the
    same data as an uninterrupted one and every kind sees the same data order."""
    rng = random.Random(seed * 1_000_003 + step)
    rows = []
    for _ in range(batch):
        start = rng.randrange(0, len(data) - seq - 1)
        rows.append(data[start:start + seq + 1])
    rows, planted = retrieval.mix_rows(rows, rng.getrandbits(63), retrieval_share, pairs_per_kb=pairs_per_kb, spans=spans,
                                       echo_share=echo_share, echoes_per_kb=echoes_per_kb, copy_share=copy_share,
                                       copy_gap=copy_gap, copy_text=copy_text,
                                       copy_halves=copy_halves, distances=distances)
    window = torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).view(batch, seq + 1).long()
    return window[:, :-1], window[:, 1:], planted


def make_optimizer(model, lr, fused=False):
    """AdamW with weight decay on matrices other than embeddings; fused=True asks for PyTorch 2.x's
    one-kernel CUDA step (falls back to the plain one where that does not exist)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
        except (TypeError, RuntimeError):
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def train_step(model, optimizer, inputs, targets, lr):
    """One optimizer step at learning rate `lr`; returns the loss (nats per byte)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = model.forward_train(inputs)
    loss = F.cross_entropy(logits.reshape(-1, model.c.vocab).float(), targets.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def validation_bpb(model, val, seq, windows, device):
    """Mean next-byte loss in bits over `windows` evenly spaced windows of the validation text."""
    model.eval()
    stride = (len(val) - seq - 1) // windows
    total, count = 0.0, 0
    for i in range(windows):
        chunk = torch.tensor(list(val[i * stride: i * stride + seq + 1]), device=device)
        logits = model.forward_train(chunk[None, :-1])
        total += F.cross_entropy(logits[0].float(), chunk[1:], reduction="sum").item()
        count += seq
    model.train()
    return total / count / math.log(2)


@torch.no_grad()
def retrieval_accuracy(model, val, seq, probes, device, seed=11):
    """Fraction of planted value bytes predicted right (arg-max, teacher-forced) on `probes` windows of
    the validation text in the *evaluation* formats, which training never shows: a running check
    that long-range reading is being learned, not a report number (the evaluator makes those)."""
    model.eval()
    rng = random.Random(seed)
    right = total = 0
    for i in range(probes):
        start = (len(val) - seq - 1) * i // max(1, probes - 1)
        example = retrieval.make_example(rng, val[start:start + seq], seq, retrieval.evaluation_formats)
        ids = torch.tensor(list(example.data), device=device)
        predicted = model.forward_train(ids[None])[0].argmax(-1)
        # logits at position j predict byte j + 1
        got = predicted[example.value_start - 1:example.value_end - 1]
        right += (got == ids[example.value_start:example.value_end]).sum().item()
        total += example.value_end - example.value_start
    model.train()
    return right / total


@torch.no_grad()
def copy_accuracy(model, val, seq, probes, device, span=48, seed=13):
    """Arg-max accuracy on the bytes of a repeated span after its first 8: `probes` windows of the
    validation text, each with a `span`-byte piece of itself copied to the window's end. A model with
    an induction head (attend to where the current bytes occurred before, predict what followed) gets
    these right whatever the text; one without predicts them as fresh text. Every retrieval format
    needs that mechanism, so this says whether retrieval can be learned yet (README, "Why retrieval is not learned yet").
    Returns (accuracy on the copy, accuracy on the same bytes where they first occur)."""
    model.eval()
    rng = random.Random(seed)
    right = original = total = 0
    for i in range(probes):
        start = (len(val) - seq - 1) * i // max(1, probes - 1)
        window = val[start:start + seq - span]
        at = rng.randrange(0, len(window) - span - 64)
        ids = torch.tensor(list(window + window[at:at + span]), device=device)
        predicted = model.forward_train(ids[None])[0].argmax(-1)
        hits = copy_hits(predicted, ids, at, len(window), span)
        right, original, total = right + hits[0], original + hits[1], total + hits[2]
    model.train()
    return right / total, original / total


def copy_hits(predicted, ids, at, copy_at, span):
    """Scores one copy probe: `ids[copy_at:copy_at + span]` repeats `ids[at:at + span]`, and
    `predicted[p]` is the model's arg-max guess of byte p + 1. Returns (right guesses on the copy's
    bytes from the 9th on, right guesses on the same bytes where they first occur — what the model
    gets without reading back —, bytes counted)."""
    right = (predicted[copy_at + 7:copy_at + span - 1] == ids[copy_at + 8:copy_at + span]).sum().item()
    original = (predicted[at + 7:at + span - 1] == ids[at + 8:at + span]).sum().item()
    return right, original, span - 8


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["dense", "hysparse", "swa"], required=True)
    parser.add_argument("--corpus", required=True, help="directory with train.bin and val.bin")
    parser.add_argument("--out", required=True, help="run directory: model.pt, loss.jsonl (resumed if present)")
    parser.add_argument("--config", help="JSON file of ModelConfig fields (kind is taken from --kind)")
    parser.add_argument("--phases", required=True, help="comma-separated SEQxBATCH:STEPS, e.g. 512x8:250,2048x2:40")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--retrieval-share", type=float, default=0.0,
                        help="fraction of training rows that are retrieval examples (e.g. 0.15)")
    parser.add_argument("--init-from", help="start from this checkpoint's weights only (new optimizer, own warm-up)")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--retrieval-probes", type=int, default=8, help="evaluation-format probes per evaluation")
    parser.add_argument("--save-minutes", type=float, default=5.0, help="checkpoint at least this often")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    phases = parse_phases(args.phases)
    args.steps = sum(p[2] for p in phases)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    tune_cpu(args.threads)
    torch.manual_seed(args.seed)
    fields = {}
    if args.config:
        with open(args.config) as f:
            fields = json.load(f)
    fields["kind"] = args.kind
    config = ModelConfig(**fields)
    model = ByteLM(config).to(device)
    optimizer = make_optimizer(model, args.lr)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.pt")
    done, tokens, seconds_before, planted_rows, total_rows = 0, 0, 0.0, 0, 0
    if os.path.exists(path):
        checkpoint = torch.load(path, map_location=device)
        if "optimizer" not in checkpoint:
            sys.exit(f"{path} holds weights only (no optimizer state): start a new run with --init-from {path}")
        changed = {k: (checkpoint["args"].get(k), getattr(args, k)) for k in RUN_DEFINING
                   if checkpoint["args"].get(k) != getattr(args, k)}
        if changed:
            sys.exit(f"{path} is a different run (checkpoint vs now: {changed}); use another --out, or "
                     f"--init-from {path} to start a new run from its weights")
        model.load_state_dict(checkpoint["state"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        done, tokens, seconds_before = checkpoint["steps"], checkpoint["tokens"], checkpoint["seconds"]
        planted_rows, total_rows = checkpoint["planted_rows"]
        print(f"resuming {path} after step {done} ({tokens:,} bytes)", flush=True)
    elif args.init_from:
        model.load_state_dict(torch.load(args.init_from, map_location=device)["state"])
        print(f"weights from {args.init_from}; new optimizer, warm-up {args.warmup} steps", flush=True)
    train = load_bytes(os.path.join(args.corpus, "train.bin"))
    val = load_bytes(os.path.join(args.corpus, "val.bin"))

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    # A resumed run appends; a fresh one starts the curve again.
    log = open(os.path.join(args.out, "loss.jsonl"), "a" if done else "w")
    print(f"{args.kind}: {model.parameter_count():,} parameters, phases {args.phases}, retrieval share "
          f"{args.retrieval_share} on {device}", flush=True)
    schedule = [(seq, batch) for seq, batch, steps in phases for _ in range(steps)]
    started = time.time()
    last_save = started
    model.train()

    def seconds():
        return seconds_before + time.time() - started

    def save(step, bpb):
        torch.save({"config": config.to_dict(), "state": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "steps": step, "tokens": tokens, "validation_bpb": bpb, "planted_rows": (planted_rows, total_rows),
                    "args": vars(args), "seconds": seconds()}, path + ".tmp")
        os.replace(path + ".tmp", path)

    for step in range(done, args.steps):
        seq, batch = schedule[step]
        inputs, targets, planted = batch_at(train, step, seq, batch, args.seed, args.retrieval_share)
        planted_rows, total_rows = planted_rows + planted, total_rows + batch
        tokens += seq * batch
        loss = train_step(model, optimizer, inputs.to(device), targets.to(device), lr_at(step))
        done = step + 1
        record = None
        if done % args.log_every == 0 or done == args.steps:
            record = {"step": done, "seq": seq, "tokens": tokens, "seconds": round(seconds(), 1),
                      "train_bpb": loss / math.log(2), "lr": lr_at(step)}
        if done % args.eval_every == 0 or done == args.steps:
            record = record or {"step": done, "seq": seq, "tokens": tokens,
                                "seconds": round(seconds(), 1), "train_bpb": loss / math.log(2)}
            record["validation_bpb"] = validation_bpb(model, val, seq, args.eval_windows, device)
            if args.retrieval_probes:
                record["retrieval_acc"] = retrieval_accuracy(model, val, seq, args.retrieval_probes, device)
            record["planted_rows"] = f"{planted_rows}/{total_rows}"
            save(done, record["validation_bpb"])
            last_save = time.time()
        elif time.time() - last_save > args.save_minutes * 60:
            save(done, None)
            last_save = time.time()
        if record:
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
