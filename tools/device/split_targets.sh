#!/usr/bin/env bash
# Split-K targets (PQVK_GEMM_SPLIT, workgroups a split GEMM aims at) for continuous batching's
# decode steps through the tensor-core GEMM: kernels at M = 8 / 32 and aggregate decode of 8 and
# 32 sequences per target, then the GPU tests of the split and batching.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
PQVK_GEMM_SPLIT=${KTARGET:-1024} timeout 100 $B/vk-bench kernels --shape 4096x4096,6144x4096,28672x4096,4096x14336 --bits 5 -m 8,32 \
  --no-f16 --check --batched --reps 10 --warmup-ms 200 --json "$OUT/kernels.json" > "$OUT/kernels.md" 2>&1
echo "kernels rc=$? check failures: $(grep -c FAILED "$OUT/kernels.md")"
for target in ${TARGETS:-256 1024 4096}; do
  PQVK_GEMM_SPLIT=$target timeout 150 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -np 8,32 -r 3 \
    --batch-gemm-from 1 --json "$OUT/np-$target.json" > "$OUT/np-$target.md" 2> "$OUT/np-$target.err"
  echo "target $target: $(grep -o 'tg128[ x0-9]*: [0-9.]* +- [0-9.]*' "$OUT/np-$target.err" | tr '\n' ' ')"
done | tee "$OUT/np-summary.txt"
gpu_tests "${FILTER:-Gemm.SplitKMatchesCpu:Gemm.TokenRow*:Gemm.CoopmatWhereSupported*:GemvBatch.*:Batch.*}" "${TEST_LIMIT:-150}"
pack_out
