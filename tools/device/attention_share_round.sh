#!/usr/bin/env bash
# Tensor-core prefill attention with a KV head's query heads sharing each key and value tile
# (KernelConfig::attention_share) against one head a workgroup (PQVK_ATTENTION_SHARE=0): pp512 /
# pp2048 of synthetic llama3-8b (prefill breakdown included), the untimed prefill of a 16384-token
# PolarQuant (pq4) context timed whole, then the attention and decoder GPU tests.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
for share in 1 0; do
  PQVK_ATTENTION_SHARE=$share timeout 120 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512,2048 -n 0 -r 3 \
    --json "$OUT/pp-share$share.json" > "$OUT/pp-share$share.md" 2> "$OUT/pp-share$share.err"
  echo "share $share: $(grep -o 'q[45] pp[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/pp-share$share.err" | tr '\n' ' ')"
done | tee "$OUT/pp-summary.txt"
for share in 1 0; do
  s=$(date +%s.%N)
  PQVK_ATTENTION_SHARE=$share timeout ${LT:-100} $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 16 -d ${LD:-16384} -r 1 --kv-type pq4 \
    --no-breakdown > "$OUT/long-share$share.md" 2> "$OUT/long-share$share.err"
  rc=$?
  echo "share $share d${LD:-16384} pq4 rc=$rc: $(python3 -c "import time; print(round(time.time() - $s, 1))") s whole run; $(grep -o 'tg16 @ d[0-9]*: [0-9.]*' "$OUT/long-share$share.err")"
done | tee "$OUT/long-summary.txt"
gpu_tests "${FILTER:-Attention.*:Decoder.PrefillEqualsTokenByToken:Decoder.PolarQuantKvCacheMatchesCpuEveryPosition:Decoder.Greedy100TokensIdenticalOnGpuAndCpu}" "${TEST_LIMIT:-120}"
pack_out
