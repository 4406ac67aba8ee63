#!/usr/bin/env bash
# One device-tool call: GEMV variants at the LLM shapes, then whole-model decode with the best
# one (bench/RESULTS.md records what came back). Usage (device tool, carry .gl and .dev):
#   bash tools/device/decode_sweep.sh
set -uo pipefail
source tools/device/setup.sh
$B/pq-info > "$OUT/pq-info.txt" 2>&1; head -30 "$OUT/pq-info.txt"
CONFIGS=${CONFIGS:-32x4h,32x4r,64x2h,64x2r,64x4r,128x2r,128x4r,128x8r,32x8r,32x2r,64x2d,32x4d}
$B/vk-bench kernels --shape ${SHAPES:-14336x4096,4096x14336,4096x4096,1024x4096,128256x4096} --bits 3,4,5,6 -m 1 --no-f16 \
  --check --reps 20 --warmup-ms 300 --gemv-configs "$CONFIGS" --json "$OUT/gemv-sweep.json" > "$OUT/gemv-sweep.md" 2>&1
tail -3 "$OUT/gemv-sweep.md"
# Best configuration by total time over the big shapes at q4 and q5.
BEST=$(python3 - "$OUT/gemv-sweep.json" <<'PY'
import json, sys, collections
j = json.load(open(sys.argv[1])); t = collections.defaultdict(float)
for r in j["results"]:
    if r["kernel"] == "gemv" and "[" in r["format"] and r["format"].split()[0] in ("q4", "q5") and not r["format"].endswith("d]"):
        t[r["format"].split("[")[1].rstrip("]")] += r["time_us"]
best = min(t, key=t.get); print(best)
for k, v in sorted(t.items(), key=lambda kv: kv[1]): print(k, round(v, 1), file=sys.stderr)
PY
)
echo "best GEMV configuration: $BEST"
export PQVK_GEMV=${BEST%?}
case "${BEST: -1}" in h) export PQVK_GEMV_LOOKUP=shuffle;; r) export PQVK_GEMV_LOOKUP=unmasked;; *) export PQVK_GEMV_LOOKUP=table;; esac
$B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512 -n 128 -r 3 --json "$OUT/e2e.json" > "$OUT/e2e.md" 2>&1
cat "$OUT/e2e.md" | head -80
$B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -d 4096 -r 3 --no-breakdown --json "$OUT/e2e-d4096.json" > "$OUT/e2e-d4096.md" 2>&1
cat "$OUT/e2e-d4096.md" | head -20
