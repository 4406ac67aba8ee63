#!/usr/bin/env bash
# Issue 13 on the H200: the PolarQuant KV cache's GPU tests with validation on (FILTER), then
# decode after long prompts (tg128 at -d 16384 / 32768) with f16, pq8 and pq4 caches (RUNS).
# Carry .gl (validation layer) and .dev (pqvk_tests, vk-bench, lib.tar.xz).
set -uo pipefail
source tools/device/setup.sh
[ -z "${FILTER:-}" ] || gpu_tests "$FILTER" "${TEST_LIMIT:-150}"
kv_depth_runs "${RUNS:-f16:16384,32768 pq4:16384,32768 pq8:16384}" "${RUN_LIMIT:-200}"
pack_out
