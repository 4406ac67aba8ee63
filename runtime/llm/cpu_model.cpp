// The CPU reference forward pass (see cpu_model.h for what it computes). The steps are small
// free functions named after what they do; CpuModel::forward() calls them top to bottom.
#include "llm/cpu_model.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "model/error.h"
#include "quant/polarquant.h"

namespace pqvk::llm {

using model::ModelConfig;
using model::Role;

namespace {

// ---- the steps --------------------------------------------------------------------------------

float dot(const float* a, const float* b, int64_t n) {
  // Eight independent sums (the compiler vectorizes them), combined in a fixed order.
  float acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int t = 0; t < 8; ++t) acc[t] += a[j + t] * b[j + t];
  float tail = 0.0f;
  for (; j < n; ++j) tail += a[j] * b[j];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

void embed(float* x, const float* table, int32_t token, int64_t dim) {
  std::copy(table + token * dim, table + (token + 1) * dim, x);
}

// out = x / sqrt(mean(x^2) + eps) * weight
void rmsnorm(float* out, const float* x, const float* weight, int64_t n, double eps) {
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(ss / static_cast<float>(n) + static_cast<float>(eps));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

void matmul_rows(float* out, const float* x, const float* w, int64_t row_begin, int64_t row_end, int64_t cols) {
  for (int64_t i = row_begin; i < row_end; ++i) out[i] = dot(w + i * cols, x, cols);
}

// How matrix-vector products are spread over threads.
struct Parallel {
  int threads = 1;
  uint64_t min_work = kParallelMinWork;
};

// out[rows] = W[rows][cols] x[cols]; rows split evenly over the threads when the product is big.
void matmul(float* out, const float* x, const float* w, int64_t rows, int64_t cols, Parallel par) {
  const uint64_t work = static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols);
  const int64_t t = work < par.min_work ? 1 : std::min<int64_t>(par.threads, rows);
  if (t <= 1) {
    matmul_rows(out, x, w, 0, rows, cols);
    return;
  }
  auto chunk_begin = [&](int64_t k) { return rows * k / t; };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(t - 1));
  int64_t k = 1;
  for (; k < t; ++k) {
    try {
      pool.emplace_back(matmul_rows, out, x, w, chunk_begin(k), chunk_begin(k + 1), cols);
    } catch (const std::system_error&) {
      break;  // no more threads: this thread does the remaining chunks
    }
  }
  matmul_rows(out, x, w, chunk_begin(k), rows, cols);
  matmul_rows(out, x, w, 0, chunk_begin(1), cols);
  for (std::thread& th : pool) th.join();
}

void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// Qwen3: an RMS norm over each head (weights shared by the heads).
void head_rmsnorm(float* heads, int64_t n_heads, int64_t head_dim, const float* weight, double eps) {
  for (int64_t h = 0; h < n_heads; ++h) rmsnorm(heads + h * head_dim, heads + h * head_dim, weight, head_dim, eps);
}

// The rotation of position `pos`: angle_j = pos * inv_freq_j, computed in fp64 (an fp32 product
// loses the angle at long positions), then rounded to fp32.
void rope_rotation(float* cos_out, float* sin_out, const std::vector<double>& inv_freq, int32_t pos) {
  for (size_t j = 0; j < inv_freq.size(); ++j) {
    const double angle = static_cast<double>(pos) * inv_freq[j];
    cos_out[j] = static_cast<float>(std::cos(angle));
    sin_out[j] = static_cast<float>(std::sin(angle));
  }
}

// Rotate-half RoPE: element j of each head turns with element j + head_dim/2.
void rope(float* heads, int64_t n_heads, int64_t head_dim, const float* cos_j, const float* sin_j) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* x = heads + h * head_dim;
    for (int64_t j = 0; j < half; ++j) {
      const float a = x[j], b = x[j + half];
      x[j] = a * cos_j[j] - b * sin_j[j];
      x[j + half] = b * cos_j[j] + a * sin_j[j];
    }
  }
}

