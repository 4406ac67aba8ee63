// The model a .pqm file describes: architecture hyperparameters, the tokenizer's metadata,
// and the canonical list of tensors a decoder of that configuration needs (names, shapes,
// roles). docs/pqm-format.md specifies the JSON form of each; from_json() validates it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pqvk::model {

using nlohmann::json;

// RoPE frequency scaling. "none", "linear" (positions divided by factor) or "llama3"
// (Llama 3.1's piecewise rescaling of the inverse frequencies).
struct RopeScaling {
  std::string type = "none";
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
};

// A Llama-family decoder: Llama 1/2/3, Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k RMS norms).
// RoPE is applied in the rotate-half convention (pairs (j, j + head_dim/2) of each head).
struct ModelConfig {
  std::string architecture = "llama";  // llama | mistral | qwen2 | qwen3
  int64_t dim = 0;          // hidden size
  int64_t hidden_dim = 0;   // MLP intermediate size
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;  // context length
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;    // q/k/v projections have biases (Qwen2; Llama with attention_bias)
  bool o_bias = false;      // the output projection has a bias (Llama with attention_bias)
  bool qk_norm = false;     // per-head RMS norms of q and k before RoPE (Qwen3)
  int64_t sliding_window = 0;  // 0: full attention
  int64_t bos_id = -1;         // -1: none
  std::vector<int64_t> eos_ids;

  json to_json() const;
  // Validates types, required keys and ranges; `where` names the file in errors.
  static ModelConfig from_json(const json& j, const std::string& where);
  // Throws a ModelError (naming `where`) unless the hyperparameters are consistent.
  void validate(const std::string& where) const;
};

// The RoPE inverse frequencies of a configuration, rope_scaling applied (head_dim / 2 values):
// theta^(-2j/head_dim), divided by the factor ("linear"), or rescaled piecewise ("llama3").
std::vector<double> rope_inverse_frequencies(const ModelConfig& c);

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool special = true;
};

// What kind of tokenizer travels with the model, and the metadata of it that is not a tensor.
// The tensors it needs (blobs) are listed by tokenizer_tensor_names().
struct TokenizerInfo {
  std::string kind = "none";  // none | sentencepiece | bpe | llama2c
  std::vector<AddedToken> added_tokens;
  std::string chat_template;  // verbatim; empty: none
  json chat_templates = json::object();  // named templates (name -> template), when the source had several
  // bpe: the tokenizer.json sections that define pre-tokenization and decoding, verbatim
  // ("pre_tokenizer", "normalizer", "decoder", "post_processor": any JSON or null; "byte_fallback",
  // "ignore_merges": booleans). llama2c: "max_token_length".
  json options = json::object();

  json to_json() const;
  static TokenizerInfo from_json(const json& j, const std::string& where);
};

// The tensors the tokenizer kind needs: sentencepiece {"tokenizer.model"}, bpe
// {"tokenizer.vocab", "tokenizer.merges"}, llama2c {"tokenizer.vocab", "tokenizer.scores"}.
std::vector<std::string> tokenizer_tensor_names(const std::string& kind);

// What a tensor is for; the quantization recipes assign bits by role.
enum class Role {
  embed, attn_norm, attn_q, attn_k, attn_v, attn_o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm,
  mlp_norm, mlp_gate, mlp_up, mlp_down, final_norm, lm_head
};
const char* role_name(Role r);
bool is_matrix(Role r);  // a 2-D weight (quantizable), as opposed to a norm or bias vector

struct TensorSpec {
  std::string name;              // canonical .pqm name, e.g. "layers.3.attn.q"
  Role role = Role::embed;
  int layer = -1;                // -1: not in a layer
  std::vector<uint64_t> shape;   // [rows (out), cols (in)] for matrices, [n] for vectors
};

// Every tensor a model of this configuration has, in file order.
std::vector<TensorSpec> model_tensors(const ModelConfig& c);
// The HuggingFace (transformers) name of a tensor, e.g. "model.layers.3.self_attn.q_proj.weight".
std::string hf_name(const TensorSpec& t);
// Its name in llama.cpp's GGUF files, e.g. "blk.3.attn_q.weight".
std::string gguf_name(const TensorSpec& t);

}  // namespace pqvk::model
