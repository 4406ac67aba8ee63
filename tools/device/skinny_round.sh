#!/usr/bin/env bash
# The skinny tensor-core GEMM (pq_gemm_skinny.comp) for continuous batching's decode steps of up to
# 32 sequences: the kernels at M = 8, 16, 32 against the batched GEMV and the split-K GEMM
# (--check against the CPU twins), aggregate decode of 1, 8, 32 sequences (and 64: the split-K
# GEMM) beside one sequence's tg128, then the GPU tests of the GEMMs and of batching.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
timeout 150 $B/vk-bench kernels --shape 4096x4096,6144x4096,28672x4096,4096x14336,128256x4096 --bits 4,5 -m 8,16,32 --no-f16 \
  --check --batched --reps 10 --warmup-ms 200 --json "$OUT/kernels.json" > "$OUT/kernels.md" 2>&1
echo "kernels rc=$? check failures: $(grep -c FAILED "$OUT/kernels.md")"
grep -E "28672x4096|4096x14336" "$OUT/kernels.md" | grep -E "\| (8|32) \|" | cut -c1-150
timeout 60 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -r 3 > "$OUT/tg-single.md" 2> "$OUT/tg-single.err"
echo "single: $(grep -o 'tg128[ x0-9]*: [0-9.]* +- [0-9.]*' "$OUT/tg-single.err" | tr '\n' ' ')"
for run in ${RUNS:-skinny:1:1,8,32 split:0:8,32}; do
  IFS=: read -r name sk nps <<< "$run"
  PQVK_GEMM_SKINNY=$sk timeout 200 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -np "$nps" -r 3 \
    --json "$OUT/np-$name.json" > "$OUT/np-$name.md" 2> "$OUT/np-$name.err"
  echo "$name: $(grep -o 'tg128[ x0-9]*: [0-9.]* +- [0-9.]*' "$OUT/np-$name.err" | tr '\n' ' ')"
done | tee "$OUT/np-summary.txt"
gpu_tests "${FILTER:-Gemm.SkinnyMatchesCpu:Gemm.SplitKMatchesCpu:Gemm.TokenRowDoesNotDependOnTheOtherTokens:GemvBatch.*:Batch.*}" "${TEST_LIMIT:-150}"
pack_out
