#!/usr/bin/env bash
# What onnxruntime-genai holds in KV cache for a dense genai-builder-style folder and its HySparse
# conversions, each run in its own process through `hysparse generate` (Microsoft.ML.OnnxRuntimeGenAI,
# CPU): a random prompt of CONTEXT tokens, NEW_TOKENS greedy tokens, RUNS runs per folder (interleaved).
# KV bytes are the cache tensors genai had bound at the last step (read back from their shapes);
# peak RSS is the process's VmHWM (weights, activations and arena included).
#
#   scripts/genai-kv-memory.sh                 # 8192-token prompt, 16 new tokens, 2 runs, the e2e model
#   CONTEXT=2048 RUNS=1 MODEL=tiny scripts/genai-kv-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
context=${CONTEXT:-8192}
new_tokens=${NEW_TOKENS:-16}
runs=${RUNS:-2}
model=${MODEL:-default}
work=${WORK:-$(mktemp -d /tmp/hysparse-genai-kv.XXXXXX)}
mkdir -p "$work"

dotnet build -c Release exporter/HySparse.Cli -v q >"$work/build.log" 2>&1 || { tail -20 "$work/build.log"; exit 1; }
dotnet build -c Release bench/HySparse.Bench -v q >>"$work/build.log" 2>&1 || { tail -20 "$work/build.log"; exit 1; }
hysparse() { dotnet exec exporter/HySparse.Cli/bin/Release/net10.0/hysparse.dll "$@"; }

rm -rf "$work/dense" "$work/retrofit" "$work/kv-sharing"
dotnet exec bench/HySparse.Bench/bin/Release/net10.0/HySparse.Bench.dll --e2e-model "$model" \
  --write-genai-folder "$work/dense" --genai-context $((context + new_tokens + 64))
# The converter's defaults: ratio 1:3 with the last layer full, K 16 blocks of 64, window 128.
hysparse convert "$work/dense" -o "$work/retrofit" -q >/dev/null
hysparse convert "$work/dense" -o "$work/kv-sharing" --kv-sharing -q >/dev/null

for run in $(seq 1 "$runs"); do
  for folder in dense retrofit kv-sharing; do
    echo "run $run: $folder" >&2
    hysparse generate "$work/$folder" --random-prompt "$context" -n "$new_tokens" --json >"$work/$folder.$run.json"
  done
done

python3 - "$work" "$runs" "$context" "$new_tokens" <<'PY'
import json, statistics, sys
work, runs, context, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
mib = 1024 * 1024
rows = []
for folder in ["dense", "retrofit", "kv-sharing"]:
    results = [json.load(open(f"{work}/{folder}.{r}.json")) for r in range(1, runs + 1)]
    kv = {r["kvBytes"] for r in results}
    assert len(kv) == 1, f"{folder}: KV bytes differ between runs: {kv}"
    rss = [r["peakResidentBytes"] / mib for r in results]
    ttft = [r["timeToFirstTokenMs"] / 1000 for r in results]
    tps = [r["decodeTokensPerSecond"] for r in results]
    caches = results[0]["caches"]
    lengths = sorted({c["shape"][2] for c in caches})
    rows.append((folder, kv.pop(), len(caches), lengths, rss, ttft, tps))
dense_kv = rows[0][1]
print(f"onnxruntime-genai 0.20.0 (CPU), prompt {context} random tokens + {new} greedy tokens, batch 1, {runs} run(s) per folder, interleaved")
print()
print("| folder | KV bytes genai held | vs dense | cache tensors (lengths) | peak RSS MiB (min–max) | time to first token s | decode tokens/s |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for folder, kv, n, lengths, rss, ttft, tps in rows:
    span = lambda xs, f: f"{f(min(xs))}–{f(max(xs))}" if len(xs) > 1 else f(xs[0])
    print(f"| {folder} | {kv / mib:.1f} MiB | {kv / dense_kv:.0%} | {n} ({', '.join(map(str, lengths))}) | "
          f"{span(rss, lambda x: f'{x:.0f}')} | {span(ttft, lambda x: f'{x:.1f}')} | {span(tps, lambda x: f'{x:.1f}')} |")
PY
echo "(folders and raw JSON in $work)" >&2
