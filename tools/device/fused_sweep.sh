#!/usr/bin/env bash
# One device-tool call: the decode GEMV's shapes at LLM sizes (with --check), then whole-model
# decode of synthetic Llama-3-8B under several GEMV workgroup shapes, then the best one in full.
set -uo pipefail
source tools/device/setup.sh
# The GPU paths lavapipe cannot run (32-wide subgroups, unmasked shuffles, the decode GEMV's own
# prologue) against their CPU twins: the kernel and decoder tests on this device.
mkdir -p /work && ln -sfn "$PWD" /work/main
timeout 300 $B/pqvk_tests --gtest_filter='Gemv.*:Attention.*:Prepare.*:*Decoder*:Fwht.*' > "$OUT/tests.txt" 2>&1
tail -3 "$OUT/tests.txt"; grep -E "FAILED|rror" "$OUT/tests.txt" | head -20
CONFIGS=${CONFIGS:-32x2r,32x4r,64x4r,64x8r,128x8r,128x16r}
$B/vk-bench kernels --shape 14336x4096,4096x14336,128256x4096 --bits 3,4,5 -m 1 --no-f16 --check --reps 20 \
  --warmup-ms 300 --gemv-configs "$CONFIGS" --json "$OUT/gemv-sweep.json" > "$OUT/gemv-sweep.md" 2>&1
grep -c FAILED "$OUT/gemv-sweep.md"
for cfg in ${E2E_CONFIGS:-32x4 64x4 64x8 128x8 128x16}; do
  PQVK_GEMV=$cfg $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -r 3 --warmup-ms 500 --no-breakdown \
    --json "$OUT/tg-$cfg.json" > /dev/null 2> "$OUT/tg-$cfg.log"
  echo "$cfg: $(grep -o 'q[45] tg128: [0-9.]*' "$OUT/tg-$cfg.log" | tr '\n' ' ')"
done | tee "$OUT/tg-configs.txt"
BEST=$(awk '{print $NF, $1}' "$OUT/tg-configs.txt" | sort -n -r | head -1 | cut -d' ' -f2 | tr -d ':')  # by q5 tg128
echo "best: $BEST"
PQVK_GEMV=$BEST $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512 -n 128 -r 3 --json "$OUT/e2e.json" > "$OUT/e2e.md" 2>&1
grep -A30 "q4, decode step" "$OUT/e2e.md" | head -24
PQVK_GEMV=$BEST $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -d 4096 -r 3 --no-breakdown --json "$OUT/e2e-d4096.json" 2>&1 | grep "t/s" | tail -3
