#!/usr/bin/env bash
# The GPU recipe of issue 11: trains dense (seeds 1, 2), HySparse-native (seeds 1, 2) and the
# sliding-window baseline (seed 1) in lock-step on one lent GPU within TRAIN_SECONDS of wall clock
# (train_gpu.py), and leaves in $OUT one <kind>-seed<N>.npz per run plus train-logs.tar.gz (loss
# curves, log). export_onnx.py makes the ONNX files from the .npz here (models/train/README.md, "GPU
# recipe"): the committed graphs come from Debian's PyTorch 1.13 exporter, whatever the GPU image holds.
#
#   tests/gpu/prepare.sh        # here: carries the corpus (and the GPU kernel checks' sources) in build/gpu-carry
#   models/train/gpu_recipe.sh  # there, with build/gpu-carry carried (tests/gpu/all.sh runs it beside the kernel checks)
#
# Environment: TRAIN_SECONDS (default 300), RUNS (KIND:SEED list), PHASES (SEQxBATCH:SHARE list), LR, WARMUP, MIX
# (the training mix: retrieval rows, pairs per KiB, value-byte weight, echo rows; README "Retrieval"),
# INIT (a folder of <kind>-seed<N>.npz from an earlier run to continue from; train_gpu.py --init-onnx),
# CORPUS (default build/gpu-carry/corpus), DONE_FILE (touched on exit, whatever happened), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
CORPUS=${CORPUS:-build/gpu-carry/corpus}
out=${OUT:-build/gpu-out}
work=build/train-gpu
mkdir -p "$out" "$work"
[ -n "${DONE_FILE:-}" ] && trap 'touch "$DONE_FILE"' EXIT
export PYTHONUNBUFFERED=1

# The corpus must be the committed one (corpus-manifest.json's hashes), or the numbers mean nothing.
$PY - "$CORPUS" models/train/corpus-manifest.json <<'PYEOF' || exit 2
import hashlib, json, sys
corpus, manifest = sys.argv[1], json.load(open(sys.argv[2]))
for split in manifest["splits"].values():
    digest = hashlib.sha256(open(f"{corpus}/{split['file']}", "rb").read()).hexdigest()
    if digest != split["sha256"]:
        sys.exit(f"{corpus}/{split['file']} is not the committed corpus (sha256 {digest[:16]})")
print(f"corpus {corpus}: matches corpus-manifest.json")
PYEOF

$PY models/train/train_gpu.py --corpus "$CORPUS" --out "$work" --weights-out "$out" \
  --seconds "${TRAIN_SECONDS:-300}" --runs "${RUNS:-dense:1,dense:2,hysparse:1,hysparse:2,swa:1}" \
  --phases "${PHASES:-512x128:0.35,2048x32:0.65}" ${LR:+--lr "$LR"} ${WARMUP:+--warmup "$WARMUP"} \
  ${INIT:+--init-onnx "$INIT"} ${MIX:---retrieval-share 0.5 --retrieval-pairs-per-kb 6 --value-weight 2 --echo-share 0.5} 2>&1 | tee "$work/train.log"
status=${PIPESTATUS[0]}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$work/train.log" 2>&1
tar -czf "$out/train-logs.tar.gz" -C "$work" .
exit "$status"
