#!/usr/bin/env bash
# Where the skinny tensor-core GEMM's time goes (PQVK_GEMM_ABLATE, shader constant ABLATE,
# benchmarks only: 1 no lookups, 2 no fragment loads or products, 4 no code loads after the first
# group's; the 128-row-tile GEMM's own ablations run beside it under the same variable): the
# layer shapes at M = 8, q5. Ablation 0 checked against the CPU twins. Then the batching runs.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
for a in ${ABLATIONS:-0 1 2 4 3 7}; do
  check=; [ "$a" = 0 ] && check=--check
  PQVK_GEMM_ABLATE=$a timeout 100 $B/vk-bench kernels --shape 28672x4096,4096x14336 --bits 5 -m 8 \
    --no-f16 $check --batched --reps 10 --warmup-ms 200 > "$OUT/ablate-$a.md" 2>&1
  echo "ablate $a rc=$? check failures: $(grep -c FAILED "$OUT/ablate-$a.md")"
  grep -E "skinny|split-K" "$OUT/ablate-$a.md" | cut -d'|' -f3-7
done
timeout 60 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -r 3 > "$OUT/tg-single.md" 2> "$OUT/tg-single.err"
echo "single: $(grep -o 'tg128[ x0-9]*: [0-9.]* +- [0-9.]*' "$OUT/tg-single.err" | tr '\n' ' ')"
if [ -n "${NP:-}" ]; then
  timeout 200 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -np "$NP" -r 3 > "$OUT/np.md" 2> "$OUT/np.err"
  echo "np: $(grep -o 'tg128[ x0-9]*: [0-9.]* +- [0-9.]*' "$OUT/np.err" | tr '\n' ' ')"
fi
[ -n "${FILTER:-}" ] && gpu_tests "$FILTER" "${TEST_LIMIT:-150}"
pack_out
