#!/usr/bin/python3
"""Measures training throughput (bytes of training text per second) of train.py's step: the model of
config.json, AdamW, clipping, batches of real corpus text with the retrieval mix. Each (kind,
threads) runs in its own process: --warmup steps, then --steps timed steps. Prints one JSON line per
configuration with the median and the range of the per-step rates, the rate per CPU-second of the
process (robust to other jobs on a shared machine, exact at 1 thread) and the load average, which
says how much else ran.

    /usr/bin/python3 models/train/bench_train.py --corpus /work/train-state/corpus --kinds dense,hysparse --threads 1,2
    # the code before a change, for a before/after row:
    /usr/bin/python3 models/train/bench_train.py ... --code /tmp/old-train --untuned
"""
import argparse
import functools
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(args):
    """One configuration, in this process."""
    sys.path.insert(0, args.code or HERE)
    if not args.untuned:
        import train  # noqa: F401  before torch: it sets the thread pools' wait policy, read when torch loads
    import torch
    from hysparse_lm import ByteLM, ModelConfig
    sys.path.insert(0, HERE)
    from train import batch_at, make_optimizer, train_step, tune_cpu
    if args.untuned:
        torch.set_num_threads(args.threads[0])
    else:
        tune_cpu(args.threads[0])
    with open(args.config) as f:
        fields = json.load(f)
    fields["kind"] = args.kinds[0]
    torch.manual_seed(0)
    model = ByteLM(ModelConfig(**fields))
    if args.chunk is not None or args.gather_from is not None:  # forward_train's knobs, for choosing their defaults
        options = {"chunk": args.chunk or None} if args.chunk is not None else {}
        if args.gather_from is not None:
            options["gather_from"] = args.gather_from
        model.forward_train = functools.partial(model.forward_train, **options)
    optimizer = make_optimizer(model, 1e-3)
    with open(os.path.join(args.corpus, "train.bin"), "rb") as f:
        data = f.read()
    rates, cpu_rates = [], []
    load_before = os.getloadavg()[0]
    for step in range(args.warmup + args.steps):
        inputs, targets, _ = batch_at(data, step, args.seq, args.batch, 1, args.retrieval_share)
        wall, cpu = time.perf_counter(), time.process_time()
        train_step(model, optimizer, inputs, targets, 1e-3)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if step >= args.warmup:
            rates.append(args.seq * args.batch / wall)
            cpu_rates.append(args.seq * args.batch / cpu)
    rates.sort()
    cpu_rates.sort()
    print(json.dumps({"kind": args.kinds[0], "threads": args.threads[0], "seq": args.seq, "batch": args.batch,
                      "code": "given" if args.code else "current", "tuned": not args.untuned,
                      "chunk": args.chunk, "gather_from": args.gather_from,
                      "bytes_per_s_median": round(rates[len(rates) // 2]),
                      "bytes_per_s_range": [round(rates[0]), round(rates[-1])],
                      "bytes_per_cpu_s_median": round(cpu_rates[len(cpu_rates) // 2]),
                      "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--config", default=os.path.join(HERE, "config.json"))
    parser.add_argument("--kinds", default="dense,hysparse,swa")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--retrieval-share", type=float, default=0.15)
    parser.add_argument("--code", help="directory holding the hysparse_lm.py to measure (default: this one)")
    parser.add_argument("--chunk", type=int, help="forward_train's causal query chunk (0: none)")
    parser.add_argument("--gather-from", type=int, help="forward_train's SA gather threshold")
    parser.add_argument("--untuned", action="store_true", help="skip train.tune_cpu (how train.py ran before it)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one configuration
    args = parser.parse_args()
    args.kinds = args.kinds.split(",")
    args.threads = [int(t) for t in args.threads.split(",")]
    if args.one:
        measure(args)
        return
    for kind in args.kinds:
        for threads in args.threads:
            child = [a for a in sys.argv[1:]]
            child += ["--one", "--kinds", kind, "--threads", str(threads)]
            subprocess.run([sys.executable, os.path.abspath(__file__)] + child, check=True)


if __name__ == "__main__":
    main()
