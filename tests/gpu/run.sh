#!/usr/bin/env bash
# The one script for a lent GPU machine (CUDA 13, cmake, no network, no dotnet): builds the native
# library and the CUDA tests, runs the tests (a short compute-sanitizer memcheck pass over the small
# cases first), then times every kernel at the 7B layer shape and prints a markdown table (with
# shared-buffer decode at 16k/64k against the concatenating full op and the bandwidth floor).
# Finishes in under 5 minutes on an H200. Logs go to $OUT (the device tool's output folder) when set,
# else build/gpu-out.
#
#   tests/gpu/prepare.sh            # here, once: ORT headers + GoogleTest sources -> build/gpu-carry
#   tests/gpu/run.sh                # there, with build/gpu-carry carried
#
# Environment: HYSPARSE_GPU_CARRY (default build/gpu-carry), HYSPARSE_CUDA_ARCHITECTURES (default
# the CMake default: 80-real;90-real;90-virtual), HYSPARSE_GPU_SANITIZE=0 to skip the memcheck pass,
# HYSPARSE_GPU_TEST_FILTER (a gtest filter for the test run), HYSPARSE_GPU_TIMING_WAIT (a file to wait
# for before timing, so the GPU is idle).
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=${OUT:-$root/build/gpu-out}
mkdir -p "$out"
carry=${HYSPARSE_GPU_CARRY:-$root/build/gpu-carry}
jobs=$(nproc)
t0=$(date +%s)
failures=0

step() { printf '\n=== %s (%ds)\n' "$*" $(( $(date +%s) - t0 )); }
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }

# The toolkit's tools (nvcc, compute-sanitizer) may not be on PATH; they usually live in /usr/local/cuda.
[ -d /usr/local/cuda/bin ] && export PATH=$PATH:/usr/local/cuda/bin

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee "$out/device.txt"
nvcc --version | tail -2 | tee -a "$out/device.txt"
cmake --version | head -1

# GoogleTest: the system's, else built from the carried sources.
gtest_args=()
if [ ! -f /usr/include/gtest/gtest.h ]; then
  if [ ! -f "$carry/googletest/CMakeLists.txt" ]; then
    echo "no GoogleTest: run tests/gpu/prepare.sh here and carry build/gpu-carry" >&2
    exit 2
  fi
  step "GoogleTest from carried sources"
  cmake -S "$carry/googletest" -B build/gpu-gtest -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON \
    -DCMAKE_INSTALL_PREFIX="$root/build/gpu-gtest-install" >"$out/gtest-build.log" 2>&1 \
    && cmake --build build/gpu-gtest -j"$jobs" --target install >>"$out/gtest-build.log" 2>&1 \
    || { tail -20 "$out/gtest-build.log"; exit 2; }
  gtest_args=(-DCMAKE_PREFIX_PATH="$root/build/gpu-gtest-install")
fi
ort_args=()
[ -f "$carry/ort-include/onnxruntime_cxx_api.h" ] && ort_args=(-DORT_INCLUDE_DIR="$carry/ort-include")
arch_args=()
[ -n "${HYSPARSE_CUDA_ARCHITECTURES:-}" ] && arch_args=(-DHYSPARSE_CUDA_ARCHITECTURES="$HYSPARSE_CUDA_ARCHITECTURES")

step "configure"
cmake -S . -B build/gpu -DHYSPARSE_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_FLAGS="--threads 0" \
  -DHYSPARSE_CUDA_WARNINGS_AS_ERRORS=OFF \
  "${gtest_args[@]}" "${ort_args[@]}" "${arch_args[@]}" >"$out/configure.log" 2>&1 \
  || { tail -30 "$out/configure.log"; exit 2; }
grep -E "CUDA kernels|CUDAToolkit|GTest" "$out/configure.log"

step "build (CUDA kernels, tests, timing program)"
if ! cmake --build build/gpu -j"$jobs" --target hysparse_kernels_cuda hysparse_cuda_tests hysparse_cuda_bench \
    >"$out/build.log" 2>&1; then
  grep -E "error|Error" "$out/build.log" | head -40
  exit 2
fi
grep -E "warning" "$out/build.log" | sort -u | head -20
step "build (whole native library)"
cmake --build build/gpu -j"$jobs" >>"$out/build.log" 2>&1 || fail "native library build (see build.log)"

tests=build/gpu/native/tests/cuda/hysparse_cuda_tests
bench=build/gpu/native/tests/cuda/hysparse_cuda_bench
if [ "${HYSPARSE_GPU_SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  step "compute-sanitizer memcheck, small cases"
  small='*tiny*:*d36*:*chunk3*:*block1*:*prefill_leftpad_bf16*:*union_retrofit_prefill*:*gate_selected_prefill*:CopyToCache*'
  small+=':*decode_padded_batch_retrofit_bf16:*decode_kv_sharing_gate_copy_f16:*prefill_right_padded_kv_sharing_bf16'
  small+=':*chunked_prefill_bnsh_gate_f32:CheckSharedBuffer*'
  timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 "$tests" --gtest_filter="$small" \
    >"$out/memcheck.log" 2>&1 || fail "memcheck (see memcheck.log)"
  grep -E "ERROR SUMMARY|PASSED|FAILED" "$out/memcheck.log" | tail -5
fi

step "CUDA kernel tests"
timeout 240 "$tests" --gtest_filter="${HYSPARSE_GPU_TEST_FILTER:-*}" --gtest_output=xml:"$out/cuda_tests.xml" \
  >"$out/cuda_tests.log" 2>&1 || fail "CUDA kernel tests"
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]|Failure|error" "$out/cuda_tests.log" | head -60

# Timings need the GPU to themselves: when something else runs on it (tests/gpu/all.sh trains beside
# the tests), wait for the file it touches when it is done.
if [ -n "${HYSPARSE_GPU_TIMING_WAIT:-}" ]; then
  step "waiting for $HYSPARSE_GPU_TIMING_WAIT before timing"
  for _ in $(seq 1 "${HYSPARSE_GPU_TIMING_WAIT_SECONDS:-420}"); do [ -e "$HYSPARSE_GPU_TIMING_WAIT" ] && break; sleep 1; done
  [ -e "$HYSPARSE_GPU_TIMING_WAIT" ] || echo "still not there: timing anyway (numbers may be disturbed)"
fi
step "timing"
timeout 150 "$bench" 2>&1 | tee "$out/bench.md" || fail "timing program"

step "done"
echo "failures: $failures, elapsed $(( $(date +%s) - t0 )) s"
[ "$failures" -eq 0 ]
