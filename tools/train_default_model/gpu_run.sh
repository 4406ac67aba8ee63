#!/usr/bin/env bash
# One-shot training run on a CUDA machine, from the repository root:
#   OUT=/some/dir bash tools/train_default_model/gpu_run.sh [extra train_default_model.py args]
# Trains into /tmp/pqvk-brown-10m, then packs that folder as an uncompressed tar split in
# 15 MiB pieces (model.tar.part-aa, -ab, ...) under $OUT, next to copies of the log and summary.
# Reassemble with: cat model.tar.part-* | tar -xf -
set -u
out="${OUT:?set OUT}"
work=/tmp/pqvk-brown-10m
rm -rf "$work"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import sys, torch, sentencepiece; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'sentencepiece', sentencepiece.__version__)"
python3 -c "import transformers, safetensors; print('transformers', transformers.__version__, 'safetensors', safetensors.__version__)" || true
(cd tools/train_default_model/data && sha256sum -c SHA256SUMS) || exit 1
PYTHONUNBUFFERED=1 python3 tools/train_default_model.py --out "$work" "$@"
rc=$?
cp "$work/train_log.txt" "$out/" 2>/dev/null
cp "$work/train_summary.json" "$out/" 2>/dev/null
tar -C /tmp -cf - pqvk-brown-10m | split -b 15m - "$out/model.tar.part-"
ls -l "$out"
echo "train rc=$rc"
exit $rc
