#!/bin/bash
# Issue 9: decode GEMVs without a barrier between a GEMV and the one reading the input its fold
# prepared (KernelConfig::gemv_overlap, PQVK_GEMV_OVERLAP), and the next GEMVs' codes read into
# the L2 cache beside the decode attention (PQVK_PREFETCH_MB). GPU tests (the defaults), then
# tg128 of synthetic llama3-8b q4 / q5 for each OVERLAP:PREFETCH_MB of $CONFIGS, twice, in turn.
# Usage (device tool): GL=.gl B=.dev [CONFIGS="1:0 0:0 0:16"] bash tools/device/overlap_round.sh
source tools/device/setup.sh
gpu_tests "${FILTER:-Gemv.*:Decoder.*:Archs/*:Recipes/DecoderQuant.BundledModelEveryPositionOf200/1:Recipes/DecoderQuant.BundledModelEveryPositionOf200/2}" "${TEST_LIMIT:-240}"
for r in 1 2; do
  for c in ${CONFIGS:-1:0 0:0}; do
    ov=${c%%:*} pf=${c#*:}
    PQVK_GEMV_OVERLAP=$ov PQVK_PREFETCH_MB=$pf timeout 150 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -r 3 \
      > "$OUT/tg-ov$ov-pf$pf-$r.md" 2> "$OUT/tg-ov$ov-pf$pf-$r.err"
    echo "overlap=$ov prefetch=${pf}MB round $r rc=$?: $(grep -o 'tg128 [^|]*| [0-9.]* ± [0-9.]*' "$OUT/tg-ov$ov-pf$pf-$r.md" | tr '\n' ' ')"
  done
done
pack_out
