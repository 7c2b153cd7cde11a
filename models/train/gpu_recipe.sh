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
# Environment: RECIPE (induction, the default, or plain: the 2026-12-04 models' one-stage recipe),
# TRAIN_SECONDS (default 300, all stages), RUNS (KIND:SEED list), PHASES (SEQxBATCH:SHARE list of the
# language-modelling stage; PHASES1, PHASES2 and STAGE1_PERCENT, STAGE2_PERCENT for the induction
# recipe's copy stages; PHASES2B and WARM_PERCENT for the warm-started HySparse runs' copy stage), LR, WARMUP, LR3 (the induction recipe's language stage, default 1e-3), MIX
# (the last stage's training mix: retrieval rows, pairs per KiB, value-byte weight, echo and copy rows;
# README "Retrieval"), EXTRA (more train_gpu.py arguments, e.g.
# "--device cpu --threads 1" to run the recipe on a CPU),
# INIT (a folder of <kind>-seed<N>.npz from an earlier run to continue from; train_gpu.py --init-onnx),
# CONFIG (the model size: models/train/config.json, the committed fixtures' 1.64 M parameters, by
# default; models/train/config-large.json is 5.8 M, the same layout and attention settings),
# CORPUS (default build/gpu-carry/corpus), DONE_FILE (touched on exit, whatever happened), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
CORPUS=${CORPUS:-build/gpu-carry/corpus}
out=${OUT:-build/gpu-out}
work=build/train-gpu
rm -rf "$work"   # scratch of one run: an earlier run's curves would travel back with this one's
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

runs=${RUNS:-dense:1,dense:2,hysparse:1,hysparse:2,swa:1}
train() {   # train() STAGE RUNS SECONDS PHASES INIT_DIR WEIGHTS_DIR MIX...: one train_gpu.py call over the runs
  local stage=$1 stage_runs=$2 seconds=$3 phases=$4 init=$5 weights=$6; shift 6
  $PY models/train/train_gpu.py --corpus "$CORPUS" --out "$work/$stage" --weights-out "$weights" \
    --config "${CONFIG:-models/train/config.json}" --seconds "$seconds" --runs "$stage_runs" \
    --phases "$phases" ${LR:+--lr "$LR"} ${WARMUP:+--warmup "$WARMUP"} ${init:+--init-onnx "$init"} \
    ${EXTRA:-} "$@" 2>&1 | tee -a "$work/train.log"
  return "${PIPESTATUS[0]}"
}
: > "$work/train.log"
seconds=${TRAIN_SECONDS:-300}
if [ "${RECIPE:-induction}" = plain ]; then
  # The committed models' recipe (2026-12-04): language modelling with retrieval and echo rows from
  # the start. No run formed an induction head with it (README, "Why retrieval is not learned yet").
  # shellcheck disable=SC2086
  train curves "$runs" "$seconds" "${PHASES:-512x128:0.35,2048x32:0.65}" "${INIT:-}" "$out" \
    ${MIX:---retrieval-share 0.5 --retrieval-pairs-per-kb 6 --value-weight 2 --echo-share 0.5}
  status=$?
else
  # Induction first (README, "Induction first"): copy rows only — random strings and pieces of text,
  # a row's first half repeated shuffled in its second — at 128 bytes, where the head forms, then at
  # 512 and 2,048, where it learns to reach back that far; then language modelling with a quarter of
  # the rows still copy rows so the head stays, and the retrieval mix.
  # The copy stages evaluate once, at their end, on few windows: their time comes out of the lease.
  copy="--retrieval-share 0 --copy-share 1 --copy-text 0.5 --copy-halves --eval-seconds 1e9 --eval-windows 4 --retrieval-probes 16"
  # HySparse trained from random formed no induction head (README, "Where the head forms"), so as in the
  # committed models each hysparse:N is the sliding-window model swa:N after the copy stages, made
  # HySparse by warm_start.py, given a short copy stage of its own, then trained with the others.
  base=$(tr ',' '\n' <<< "$runs" | sed 's/^hysparse:/swa:/' | awk '!seen[$0]++' | paste -sd, -)
  hysparse=$(tr ',' '\n' <<< "$runs" | grep '^hysparse:' | paste -sd, -)
  s1=$(( seconds * ${STAGE1_PERCENT:-25} / 100 )); s2=$(( seconds * ${STAGE2_PERCENT:-10} / 100 ))
  s2b=0; [ -n "$hysparse" ] && s2b=$(( seconds * ${WARM_PERCENT:-5} / 100 ))
  s3=$(( seconds - s1 - s2 - s2b ))
  warm() {   # every hysparse:N from swa:N of stage 2, then its copy stage; stage 3 starts from init3
    rm -rf "$work/init3" "$work/warm" && mkdir -p "$work/init3" "$work/warm"
    ln -sf "$PWD/$work"/stage2/*.npz "$work/init3/"
    [ -z "$hysparse" ] && return 0
    for run in ${hysparse//,/ }; do
      $PY models/train/warm_start.py --swa "$work/stage2/swa-seed${run#hysparse:}.npz" --out "$work/warm" 2>&1 | tee -a "$work/train.log"
      [ "${PIPESTATUS[0]}" = 0 ] || return 1
    done
    # shellcheck disable=SC2086
    train stage2b "$hysparse" "$s2b" "${PHASES2B:-512x64:1}" "$work/warm" "$work/stage2b" $copy --lr 1e-3 --warmup 20 &&
      ln -sf "$PWD/$work"/stage2b/hysparse-seed*.npz "$work/init3/"
  }
  # shellcheck disable=SC2086
  train stage1 "$base" "$s1" "${PHASES1:-128x256:1}" "${INIT:-}" "$work/stage1" $copy &&
  train stage2 "$base" "$s2" "${PHASES2:-512x64:0.5,2048x16:0.5}" "$work/stage1" "$work/stage2" $copy &&
  warm &&
  # Stage 3 at LR3 (1e-3, as the CPU run that kept the head, README run G), whatever LR says.
  train stage3 "$runs" "$s3" "${PHASES:-512x128:0.3,2048x32:0.7}" "$work/init3" "$out" --lr "${LR3:-1e-3}" \
    ${MIX:---retrieval-share 0.3 --retrieval-pairs-per-kb 6 --value-weight 2 --copy-share 0.25 --copy-text 0.5 --copy-halves}
  status=$?
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$work/train.log" 2>&1
# Only weights and logs travel back (the device tool returns at most 8 files, each size-limited): the
# optimizer states train_gpu.py keeps for --resume, and the stages' intermediate weights, stay there.
rm -f "$out"/*.resume.pt
# Files come back only up to 16 MiB each and 64 MiB together: a larger CONFIG's float32 weights
# (23 MB each at config-large.json) travel as float16 — what the ONNX exports store anyway.
for f in "$out"/*.npz; do
  [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $(( 15 * 1024 * 1024 )) ] || continue
  $PY - "$f" <<'PYEOF'
import os, sys
import numpy as np
path = sys.argv[1]
with np.load(path) as z:
    arrays = {k: z[k].astype(np.float16) if k.startswith("state/") else z[k] for k in z.files}
np.savez(path + ".tmp.npz", **arrays)
os.replace(path + ".tmp.npz", path)
print(f"{path}: weights as float16, {os.path.getsize(path):,} bytes")
PYEOF
done
tar -czf "$out/train-logs.tar.gz" --exclude='*.npz' --exclude='*.resume.pt' -C "$work" .
exit "$status"
