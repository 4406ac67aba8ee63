#!/usr/bin/env bash
# After the merge's loads were made independent again: decode at depth 0 / 4096 and 16384 (f16,
# pq4), and the merge and split-decode tests with validation. Carry .gl and .dev.
set -uo pipefail
source tools/device/setup.sh
mkdir -p /work && ln -sfn "$PWD" /work/main
PQVK_VALIDATION=1 timeout 60 $B/pqvk_tests --gtest_filter='Prepare.*:Attention.SplitDecode*' > "$OUT/gpu-tests.txt" 2>&1
echo "tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on" "$OUT/gpu-tests.txt" | head
[ -n "${SKIP_D4096:-}" ] || timeout 120 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -d 0,4096 -r 3 --json "$OUT/d0-d4096.json" > "$OUT/d0-d4096.md" 2> "$OUT/d0-d4096.err"
grep -o 'q[45] tg128[ @d0-9]*: [0-9.]* +- [0-9.]*' "$OUT/d0-d4096.err"
for kv in ${KV_TYPES:-f16 pq4}; do
  timeout 100 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -d 16384 -r 3 --kv-type $kv --json "$OUT/kv-$kv.json" > "$OUT/kv-$kv.md" 2> "$OUT/kv-$kv.err"
  echo "kv $kv: $(grep -o 'tg128 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/kv-$kv.err")"
done
tar -C "$OUT" -cJf /tmp/r.tar.xz . && rm -rf "${OUT:?}"/* && mv /tmp/r.tar.xz "$OUT/"
