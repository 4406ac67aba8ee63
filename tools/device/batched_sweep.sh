#!/usr/bin/env bash
# One short device-tool call (issue 11): continuous batching's aggregate decode at 8 and 32
# sequences (synthetic Llama-3-8B q5) under batched-GEMV shapes PQVK_GEMV_BATCH=WGxROWSxTOKENS.
# Carry .glf and .devf (vk-bench).
set -uo pipefail
source tools/device/setup.sh
for cfg in ${BATCH_CONFIGS:-128x8x8 128x16x8 128x16x4 64x16x8 128x32x4 256x16x8 128x8x16 64x8x8 128x32x2}; do
  echo "PQVK_GEMV_BATCH=$cfg: $(PQVK_GEMV_BATCH=$cfg timeout 60 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 32 -np 8,32 -r 1 \
    --warmup-ms 200 --no-breakdown 2>&1 >/dev/null | grep -o 'tg32 x[0-9]*: [0-9.]*' | tr '\n' ' ')"
done | tee "$OUT/batched-configs.txt"
