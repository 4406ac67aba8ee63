#!/usr/bin/env bash
# The session's measurement call (bench/RESULTS.md): GEMV kernels with --check, decode under a
# few GEMV shapes, then pqvk and llama.cpp's Vulkan backend side by side on the same H200.
# Carry .gl, .dev (vk-bench, pq-info) and .peer (../shared/peer/README.md).
set -uo pipefail
source tools/device/setup.sh
$B/pq-info > "$OUT/pq-info.txt" 2>&1
if [ -z "${SKIP_SWEEPS:-}" ]; then
$B/vk-bench kernels --shape 14336x4096,4096x14336,128256x4096 --bits 3,4,5 -m 1 --no-f16 --check --reps 20 \
  --warmup-ms 300 --gemv-configs 32x2r,64x2r,32x4r --json "$OUT/kernels.json" > "$OUT/kernels.md" 2>&1
echo "kernel check failures: $(grep -c FAILED "$OUT/kernels.md")"
for cfg in ${E2E_CONFIGS:-32x2 64x2 32x4}; do
  PQVK_GEMV=$cfg $B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -r 3 --warmup-ms 500 --no-breakdown 2>&1 >/dev/null \
    | grep -o 'q[45] tg128: [0-9.]*' | tr '\n' ' ' | sed "s/^/$cfg: /"; echo
done | tee "$OUT/tg-configs.txt"
BEST=$(awk 'NF {print $NF, $1}' "$OUT/tg-configs.txt" | sort -n -r | head -1 | cut -d' ' -f2 | tr -d ':')
echo "best GEMV shape: $BEST"; export PQVK_GEMV=$BEST
fi
$B/vk-bench --synthetic llama3-8b --bits 4,5 -p 512,2048 -n 128 -r 3 --json "$OUT/llama3-8b.json" > "$OUT/llama3-8b.md" 2>&1
$B/vk-bench --synthetic llama3-8b --bits 4,5 -p 0 -n 128 -d 4096 -r 3 --no-breakdown --json "$OUT/llama3-8b-d4096.json" > "$OUT/llama3-8b-d4096.md" 2>&1
if [ -n "${NP:-}" ]; then  # continuous batching: aggregate decode of NP sequences (q5)
  $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -np "$NP" -r 3 --no-breakdown --json "$OUT/np.json" > "$OUT/np.md" 2> "$OUT/np.err"
  echo "np: $(grep -o 'tg128[ x0-9]*: [0-9.]* +- [0-9.]*' "$OUT/np.err" | tr '\n' ' ')"
fi
$B/vk-bench --synthetic qwen3-8b,llama3.2-1b --bits 4,5 -p 512 -n 128 -r 3 --no-breakdown --json "$OUT/shapes.json" > "$OUT/shapes.md" 2>&1
grep -h "^| " "$OUT/llama3-8b.md" "$OUT/llama3-8b-d4096.md" "$OUT/shapes.md" | grep -E "tg|pp" | grep -v "weights MiB"
# llama.cpp (prebuilt Vulkan addon), same machine, same call.
llamacpp_bench
# Everything in one archive (the device tool brings back a limited number of files).
tar -C "$OUT" -cJf /tmp/final.tar.xz . && rm -rf "${OUT:?}"/* && mv /tmp/final.tar.xz "$OUT/"
