#include "llm_fixtures.h"

#include <cmath>

#include "model/pqm.h"
#include "quant/polarquant.h"

namespace pqvk::fixtures {

using model::ModelConfig;
using model::Role;

std::vector<float> random_values(size_t n, std::mt19937& rng, double sigma, double mean) {
  std::vector<float> v(n);
  const double a = sigma * std::sqrt(3.0);
  for (float& x : v) x = static_cast<float>(mean + a * (2.0 * (rng() / 4294967296.0) - 1.0));
  return v;
}

std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

const char* storage_name(Storage s) { return s == Storage::f32 ? "f32" : s == Storage::f16 ? "f16" : "pq4"; }

// Tiny models of each architecture, sized so that attention is far from uniform (projections
// scaled 1/sqrt(fan_in), so q.k/sqrt(head_dim) is O(1)) and every feature changes the logits.
ModelConfig tiny_config(const std::string& arch) {
  ModelConfig c;
  c.architecture = arch;
  c.n_layers = 2;
  c.max_seq_len = 32;
  c.rms_norm_eps = 1e-5;
  c.bos_id = 1;
  c.eos_ids = {2};
  if (arch == "llama") {  // GQA 6/2, Llama 3.1 RoPE scaling, untied, dim not a multiple of 64
    c.dim = 72, c.hidden_dim = 100, c.n_heads = 6, c.n_kv_heads = 2, c.head_dim = 12, c.vocab_size = 97;
    c.rope_theta = 10000.0;
    // Wavelengths of head_dim 12: 6.3, 29, 135, 628, ...: with L = 64 the first is kept, the
    // second interpolated, the others slowed down by 8.
    c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 64};
  } else if (arch == "qwen2") {  // q/k/v biases, tied embeddings
    c.dim = 64, c.hidden_dim = 96, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 16, c.vocab_size = 80;
    c.rope_theta = 1000000.0;
    c.qkv_bias = true;
    c.tie_word_embeddings = true;
  } else if (arch == "qwen3") {  // q/k norms, head_dim != dim / n_heads, one KV head, tied
    c.dim = 48, c.hidden_dim = 80, c.n_heads = 4, c.n_kv_heads = 1, c.head_dim = 20, c.vocab_size = 90;
    c.rope_theta = 1000000.0;
    c.qk_norm = true;
    c.tie_word_embeddings = true;
  } else if (arch == "mistral") {  // sliding window, linear RoPE scaling, an output bias
    c.dim = 64, c.hidden_dim = 112, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 16, c.vocab_size = 70;
    c.rope_theta = 10000.0;
    c.rope_scaling = {"linear", 2.0, 1.0, 4.0, 0};
    c.sliding_window = 6;
    c.o_bias = true;
  }
  c.validate(arch);
  return c;
}

// Writes a model with random weights; matrices stored as `storage`, vectors as f32.
void write_model(const std::string& path, const ModelConfig& c, Storage storage, uint32_t seed,
                 const std::map<std::string, std::vector<float>>& overrides) {
  std::mt19937 rng(seed);
  model::PqmWriter w(path);
  for (const model::TensorSpec& spec : model::model_tensors(c)) {
    const size_t rows = spec.shape[0], cols = spec.shape.size() > 1 ? spec.shape[1] : 1;
    std::vector<float> v;
    if (spec.role == Role::embed) v = random_values(rows * cols, rng, 1.0);
    else if (model::is_matrix(spec.role)) v = random_values(rows * cols, rng, 1.0 / std::sqrt(static_cast<double>(cols)));
    else if (spec.role == Role::q_bias || spec.role == Role::k_bias || spec.role == Role::v_bias || spec.role == Role::o_bias)
      v = random_values(rows, rng, 0.5);
    else v = random_values(rows, rng, 0.2, 1.0);  // norm weights around 1
    if (auto it = overrides.find(spec.name); it != overrides.end()) v = it->second;
    if (!model::is_matrix(spec.role) || storage == Storage::f32) w.add_f32(spec.name, spec.shape, v);
    else if (storage == Storage::f16) w.add_f16(spec.name, spec.shape, v);
    else w.add_quant(spec.name, pq::quantize(v.data(), rows, cols, 4, 64, pq::Method::pq));
  }
  w.finish(c, model::TokenizerInfo{});
}

}  // namespace pqvk::fixtures
