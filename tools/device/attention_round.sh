#!/usr/bin/env bash
# One device-tool call (issues 10 and 11): the GPU test suites with validation (the tensor-core
# prefill attention, attention_coopmat.comp, against its fp64 twin; prefill equals
# token-by-token; the batching tests), whole-model prefill with and without the tensor-core
# attention (per-kernel breakdown), and continuous batching at 1, 8 and 32 sequences on the
# batched GEMV and on the GEMM. Carry .gl and .dev (vk-bench, pq-info, pqvk_tests, lib.tar.xz).
# Output in $OUT/attention-round.tar.xz.
set -uo pipefail
source tools/device/setup.sh
R=$OUT/round; mkdir -p $R
mkdir -p /work && ln -sfn "$PWD" /work/main  # the tests' data paths, compiled in
PQVK_VALIDATION=1 timeout 240 $B/pqvk_tests --gtest_filter='Attention.*:Prepare.*:Gemm.MatchesCpu:*Decoder*:GemvBatch.*:Batch.*' > "$R/gpu-tests.txt" 2>&1
echo "gpu tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on" "$R/gpu-tests.txt" | head -20
for a in 1 0; do
  PQVK_ATTENTION_COOPMAT=$a $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512,2048 -n 0 -r 3 --json "$R/prefill-att$a.json" > "$R/prefill-att$a.md" 2> "$R/prefill-att$a.err"
  echo "attention coopmat=$a rc=$?"; grep -E "^\| .* pp[0-9]+ " "$R/prefill-att$a.md"; grep -E "^\| (attention|gemm)" "$R/prefill-att$a.md" | head -8
done
$B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -np 1,8,32 -r 3 --batch-gemm-from 1 --json "$R/batched-gemm.json" > "$R/batched-gemm.md" 2>&1
echo "batched (GEMM for every decode step) rc=$?"; grep -E "^\| llama3-8b \| q5 \| tg128 x" "$R/batched-gemm.md"; grep -E "^\| (batched|gemm|attention)" "$R/batched-gemm.md" | head -8
cp "$OUT/nvidia-smi.txt" $R/; tar -C $OUT -cJf $OUT/attention-round.tar.xz round && rm -rf $R $OUT/nvidia-smi.txt
