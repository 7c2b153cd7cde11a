#!/usr/bin/python3
"""Trains several runs (kind:seed) in lock-step on one GPU within a fixed wall-clock budget: the GPU
recipe of issue 11 (models/train/README.md, "GPU recipe").

    python3 models/train/train_gpu.py --corpus build/corpus --out build/train-gpu --seconds 330 \
        --runs dense:1,dense:2,hysparse:1,hysparse:2,swa:1

Why lock-step: a lent GPU is held for minutes, not hours, so the schedule is set by time, not by a
step count nobody can predict for an unseen machine. Training every run inside one loop keeps the
comparison fair anyway: at step i every run gets the same sequence length, batch shape and learning
rate, and runs of one seed read the same batch (train.batch_at(seed, i), as train.py does), so the
kinds differ only in their architecture. Phases and the cosine schedule advance with the fraction of
the budget spent; the warm-up counts steps. The budget is wall-clock seconds (`--seconds`: a GPU lease)
or steps (`--steps`: the CPU recipe, where a busy machine would otherwise give one seed fewer steps
than another).

Each run ends as <out>/<kind>-seed<N>.npz (float32 weights, the config and the training record under
the key "meta") and <out>/<kind>-seed<N>.loss.jsonl. export_onnx.py --checkpoint takes the .npz.
Weights are also written at every evaluation, so a run stopped early still leaves its last state,
and with them <kind>-seed<N>.resume.pt (optimizer, step, clock): `--resume` with the same options
continues a stopped stage where its last evaluation left it, on the same learning-rate schedule and
data order, so a stage may be longer than the session that runs it (CPU runs, models/train/README.md).
`--micro-batch` splits each batch into slices whose gradients are summed before the one optimizer
step: the same update in a fraction of the memory (a HySparse 2,048 x 8 step holds ~19 GB at once).
"""
import argparse
import io
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnx_weights  # noqa: E402  (load_model: .npz or .onnx)
import retrieval  # noqa: E402  (DISTANCES)
import train  # noqa: E402  (batch_at, make_optimizer, validation_bpb, retrieval_accuracy, tune_cpu)
from hysparse_lm import ByteLM, ModelConfig  # noqa: E402


def parse_runs(text):
    runs = []
    for part in text.split(","):
        kind, _, seed = part.partition(":")
        if kind not in ("dense", "hysparse", "swa") or not seed.isdigit():
            sys.exit(f"--runs: '{part}' is not KIND:SEED with KIND dense, hysparse or swa")
        runs.append((kind, int(seed)))
    return runs


def parse_time_phases(text):
    """'512x128:0.35,2048x32:0.65' -> [(seq, batch, end_fraction)], fractions summing to 1."""
    phases, end = [], 0.0
    for part in text.split(","):
        shape, share = part.split(":")
        seq, batch = shape.split("x")
        end += float(share)
        phases.append((int(seq), int(batch), end))
    if abs(end - 1.0) > 1e-6:
        sys.exit(f"--phases: the shares sum to {end}, not 1")
    return phases


