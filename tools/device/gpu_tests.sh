#!/usr/bin/env bash
# The GPU test suites on the device machine: the paths lavapipe cannot run (32-wide subgroups,
# unmasked shuffles, the H200's own rounding) against their CPU twins, validation on.
# Carry .gl (with the validation layer's package) and .dev (pqvk_tests, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
gpu_tests "${FILTER:-Gemv.*:Attention.*:Prepare.*:*Decoder*:Fwht.*:Dequant.*:Gemm.*:Embed.*:Argmax.*:GemvBatch.*:Batch.*}" 280
