#!/usr/bin/env bash
# One device-tool call for a revision of the tensor-core GEMM: its time at one shape with and
# without the products (PQVK_GEMM_ABLATE=2), the kernel table with --check at LLM shapes (the
# GEMM chosen automatically: tensor cores where M >= 16), the GPU GEMM and decoder tests with
# validation, and whole-model prefill. Everything lands in $OUT/coopmat-round.tar.xz.
# Carry .gl and .dev (vk-bench, pq-info, pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
R=$OUT/round; mkdir -p $R
for tm in 128 64; do
  for a in 0 2; do
    PQVK_GEMM_COOPMAT=$tm PQVK_GEMM_ABLATE=$a $B/vk-bench kernels --shape 14336x4096 --bits 4 -m 2048 --no-f16 --reps 5 \
      > "$R/ablate-tm$tm-a$a.md" 2>&1
    echo "tm=$tm ablate=$a: $(grep -E '^\| gemm ' "$R/ablate-tm$tm-a$a.md" | cut -d'|' -f6,10)"
  done
done
$B/vk-bench kernels --shape 4096x4096,14336x4096,4096x14336 --bits 4,5 -m 512,2048 --check --json "$R/kernels.json" > "$R/kernels.md" 2>&1
echo "kernels rc=$? $(grep -c FAILED "$R/kernels.md") check failures"; grep -E "^\| gemm " "$R/kernels.md"
mkdir -p /work && ln -sfn "$PWD" /work/main
PQVK_VALIDATION=1 timeout 200 $B/pqvk_tests --gtest_filter='Gemm.MatchesCpu:Gemm.CoopmatWhere*:Gemm.CoopmatSwitch*:*Decoder*' > "$R/gpu-tests.txt" 2>&1
echo "gpu tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on|cooperative" "$R/gpu-tests.txt" | head -20
$B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512,2048 -n 0 -r 3 --json "$R/prefill.json" > "$R/prefill.md" 2> "$R/prefill.err"
echo "prefill rc=$?"; grep GEMM "$R/prefill.err"; grep -E "^\| .* pp[0-9]+ " "$R/prefill.md"
cp "$OUT/nvidia-smi.txt" $R/; tar -C $OUT -cJf $OUT/coopmat-round.tar.xz round && rm -rf $R $OUT/nvidia-smi.txt
