#!/usr/bin/env bash
# Fuzzes the .pqm reader for a bounded time: builds tests/fuzz_pqm.cpp with clang-14,
# libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer in its own build directory,
# writes a seed corpus of small valid .pqm files, and runs the fuzzer.
#   tools/run-fuzz.sh [SECONDS]        (default 60; build dir: $PQVK_FUZZ_BUILD or build-fuzz)
# Exits non-zero when the fuzzer finds a crash, a sanitizer error, a leak or a timeout; the
# input that triggered it is left in $BUILD/fuzz-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
build="${PQVK_FUZZ_BUILD:-build-fuzz}"

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DPQVK_FUZZ=ON -DPQVK_WERROR=ON >/dev/null
ninja -C "$build" fuzz_pqm fuzz_pqm_seeds

rm -rf "$build/fuzz-seeds"
mkdir -p "$build/fuzz-seeds" "$build/fuzz-corpus" "$build/fuzz-artifacts"
"$build/fuzz_pqm_seeds" "$build/fuzz-seeds"
echo "run-fuzz: $(ls "$build/fuzz-seeds" | wc -l) seeds, fuzzing for ${seconds}s"
"$build/fuzz_pqm" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$build/fuzz-artifacts/" -print_final_stats=1 "$build/fuzz-corpus" "$build/fuzz-seeds"
echo "run-fuzz: no findings in ${seconds}s"
