#!/usr/bin/env bash
# Train the SentencePiece tokenizer of pqvk's default English model.
#
#   tools/make_tokenizer.sh [TRAIN_TXT] [OUT_DIR]
#
# TRAIN_TXT defaults to tools/train_default_model/data/brown-train.txt (copy it from
# the project's shared data; its SHA-256 is in tools/train_default_model/data/SHA256SUMS),
# OUT_DIR to models/pqvk-brown-10m. Writes OUT_DIR/tokenizer.model.
#
# Needs spm_train (Debian package `sentencepiece`). Llama conventions: BPE, byte fallback,
# unk=0 bos=1 eos=2, no pad, digits split, identity normalisation, no whitespace folding.
# Deterministic: every sentence is used (--input_sentence_size=0, no shuffling), fixed seed,
# one thread.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
train_txt="${1:-$root/tools/train_default_model/data/brown-train.txt}"
out_dir="${2:-$root/models/pqvk-brown-10m}"
vocab_size="${VOCAB_SIZE:-4096}"

command -v spm_train >/dev/null || { echo "spm_train not found: apt-get install sentencepiece" >&2; exit 1; }
[ -f "$train_txt" ] || { echo "no training text at $train_txt" >&2; exit 1; }
mkdir -p "$out_dir"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Relative names only, so that tokenizer.model (which records its trainer options) is
# byte-identical wherever this runs.
cp "$train_txt" "$tmp/train.txt"
(cd "$tmp" && spm_train \
  --input=train.txt \
  --model_prefix=tokenizer \
  --model_type=bpe \
  --vocab_size="$vocab_size" \
  --character_coverage=1.0 \
  --byte_fallback=true \
  --split_digits=true \
  --allow_whitespace_only_pieces=true \
  --normalization_rule_name=identity \
  --remove_extra_whitespaces=false \
  --add_dummy_prefix=true \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --unk_piece='<unk>' --bos_piece='<s>' --eos_piece='</s>' \
  --input_sentence_size=0 \
  --shuffle_input_sentence=false \
  --max_sentence_length=16384 \
  --random_seed=1234 \
  --num_threads=1 \
  --minloglevel=1)

cp "$tmp/tokenizer.model" "$out_dir/tokenizer.model"
echo "wrote $out_dir/tokenizer.model ($(wc -c <"$out_dir/tokenizer.model") bytes, vocab $vocab_size)"
sha256sum "$out_dir/tokenizer.model"
