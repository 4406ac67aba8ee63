#!/usr/bin/env bash
# Decode with folded preparations (GemvOp::Fold) against without (PQVK_GEMV_FOLD=0), long-context
# decode (f16 / pq8 / pq4 KV), then the GPU tests of what changed, validation on.
# Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
mkdir -p /work && ln -sfn "$PWD" /work/main  # the tests' data paths, compiled in
for fold in 1 0; do
  PQVK_GEMV_FOLD=$fold timeout 150 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -r 3 \
    --json "$OUT/tg-fold$fold.json" > "$OUT/tg-fold$fold.md" 2> "$OUT/tg-fold$fold.err"
  echo "fold=$fold: $(grep -o 'q[45] tg128: [0-9.]* +- [0-9.]*' "$OUT/tg-fold$fold.err" | tr '\n' ' ') $(grep -m1 -o '[0-9]* dispatches' "$OUT/tg-fold$fold.md")"
done | tee "$OUT/tg-summary.txt"
for spec in ${RUNS:-f16:16384,32768 pq4:16384,32768 pq8:16384}; do
  kv=${spec%%:*}; d=${spec#*:}
  timeout "${RUN_LIMIT:-120}" $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -d "$d" -r 3 --kv-type "$kv" \
    --json "$OUT/kv-$kv.json" > "$OUT/kv-$kv.md" 2> "$OUT/kv-$kv.err"
  echo "kv $kv rc=$?: $(grep -o 'tg128 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/kv-$kv.err" | tr '\n' ' ')"
done | tee "$OUT/kv-summary.txt"
PQVK_VALIDATION=1 timeout "${TEST_LIMIT:-150}" $B/pqvk_tests --gtest_filter="${FILTER:-Gemv.Fold*:Attention.SplitDecode*:Recipes/DecoderQuant.BundledModelEveryPositionOf200/1:Decoder.Greedy*:Decoder.Prefill*}" > "$OUT/gpu-tests.txt" 2>&1
echo "tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on" "$OUT/gpu-tests.txt" | head -20
tar -C "$OUT" -cJf /tmp/r.tar.xz . && rm -rf "${OUT:?}"/* && mv /tmp/r.tar.xz "$OUT/"
