// Fixtures for the model tests, generated in a temporary directory by the tests themselves:
// tiny HuggingFace checkpoints (Llama, Mistral, Qwen2, Qwen3; F32/F16/BF16; sharded or not;
// tied or not), llama2.c checkpoints and tokenizers, PolarQuant-reference directories in every
// packing, and small valid .pqm files. All weights are random (fixed seeds), never zeros.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "quant/polarquant.h"

namespace pqvk::test {

using nlohmann::json;

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::vector<float> random_weights(size_t n, uint32_t seed, float sigma = 0.02f);
void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes);
void write_text(const std::string& path, const std::string& text);
std::vector<uint8_t> read_bytes(const std::string& path);

// A tensor to write into a safetensors file; values are converted to `dtype`.
struct FixtureTensor {
  std::string name, dtype;  // dtype: F32, F16, BF16, I8, U8 (integers: values cast)
  std::vector<uint64_t> shape;
  std::vector<float> values;
};
void write_safetensors(const std::string& path, const std::vector<FixtureTensor>& tensors);
// The value a float becomes when stored as `dtype` and read back.
float stored_value(float v, const std::string& dtype);

struct HfSpec {
  std::string arch = "llama";  // llama | mistral | qwen2 | qwen3
  std::string dtype = "F16";
  int dim = 64, hidden = 96, layers = 2, heads = 4, kv_heads = 2, head_dim = 0 /* 0: dim/heads */, vocab = 80;
  bool tied = false;
  int shards = 1;
  bool llama3_rope = false;
  bool attention_bias = false;  // llama: q/k/v/o biases
  bool tokenizer = true;        // tokenizer.json (BPE) + tokenizer_config.json with a chat template
};
// A tiny model's configuration: the flags of `arch` (qwen2: q/k/v biases, qwen3: q/k norms),
// head_dim 0 meaning dim / heads; everything else at ModelConfig's defaults.
model::ModelConfig tiny_arch_config(const std::string& arch, int dim, int hidden, int layers, int heads, int kv_heads,
                                    int head_dim, int vocab);
// Random weights (fixed seeds from `seed`, one per tensor in file order) for every tensor of `c`:
// matrices with sigma 0.02, biases 0.5, norm weights around 1. Canonical name -> values.
std::map<std::string, std::vector<float>> random_model_weights(const model::ModelConfig& c, uint32_t seed);

// The tensors (HF names -> values as stored) written by make_hf_model.
using TensorValues = std::map<std::string, std::vector<float>>;
TensorValues make_hf_model(const std::string& dir, const HfSpec& spec);
json hf_config_json(const HfSpec& spec);
extern const char* const kChatTemplate;

// llama2.c checkpoint with random weights; returns the float payload after the header.
struct L2cSpec {
  int dim = 64, hidden = 96, layers = 2, heads = 4, kv_heads = 2, vocab = 80, seq_len = 32;
  bool shared = true;
};
std::vector<float> make_llama2c(const std::string& path, const L2cSpec& spec);
// llama2.c tokenizer .bin with `n` tokens; returns the tokens.
std::vector<std::string> make_llama2c_tokenizer(const std::string& path, int n, std::vector<float>* scores = nullptr);

// PolarQuant-reference checkpoint directory (llama config of HfSpec defaults): every matrix
// except the embedding is quantized with pq::quantize(bits, block, Method::pq) and written in
// `packing` ("int8", "nibble", "5bit", "hlwq-q5"); the embedding and norms stay plain fp16.
// Returns HF module weight names -> the QuantMatrix written.
std::map<std::string, pq::QuantMatrix> make_reference_dir(const std::string& dir, const std::string& packing, int bits,
                                                           int block);

// The reference packings, written directly from the formulas of docs/polarquant.md.
std::vector<uint8_t> pack_nibbles_reference(const std::vector<uint8_t>& codes, int block);
std::vector<uint8_t> pack_5bit_lsb_reference(const std::vector<uint8_t>& codes);
std::vector<uint8_t> pack_5bit_msb_reference(const std::vector<uint8_t>& codes);

// A small valid .pqm (2-layer model, every tensor kind, pq tensors of several methods, bits
// and blocks, a llama2c tokenizer); returns its tensors' float values (dequantized for pq).
model::ModelConfig tiny_config();
std::map<std::string, std::vector<float>> write_tiny_pqm(const std::string& path);

// Runs a command line through /bin/sh with stderr folded into the output.
struct CommandResult {
  int exit_code = -1;   // -1 when the process did not exit normally
  int signal = 0;       // the signal that killed it, if any
  std::string output;
};
CommandResult run_command(const std::string& cmd);

}  // namespace pqvk::test
