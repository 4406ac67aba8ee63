#!/usr/bin/env bash
# Keys per tile of the tensor-core prefill attention by pass size (16 from 2048 queries a pass,
# else 32): the attention and prefill GPU tests (also with 16 keys a tile forced), pp512 / pp2048
# of synthetic llama3-8b q4 / q5 with the default and with 32 keys forced, then the untimed prefill
# of a ${LONG:-131040}-token pq4 context in passes of 4096 and 32 tokens generated after it (the
# whole of Llama 3.1's 131072 positions), whole run timed, within what is left of $LIMIT seconds.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
t0=$(date +%s)
gpu_tests "Attention.*:Decoder.PrefillEqualsTokenByToken:Decoder.PolarQuantKvCacheMatchesCpuEveryPosition" 120
mv "$OUT/gpu-tests.txt" "$OUT/gpu-tests-default.txt"
PQVK_ATTENTION_BK=16 gpu_tests "Attention.RopeCacheAndCausalAttentionMatchCpu:Attention.PolarQuantCacheOnTensorCores:Decoder.PrefillEqualsTokenByToken" 60
mv "$OUT/gpu-tests.txt" "$OUT/gpu-tests-bk16.txt"
for v in auto 32; do
  (
    [ $v = 32 ] && export PQVK_ATTENTION_BK=32
    timeout 60 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512,2048 -n 0 -r 3 --no-breakdown > "$OUT/pp-$v.md" 2> "$OUT/pp-$v.err"
    echo "bk $v pp rc=$?: $(grep -o 'q[45] pp[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/pp-$v.err" | tr '\n' ' ')"
  )
done | tee "$OUT/pp-summary.txt"
left=$(( ${LIMIT:-570} - ($(date +%s) - t0) ))
timed_bench d${LONG:-131040}-b4096 "$left" --synthetic llama3-8b --bits 5 -p 0 -n 32 -d "${LONG:-131040}" -b 4096 -r 1 --kv-type pq4 --no-breakdown | tee "$OUT/long-summary.txt"
pack_out
