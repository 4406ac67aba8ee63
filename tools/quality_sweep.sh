#!/usr/bin/env bash
# The quality sweep: one source checkpoint quantized with every method of the ablation (fp16,
# absmax, rot-uniform, lloyd, pq) at 3, 4, 5 and 6 bits; perplexity and KL divergence from the
# fp16 run of each on one text (pq-perplexity), then a table (markdown + CSV) and a plot (SVG)
# of quality against bits per weight (tools/sweep_report.py).
#
#   tools/quality_sweep.sh SOURCE TEXT OUTDIR [BINDIR] [pq-perplexity options...]
#
# SOURCE: a checkpoint pq-quantize reads (e.g. models/pqvk-brown-10m); TEXT: a UTF-8 text file;
# OUTDIR: where the per-run JSON, the table and the plot go; BINDIR: where pq-quantize,
# pq-perplexity and pq-info are (default build). Further options go to every pq-perplexity run
# (e.g. --cpu, --ctx 256, --chunks 10). SWEEP_BITS and SWEEP_METHODS override the grid.
# The .pqm files and the fp16 log-probabilities are made in OUTDIR/work and deleted at the end.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 SOURCE TEXT OUTDIR [BINDIR] [pq-perplexity options...]" >&2
  exit 2
fi
src=$1 text=$2 out=$3
bin=${4:-build}
shift $(( $# >= 4 ? 4 : 3 ))
bits=${SWEEP_BITS:-3 4 5 6}
methods=${SWEEP_METHODS:-absmax rot-uniform lloyd pq}
for tool in pq-quantize pq-perplexity pq-info; do
  [ -x "$bin/$tool" ] || { echo "$0: $bin/$tool not found (build first, or pass BINDIR)" >&2; exit 1; }
done
[ -e "$src" ] || { echo "$0: source checkpoint '$src' not found" >&2; exit 1; }
[ -s "$text" ] || { echo "$0: text file '$text' missing or empty" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/work"
work=$out/work

run() {  # name, quantize options...
  local name=$1; shift
  "$bin/pq-quantize" "$src" "$work/$name.pqm" --quiet "$@" >/dev/null
  "$bin/pq-info" "$work/$name.pqm" --json > "$out/$name.info.json"
}

echo "sweep: fp16" >&2
run fp16 --method fp16
"$bin/pq-perplexity" -m "$work/fp16.pqm" -f "$text" -q "$@" --save-logits "$work/fp16.logp" --json "$out/fp16.json" \
  > "$out/fp16.txt"
rm -f "$work/fp16.pqm"
for m in $methods; do
  for b in $bits; do
    echo "sweep: $m q$b" >&2
    run "$m-q$b" --method "$m" --bits "$b"
    "$bin/pq-perplexity" -m "$work/$m-q$b.pqm" -f "$text" -q "$@" --kl-divergence "$work/fp16.logp" \
      --json "$out/$m-q$b.json" > "$out/$m-q$b.txt"
    rm -f "$work/$m-q$b.pqm"
  done
done
rm -rf "$work"
python3 "$here/sweep_report.py" "$out"
