#!/usr/bin/env bash
# Decode after very long PolarQuant (pq4) contexts on synthetic llama3-8b q5: the untimed prefill
# of the depth in passes of UB tokens (vk-bench -b; more tokens a pass give the prefill attention
# more workgroups), first at d32768 with -b 512 and -b $UB (whole runs timed), then at
# -d $LONG (default 131072, Llama 3.1's maximum) with -b $UB, within $LT seconds.
# Carry .gl and .dev (vk-bench).
set -uo pipefail
source tools/device/setup.sh
UB=${UB:-4096}
args=(--synthetic llama3-8b --bits 5 -p 0 -n 32 -r 1 --kv-type pq4 --no-breakdown)
{
  timed_bench d32768-b512 120 "${args[@]}" -d 32768 -b 512
  timed_bench d32768-b$UB 120 "${args[@]}" -d 32768 -b "$UB"
  timed_bench d${LONG:-131072}-b$UB "${LT:-420}" "${args[@]}" -d "${LONG:-131072}" -b "$UB"
} | tee "$OUT/long-summary.txt"
pack_out
