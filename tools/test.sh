#!/usr/bin/env bash
# The test command (README.md; .ci/run calls exactly this): installs what is missing, builds
# everything with warnings as errors (shaders are compiled once, by the build), and runs the
# whole test suite with the Vulkan validation layer on. Without a GPU the tests run on Mesa's
# lavapipe; PQVK_DEVICE selects another device. Then runs the CPU-only suites under ASan + UBSan
# and fuzzes the model-file readers (.pqm, GGUF) for a minute each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-debian.sh
BUILD=${PQVK_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPQVK_WERROR=ON >/dev/null
cmake --build "$BUILD"
export PQVK_VALIDATION=1
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" --no-tests=error
# The CPU-only suites again under AddressSanitizer + UBSan (clang-14, own build dir).
bash tools/run-sanitizers.sh
# The .pqm and GGUF readers under libFuzzer + ASan + UBSan for a bounded time (clang-14, own build dir).
bash tools/run-fuzz.sh "${PQVK_FUZZ_SECONDS:-60}"
