#!/usr/bin/env bash
# Decode after very long PolarQuant (pq4) contexts on synthetic llama3-8b q5: the untimed prefill
# of the depth in passes of UB tokens (vk-bench -b; more tokens a pass give the prefill attention
# more workgroups), first at d32768 with -b 512 and -b $UB (whole runs timed), then at
# -d $LONG (default 131072, Llama 3.1's maximum) with -b $UB, within $LT seconds.
# Carry .gl and .dev (vk-bench).
set -uo pipefail
source tools/device/setup.sh
UB=${UB:-4096}
run() {  # name depth ubatch limit
  local s; s=$(date +%s.%N)
  timeout "$4" $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 32 -d "$2" -b "$3" -r 1 --kv-type pq4 --no-breakdown \
    --json "$OUT/$1.json" > "$OUT/$1.md" 2> "$OUT/$1.err"
  local rc=$?
  echo "$1 (-d $2 -b $3) rc=$rc: $(python3 -c "import time; print(round(time.time() - $s, 1))") s whole run; $(grep -o 'tg32 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/$1.err")"
}
{
  run d32768-b512 32768 512 120
  run d32768-b$UB 32768 "$UB" 120
  run d${LONG:-131072}-b$UB "${LONG:-131072}" "$UB" "${LT:-420}"
} | tee "$OUT/long-summary.txt"
pack_out
