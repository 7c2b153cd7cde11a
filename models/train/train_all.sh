#!/bin/bash
# The whole recipe behind models/fixtures/trained: corpus, three trainings with one schedule, exports
# with their PyTorch reference outputs. Run from the repository root with Debian's PyTorch:
#   apt-get install python3-torch python3-onnx libopenblas0-pthread
#   models/train/train_all.sh                 # the committed run (CPU, see models/train/README.md)
#   PHASES=512x32:2000,2048x8:400 models/train/train_all.sh   # a longer run (e.g. on a GPU machine)
# Environment: PHASES (training schedule), THREADS (CPU threads per training; the three run side by
# side), OUT (work directory, default build/train), FIXTURES (where the ONNX files go).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/usr/bin/python3}
PHASES=${PHASES:-512x8:70,2048x2:10}
THREADS=${THREADS:-1}
OUT=${OUT:-build/train}
FIXTURES=${FIXTURES:-models/fixtures/trained}
mkdir -p "$OUT" "$FIXTURES"

# The corpus must be the committed one, or the numbers are not comparable (--check fails otherwise;
# set CORPUS_CHECK= to build from another Python's standard library on purpose).
$PY models/train/corpus.py --out "$OUT/corpus" ${CORPUS_CHECK-"--check" "models/train/corpus-manifest.json"}
$PY models/train/hysparse_lm.py   # the training and reference forwards agree

for kind in dense hysparse swa; do
  $PY models/train/train.py --kind $kind --corpus "$OUT/corpus" --out "$OUT/$kind" --config models/train/config.json \
    --phases "$PHASES" --threads "$THREADS" --log-every 5 --eval-every 35 --eval-windows 4 > "$OUT/$kind.log" 2>&1 &
done
wait
for kind in dense hysparse swa; do
  cp "$OUT/$kind/loss.jsonl" "$FIXTURES/$kind.loss.jsonl"
  $PY models/train/export_onnx.py --checkpoint "$OUT/$kind/model.pt" --out "$FIXTURES/$kind.onnx" \
    --expected "$FIXTURES/$kind.expected.json" --text "$OUT/corpus/val.bin"
done
cp "$OUT/corpus/val.bin" "$FIXTURES/validation.bin"
echo "done: $FIXTURES; next: dotnet run -c Release --project bench/HySparse.Fidelity -- --out docs/fidelity.md"
