# Sourced at the start of every device-tool call (../shared/gpu/README.md): unpacks the Vulkan
# loader carried in .gl/ and points it at the NVIDIA driver. Binaries are carried in .dev/.
for f in ${GL:-.gl}/*.deb; do dpkg -x "$f" /; done  # GL: another folder of the same packages
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export PQVK_CACHE_DIR=/tmp/pqvk-cache
B=${B:-.dev}
# Libraries the test binaries need that the machine lacks (ICU, PCRE2, SentencePiece), carried xz-packed.
if [ -f "$B/lib.tar.xz" ]; then mkdir -p /tmp/pqvk-lib && tar -C /tmp/pqvk-lib -xJf "$B/lib.tar.xz" && export LD_LIBRARY_PATH=/tmp/pqvk-lib/lib; fi
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/nvidia-smi.txt" 2>&1 || true

# The GPU tests matching $1 with the validation layer on, at most $2 seconds; their output in
# $OUT/gpu-tests.txt, the summary on stdout.
gpu_tests() {
  mkdir -p /work && ln -sfn "$PWD" /work/main  # the tests' data paths, compiled in
  PQVK_VALIDATION=1 timeout "$2" $B/pqvk_tests --gtest_filter="$1" > "$OUT/gpu-tests.txt" 2>&1
  echo "tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED|testing on" "$OUT/gpu-tests.txt" | head -20
}

# Decode after long prompts: tg128 of synthetic llama3-8b q5 for each "KV_TYPE:DEPTHS" of $1
# (e.g. "f16:16384,32768 pq4:16384"), each run at most $2 seconds; outputs $OUT/kv-TYPE.*.
kv_depth_runs() {
  for spec in $1; do
    local kv=${spec%%:*} d=${spec#*:}
    timeout "$2" $B/vk-bench --synthetic llama3-8b --bits 5 -p 0 -n 128 -d "$d" -r 3 --kv-type "$kv" \
      --json "$OUT/kv-$kv.json" > "$OUT/kv-$kv.md" 2> "$OUT/kv-$kv.err"
    echo "kv $kv rc=$?: $(grep -o 'tg128 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/kv-$kv.err" | tr '\n' ' ')"
  done | tee "$OUT/kv-summary.txt"
}

# vk-bench with the arguments after the first two, its outputs in $OUT/$1.{md,err,json}, at most
# $2 seconds; prints the name, the exit status, the whole run's seconds and its "@ dN" results.
timed_bench() {
  local name=$1 limit=$2 s rc
  shift 2
  s=$(date +%s.%N)
  timeout "$limit" $B/vk-bench "$@" --json "$OUT/$name.json" > "$OUT/$name.md" 2> "$OUT/$name.err"
  rc=$?
  echo "$name rc=$rc: $(python3 -c "import time; print(round(time.time() - $s, 1))") s whole run;" \
    "$(grep -o '[pt][pg][0-9]* @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/$name.err" | tr '\n' ' ')"
}

# llama.cpp's Vulkan backend (.peer/, ../shared/peer/README.md) on Q4_0 and Q5_0 GGUFs of the
# Llama-3-8B shape: pp512 and tg128, 3 repetitions; raw output in $OUT/llamacpp-*.txt, the
# summary on stdout and in $OUT/llamacpp.txt. $1: seconds each step may take (none or 0: no limit).
llamacpp_bench() {
  local limit=${1:-0} qt
  mkdir -p /tmp/p && xz -dc .peer/node.xz > /tmp/p/node && xz -dc .peer/index.node.xz > /tmp/p/index.node && chmod +x /tmp/p/node
  for qt in q4_0 q5_0; do
    timeout "$limit" python3 .peer/make_gguf.py /tmp/m-$qt.gguf $qt > /dev/null 2>&1
    timeout "$limit" /tmp/p/node .peer/bench_llamacpp.js /tmp/p/index.node /tmp/m-$qt.gguf 3 > "$OUT/llamacpp-$qt.txt" 2>&1
    rm -f /tmp/m-$qt.gguf
    echo "llama.cpp $qt: $(grep -o '"speedPp":[0-9.]*,"speedTg":[0-9.]*' "$OUT/llamacpp-$qt.txt")"
  done | tee "$OUT/llamacpp.txt"
}

# Everything under $OUT in one archive (the device tool brings back a limited number of files).
pack_out() { tar -C "$OUT" -cJf /tmp/out.tar.xz . && rm -rf "${OUT:?}"/* && mv /tmp/out.tar.xz "$OUT/"; }
