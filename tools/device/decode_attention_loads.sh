#!/usr/bin/env bash
# The decode attention's loads (one latency for the RoPE pairs, eight value rows in flight): the
# attention and decoder GPU tests, then pqvk pp512 + tg128 of synthetic llama3-8b q4 / q5 with
# breakdowns (the decode step's and prefill pass's profiles), and the same tg128 with the decode
# attention as it was ($OLD/vk-bench). Carry .gl, .dev (vk-bench, pqvk_tests, lib.tar.xz) and
# $OLD (default .devo). llama.cpp beside it: side_by_side_short.sh, the next call.
set -uo pipefail
source tools/device/setup.sh
OLD=${OLD:-.devo}
gpu_tests "Attention.*:Decoder.PrefillEqualsTokenByToken:Decoder.DirectAttentionBelowTheThresholdMatchesCpu" 100
timeout 90 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512 -n 128 -r 3 --json "$OUT/pqvk.json" > "$OUT/pqvk.md" 2> "$OUT/pqvk.err"
echo "pqvk rc=$?: $(grep -o 'q[45] [pt][pg][0-9]*: [0-9.]* +- [0-9.]*' "$OUT/pqvk.err" | tr '\n' ' ')"
timeout 60 $OLD/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -r 3 > "$OUT/tg-old-attention.md" 2> "$OUT/tg-old-attention.err"
echo "old decode attention rc=$?: $(grep -o 'q[45] tg[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/tg-old-attention.err" | tr '\n' ' ')"
grep -E "^\| attention \(|decode step" "$OUT/pqvk.md" "$OUT/tg-old-attention.md"
pack_out
