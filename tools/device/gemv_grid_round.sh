#!/usr/bin/env bash
# The decode GEMV (single lookups, unmasked shuffle) with its grid capped: at most GROUPS
# workgroups, each looping over row groups (PQVK_GEMV=WGxROWSxGROUPS), against one workgroup per
# row group; kernels at the Llama-3-8B layer shapes and the LM head (--check), decode tg128 under
# a few caps, then the GEMV and decoder GPU tests under one of them.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
timeout ${KT:-150} $B/vk-bench kernels --shape 6144x4096,4096x4096,28672x4096,4096x14336,128256x4096 --bits ${KBITS:-4,5} -m 1 \
  --no-f16 --check --reps 20 --warmup-ms 200 --gemv-configs "${CONFIGS:-32x2r,32x2x4224r,32x2x2112r,32x2x8448r,32x1x4224r,32x4x2112r,64x2x2112r}" \
  --json "$OUT/kernels.json" > "$OUT/kernels.md" 2>&1
echo "kernels rc=$? check failures: $(grep -c FAILED "$OUT/kernels.md")"
python3 - "$OUT/kernels.json" <<'PY' | tee "$OUT/layer-sums.txt"
import json, sys, collections
tot = collections.defaultdict(float); head = {}
for r in json.load(open(sys.argv[1]))["results"]:
    if r["kernel"] != "gemv": continue
    if r["shape"] == "128256x4096": head[r["format"]] = r["time_us"]
    else: tot[r["format"]] += r["time_us"]
for f in sorted(tot): print(f"{f}: layer {tot[f]:.1f} us, lm head {head.get(f, 0):.1f} us")
PY
for cfg in ${E2E:-32x2 32x2x4224 32x2x2112}; do
  PQVK_GEMV=$cfg timeout 90 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -r 3 --warmup-ms 300 \
    --json "$OUT/tg-$cfg.json" > "$OUT/tg-$cfg.md" 2> "$OUT/tg-$cfg.err"
  echo "gemv $cfg: $(grep -o 'q[345] tg128: [0-9.]* +- [0-9.]*' "$OUT/tg-$cfg.err" | tr '\n' ' ')"
done | tee "$OUT/tg-summary.txt"
PQVK_GEMV=${TESTCFG:-32x2x4224} gpu_tests "${FILTER:-Gemv.*:Decoder.Greedy100TokensIdenticalOnGpuAndCpu:Decoder.PrefillEqualsTokenByToken}" "${TEST_LIMIT:-100}"
pack_out