float round_to_f16(float v) { return pq::f16_to_f32(pq::f32_to_f16(v)); }

// CpuOptions::kv_noise: x[i] *= 1 + noise * u_i, u_i uniform in [-1, 1) from a generator seeded
// with `seed` (std::mt19937_64, whose sequence the standard fixes: the same noise everywhere).
void perturb(float* x, int64_t n, float noise, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < n; ++i) x[i] *= 1.0f + noise * static_cast<float>(static_cast<double>(rng() >> 11) * 0x1p-52 - 1.0);
}

// Appends k and v at pos: as they are, rounded to fp16, or (kv_bits > 0) as the PolarQuant
// codes of each head_dim-long head stand for them.
void store_kv(float* key_cache, float* value_cache, const float* k, const float* v, int32_t pos, int64_t kv_dim,
              int64_t head_dim, bool fp16, int kv_bits) {
  float* kdst = key_cache + pos * kv_dim;
  float* vdst = value_cache + pos * kv_dim;
  if (kv_bits > 0) {
    const int n = static_cast<int>(head_dim);
    std::vector<uint8_t> codes(static_cast<size_t>(head_dim));
    for (int64_t h = 0; h < kv_dim; h += head_dim) {
      pq::dequantize_vector(codes.data(), pq::quantize_vector(k + h, n, kv_bits, codes.data()), n, kv_bits, kdst + h);
      pq::dequantize_vector(codes.data(), pq::quantize_vector(v + h, n, kv_bits, codes.data()), n, kv_bits, vdst + h);
    }
    return;
  }
  for (int64_t i = 0; i < kv_dim; ++i) {
    kdst[i] = fp16 ? round_to_f16(k[i]) : k[i];
    vdst[i] = fp16 ? round_to_f16(v[i]) : v[i];
  }
}

void softmax(float* x, int64_t n) {
  const float max = *std::max_element(x, x + n);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  for (int64_t i = 0; i < n; ++i) x[i] /= sum;
}

// Causal attention of one token over the cached positions first..pos, every query head.
void attention(float* out, const float* q, const float* key_cache, const float* value_cache, float* scores,
               int64_t first, int32_t pos, const ModelConfig& c) {
  const int64_t hd = c.head_dim, kv_dim = c.n_kv_heads * hd, group = c.n_heads / c.n_kv_heads;
  const int64_t n = pos - first + 1;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int64_t h = 0; h < c.n_heads; ++h) {
    const float* qh = q + h * hd;
    const int64_t kv_offset = (h / group) * hd;
    for (int64_t t = 0; t < n; ++t) scores[t] = dot(qh, key_cache + (first + t) * kv_dim + kv_offset, hd) * scale;
    softmax(scores, n);
    float* oh = out + h * hd;
    std::fill(oh, oh + hd, 0.0f);
    for (int64_t t = 0; t < n; ++t) {
      const float* vt = value_cache + (first + t) * kv_dim + kv_offset;
      for (int64_t i = 0; i < hd; ++i) oh[i] += scores[t] * vt[i];
    }
  }
}

// gate <- silu(gate) * up
void swiglu(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// ---- loading ----------------------------------------------------------------------------------

std::vector<float> load_tensor(const model::PqmFile& file, const model::TensorSpec& spec) {
  const model::TensorInfo& t = file.tensor(spec.name);
  std::vector<float> v = file.read_floats(t);
  uint64_t want = 1;
  for (uint64_t d : spec.shape) want *= d;
  const std::string where = file.path() + ": tensor '" + spec.name + "'";
  if (v.size() != want)
    model_fail(where, "has " + std::to_string(v.size()) + " values, the model needs " + std::to_string(want));
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i])) model_fail(where, "value " + std::to_string(i) + " is not finite (" + std::to_string(v[i]) + ")");
  return v;
}

}  // namespace

// ---- CpuModel -----------------------------------------------------------------------------------

