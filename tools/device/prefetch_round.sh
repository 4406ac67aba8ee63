#!/usr/bin/env bash
# The decode GEMV with and without PREFETCH (kernels with --check, then whole-model tg128 under a
# few GEMV shapes), long-context decode after the PolarQuant value loop change, GPU tests.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
mkdir -p /work && ln -sfn "$PWD" /work/main
for pf in 0 1; do
  PQVK_GEMV_PREFETCH=$pf timeout 100 $B/vk-bench kernels --shape 14336x4096,4096x14336,6144x4096,128256x4096 --bits 3,4,5 -m 1 \
    --no-f16 --check --reps 20 --warmup-ms 300 > "$OUT/kernels-pf$pf.md" 2>&1
  echo "prefetch=$pf check failures: $(grep -c FAILED "$OUT/kernels-pf$pf.md")"
done
for cfg in ${E2E:-32x2:0 32x2:1 32x4:1}; do
  PQVK_GEMV=${cfg%%:*} PQVK_GEMV_PREFETCH=${cfg#*:} timeout 100 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -r 3 \
    --warmup-ms 500 --no-breakdown 2>&1 >/dev/null | grep -o 'q[45] tg128: [0-9.]* +- [0-9.]*' | tr '\n' ' ' | sed "s/^/$cfg: /"; echo
done | tee "$OUT/tg-configs.txt"
for spec in ${RUNS:-f16:16384 pq4:16384,32768}; do
  kv=${spec%%:*}; d=${spec#*:}
  timeout "${RUN_LIMIT:-150}" $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -d "$d" -r 3 --kv-type "$kv" \
    --json "$OUT/kv-$kv.json" > "$OUT/kv-$kv.md" 2> "$OUT/kv-$kv.err"
  echo "kv $kv rc=$?: $(grep -o 'tg128 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/kv-$kv.err" | tr '\n' ' ')"
done | tee "$OUT/kv-summary.txt"
PQVK_VALIDATION=1 timeout 60 $B/pqvk_tests --gtest_filter="${FILTER:-Gemv.Prefetch*:Gemv.Fold*:Attention.SplitDecode*}" > "$OUT/gpu-tests.txt" 2>&1
echo "tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on" "$OUT/gpu-tests.txt" | head -20
tar -C "$OUT" -cJf /tmp/r.tar.xz . && rm -rf "${OUT:?}"/* && mv /tmp/r.tar.xz "$OUT/"
