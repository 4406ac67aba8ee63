#!/usr/bin/env bash
# The portable prefill attention (attention_tiled.comp, PQVK_ATTENTION_COOPMAT=0) with each
# invocation's tile loads issued before its shared stores: the attention GPU tests, then pp512 /
# pp2048 of synthetic llama3-8b q4 (prefill breakdown: the attention's time) with the binary
# before ($OLD/vk-bench) and after ($B/vk-bench). Carry .gl, .dev (vk-bench, pqvk_tests,
# lib.tar.xz) and $OLD (default .devf: vk-bench).
set -uo pipefail
source tools/device/setup.sh
OLD=${OLD:-.devf}
gpu_tests "Attention.RopeCacheAndCausalAttentionMatchCpu:Attention.PerRowSlotsAndPositionsMatchCpu" 60
export PQVK_ATTENTION_COOPMAT=0
for v in old new; do
  bin=$B/vk-bench
  [ $v = old ] && bin=$OLD/vk-bench
  timeout 100 $bin --synthetic llama3-8b --bits 4 -p 512,2048 -n 0 -r 3 > "$OUT/pp-tiled-$v.md" 2> "$OUT/pp-tiled-$v.err"
  echo "tiled $v rc=$?: $(grep -o 'q[45] pp[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/pp-tiled-$v.err" | tr '\n' ' ') $(grep -E '^\| attention ' "$OUT/pp-tiled-$v.md" | tr -s ' ')"
done | tee "$OUT/tiled-summary.txt"
pack_out
