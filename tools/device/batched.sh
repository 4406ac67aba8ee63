#!/usr/bin/env bash
# Continuous batching on the GPU (results for bench/RESULTS.md, not measured yet): llama.cpp's
# batched-bench measure, synthetic Llama-3-8B at Q5, 1, 8 and 32 sequences decoding together
# (targets: aggregate tg at 8 sequences >= 5x one sequence's, at 32 >= 12x). Then the batched GEMV
# alone at those token counts with its CPU-twin check, and the end-to-end run under a few batched
# GEMV shapes (PQVK_GEMV_BATCH=WGxROWSxTOKENS; the default is 64x4x8).
# Carry .gl and .dev (vk-bench). The batching tests on the GPU (GemvBatch.*, Batch.*: bit-for-bit
# invariance with 32-wide shuffles) run in tools/device/gpu_tests.sh.
set -uo pipefail
source tools/device/setup.sh
$B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -np 1,8,32 -r 3 --json "$OUT/batched.json" 2>&1 | tee "$OUT/batched.md"
$B/vk-bench kernels --shape 4096x4096,14336x4096,4096x14336 --bits 5 -m 1,8,32 --batched --no-f16 --check --reps 20 \
  --warmup-ms 300 --json "$OUT/batched-kernels.json" > "$OUT/batched-kernels.md" 2>&1
echo "kernel check failures: $(grep -c FAILED "$OUT/batched-kernels.md")"
grep -E "gemv|gemm" "$OUT/batched-kernels.md"
for cfg in ${BATCH_CONFIGS:-128x8x8 256x8x8 64x8x8 128x4x8 128x16x4 128x4x16 128x8x16 128x2x32 128x4x32}; do
  echo "PQVK_GEMV_BATCH=$cfg: $(PQVK_GEMV_BATCH=$cfg $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 64 -np 8,32 -r 2 \
    --warmup-ms 300 --no-breakdown 2>&1 >/dev/null | grep -o 'tg64 x[0-9]*: [0-9.]*' | tr '\n' ' ')"
done | tee "$OUT/batched-configs.txt"
# The same steps through the tiled GEMM (Kernels::gemm; the tensor-core GEMM once it is there)
# instead of the batched GEMV, at 8 and 32 sequences.
echo "GEMM for decode steps: $($B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 64 -np 8,32 -r 2 --warmup-ms 300 \
  --no-breakdown --batch-gemm-from 2 2>&1 >/dev/null | grep -o 'tg64 x[0-9]*: [0-9.]*' | tr '\n' ' ')" | tee "$OUT/batched-gemm.txt"
