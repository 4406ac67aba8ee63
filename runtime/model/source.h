// A model to be converted, as the importers present it: the config, the tokenizer and one
// lazily loaded tensor per entry of model_tensors(config), so that pq-quantize can stream
// tensor by tensor (peak memory: a few copies of the largest tensor).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "quant/polarquant.h"

namespace pqvk::model {

struct SourceTensor {
  TensorSpec spec;      // canonical name, role, shape
  std::string origin;   // where it comes from, for messages: "dir/model.safetensors: model.norm.weight"
  // Exactly one of these is set: a float tensor (fp32, row-major [rows][cols] or [n]), or a
  // tensor that is already quantized (a PolarQuant reference checkpoint), kept as is.
  std::function<std::vector<float>()> load_floats;
  std::function<pq::QuantMatrix()> load_quant;
};

// The tokenizer's metadata and the tensors it needs (see tokenizer_tensor_names()).
struct SourceTokenizer {
  TokenizerInfo info;
  std::vector<std::pair<std::string, std::vector<uint8_t>>> blobs;  // name -> bytes
  std::vector<float> scores;  // llama2c: one per token ("tokenizer.scores")
  int64_t bos_id = -1;        // from the tokenizer itself (-1: unknown)
  int64_t eos_id = -1;
};

struct SourceModel {
  std::string path;
  std::string format;  // "huggingface", "gguf", "llama2c", "polarquant-reference"
  ModelConfig config;
  SourceTokenizer tokenizer;
  std::vector<SourceTensor> tensors;  // model_tensors(config) order
};

struct ImportOptions {
  std::string tokenizer_path;  // llama2c inputs: a tokenizer .bin or a SentencePiece .model to attach
};

// Detects the kind of input and imports it:
//   directory with polar_config.json     the PolarQuant reference's checkpoint
//   directory with config.json           a HuggingFace checkpoint (safetensors, sharded or not)
//   *.safetensors                        one HuggingFace shard, config.json beside it
//   *.gguf, or a file starting "GGUF"    a llama.cpp GGUF model (gguf.h)
//   *.bin                                a llama2.c checkpoint
SourceModel open_source(const std::string& path, const ImportOptions& options = {});

SourceModel import_huggingface(const std::string& dir_or_file);
SourceModel import_gguf(const std::string& path);
SourceModel import_llama2c(const std::string& path, const std::string& tokenizer_path = "");
SourceModel import_reference(const std::string& dir);

// Takes the tokenizer's BOS/EOS ids where the config has none.
void adopt_special_ids(ModelConfig& c, const SourceTokenizer& t);

// The rows of a [heads * head_dim][cols] q or k matrix (or a bias, cols = 1) from the
// interleaved RoPE order (pairs (2i, 2i+1) of each head: llama2.c, Meta's original checkpoints,
// llama.cpp's GGUF files of llama models) to the rotate-half order of .pqm files (pairs
// (i, i + head_dim/2)): new row h*head_dim + t*(head_dim/2) + i = old row h*head_dim + 2i + t.
std::vector<float> rope_rows_to_rotate_half(const std::vector<float>& w, uint64_t heads, uint64_t head_dim, uint64_t cols);

// Tokenizers (runtime/model/tokenizer_import.cpp). vocab_size bounds the token count.
SourceTokenizer load_sentencepiece(const std::string& path, int64_t vocab_size);
SourceTokenizer load_llama2c_tokenizer(const std::string& path, int64_t vocab_size);
// A HuggingFace directory: tokenizer.model (SentencePiece) when present, else tokenizer.json
// (byte-level BPE); added tokens and the chat template from tokenizer_config.json
// (or chat_template.jinja). No tokenizer files: kind "none".
SourceTokenizer load_hf_tokenizer(const std::string& dir, int64_t vocab_size);

}  // namespace pqvk::model
