#!/usr/bin/env bash
# One device-tool call: where the tensor-core GEMM's time goes. pq_gemm_coopmat.comp's ABLATE
# specialization (PQVK_GEMM_ABLATE) removes one part at a time (1 codebook decode, 2 fragment
# loads and products, 4 global loads in the K loop, 8 the barrier, 16 the activation
# conversion); the results are wrong, the timings say what each part costs. Then the GPU test
# suites with the tensor-core GEMM chosen automatically, and whole-model prefill.
# Carry .gl and .dev (vk-bench, pq-info, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
for tm in 128 64; do
  for a in 0 1 2 4 8 16 5 21 29 3; do
    PQVK_GEMM_COOPMAT=$tm PQVK_GEMM_ABLATE=$a $B/vk-bench kernels --shape 14336x4096 --bits 4 -m 2048 --no-f16 --reps 5 \
      > "$OUT/ablate-tm$tm-a$a.md" 2>&1
    echo "tm=$tm ablate=$a: $(grep -E '^\| gemm ' "$OUT/ablate-tm$tm-a$a.md" | cut -d'|' -f6,10)"
  done
done
mkdir -p /work && ln -sfn "$PWD" /work/main
PQVK_VALIDATION=1 timeout 200 $B/pqvk_tests --gtest_filter='Gemm.MatchesCpu:Gemm.CoopmatWhere*:Gemm.CoopmatSwitch*:*Decoder*' > "$OUT/gpu-tests-coopmat.txt" 2>&1
echo "gpu tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on|cooperative" "$OUT/gpu-tests-coopmat.txt" | head -20
$B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512,2048 -n 0 -r 3 --json "$OUT/prefill.json" > "$OUT/prefill.md" 2> "$OUT/prefill.err"
echo "prefill rc=$?"; grep GEMM "$OUT/prefill.err"; grep -E "^\| .* pp[0-9]+ " "$OUT/prefill.md"