def save_npz(path, model, meta):
    """Weights as float32 arrays plus a JSON record, written atomically. npz rather than torch.save so
    the file does not depend on the PyTorch version that wrote it (GPU image 2.x, Debian 1.13 here)."""
    arrays = {f"state/{k}": v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with open(path + ".tmp", "wb") as f:
        f.write(buffer.getvalue())
    os.replace(path + ".tmp", path)


def save_resume_point(path, state):
    """What --resume needs besides the weights (the .npz written beside it), written atomically."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def resume_point(args, recipe, name, defaults):
    """(model, base record, resume state) of run `name` at its last evaluation; exits with the reason
    when there is none or the stage was started with other options. An option the saved state does
    not name did not exist when the stage started: it ran with that option's default (`defaults`)."""
    directory = args.weights_out or args.out
    weights, state_path = os.path.join(directory, f"{name}.npz"), os.path.join(directory, f"{name}.resume.pt")
    for path in (weights, state_path):
        if not os.path.exists(path):
            sys.exit(f"--resume: {path} does not exist (start the stage without --resume)")
    state = torch.load(state_path, map_location="cpu")
    started = {**{k: defaults.get(k) for k in recipe}, **state["recipe"]}
    changed = sorted(k for k in set(recipe) | set(started) if recipe.get(k) != started.get(k))
    if changed:
        sys.exit(f"--resume: {name} was started with other options: "
                 + ", ".join(f"--{k.replace('_', '-')} {started.get(k)} (now {recipe.get(k)})" for k in changed))
    model, record = onnx_weights.load_model(weights)
    if record.get("final"):
        sys.exit(f"--resume: {name} already finished its budget ({weights} is final)")
    if record.get("steps", 0) - record["initial"].get("steps", 0) != state["step"]:
        sys.exit(f"--resume: {weights} and {state_path} are from different steps")
    return model, record["initial"], state


def keep_curve_until(path, step):
    """Drops the loss records after `step` (training past the resume point that is done again)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="dense:1,dense:2,hysparse:1,hysparse:2,swa:1",
                        help="comma-separated KIND:SEED (seed: initialisation and data order)")
    parser.add_argument("--corpus", required=True, help="directory with train.bin and val.bin")
    parser.add_argument("--out", required=True, help="loss curves (<run>.loss.jsonl)")
    parser.add_argument("--weights-out", help="where the .npz files go (default: --out)")
    parser.add_argument("--config", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json"))
    parser.add_argument("--seconds", type=float, help="training budget (wall clock, all runs)")
    parser.add_argument("--steps", type=int,
                        help="training budget in steps instead of seconds: phases and the cosine schedule advance with "
                             "the steps done, so runs on a busy or a free machine get the same schedule (CPU recipe, seeds)")
    parser.add_argument("--phases", default="512x128:0.35,2048x32:0.65",
                        help="SEQxBATCH:SHARE of the budget, in order")
    parser.add_argument("--lr", type=float, default=2.5e-3)
    parser.add_argument("--warmup", type=int, default=60, help="warm-up steps")
    parser.add_argument("--retrieval-share", type=float, default=0.2)
    parser.add_argument("--retrieval-pairs-per-kb", type=float, default=0.0,
                        help="plant/query pairs per 1,024 bytes of a retrieval row (0: one pair per row)")
    parser.add_argument("--retrieval-distances", choices=retrieval.DISTANCES, default="positions",
                        help="how pairs are placed (retrieval.make_dense_example): positions = plant early, query "
                             "anywhere after (most distances short); uniform = every distance up to the row equally often")
    parser.add_argument("--echo-share", type=float, default=0.0,
                        help="share of rows in which spans of their own text are repeated later (retrieval.make_echo_example)")
    parser.add_argument("--echoes-per-kb", type=float, default=2.0,
                        help="repeated spans per 1,024 bytes of an echo row")
    parser.add_argument("--copy-share", type=float, default=0.0,
                        help="share of rows made of random strings written twice (retrieval.make_copy_example)")
    parser.add_argument("--copy-gap", type=int, default=0,
                        help="at most this many random letters between the two copies of a copy row's string")
    parser.add_argument("--copy-text", type=float, default=0.0,
                        help="share of a copy row's strings that are pieces of real text instead of random letters")
    parser.add_argument("--copy-halves", action="store_true",
                        help="copy rows as a run of strings followed by the same strings shuffled (copies up to a row back)")
    parser.add_argument("--copy-until", type=float, default=1.0,
                        help="fraction of the budget after which copy rows stop (a curriculum: induction first)")
    parser.add_argument("--value-weight", type=float, default=1.0,
                        help="loss weight of the planted value bytes in retrieval rows (1: plain next-byte loss)")
    parser.add_argument("--init-onnx", metavar="DIR",
                        help="start from trained weights: DIR/<kind>-seed<N>.npz when there is one (a run of this "
                             "script), else DIR/<kind>.onnx for seed 1 and DIR/<kind>-seed<N>.onnx for others "
                             "(onnx_weights.py reads exported models back)")
    parser.add_argument("--chunk", type=int, default=512, help="query chunk of the training forward")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--eval-seconds", type=float, default=75.0)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--retrieval-probes", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--done-file", help="touched when training is over (the GPU script times kernels after it)")
    parser.add_argument("--micro-batch", type=int, default=0,
                        help="rows per forward/backward, gradients summed over the batch before the step "
                             "(the same update with less memory); 0: the whole batch at once")
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs in --out from their last evaluation (weights, optimizer, step, "
                             "clock); every other option must be the one the stage started with")
    args = parser.parse_args()
    if (args.seconds is None) == (args.steps is None) or (args.steps is not None and args.steps < 1) \
            or (args.seconds is not None and args.seconds <= 0):
        sys.exit("give one budget: --seconds S (> 0) or --steps N (>= 1)")
    runs, phases = parse_runs(args.runs), parse_time_phases(args.phases)
    if args.micro_batch < 0 or any(args.micro_batch and batch % args.micro_batch for _, batch, _ in phases):
        sys.exit(f"--micro-batch {args.micro_batch}: must divide every phase's batch ({args.phases})")
    # what decides the updates: a resumed stage must keep it (threads, slices and evaluation may change)
    recipe = {k: v for k, v in vars(args).items() if k not in (
        "corpus", "out", "weights_out", "done_file", "resume", "micro_batch", "threads", "device", "log_every",
        "eval_seconds", "eval_windows", "retrieval_probes")}

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        # TF32 matrix products: float32 storage and semantics, tensor-core speed.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        train.tune_cpu(args.threads)
    with open(args.config) as f:
        fields = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.weights_out or args.out, exist_ok=True)
    data = train.load_bytes(os.path.join(args.corpus, "train.bin"))
    val = train.load_bytes(os.path.join(args.corpus, "val.bin"))

    models, optimizers, logs, names, bases = [], [], [], [], []
    resumed = []   # per run: the .resume.pt contents when --resume
    for kind, seed in runs:
        names.append(f"{kind}-seed{seed}")
        config = ModelConfig(**dict(fields, kind=kind))
        if args.resume:   # the stage's own last weights; --init-onnx only started it
            model, base, state = resume_point(args, recipe, names[-1], {k: parser.get_default(k) for k in recipe})
            resumed.append(state)
            source = os.path.join(args.weights_out or args.out, f"{names[-1]}.npz")
        elif args.init_onnx:
            source = os.path.join(args.init_onnx, f"{kind}-seed{seed}.npz")
            if not os.path.exists(source):
                source = os.path.join(args.init_onnx, f"{kind}.onnx" if seed == 1 else f"{kind}-seed{seed}.onnx")
            model, record = onnx_weights.load_model(source)
            base = {"from": os.path.relpath(source), "tokens": int(record.get("tokens", 0)),
                    "steps": int(record.get("steps", 0))}
            if (record.get("initial") or {}).get("warm_start"):   # warm_start.py's record travels on
                base["warm_start"] = record["initial"]["warm_start"]
            print(f"{kind}:{seed} starts from {source} ({record.get('tokens', '?')} bytes trained)", flush=True)
        else:
            torch.manual_seed(seed)
            model, base, source = ByteLM(config), {"tokens": 0, "steps": 0}, None
        if source and model.c.to_dict() != config.to_dict():
            sys.exit(f"{source}: its config differs from {args.config}")
        bases.append(base)
        model = model.to(device)
        models.append(model.train())
        optimizers.append(train.make_optimizer(model, args.lr, fused=device.type == "cuda"))
        curve = os.path.join(args.out, f"{names[-1]}.loss.jsonl")
        if args.resume:
            optimizers[-1].load_state_dict(resumed[-1]["optimizer"])
            keep_curve_until(curve, resumed[-1]["step"])
        logs.append(open(curve, "a" if args.resume else "w"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{len(runs)} runs on {name} (torch {torch.__version__}): "
          + ", ".join(f"{n} {m.parameter_count():,} parameters" for n, m in zip(names, models)), flush=True)

    def phase_at(fraction):
        for seq, batch, end in phases:
            if fraction < end:
                return seq, batch
        return phases[-1][0], phases[-1][1]

    def lr_at(step, fraction):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction))))

    def evaluate(step, seq, tokens, seconds, final=False):
        records = []
        for i, model in enumerate(models):
            model.eval()
            record = {"step": step, "seq": seq, "tokens": tokens, "seconds": round(seconds, 1)}
            # The probes need room (a retrieval example, copy_accuracy's 48-byte span plus 64 bytes before
            # it), so short phases are evaluated at 512.
            eval_seq = max(phases[-1][0] if final else seq, 512)
            record["eval_seq"] = eval_seq
            record["validation_bpb"] = train.validation_bpb(model, val, eval_seq, args.eval_windows * (2 if final else 1), device)
            record["retrieval_acc"] = train.retrieval_accuracy(model, val, eval_seq, args.retrieval_probes * (2 if final else 1), device)
            record["copy_acc"], record["copy_acc_first"] = train.copy_accuracy(model, val, eval_seq, args.retrieval_probes, device)
            model.train()
            kind, seed = runs[i]
            # steps/tokens count the whole training, the initial weights' included (export metadata)
            meta = {"config": models[i].c.to_dict(), "kind": kind, "seed": seed,
                    "steps": bases[i]["steps"] + step, "tokens": bases[i]["tokens"] + tokens, "initial": bases[i],
                    "seconds": round(seconds, 1), "validation_bpb": record["validation_bpb"],
                    "retrieval_acc": record["retrieval_acc"], "copy_acc": record["copy_acc"], "device": name, "torch": torch.__version__,
                    "recipe": {k: v for k, v in vars(args).items() if k not in ("corpus", "out", "weights_out", "done_file")},
                    "final": final}
            save_npz(os.path.join(args.weights_out or args.out, f"{names[i]}.npz"), models[i], meta)
            save_resume_point(os.path.join(args.weights_out or args.out, f"{names[i]}.resume.pt"),
                              {"optimizer": optimizers[i].state_dict(), "step": step, "tokens": tokens,
                               "seconds": time.time() - started, "recipe": recipe})
            records.append(record)
        return records

    started = time.time()
    last_eval = started
    step, tokens = 0, 0
    if resumed:
        if len({(r["step"], r["tokens"]) for r in resumed}) != 1:
            sys.exit("--resume: the runs stopped at different steps; resume them one at a time")
        step, tokens = resumed[0]["step"], resumed[0]["tokens"]
        started -= resumed[0]["seconds"]   # the schedule goes on from where the clock stopped
        print(f"resuming at step {step} ({tokens:,} bytes/run, {resumed[0]['seconds']:.0f} s on the clock)", flush=True)
    pending = [[] for _ in models]   # loss tensors not yet read (reading one waits for the GPU)
    while True:
        elapsed = time.time() - started
        fraction = step / args.steps if args.steps else elapsed / args.seconds
        if fraction >= 1.0:
            break
        seq, batch = phase_at(fraction)
        lr = lr_at(step, fraction)
        batches = {}
        for i, (kind, seed) in enumerate(runs):
            if seed not in batches:
                spans = []
                inputs, targets, _ = train.batch_at(data, step, seq, batch, seed, args.retrieval_share,
                                                            args.retrieval_pairs_per_kb, spans, args.echo_share,
                                                            args.echoes_per_kb,
                                                            args.copy_share if fraction < args.copy_until else 0.0,
                                                            args.copy_gap, args.copy_text, args.copy_halves,
                                                            args.retrieval_distances)
                weights = None
                if args.value_weight != 1.0:
                    weights = torch.ones(targets.shape)
                    for row, start, end in spans:   # data byte p is target p - 1
                        weights[row, start - 1:end - 1] = args.value_weight
                    weights = weights.to(device, non_blocking=True)
                batches[seed] = (inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True), weights)
            inputs, targets, weights = batches[seed]
            model, optimizer = models[i], optimizers[i]
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            # Each slice's objective is its share of the whole batch's (sums over the batch's count or
            # weight), so the summed gradients are the whole batch's.
            rows = args.micro_batch or batch
            loss = 0.0
            for first in range(0, batch, rows):
                part = slice(first, first + rows)
                logits = model.forward_train(inputs[part], chunk=args.chunk)
                losses = F.cross_entropy(logits.reshape(-1, model.c.vocab).float(), targets[part].reshape(-1), reduction="none")
                loss = loss + losses.detach().sum() / targets.numel()   # logged: the plain next-byte loss
                objective = (losses.sum() / targets.numel() if weights is None
                             else (losses * weights[part].reshape(-1)).sum() / weights.sum())
                objective.backward()
                del logits, losses, objective
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            pending[i].append(loss.detach())
        step += 1
        tokens += seq * batch
        if step % args.log_every == 0:
            seconds = time.time() - started
            bpbs = []
            for i in range(len(models)):
                values = torch.stack(pending[i]).float().cpu().tolist()
                pending[i] = []
                bpbs.append(sum(values) / len(values) / math.log(2))
                record = {"step": step, "seq": seq, "tokens": tokens, "seconds": round(seconds, 1),
                          "train_bpb": bpbs[-1], "lr": lr}
                logs[i].write(json.dumps(record) + "\n")
            print(f"step {step} seq {seq} {tokens:,} bytes/run {seconds:.0f} s, "
                  f"{tokens * len(models) / seconds:,.0f} bytes/s over all runs; train bpb "
                  + " ".join(f"{n} {b:.3f}" for n, b in zip(names, bpbs)), flush=True)
        if time.time() - last_eval > args.eval_seconds:
            for i, record in enumerate(evaluate(step, seq, tokens, time.time() - started)):
                logs[i].write(json.dumps(record) + "\n")
                logs[i].flush()
                print(f"  {names[i]}: {json.dumps(record)}", flush=True)
            last_eval = time.time()

    seconds = time.time() - started
    for i, record in enumerate(evaluate(step, phases[-1][0], tokens, seconds, final=True)):
        logs[i].write(json.dumps(record) + "\n")
        logs[i].close()
        print(f"final {names[i]}: {json.dumps(record)}", flush=True)
    print(f"done: {step} steps, {tokens:,} bytes per run in {seconds:.0f} s "
          f"({tokens * len(models) / seconds:,.0f} bytes/s over {len(models)} runs)", flush=True)
    if args.done_file:
        open(args.done_file, "w").close()


if __name__ == "__main__":
    main()
