#!/usr/bin/env bash
# Runs every test suite: the native kernel tests (ctest), the MSTest projects of the solution and the
# package smoke test (scripts/package-smoke.sh).
# Prints each suite's counts and a last line "TOTAL: N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."

total_pass=0
total_fail=0
total_skip=0
add() { total_pass=$((total_pass + $1)); total_fail=$((total_fail + $2)); echo "$3: $1 passed, $2 failed"; }

# Restoring first fetches Microsoft.ML.OnnxRuntime, whose headers the native build needs.
if ! dotnet restore HySparse.Onnx.sln -v q >/tmp/hysparse-restore.log 2>&1; then
  cat /tmp/hysparse-restore.log
  echo "TOTAL: 0 passed, 1 failed"
  exit 1
fi

# Native kernel tests.
if cmake -S . -B build/native -DHYSPARSE_CUDA=OFF -DCMAKE_BUILD_TYPE=Release >/tmp/hysparse-cmake.log 2>&1 \
   && cmake --build build/native -j"$(nproc)" >>/tmp/hysparse-cmake.log 2>&1; then
  ctest --test-dir build/native --output-on-failure -j"$(nproc)" 2>&1 | tee /tmp/hysparse-ctest.log | tail -15
  line=$(grep -E 'tests passed, [0-9]+ tests failed out of [0-9]+' /tmp/hysparse-ctest.log | tail -1)
  n_fail=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$line")
  n_all=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/' <<<"$line")
  if [ -n "$line" ]; then add $((n_all - n_fail)) "$n_fail" "native (ctest)"; else add 0 1 "native (ctest)"; fi
else
  tail -40 /tmp/hysparse-cmake.log
  add 0 1 "native build"
fi

# Managed tests: one summary line per test project.
dotnet test HySparse.Onnx.sln --no-restore 2>&1 | tee /tmp/hysparse-dotnet-test.log | grep -vE '^\s*$' | tail -40
build_ok=${PIPESTATUS[0]}
summaries=$(grep -E '(Passed|Failed)!\s+- Failed:' /tmp/hysparse-dotnet-test.log)
if [ -z "$summaries" ]; then
  add 0 1 "dotnet test (no test summary; build failed?)"
else
  while IFS= read -r s; do
    f=$(sed -E 's/.*Failed: *([0-9]+).*/\1/' <<<"$s")
    p=$(sed -E 's/.*Passed: *([0-9]+).*/\1/' <<<"$s")
    name=$(sed -E 's/.* - ([^ ]+\.dll).*/\1/' <<<"$s")
    k=$(sed -E 's/.*Skipped: *([0-9]+).*/\1/' <<<"$s")
    total_skip=$((total_skip + ${k:-0}))
    add "$p" "$f" "$name"
  done <<<"$summaries"
  if [ "$build_ok" -ne 0 ] && [ "$(grep -c 'Failed!' <<<"$summaries")" -eq 0 ]; then add 0 1 "dotnet test (exit $build_ok)"; fi
fi

# The packages, used as a user uses them: packed, installed from a local feed, in a fresh app.
./scripts/package-smoke.sh 2>&1 | tee /tmp/hysparse-package-smoke.log | tail -20
line=$(grep -E '^package smoke: [0-9]+ passed, [0-9]+ failed' /tmp/hysparse-package-smoke.log | tail -1)
if [ -n "$line" ]; then
  add "$(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$line")" "$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")" "package smoke"
else
  add 0 1 "package smoke (no summary)"
fi

# Skipped: opt-in measurements (they say why when they skip).
echo "TOTAL: $total_pass passed, $total_fail failed, $total_skip skipped"
[ "$total_fail" -eq 0 ]
