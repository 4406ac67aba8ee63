#!/usr/bin/env bash
# The tensor-core prefill attention with each invocation's tile loads issued before its shared
# stores: pp512 / pp2048 of synthetic llama3-8b q4 / q5 (prefill breakdown: the attention's
# share), the untimed prefill of a 32768-token pq4 context in passes of 4096 (whole run timed),
# then the attention and prefill GPU tests. Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
timeout 100 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512,2048 -n 0 -r 3 --json "$OUT/pp.json" > "$OUT/pp.md" 2> "$OUT/pp.err"
echo "pp rc=$?: $(grep -o 'q[45] pp[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/pp.err" | tr '\n' ' ')"
grep -E "^\| attention " "$OUT/pp.md"
timed_bench d32768-b4096 100 --synthetic llama3-8b --bits 5 -p 0 -n 32 -d 32768 -b 4096 -r 1 --kv-type pq4 --no-breakdown
gpu_tests "${FILTER:-Attention.*:Decoder.PrefillEqualsTokenByToken:Decoder.PolarQuantKvCacheMatchesCpuEveryPosition}" "${TEST_LIMIT:-90}"
pack_out
