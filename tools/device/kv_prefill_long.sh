#!/usr/bin/env bash
# The PolarQuant KV cache through the tensor-core prefill attention on the H200: its tests with
# validation on, then decode after prompts of 65536 and 131072 tokens (pq4), each run with its
# own time limit, outputs written as they come (a run cut by the limit still leaves its files).
# Carry .gl and .dev.
set -uo pipefail
source tools/device/setup.sh
gpu_tests "${FILTER:-Attention.PolarQuant*:Decoder.PolarQuant*}" "${TEST_LIMIT:-50}"
for d in ${DEPTHS:-65536 131072}; do
  start=$(date +%s)
  timeout "${RUN_LIMIT:-100}" $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 32 -d "$d" -r 1 --kv-type pq4 --no-breakdown \
    > "$OUT/pq4-d$d.md" 2> "$OUT/pq4-d$d.err"
  echo "pq4 d$d rc=$? in $(( $(date +%s) - start )) s: $(grep -o 'tg32 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/pq4-d$d.err")" | tee -a "$OUT/summary.txt"
done
