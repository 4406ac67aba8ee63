#!/usr/bin/env bash
# The main job (README.md): install, build, then show the devices and a short kernel benchmark.
# (Once the decoder lands this quantizes and runs the bundled model.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-debian.sh
BUILD=${PQVK_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD"
"$BUILD"/pq-info
"$BUILD"/vk-bench kernels --shape 4096x4096 -m 1,64 --bits 4,5 --reps 5 --warmup-ms 100
