#!/usr/bin/env bash
# Direct decode attention below PQVK_DECODE_DIRECT_MAX positions against the split attention +
# merge, where the two cross over (-d 1024 with the threshold above and below), the GEMV
# ablations (PQVK_GEMV_ABLATE: what the input and code loads cost), continuous batching on the
# default path, then the GPU tests of what changed. Carry .gl and .dev (vk-bench, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
for run in ${RUNS:-split:0 direct:512 direct4096:4096}; do
  name=${run%%:*} max=${run#*:}
  PQVK_DECODE_DIRECT_MAX=$max timeout 150 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -d 0,1024 -r 3 \
    --json "$OUT/tg-$name.json" > "$OUT/tg-$name.md" 2> "$OUT/tg-$name.err"
  echo "$name: $(grep -o 'q[45] tg128[ @d0-9]*: [0-9.]* +- [0-9.]*' "$OUT/tg-$name.err" | tr '\n' ' ') $(grep -m1 -o '[0-9]* dispatches' "$OUT/tg-$name.md")"
done | tee "$OUT/tg-summary.txt"
for ab in 0 1 2 3; do
  PQVK_GEMV_ABLATE=$ab timeout 60 $B/vk-bench kernels --shape 4096x4096,14336x4096,4096x14336,128256x4096 --bits 4 -m 1 --no-f16 \
    --reps 20 --warmup-ms 200 > "$OUT/ablate-$ab.md" 2>&1
  echo "ablate $ab: $(grep '| gemv' "$OUT/ablate-$ab.md" | awk -F'|' '{printf "%s %s us; ", $4, $6}')"
done | tee "$OUT/ablate-summary.txt"
timeout 120 $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -np 1,8,32 -r 3 --json "$OUT/np.json" > "$OUT/np.md" 2> "$OUT/np.err"
echo "np default: $(grep -o 'tg128[ x0-9]*: [0-9.]* +- [0-9.]*' "$OUT/np.err" | tr '\n' ' ')" | tee "$OUT/np-summary.txt"
gpu_tests "${FILTER:-Attention.DirectDecodeMatchesCpu:Attention.PolarQuantCacheMatchesCpu:Decoder.DirectAttention*:Gemm.SplitKMatchesCpu:Gemm.TokenRow*:Batch.*:GemvBatch.*:Recipes/DecoderQuant.BundledModelEveryPositionOf200/1:Decoder.Greedy*:Decoder.Prefill*}" "${TEST_LIMIT:-200}"
pack_out
