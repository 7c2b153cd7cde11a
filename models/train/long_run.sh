#!/bin/bash
# Starts, or resumes, the long CPU trainings of issue 11 in the background: one process per kind,
# 1 thread each, nice 10 (the build machine's other core is for builds), surviving the shell that
# started them. State lives outside the repository: $STATE/<kind>-seed<N>/ holds model.pt (weights,
# optimizer, step), loss.jsonl, train.log and pid. Running it again resumes each run from its
# checkpoint (a run whose pid is alive is left alone), so it is also the restart command after a
# reboot or a kill. See models/train/README.md, "Long run".
#   models/train/long_run.sh                      # dense, seed 1
#   KINDS="dense hysparse" models/train/long_run.sh
# Environment: KINDS, SEED, PHASES, STATE (default /work/train-state), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/usr/bin/python3}
KINDS=${KINDS:-dense}
SEED=${SEED:-1}
STATE=${STATE:-/work/train-state}
# Sized for about 4 h on an otherwise idle core (~4,000 bytes/s at 512, ~2,000 at 2048; README
# "Throughput"); on the shared build machine, while builds run, a niced run gets far less.
PHASES=${PHASES:-512x8:8000,2048x2:2500}

if [ ! -f "$STATE/corpus/train.bin" ]; then
  $PY models/train/corpus.py --out "$STATE/corpus" --check models/train/corpus-manifest.json
fi
for kind in $KINDS; do
  run="$STATE/$kind-seed$SEED"
  mkdir -p "$run"
  # alive and still this run's train.py (a pid can be reused after a reboot)
  if [ -f "$run/pid" ] && tr '\0' ' ' < "/proc/$(cat "$run/pid")/cmdline" 2>/dev/null | grep -q -- "--out $run "; then
    echo "$kind-seed$SEED: already running (pid $(cat "$run/pid"))"
    continue
  fi
  nohup nice -n 10 $PY models/train/train.py --kind "$kind" --seed "$SEED" --corpus "$STATE/corpus" --out "$run" \
    --config models/train/config.json --phases "$PHASES" --warmup 200 --lr 2e-3 --retrieval-share 0.15 \
    --threads 1 --log-every 25 --eval-every 250 --eval-windows 8 --retrieval-probes 16 --save-minutes 5 \
    >> "$run/train.log" 2>&1 < /dev/null &
  echo $! > "$run/pid"
  echo "$kind-seed$SEED: pid $!, log $run/train.log"
done
