#!/usr/bin/env bash
# Decode with folded preparations (GemvOp::Fold) against without (PQVK_GEMV_FOLD=0), long-context
# decode (f16 / pq8 / pq4 KV), then the GPU tests of what changed, validation on.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
for fold in 1 0; do
  PQVK_GEMV_FOLD=$fold timeout 150 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -r 3 \
    --json "$OUT/tg-fold$fold.json" > "$OUT/tg-fold$fold.md" 2> "$OUT/tg-fold$fold.err"
  echo "fold=$fold: $(grep -o 'q[45] tg128: [0-9.]* +- [0-9.]*' "$OUT/tg-fold$fold.err" | tr '\n' ' ') $(grep -m1 -o '[0-9]* dispatches' "$OUT/tg-fold$fold.md")"
done | tee "$OUT/tg-summary.txt"
kv_depth_runs "${RUNS:-f16:16384,32768 pq4:16384,32768 pq8:16384}" "${RUN_LIMIT:-120}"
gpu_tests "${FILTER:-Gemv.Fold*:Attention.SplitDecode*:Recipes/DecoderQuant.BundledModelEveryPositionOf200/1:Decoder.Greedy*:Decoder.Prefill*}" "${TEST_LIMIT:-150}"
pack_out
