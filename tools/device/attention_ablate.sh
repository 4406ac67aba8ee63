#!/usr/bin/env bash
# Where the tensor-core prefill attention's time goes: pp512 of synthetic llama3-8b q4 (prefill
# breakdown: the attention's time) and the untimed prefill of a 16384-token pq4 context (whole
# run timed) with parts of attention_coopmat.comp left out (PQVK_ATTENTION_ABLATE: 1 key / value
# loads, 2 products, 4 softmax; wrong results) and with 16 keys a tile; the attention GPU tests
# first. Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
gpu_tests "${FILTER:-Attention.RopeCacheAndCausalAttentionMatchCpu:Attention.PolarQuantCacheOnTensorCores}" 60
for v in ${VARIANTS:-0 1 2 4 6 7 bk16}; do
  (
    export PQVK_ATTENTION_ABLATE=${v/bk16/0}
    [ $v = bk16 ] && export PQVK_ATTENTION_BK=16
    timeout 60 $B/vk-bench --synthetic llama3-8b --bits 4 -p 512 -n 0 -r 3 > "$OUT/pp-$v.md" 2> "$OUT/pp-$v.err"
    echo "ablate $v pp rc=$?: $(grep -o 'pp512: [0-9.]* +- [0-9.]*' "$OUT/pp-$v.err") $(grep -E '^\| attention ' "$OUT/pp-$v.md" | tr -s ' ')"
    timed_bench d16384-$v 60 --synthetic llama3-8b --bits 5 -p 0 -n 1 -d 16384 -b 4096 -r 1 --kv-type pq4 --no-breakdown
  )
done | tee "$OUT/ablate-summary.txt"
pack_out
