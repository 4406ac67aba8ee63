#!/usr/bin/env bash
# Issue 13 on the H200: the PolarQuant KV cache's GPU tests with validation on, then decode
# after long prompts (tg128 at -d 16384 / 32768) with f16, pq8 and pq4 caches.
# Carry .gl (validation layer) and .dev (pqvk_tests, vk-bench, lib.tar.xz).
# KV_TYPES / DEPTHS / FILTER override what runs; each run has its own time limit.
set -uo pipefail
source tools/device/setup.sh
mkdir -p /work && ln -sfn "$PWD" /work/main  # the tests' data paths, compiled in
if [ -n "${FILTER:-}" ]; then
  PQVK_VALIDATION=1 timeout "${TEST_LIMIT:-150}" $B/pqvk_tests --gtest_filter="$FILTER" > "$OUT/gpu-tests.txt" 2>&1
  echo "tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on" "$OUT/gpu-tests.txt" | head -20
fi
for spec in ${RUNS:-f16:16384,32768 pq4:16384,32768 pq8:16384}; do
  kv=${spec%%:*}; d=${spec#*:}
  timeout "${RUN_LIMIT:-200}" $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -d "$d" -r 3 --kv-type "$kv" \
    --json "$OUT/kv-$kv.json" > "$OUT/kv-$kv.md" 2> "$OUT/kv-$kv.err"
  echo "kv $kv rc=$?: $(grep -o 'tg128 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/kv-$kv.err" | tr '\n' ' ')"
done | tee "$OUT/kv-summary.txt"
tar -C "$OUT" -cJf /tmp/kv.tar.xz . && rm -rf "${OUT:?}"/* && mv /tmp/kv.tar.xz "$OUT/"
