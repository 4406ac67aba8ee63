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
  std::string format;  // "huggingface", "llama2c", "polarquant-reference"
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
//   *.bin                                a llama2.c checkpoint
SourceModel open_source(const std::string& path, const ImportOptions& options = {});

SourceModel import_huggingface(const std::string& dir_or_file);
SourceModel import_llama2c(const std::string& path, const std::string& tokenizer_path = "");
SourceModel import_reference(const std::string& dir);

// Takes the tokenizer's BOS/EOS ids where the config has none.
void adopt_special_ids(ModelConfig& c, const SourceTokenizer& t);

// Tokenizers (runtime/model/tokenizer_import.cpp). vocab_size bounds the token count.
SourceTokenizer load_sentencepiece(const std::string& path, int64_t vocab_size);
SourceTokenizer load_llama2c_tokenizer(const std::string& path, int64_t vocab_size);
// A HuggingFace directory: tokenizer.model (SentencePiece) when present, else tokenizer.json
// (byte-level BPE); added tokens and the chat template from tokenizer_config.json
// (or chat_template.jinja). No tokenizer files: kind "none".
SourceTokenizer load_hf_tokenizer(const std::string& dir, int64_t vocab_size);

}  // namespace pqvk::model
