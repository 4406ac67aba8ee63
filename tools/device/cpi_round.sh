#!/usr/bin/env bash
# (Round of the fifth session: the switch it measures was removed afterwards, numbers in bench/RESULTS.md.)
# Chunks in flight per GEMV invocation (KernelConfig::gemv_cpi, PQVK_GEMV_CPI): the GEMV at the
# decode shapes of Llama-3-8B under several workgroup shapes and counts (--check: each against
# its CPU twin), whole-model tg128 per count, then the GPU tests of the GEMV.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
timeout 200 $B/vk-bench kernels --shape 4096x4096,6144x4096,28672x4096,4096x14336,128256x4096 --bits 4,5 -m 1 --no-f16 \
  --check --reps 20 --warmup-ms 200 --gemv-configs ${CONFIGS:-32x2r,32x2r2,32x2r4,32x4r,32x4r4,64x2r2,32x1r4} \
  --json "$OUT/kernels.json" > "$OUT/kernels.md" 2>&1
echo "kernels rc=$? check failures: $(grep -c FAILED "$OUT/kernels.md")"
for run in ${E2E:-32x2:1 32x2:2 32x2:4 32x4:4}; do
  cfg=${run%%:*} cpi=${run#*:}
  PQVK_GEMV=$cfg PQVK_GEMV_CPI=$cpi timeout 120 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -r 3 \
    --json "$OUT/tg-$cfg-$cpi.json" > "$OUT/tg-$cfg-$cpi.md" 2> "$OUT/tg-$cfg-$cpi.err"
  echo "$cfg cpi $cpi: $(grep -o 'q[45] tg128: [0-9.]* +- [0-9.]*' "$OUT/tg-$cfg-$cpi.err" | tr '\n' ' ')"
done | tee "$OUT/tg-summary.txt"
gpu_tests "${FILTER:-Gemv.*}" "${TEST_LIMIT:-120}"
pack_out
