#!/usr/bin/env bash
# The GPU tests of what changed this session (validation on), then decode after long prompts;
# the side by side with llama.cpp runs in its own call (final.sh: the carried tree's size).
# Carry .gl and .dev.
set -uo pipefail
source tools/device/setup.sh
mkdir -p /work && ln -sfn "$PWD" /work/main
PQVK_VALIDATION=1 timeout 110 $B/pqvk_tests --gtest_filter="${FILTER:-Attention.PolarQuant*:Decoder.PolarQuant*:Gemv.Fold*:Attention.SplitDecode*:Recipes/DecoderQuant.BundledModelEveryPositionOf200/1:Decoder.PrefillEqualsTokenByToken}" > "$OUT/gpu-tests.txt" 2>&1
echo "tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on" "$OUT/gpu-tests.txt" | head -20
for spec in ${RUNS:-pq8:16384}; do
  kv=${spec%%:*}; d=${spec#*:}
  timeout "${RUN_LIMIT:-80}" $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -d "$d" -r 3 --kv-type "$kv" \
    --json "$OUT/kv-$kv.json" > "$OUT/kv-$kv.md" 2> "$OUT/kv-$kv.err"
  echo "kv $kv rc=$?: $(grep -o 'tg128 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/kv-$kv.err" | tr '\n' ' ')"
done | tee "$OUT/kv-summary.txt"
tar -C "$OUT" -cJf /tmp/r.tar.xz . && rm -rf "${OUT:?}"/* && mv /tmp/r.tar.xz "$OUT/"
