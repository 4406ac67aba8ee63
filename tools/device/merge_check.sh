#!/usr/bin/env bash
# After the merge's loads were made independent again: decode at depth 0 / 4096 and 16384 (f16,
# pq4), and the merge and split-decode tests with validation. Carry .gl and .dev.
set -uo pipefail
source tools/device/setup.sh
gpu_tests "Prepare.*:Attention.SplitDecode*" 60
[ -n "${SKIP_D4096:-}" ] || timeout 120 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -d 0,4096 -r 3 --json "$OUT/d0-d4096.json" > "$OUT/d0-d4096.md" 2> "$OUT/d0-d4096.err"
grep -o 'q[45] tg128[ @d0-9]*: [0-9.]* +- [0-9.]*' "$OUT/d0-d4096.err"
kv_depth_runs "${RUNS:-f16:16384 pq4:16384}" 100
pack_out
