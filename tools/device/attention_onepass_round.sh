#!/usr/bin/env bash
# The tensor-core prefill attention in one pass (online softmax, rescaled only when a row's
# maximum jumps) with each PolarQuant record word read once: the attention and prefill GPU tests,
# pp512 / pp2048 of synthetic llama3-8b q4 / q5 with the binaries before ($OLD/vk-bench) and
# after ($B/vk-bench) in the same call (prefill breakdowns: the attention's share), the 32768-token
# pq4 context in passes of 4096 (whole run timed), then -d ${LONG:-131072} within $LT seconds.
# Carry .gl, .dev (vk-bench, pqvk_tests, lib.tar.xz) and $OLD (default .devf: vk-bench).
set -uo pipefail
source tools/device/setup.sh
OLD=${OLD:-.devf}
gpu_tests "${FILTER:-Attention.*:Decoder.PrefillEqualsTokenByToken:Decoder.PolarQuantKvCacheMatchesCpuEveryPosition}" "${TEST_LIMIT:-90}"
for v in old new; do
  bin=$B/vk-bench
  [ $v = old ] && bin=$OLD/vk-bench
  timeout 100 $bin --synthetic llama3-8b --bits 4,5 -p 512,2048 -n 0 -r 3 --json "$OUT/pp-$v.json" > "$OUT/pp-$v.md" 2> "$OUT/pp-$v.err"
  echo "pp $v rc=$?: $(grep -o 'q[45] pp[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/pp-$v.err" | tr '\n' ' ')"
  grep -E "^\| attention " "$OUT/pp-$v.md"
done | tee "$OUT/pp-summary.txt"
args=(--synthetic llama3-8b --bits 5 -p 0 -n 32 -r 1 --kv-type pq4 --no-breakdown)
{
  timed_bench d32768-b4096 100 "${args[@]}" -d 32768 -b 4096
  timed_bench d${LONG:-131072}-b4096 "${LT:-330}" "${args[@]}" -d "${LONG:-131072}" -b 4096
} | tee "$OUT/long-summary.txt"
pack_out
