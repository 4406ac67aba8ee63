#!/usr/bin/env bash
# The GPU tests of what changed in the fourth session (validation on), then decode after long
# prompts; the side by side with llama.cpp runs in its own call (final.sh: the carried tree's
# size). Carry .gl and .dev.
set -uo pipefail
source tools/device/setup.sh
gpu_tests "${FILTER:-Attention.PolarQuant*:Decoder.PolarQuant*:Gemv.Fold*:Attention.SplitDecode*:Recipes/DecoderQuant.BundledModelEveryPositionOf200/1:Decoder.PrefillEqualsTokenByToken}" 110
kv_depth_runs "${RUNS:-pq8:16384}" "${RUN_LIMIT:-80}"
pack_out
