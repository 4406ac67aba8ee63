#!/usr/bin/env bash
# A short side by side (when little device time is left): pqvk pp512 + tg128 of synthetic
# llama3-8b q4 / q5, then llama.cpp's Vulkan backend on GGUFs of the same shape (Q4_0, Q5_0),
# in the same call. Carry .gl, .devf (vk-bench) and .peer (../shared/peer/README.md).
set -uo pipefail
source tools/device/setup.sh
timeout 80 $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512 -n 128 -r 3 --no-breakdown --json "$OUT/pqvk.json" > "$OUT/pqvk.md" 2> "$OUT/pqvk.err"
echo "pqvk rc=$?: $(grep -o 'q[45] [pt][pg][0-9]*: [0-9.]* +- [0-9.]*' "$OUT/pqvk.err" | tr '\n' ' ')"
llamacpp_bench 60
pack_out
