#!/usr/bin/env bash
# The sanitizer run of issue 14 (docs/reliability.md): builds the native library and its kernel tests
# with ASan+UBSan into build/asan, runs the kernel tests, then runs the op fuzzer (OpFuzzTests) against
# that library inside dotnet (libasan preloaded). Prints "SANITIZE: N passed, N failed".
#   HYSPARSE_FUZZ_OP_CASES   op fuzz cases (default 10000)
#   HYSPARSE_FUZZ_SEED       first seed (default 1)
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
gtest_count() { grep -E "^([0-9]+: )?\[  $2 *\] [0-9]+ test" "$1" | tail -1 | sed -E 's/^([0-9]+: )?\[[^]]*\] ([0-9]+) test.*/\2/'; }

if ! { cmake -S . -B build/asan -DHYSPARSE_CUDA=OFF -DHYSPARSE_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo >/tmp/hysparse-asan.log 2>&1 \
       && cmake --build build/asan -j"$(nproc)" >>/tmp/hysparse-asan.log 2>&1; }; then
  tail -40 /tmp/hysparse-asan.log
  echo "SANITIZE: 0 passed, 1 failed"
  exit 1
fi

# Kernel tests: any ASan/UBSan report aborts the test that triggered it (-fno-sanitize-recover).
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
build/asan/native/tests/hysparse_kernel_tests --gtest_brief=1 >/tmp/hysparse-asan-tests.log 2>&1
status=$?
tail -3 /tmp/hysparse-asan-tests.log
p=$(gtest_count /tmp/hysparse-asan-tests.log PASSED); f=$(gtest_count /tmp/hysparse-asan-tests.log FAILED)
passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
if [ "$status" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then grep -m5 -E "ERROR: AddressSanitizer|runtime error" /tmp/hysparse-asan-tests.log; failed=$((failed + 1)); fi

# The op fuzzer against the sanitized library, in the managed test host. dotnet itself is not built
# with ASan: libasan is preloaded so the library can use it, and leak checking is off (the runtime's
# own allocations at exit are not leaks of ours).
libasan=$(g++ -print-file-name=libasan.so)
dotnet build tests/HySparse.Onnx.Tests -v q >/tmp/hysparse-asan-dotnet-build.log 2>&1 || { tail -20 /tmp/hysparse-asan-dotnet-build.log; failed=$((failed + 1)); }
HYSPARSE_NATIVE_LIBRARY="$PWD/build/asan/native/libhysparse_onnx.so" LD_PRELOAD="$libasan" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:handle_segv=0:allow_user_segv_handler=1:use_sigaltstack=0" \
  dotnet test tests/HySparse.Onnx.Tests --no-build --filter "FullyQualifiedName~OpFuzzTests" --logger "console;verbosity=detailed" \
  >/tmp/hysparse-asan-fuzz.log 2>&1
status=$?
grep -E "op cases|Test Run" /tmp/hysparse-asan-fuzz.log | tail -2
if [ "$status" -eq 0 ] && grep -q "Test Run Successful" /tmp/hysparse-asan-fuzz.log; then
  passed=$((passed + 1))
else
  grep -m5 -E "ERROR: AddressSanitizer|runtime error|crash|seed" /tmp/hysparse-asan-fuzz.log
  [ -f "${TMPDIR:-/tmp}/hysparse-op-fuzz.case" ] && echo "last case: $(cat "${TMPDIR:-/tmp}/hysparse-op-fuzz.case")"
  failed=$((failed + 1))
fi

echo "SANITIZE: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
