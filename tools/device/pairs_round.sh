#!/usr/bin/env bash
# Two codes per lookup (pq_gemv_pairs.comp) against one (pq_gemv.comp's unmasked shuffle): the
# decode GEMV at the Llama-3-8B layer shapes and the LM head (--check against the CPU twin) under
# several workgroup shapes and grid caps, decode tg128 at q3 / q4 / q5 with the pair lookups
# under a few shapes (PQVK_GEMV_PAIRS) and without (0), then the GEMV and decoder GPU tests.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
timeout ${KT:-200} $B/vk-bench kernels --shape 6144x4096,4096x4096,28672x4096,4096x14336,128256x4096 --bits ${KBITS:-3,4,5} -m 1 \
  --no-f16 --check --reps 20 --warmup-ms 200 --gemv-configs "${CONFIGS:-32x2r,128x8p,128x16p,256x16p,256x32p,128x8x528p,128x16x528p,256x16x264p,256x32x264p}" \
  --json "$OUT/kernels.json" > "$OUT/kernels.md" 2>&1
echo "kernels rc=$? check failures: $(grep -c FAILED "$OUT/kernels.md")"
# The sum over the four layer shapes (one layer's GEMVs, gate|up and down counted once) per config and width.
python3 - "$OUT/kernels.json" <<'PY' | tee "$OUT/layer-sums.txt"
import json, sys, collections
tot = collections.defaultdict(float); head = {}
for r in json.load(open(sys.argv[1]))["results"]:
    if r["kernel"] != "gemv": continue
    if r["shape"] == "128256x4096": head[r["format"]] = r["time_us"]
    else: tot[r["format"]] += r["time_us"]
for f in sorted(tot): print(f"{f}: layer {tot[f]:.1f} us, lm head {head.get(f, 0):.1f} us")
PY
for cfg in ${E2E:-0 128x8 128x16x528 256x16x264}; do
  PQVK_GEMV_PAIRS=$cfg timeout 100 $B/vk-bench --synthetic llama3-8b --bits 3,4,5 -p 0 -n 128 -r 3 --warmup-ms 300 \
    --json "$OUT/tg-$cfg.json" > "$OUT/tg-$cfg.md" 2> "$OUT/tg-$cfg.err"
  echo "pairs $cfg: $(grep -o 'q[345] tg128: [0-9.]* +- [0-9.]*' "$OUT/tg-$cfg.err" | tr '\n' ' ')"
done | tee "$OUT/tg-summary.txt"
PQVK_GEMV_PAIRS=${TESTCFG:-128x16x528} gpu_tests "${FILTER:-Gemv.*:Decoder.*:Attention.DirectDecodeMatchesCpu}" "${TEST_LIMIT:-120}"
pack_out
