#!/usr/bin/env bash
# The decode attention's scores over PolarQuant records with the rotated queries read as pairs
# and eight record words' loads in flight: the PolarQuant GPU tests, then tg128 of synthetic
# llama3-8b q5 after a 16384-token context with pq4 records, before ($OLD/vk-bench) and after
# ($B/vk-bench), and with the fp16 cache (the ratio issue 13 asks for). Carry .gl, .dev
# (vk-bench, pqvk_tests, lib.tar.xz) and $OLD (default .devf: vk-bench).
set -uo pipefail
source tools/device/setup.sh
OLD=${OLD:-.devf}
gpu_tests "Attention.PolarQuantCacheMatchesCpu:Attention.*Decode*:Decoder.PolarQuantKvCacheMatchesCpuEveryPosition" 90
for v in pq4-old pq4-new f16-new; do
  bin=$B/vk-bench
  [ $v = pq4-old ] && bin=$OLD/vk-bench
  timeout 60 $bin --synthetic llama3-8b --bits 5 -p 0 -n 128 -d 16384 -r 3 --kv-type ${v%%-*} > "$OUT/tg-$v.md" 2> "$OUT/tg-$v.err"
  echo "$v rc=$?: $(grep -o 'tg128 @ d[0-9]*: [0-9.]* +- [0-9.]*' "$OUT/tg-$v.err") $(grep -E '^\| attention' "$OUT/tg-$v.md" | head -2 | tr -s ' ' | tr '\n' ' ')"
done | tee "$OUT/tg-summary.txt"
pack_out
