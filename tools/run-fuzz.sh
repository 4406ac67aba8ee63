#!/usr/bin/env bash
# Fuzzes the model-file readers for a bounded time each: builds tests/fuzz_pqm.cpp (.pqm files)
# and tests/fuzz_gguf.cpp (GGUF input: reader, block decoders, importer) with clang-14, libFuzzer,
# AddressSanitizer and UndefinedBehaviorSanitizer in their own build directory, writes each one's
# seed corpus of small valid files, and runs the fuzzers one after the other.
#   tools/run-fuzz.sh [SECONDS]        (per target, default 60; build dir: $PQVK_FUZZ_BUILD or build-fuzz)
# Exits non-zero when a fuzzer finds a crash, a sanitizer error, a leak or a timeout; the
# input that triggered it is left in $BUILD/fuzz-artifacts/NAME/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
build="${PQVK_FUZZ_BUILD:-build-fuzz}"

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DPQVK_FUZZ=ON -DPQVK_WERROR=ON >/dev/null
ninja -C "$build" fuzz_pqm fuzz_pqm_seeds fuzz_gguf fuzz_gguf_seeds

for name in pqm gguf; do
  rm -rf "$build/fuzz-seeds/$name"
  mkdir -p "$build/fuzz-seeds/$name" "$build/fuzz-corpus/$name" "$build/fuzz-artifacts/$name"
  "$build/fuzz_${name}_seeds" "$build/fuzz-seeds/$name"
  echo "run-fuzz: $name: $(ls "$build/fuzz-seeds/$name" | wc -l) seeds, fuzzing for ${seconds}s"
  "$build/fuzz_$name" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$build/fuzz-artifacts/$name/" -print_final_stats=1 "$build/fuzz-corpus/$name" "$build/fuzz-seeds/$name"
  echo "run-fuzz: $name: no findings in ${seconds}s"
done
