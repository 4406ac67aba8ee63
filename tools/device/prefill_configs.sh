#!/usr/bin/env bash
# One device-tool call (issue 10): the GPU attention / prefill tests with validation, then
# whole-model prefill (synthetic Llama-3-8B, q4 and q5, pp512 and pp2048, per-kernel breakdown)
# under each of CONFIGS, a space-separated list of environment settings joined by commas
# (e.g. "PQVK_ATTENTION_BK=16 PQVK_GEMM_COOPMAT=128,PQVK_ATTENTION_BK=32"; "-": the defaults).
# Carry .gl and .dev. Output: $OUT/prefill-configs.tar.xz.
set -uo pipefail
source tools/device/setup.sh
R=$OUT/round; mkdir -p $R
mkdir -p /work && ln -sfn "$PWD" /work/main
PQVK_VALIDATION=1 timeout 120 $B/pqvk_tests --gtest_filter='Attention.*:Decoder.PrefillEqualsTokenByToken:Gemm.MatchesCpu:Gemm.CoopmatWhere*' > "$R/gpu-tests.txt" 2>&1
echo "gpu tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on" "$R/gpu-tests.txt" | head -20
i=0
for c in ${CONFIGS:--}; do
  i=$((i + 1)); envs=(); [ "$c" = "-" ] || IFS=',' read -ra envs <<< "$c"
  env "${envs[@]}" $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512,2048 -n 0 -r 3 --json "$R/prefill-$i.json" > "$R/prefill-$i.md" 2> "$R/prefill-$i.err"
  echo "[$c] rc=$?: $(grep -E "^\| .* pp[0-9]+ " "$R/prefill-$i.md" | awk -F'|' '{printf "%s %s %s; ", $3, $6, $7}')"
  grep -E "^\| (attention|gemm)" "$R/prefill-$i.md" | head -5
done | tee "$R/configs.txt"
cp "$OUT/nvidia-smi.txt" $R/; tar -C $OUT -cJf $OUT/prefill-configs.tar.xz round && rm -rf $R $OUT/nvidia-smi.txt
