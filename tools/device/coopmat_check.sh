#!/usr/bin/env bash
# One device-tool call for the tensor-core prefill GEMM (shaders/pq_gemm_coopmat.comp): the
# quantized GEMMs at LLM shapes checked against their CPU twins with the tensor-core GEMM off
# (PQVK_GEMM_COOPMAT=0) and chosen automatically (default), then the same with each token tile
# forced, then whole-model prefill both ways. Usage (device tool, carry .gl and .dev: vk-bench,
# pq-info, and pqvk_tests with lib.tar.xz if the GoogleTests should run too):
#   bash tools/device/coopmat_check.sh
# Exit status: 1 when a check failed or a run did not finish.
set -uo pipefail
source tools/device/setup.sh
status=0
$B/pq-info > "$OUT/pq-info.txt" 2>&1
grep -E "^\*|subgroup size|fp16|memory model|cooperative|NV shapes|^ +[0-9]+x[0-9]+x[0-9]+" "$OUT/pq-info.txt" | head -30

kernels() {  # $1: PQVK_GEMM_COOPMAT value ("" for the default), $2: output name
  PQVK_GEMM_COOPMAT=$1 $B/vk-bench kernels --shape 4096x4096,14336x4096,4096x14336 --bits 4,5 -m 512,2048 --no-f16 \
    --check --json "$OUT/$2.json" > "$OUT/$2.md" 2>&1
  local rc=$?
  echo "== kernels, PQVK_GEMM_COOPMAT='$1': exit $rc, $(grep -c FAILED "$OUT/$2.md") check failures"
  grep -E "^quantized GEMM|^vk-bench: " "$OUT/$2.md"
  grep -E "^\| (kernel|gemm) " "$OUT/$2.md"
  [ $rc -eq 0 ] || status=1
}
kernels 0 kernels-fp32
kernels "" kernels-auto
kernels 64 kernels-tile64
kernels 128 kernels-tile128

# Prefill passes of 512 tokens (the default -b) both ways, then of 2048 with the default choice.
for run in "0 512" " 512" " 2048"; do
  mode=${run% *} ubatch=${run#* }
  name=prefill-${mode:-auto}-b$ubatch
  PQVK_GEMM_COOPMAT=$mode $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512,2048 -n 0 -r 3 -b $ubatch \
    --json "$OUT/$name.json" > "$OUT/$name.md" 2> "$OUT/$name.err"
  rc=$?
  echo "== llama3-8b prefill, PQVK_GEMM_COOPMAT='$mode', -b $ubatch: exit $rc"
  grep -E "GEMM" "$OUT/$name.err"
  grep -E "^\| .* pp[0-9]+ " "$OUT/$name.md"
  [ $rc -eq 0 ] || { status=1; tail -5 "$OUT/$name.err"; }
done

if [ -x "$B/pqvk_tests" ]; then  # the GEMM tests, on a device that has the tensor-core path
  $B/pqvk_tests --gtest_filter='Gemm*:Vk.EveryShaderIsEmbedded' > "$OUT/gtest-gemm.txt" 2>&1
  rc=$?
  echo "== pqvk_tests Gemm*: exit $rc"
  grep -E "cooperative-matrix GEMM on this device|PASSED|FAILED" "$OUT/gtest-gemm.txt"
  [ $rc -eq 0 ] || status=1
fi
exit $status
