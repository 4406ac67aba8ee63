#!/usr/bin/env bash
# Continuous batching's decode steps through the tensor-core GEMM with K split (GemmOut::split_k):
# the kernels at M = 8 and 32 (batched GEMV, GEMM, split GEMM; --check against the CPU twins),
# aggregate decode of 1, 8 and 32 sequences with and without the split, then the GPU tests.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
timeout 150 $B/vk-bench kernels --shape 4096x4096,6144x4096,28672x4096,4096x14336,128256x4096 --bits 5 -m 8,32 --no-f16 \
  --check --batched --reps 10 --warmup-ms 200 --json "$OUT/kernels.json" > "$OUT/kernels.md" 2>&1
echo "kernels rc=$? check failures: $(grep -c FAILED "$OUT/kernels.md")"
for run in ${RUNS:-split:256 nosplit:0}; do
  name=${run%%:*} target=${run#*:}
  PQVK_GEMM_SPLIT=$target timeout 200 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -np 1,8,32 -r 3 \
    --batch-gemm-from 1 --json "$OUT/np-$name.json" > "$OUT/np-$name.md" 2> "$OUT/np-$name.err"
  echo "$name: $(grep -o 'tg128[ x0-9]*: [0-9.]* +- [0-9.]*' "$OUT/np-$name.err" | tr '\n' ' ')"
done | tee "$OUT/np-summary.txt"
gpu_tests "${FILTER:-Gemm.*:GemvBatch.*:Batch.*}" "${TEST_LIMIT:-120}"
pack_out