CpuModel::CpuModel(const model::PqmFile& file, CpuOptions options) : config_(file.config()), options_(options) {
  if (options.threads < 0 || options.threads > 1024)
    throw std::invalid_argument("CpuOptions: threads must be in 0..1024 (0: every hardware thread), got " +
                                std::to_string(options.threads));
  threads_ = options.threads > 0 ? options.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const ModelConfig& c = config_;
  c.validate(file.path());
  if (options.kv_bits < 0 || options.kv_bits > 8)
    throw std::invalid_argument("CpuOptions: kv_bits must be 0 (off) or 1..8, got " + std::to_string(options.kv_bits));
  if (options.kv_bits > 0 && (c.head_dim < 2 || c.head_dim > 1024 || (c.head_dim & (c.head_dim - 1))))
    throw std::invalid_argument(file.path() + ": a PolarQuant KV cache needs a power-of-two head size (2..1024), the model has " +
                                std::to_string(c.head_dim));
  if (!(options.kv_noise >= 0.0f && options.kv_noise <= 0.1f))
    throw std::invalid_argument("CpuOptions: kv_noise must be in [0, 0.1], got " + std::to_string(options.kv_noise));
  inv_freq_ = rope_inverse_frequencies(c);

  w_.layers.resize(static_cast<size_t>(c.n_layers));
  for (const model::TensorSpec& spec : model::model_tensors(c)) {
    std::vector<float> v = load_tensor(file, spec);
    LayerWeights* l = spec.layer >= 0 ? &w_.layers[static_cast<size_t>(spec.layer)] : nullptr;
    switch (spec.role) {
      case Role::embed: w_.embed = std::move(v); break;
      case Role::attn_norm: l->attn_norm = std::move(v); break;
      case Role::attn_q: l->wq = std::move(v); break;
      case Role::attn_k: l->wk = std::move(v); break;
      case Role::attn_v: l->wv = std::move(v); break;
      case Role::attn_o: l->wo = std::move(v); break;
      case Role::q_bias: l->q_bias = std::move(v); break;
      case Role::k_bias: l->k_bias = std::move(v); break;
      case Role::v_bias: l->v_bias = std::move(v); break;
      case Role::o_bias: l->o_bias = std::move(v); break;
      case Role::q_norm: l->q_norm = std::move(v); break;
      case Role::k_norm: l->k_norm = std::move(v); break;
      case Role::mlp_norm: l->mlp_norm = std::move(v); break;
      case Role::mlp_gate: l->w_gate = std::move(v); break;
      case Role::mlp_up: l->w_up = std::move(v); break;
      case Role::mlp_down: l->w_down = std::move(v); break;
      case Role::final_norm: w_.final_norm = std::move(v); break;
      case Role::lm_head: w_.lm_head = std::move(v); break;
    }
  }

  init_state(s_);
}

void CpuModel::init_state(RunState& s) const {
  const ModelConfig& c = config_;
  const auto dim = static_cast<size_t>(c.dim), hidden = static_cast<size_t>(c.hidden_dim);
  const auto q_dim = static_cast<size_t>(c.n_heads * c.head_dim), kv_dim = static_cast<size_t>(c.n_kv_heads * c.head_dim);
  s.x.resize(dim);
  s.xb.resize(dim);
  s.q.resize(q_dim);
  s.k.resize(kv_dim);
  s.v.resize(kv_dim);
  s.att.resize(q_dim);
  s.proj.resize(dim);
  s.gate.resize(hidden);
  s.up.resize(hidden);
  s.cos.resize(inv_freq_.size());
  s.sin.resize(inv_freq_.size());
  s.logits.resize(static_cast<size_t>(c.vocab_size));
  s.key_cache.resize(static_cast<size_t>(c.n_layers));
  s.value_cache.resize(static_cast<size_t>(c.n_layers));
}

void CpuModel::reset() { cached_ = 0; }

CpuModel::Sequence CpuModel::new_sequence() const {
  Sequence q;
  init_state(q.s_);
  return q;
}

