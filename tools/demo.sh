#!/usr/bin/env bash
# The main job (README.md): install what is needed, build, quantize the bundled model
# (models/pqvk-brown-10m, an 11M-parameter Llama trained on the Brown corpus) with PolarQuant
# at 5 bits, and generate text with it on the GPU (the CPU reference where the only Vulkan device
# is lavapipe).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-debian.sh
BUILD=${PQVK_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD"
"$BUILD"/pq-info
mkdir -p "$BUILD"/models
"$BUILD"/pq-quantize models/pqvk-brown-10m "$BUILD"/models/pqvk-brown-10m-q5.pqm --bits 5
"$BUILD"/pq-run -m "$BUILD"/models/pqvk-brown-10m-q5.pqm -p "${PQVK_PROMPT:-The history of the city}" -n 96 --seed 7
