#!/usr/bin/env bash
# The CPU-only test suites -- model files and importers (pqvk_model_tests, pq-quantize and pq-info
# as subprocesses), GGUF input, tokenizers, the CPU reference decoder and the sampler
# (pqvk_cpu_tests) -- built with clang-14 under AddressSanitizer + UndefinedBehaviorSanitizer in
# their own build directory, and run. No GPU test is built or run here.
#   tools/run-sanitizers.sh            (build dir: $PQVK_ASAN_BUILD or build-asan)
# Exits non-zero on a test failure or any sanitizer report (leaks included). A sanitizer report
# in a subprocess exits with its own status (86, 87), never the 1 of a clean error, so the tests
# that expect pq-quantize to fail cleanly see it.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${PQVK_ASAN_BUILD:-build-asan}"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_C_FLAGS_RELEASE="-O1 -g1" -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1" -DCMAKE_C_FLAGS="$san" -DCMAKE_CXX_FLAGS="$san" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DPQVK_CHAT=OFF -DPQVK_WERROR=ON >/dev/null
ninja -C "$build" pqvk_model_tests pqvk_cpu_tests

export ASAN_OPTIONS="exitcode=86:detect_leaks=1:strict_string_checks=1"
export UBSAN_OPTIONS="exitcode=87:halt_on_error=1:print_stacktrace=1"
for t in pqvk_model_tests pqvk_cpu_tests; do
  echo "run-sanitizers: $t (ASan + UBSan)"
  "$build/$t" --gtest_brief=1
done
echo "run-sanitizers: no findings"