// For the duration of a call the model's state is the sequence's (swapped: no copy), then back.
struct CpuModel::UseSequence {
  CpuModel& m;
  Sequence& q;
  UseSequence(CpuModel& model, Sequence& seq) : m(model), q(seq) { swap(); }
  ~UseSequence() { swap(); }
  void swap() {
    std::swap(m.s_, q.s_);
    std::swap(m.cached_, q.cached_);
  }
};

std::span<const float> CpuModel::forward(Sequence& seq, int32_t token, int32_t pos) {
  UseSequence use(*this, seq);
  return forward(token, pos);
}

std::span<const float> CpuModel::prefill(Sequence& seq, std::span<const int32_t> tokens, int32_t pos0) {
  UseSequence use(*this, seq);
  return prefill(tokens, pos0);
}

void CpuModel::check_token(int32_t token, const char* what) const {
  if (token < 0 || token >= config_.vocab_size)
    throw std::out_of_range(std::string(what) + ": token " + std::to_string(token) + " is outside the vocabulary [0, " +
                            std::to_string(config_.vocab_size) + ")");
}

// Positions pos .. pos+count-1 must lie inside the context and follow the cached ones.
void CpuModel::check_position(int32_t pos, int64_t count, const char* what) const {
  if (pos < 0) throw std::out_of_range(std::string(what) + ": position " + std::to_string(pos) + " is negative");
  if (pos + count > config_.max_seq_len)
    throw std::out_of_range(std::string(what) + ": position " + std::to_string(pos + count - 1) +
                            " is outside the context [0, " + std::to_string(config_.max_seq_len) +
                            ") (max_seq_len of the model)");
  if (pos > cached_)
    throw std::out_of_range(std::string(what) + ": position " + std::to_string(pos) + " needs positions " +
                            std::to_string(cached_) + ".." + std::to_string(pos - 1) +
                            " in the KV cache first (only 0.." + std::to_string(cached_ - 1) + " are cached; after reset(), start at 0)");
}

// The KV cache grows with the positions used (doubling), up to max_seq_len.
void CpuModel::grow_cache(int64_t positions) {
  if (positions <= s_.cache_capacity) return;
  const int64_t capacity = std::min(config_.max_seq_len, std::max({positions, 2 * s_.cache_capacity, int64_t{64}}));
  const auto n = static_cast<size_t>(capacity * config_.n_kv_heads * config_.head_dim);
  try {
    for (int64_t l = 0; l < config_.n_layers; ++l) {
      s_.key_cache[static_cast<size_t>(l)].resize(n);
      s_.value_cache[static_cast<size_t>(l)].resize(n);
    }
    s_.scores.resize(static_cast<size_t>(capacity));
  } catch (const std::bad_alloc&) {
    throw std::runtime_error("CpuModel: out of memory growing the KV cache to " + std::to_string(capacity) +
                             " positions (" + std::to_string(2 * n * sizeof(float) * static_cast<size_t>(config_.n_layers)) +
                             " bytes)");
  }
  s_.cache_capacity = capacity;
}

