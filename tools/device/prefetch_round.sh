#!/usr/bin/env bash
# The decode GEMV with and without PREFETCH (kernels with --check, then whole-model tg128 under a
# few GEMV shapes), long-context decode after the PolarQuant value loop change, GPU tests.
# (Prefetch was removed after this round: PQVK_GEMV_PREFETCH no longer exists.)
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
for pf in 0 1; do
  PQVK_GEMV_PREFETCH=$pf timeout 100 $B/vk-bench kernels --shape 14336x4096,4096x14336,6144x4096,128256x4096 --bits 3,4,5 -m 1 \
    --no-f16 --check --reps 20 --warmup-ms 300 > "$OUT/kernels-pf$pf.md" 2>&1
  echo "prefetch=$pf check failures: $(grep -c FAILED "$OUT/kernels-pf$pf.md")"
done
for cfg in ${E2E:-32x2:0 32x2:1 32x4:1}; do
  PQVK_GEMV=${cfg%%:*} PQVK_GEMV_PREFETCH=${cfg#*:} timeout 100 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -r 3 \
    --warmup-ms 500 --no-breakdown 2>&1 >/dev/null | grep -o 'q[45] tg128: [0-9.]* +- [0-9.]*' | tr '\n' ' ' | sed "s/^/$cfg: /"; echo
done | tee "$OUT/tg-configs.txt"
kv_depth_runs "${RUNS:-f16:16384 pq4:16384,32768}" "${RUN_LIMIT:-150}"
gpu_tests "${FILTER:-Gemv.Fold*:Attention.SplitDecode*}" 60
pack_out
