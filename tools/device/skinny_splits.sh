#!/usr/bin/env bash
# The skinny tensor-core GEMM's split-K target (PQVK_GEMM_SKINNY_SPLIT: workgroups of 128 rows):
# the kernels at M = 8 and 32 for each target of $TARGETS (--check against the CPU twins), then
# aggregate decode of 1, 8, 32 sequences at each target of $NP_TARGETS beside one sequence's tg128.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
for t in ${TARGETS:-256 1024 4096}; do
  PQVK_GEMM_SKINNY_SPLIT=$t timeout 100 $B/vk-bench kernels --shape 4096x4096,6144x4096,28672x4096,4096x14336 --bits 5 -m 8,32 \
    --no-f16 --check --batched --reps 10 --warmup-ms 200 > "$OUT/kernels-$t.md" 2>&1
  echo "target $t rc=$? check failures: $(grep -c FAILED "$OUT/kernels-$t.md")"
  grep skinny "$OUT/kernels-$t.md" | cut -d'|' -f3-7
done
timeout 60 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -r 3 > "$OUT/tg-single.md" 2> "$OUT/tg-single.err"
echo "single: $(grep -o 'tg128[ x0-9]*: [0-9.]* +- [0-9.]*' "$OUT/tg-single.err" | tr '\n' ' ')"
for t in ${NP_TARGETS:-1024}; do
  PQVK_GEMM_SKINNY_SPLIT=$t timeout 200 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -np 1,8,32 -r 3 \
    --json "$OUT/np-$t.json" > "$OUT/np-$t.md" 2> "$OUT/np-$t.err"
  echo "np target $t: $(grep -o 'tg128[ x0-9]*: [0-9.]* +- [0-9.]*' "$OUT/np-$t.err" | tr '\n' ' ')"
done
[ -n "${FILTER:-}" ] && gpu_tests "$FILTER" "${TEST_LIMIT:-150}"
pack_out