std::span<const float> CpuModel::forward(int32_t token, int32_t pos) {
  check_token(token, "CpuModel::forward");
  check_position(pos, 1, "CpuModel::forward");
  grow_cache(int64_t{pos} + 1);
  const ModelConfig& c = config_;
  RunState& s = s_;
  const int64_t dim = c.dim, hidden = c.hidden_dim, hd = c.head_dim;
  const int64_t q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd;
  const double eps = c.rms_norm_eps;
  const Parallel par{threads_, options_.parallel_min_work};
  // Sliding window: the current position and the sliding_window - 1 before it.
  const int64_t first = c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;

  embed(s.x.data(), w_.embed.data(), token, dim);
  rope_rotation(s.cos.data(), s.sin.data(), inv_freq_, pos);

  for (int64_t layer = 0; layer < c.n_layers; ++layer) {
    const LayerWeights& w = w_.layers[static_cast<size_t>(layer)];
    float* key_cache = s.key_cache[static_cast<size_t>(layer)].data();
    float* value_cache = s.value_cache[static_cast<size_t>(layer)].data();

    // Attention block.
    rmsnorm(s.xb.data(), s.x.data(), w.attn_norm.data(), dim, eps);
    matmul(s.q.data(), s.xb.data(), w.wq.data(), q_dim, dim, par);
    matmul(s.k.data(), s.xb.data(), w.wk.data(), kv_dim, dim, par);
    matmul(s.v.data(), s.xb.data(), w.wv.data(), kv_dim, dim, par);
    if (c.qkv_bias) {
      add(s.q.data(), w.q_bias.data(), q_dim);
      add(s.k.data(), w.k_bias.data(), kv_dim);
      add(s.v.data(), w.v_bias.data(), kv_dim);
    }
    if (c.qk_norm) {
      head_rmsnorm(s.q.data(), c.n_heads, hd, w.q_norm.data(), eps);
      head_rmsnorm(s.k.data(), c.n_kv_heads, hd, w.k_norm.data(), eps);
    }
    rope(s.q.data(), c.n_heads, hd, s.cos.data(), s.sin.data());
    rope(s.k.data(), c.n_kv_heads, hd, s.cos.data(), s.sin.data());
    if (options_.kv_noise > 0.0f) {
      const auto seed = 2 * (static_cast<uint64_t>(layer) * static_cast<uint64_t>(c.max_seq_len) + static_cast<uint64_t>(pos));
      perturb(s.k.data(), kv_dim, options_.kv_noise, seed);
      perturb(s.v.data(), kv_dim, options_.kv_noise, seed + 1);
    }
    store_kv(key_cache, value_cache, s.k.data(), s.v.data(), pos, kv_dim, hd, options_.kv_fp16, options_.kv_bits);
    attention(s.att.data(), s.q.data(), key_cache, value_cache, s.scores.data(), first, pos, c);
    matmul(s.proj.data(), s.att.data(), w.wo.data(), dim, q_dim, par);
    if (c.o_bias) add(s.proj.data(), w.o_bias.data(), dim);
    add(s.x.data(), s.proj.data(), dim);

    // MLP block.
    rmsnorm(s.xb.data(), s.x.data(), w.mlp_norm.data(), dim, eps);
    matmul(s.gate.data(), s.xb.data(), w.w_gate.data(), hidden, dim, par);
    matmul(s.up.data(), s.xb.data(), w.w_up.data(), hidden, dim, par);
    swiglu(s.gate.data(), s.up.data(), hidden);
    matmul(s.proj.data(), s.gate.data(), w.w_down.data(), dim, hidden, par);
    add(s.x.data(), s.proj.data(), dim);
  }

  rmsnorm(s.xb.data(), s.x.data(), w_.final_norm.data(), dim, eps);
  const std::vector<float>& classifier = c.tie_word_embeddings ? w_.embed : w_.lm_head;
  matmul(s.logits.data(), s.xb.data(), classifier.data(), c.vocab_size, dim, par);

  cached_ = pos + 1;
  return s.logits;
}

std::span<const float> CpuModel::prefill(std::span<const int32_t> tokens, int32_t pos0) {
  if (tokens.empty()) throw std::invalid_argument("CpuModel::prefill: no tokens");
  if (tokens.size() > static_cast<size_t>(config_.max_seq_len))
    throw std::out_of_range("CpuModel::prefill: " + std::to_string(tokens.size()) + " tokens do not fit the context (" +
                            std::to_string(config_.max_seq_len) + ")");
  check_position(pos0, static_cast<int64_t>(tokens.size()), "CpuModel::prefill");
  for (int32_t t : tokens) check_token(t, "CpuModel::prefill");
  std::span<const float> logits;
  for (size_t i = 0; i < tokens.size(); ++i) logits = forward(tokens[i], pos0 + static_cast<int32_t>(i));
  return logits;
}

}  // namespace pqvk::llm
