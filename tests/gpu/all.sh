#!/usr/bin/env bash
# Everything a GPU lease is for, in one call: the training recipe (models/train/gpu_recipe.sh) runs on
# the GPU while the kernel checks (tests/gpu/run.sh) build and test beside it; the kernel timings wait
# until training is over so they have the GPU to themselves. Results come back in at most 8 files
# (the device tool's limit): the runs' .npz weights, train-logs.tar.gz and gpu-logs.tar.gz.
#
#   tests/gpu/prepare.sh        # here, once
#   run: command "tests/gpu/all.sh", carry ["build/gpu-carry"], timeout_s 590
#
# Environment: as the two scripts (TRAIN_SECONDS, RUNS, HYSPARSE_CUDA_ARCHITECTURES, ...).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-build/gpu-out}
mkdir -p "$out" build
done_file=$PWD/build/train-done
rm -f "$done_file"
DONE_FILE=$done_file OUT=$out models/train/gpu_recipe.sh > build/train-console.log 2>&1 &
train_pid=$!
# Bounded so the results are packed before the device call's limit, whatever hangs; niced so the
# 16-way CUDA build does not starve the training loop's one launching thread.
OUT=$PWD/build/gpu-kernels HYSPARSE_GPU_TIMING_WAIT=$done_file \
  HYSPARSE_CUDA_ARCHITECTURES=${HYSPARSE_CUDA_ARCHITECTURES:-90-real} \
  timeout -s TERM "${KERNEL_CHECK_SECONDS:-540}" nice -n 10 tests/gpu/run.sh
kernels=$?
wait "$train_pid"
train=$?
echo; echo "=== training (exit $train)"
grep -E "^[0-9]+ runs|^final|^done|Error|error" build/train-console.log | tail -20
cp build/train-console.log build/gpu-kernels/ 2>/dev/null
tar -czf "$out/gpu-logs.tar.gz" -C build/gpu-kernels .
echo "kernel checks exit $kernels, training exit $train"
ls -la "$out"
[ "$kernels" -eq 0 ] && [ "$train" -eq 0 ]
