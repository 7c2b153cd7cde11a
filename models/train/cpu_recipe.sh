#!/bin/bash
# The recipe of the committed fidelity models, on the build machine's CPU (models/train/README.md,
# "The committed models"): for each model a chain of train_gpu.py stages, each starting from the
# previous stage's weights, one niced thread per run. Induction first (copy rows at 128, then 512
# bytes), language at 2,048 bytes with planted retrieval pairs after.
#
#   models/train/cpu_recipe.sh dense 1        # ~2.4 h of one core
#   models/train/cpu_recipe.sh swa 1          # ~1.8 h
#   models/train/cpu_recipe.sh hysparse 1     # warm-started from swa's stage 2 (run swa first): ~1.5 h
#
# Two chains at a time fit the 2-core, 24 GB machine (the HySparse 2k stage runs in micro-batches for
# that). STATE (default build/train-cpu) holds one folder per stage; a stage with a `done` file is
# skipped and one stopped early resumes from its last evaluation (train_gpu.py --resume), so after an
# interruption the same command goes on. Stages are budgeted in steps, the committed seed-1 runs'
# counts, so a busy machine changes the time a stage takes, not its schedule.
# Then export: export_onnx.py --checkpoint $STATE/<last stage>/<kind>-seed<N>.npz, join_curves.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
KIND=${1:?usage: cpu_recipe.sh dense|swa|hysparse SEED}
SEED=${2:?usage: cpu_recipe.sh dense|swa|hysparse SEED}
STATE=${STATE:-build/train-cpu}
CORPUS=${CORPUS:-build/corpus}
PYTHON=${PYTHON:-/usr/bin/python3}
[ -f "$CORPUS/train.bin" ] || { echo "no corpus in $CORPUS: $PYTHON models/train/corpus.py --out $CORPUS --check models/train/corpus-manifest.json" >&2; exit 2; }

# Copy rows in halves (random strings and pieces of text, written twice, the second time shuffled):
# the induction head forms on them before any language modelling.
COPY="--retrieval-share 0 --copy-share 1 --copy-text 0.5 --copy-halves --eval-windows 4 --retrieval-probes 16"
# Language at 2k: text, 30 % retrieval rows (6 plant/query pairs per KiB, value bytes weighted 2x), 25 % copy rows.
LM="--retrieval-share 0.3 --retrieval-pairs-per-kb 6 --value-weight 2 --copy-share 0.25 --copy-text 0.5 --copy-halves --eval-windows 8 --retrieval-probes 32"

# stage NAME RUN STEPS PHASES LR WARMUP INIT_DIR [options...]
stage() {
  local name=$1 run=$2 steps=$3 phases=$4 lr=$5 warmup=$6 init=$7; shift 7
  local dir=$STATE/$name resume=()
  mkdir -p "$dir"
  if [ -f "$dir/done" ]; then echo "$name: done"; return 0; fi
  if ls "$dir"/*.resume.pt >/dev/null 2>&1; then resume=(--resume); fi
  echo "$name: ${resume[*]:-start} ($steps steps, $phases, lr $lr; log $dir/log)"
  nice "$PYTHON" models/train/train_gpu.py --corpus "$CORPUS" --out "$dir" --runs "$run" --steps "$steps" \
    --phases "$phases" --lr "$lr" --warmup "$warmup" ${init:+--init-onnx "$init"} "$@" \
    --device cpu --threads 1 "${resume[@]}" >> "$dir/log" 2>&1
  touch "$dir/done"
}

case "$KIND" in
  dense)
    # (The committed seed 1's stage 1 had copy pairs with short gaps, --copy-gap 32, instead of rows in
    # halves, and was carried on from step 1,243 of a 2,700-s stage: README, "The committed models".)
    stage dense$SEED-1-copy128 dense:$SEED 1243 128x64:1 2.5e-3 60 "" $COPY --eval-seconds 600
    stage dense$SEED-2-copy512 dense:$SEED 254 512x32:1 1.5e-3 30 "$STATE/dense$SEED-1-copy128" $COPY --eval-seconds 600
    stage dense$SEED-3-text2k dense:$SEED 363 2048x8:1 1e-3 30 "$STATE/dense$SEED-2-copy512" \
      --retrieval-share 0.15 --copy-share 0.25 --copy-text 0.5 --copy-halves --eval-windows 8 --retrieval-probes 32 --eval-seconds 600
    stage dense$SEED-4-retrieval2k dense:$SEED 302 2048x8:1 6e-4 30 "$STATE/dense$SEED-3-text2k" \
      --retrieval-share 0.35 --retrieval-pairs-per-kb 6 --value-weight 2 --copy-share 0.2 --copy-text 0.5 --copy-halves \
      --eval-windows 8 --retrieval-probes 32 --eval-seconds 800
    ;;
  swa)
    stage swa$SEED-1-copy128 swa:$SEED 1683 128x64:1 2.5e-3 60 "" $COPY --eval-seconds 600
    stage swa$SEED-2-copy512 swa:$SEED 301 512x32:1 1.5e-3 30 "$STATE/swa$SEED-1-copy128" $COPY --eval-seconds 540
    stage swa$SEED-3-text2k swa:$SEED 404 2048x8:1 1e-3 30 "$STATE/swa$SEED-2-copy512" $LM --eval-seconds 600
    ;;
  hysparse)
    # From random, HySparse formed no induction head in 1,500 steps at 512 bytes (README, "Where the head
    # forms"); it starts from the sliding-window model of the same seed after its 512-byte copy stage.
    [ -f "$STATE/swa$SEED-2-copy512/done" ] || { echo "hysparse $SEED starts from swa $SEED's second stage: run cpu_recipe.sh swa $SEED first" >&2; exit 2; }
    if [ ! -f "$STATE/hysparse$SEED-0-from-swa/hysparse-seed$SEED.npz" ]; then
      "$PYTHON" models/train/warm_start.py --swa "$STATE/swa$SEED-2-copy512/swa-seed$SEED.npz" --out "$STATE/hysparse$SEED-0-from-swa"
    fi
    stage hysparse$SEED-1-copy512 hysparse:$SEED 149 512x16:1 1e-3 20 "$STATE/hysparse$SEED-0-from-swa" $COPY --eval-seconds 600
    stage hysparse$SEED-2-text2k hysparse:$SEED 391 2048x8:1 1e-3 30 "$STATE/hysparse$SEED-1-copy512" $LM --eval-seconds 600 --micro-batch 2
    ;;
  *) echo "cpu_recipe.sh: unknown kind '$KIND' (dense, swa or hysparse)" >&2; exit 2 ;;
esac
