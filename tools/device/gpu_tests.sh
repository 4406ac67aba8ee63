#!/usr/bin/env bash
# The GPU test suites on the device machine: the paths lavapipe cannot run (32-wide subgroups,
# unmasked shuffles, the H200's own rounding) against their CPU twins, validation on.
# Carry .gl (with the validation layer's package) and .dev (pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
mkdir -p /work && ln -sfn "$PWD" /work/main  # the tests' data paths, compiled in
PQVK_VALIDATION=1 timeout 280 $B/pqvk_tests --gtest_filter="${FILTER:-Gemv.*:Attention.*:Prepare.*:*Decoder*:Fwht.*:Dequant.*:Gemm.*:Embed.*:Argmax.*:GemvBatch.*:Batch.*}" > "$OUT/gpu-tests.txt" 2>&1
echo "rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on" "$OUT/gpu-tests.txt" | head -20
