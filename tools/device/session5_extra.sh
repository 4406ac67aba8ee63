#!/usr/bin/env bash
# After final.sh in the same call: where the direct decode attention stops paying (tg32 at depths
# 256 and 512 with the direct path forced on and off), then decode after a 65536-token prompt
# with a pq4 cache (issue 13). Carry .glf and .devf (vk-bench).
set -uo pipefail
source tools/device/setup.sh
for max in 0 100000; do
  PQVK_DECODE_DIRECT_MAX=$max timeout 90 $B/vk-bench --synthetic llama3-8b --bits 4 -p 0 -n 32 -d 128,256,512 -r 3 --no-breakdown \
    > "$OUT/crossover-$max.md" 2> "$OUT/crossover-$max.err"
  echo "direct max $max: $(grep -o 'tg32 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/crossover-$max.err" | tr '\n' ' ')"
done | tee "$OUT/crossover.txt"
timeout ${LONG_LIMIT:-200} $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 32 -d 65536 -r 1 --kv-type pq4 --no-breakdown \
  > "$OUT/pq4-d65536.md" 2> "$OUT/pq4-d65536.err"
echo "pq4 d65536 rc=$?: $(grep -o 'tg32 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/pq4-d65536.err")" | tee "$OUT/long.txt"
