// GGUF models (llama.cpp's format; gguf.h reads it) as a SourceModel.
//
// Architectures (general.architecture): "llama" (Llama 1/2/3.x and Mistral, which llama.cpp
// converts to llama), "qwen2" (q/k/v biases), "qwen3" (q/k norms). Hyperparameters come from
// the `<arch>.*` keys: embedding_length, feed_forward_length, block_count, attention.head_count
// (_kv), attention.key_length (head_dim; default embedding_length / head_count),
// context_length, rope.freq_base, rope.scaling.type / factor (or the older rope.scale_linear),
// attention.layer_norm_rms_epsilon, attention.sliding_window (llama); the vocabulary size from
// token_embd.weight; tied embeddings when there is no output.weight; Llama 3.1's RoPE scaling
// from the rope_freqs.weight tensor llama.cpp stores for it (per-frequency divisors, from which
// the llama3 parameters are recovered and checked). Tensor names map one to one
// (token_embd, blk.N.attn_q / attn_k / attn_v / attn_output (.bias), attn_q_norm, attn_k_norm,
// attn_norm, ffn_norm, ffn_gate / ffn_up / ffn_down, output_norm, output).
//
// llama.cpp applies RoPE to interleaved pairs for llama models and so stores the rows of
// attn_q and attn_k (and their biases) of each head permuted from HuggingFace's rotate-half
// order (row 2i + t of a head = HuggingFace row t * head_dim/2 + i); the loaders undo it.
// qwen2 / qwen3 files keep HuggingFace's order (llama.cpp's "neox" RoPE).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numbers>
#include <set>

#include "model/checked_math.h"
#include "model/error.h"
#include "model/gguf.h"
#include "model/source.h"

namespace pqvk::model {

namespace {

constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxSeq = int64_t{1} << 26;
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr const char* kRopeFreqs = "rope_freqs.weight";

// The metadata of one architecture, "<arch>.<key>", with the errors naming the key.
class ArchKeys {
 public:
  ArchKeys(const GgufFile& f, const std::string& arch) : f_(f), prefix_(arch + ".") {}
  std::string key(const std::string& k) const { return prefix_ + k; }
  std::optional<int64_t> uint(const std::string& k, int64_t lo, int64_t hi) const {
    const std::optional<uint64_t> v = f_.get_uint(key(k), static_cast<uint64_t>(hi));
    if (v && static_cast<int64_t>(*v) < lo)
      model_fail(f_.where_key(key(k)), std::to_string(*v) + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v ? std::optional<int64_t>(static_cast<int64_t>(*v)) : std::nullopt;
  }
  int64_t need_uint(const std::string& k, int64_t lo, int64_t hi) const {
    const std::optional<int64_t> v = uint(k, lo, hi);
    if (!v) missing(k);
    return *v;
  }
  // A float key; an f32 value as the shortest decimal that reads back as the same f32
  // (1e-05 rather than 9.99999974737875e-06), so configs read the same as from config.json.
  std::optional<double> number(const std::string& k) const {
    const std::optional<double> v = f_.get_float(key(k));
    if (!v || f_.find(key(k))->type != GgufValueType::f32) return v;
    const float x = static_cast<float>(*v);
    char buf[32];
    for (int digits = 1; digits <= 9; ++digits) {
      std::snprintf(buf, sizeof buf, "%.*g", digits, static_cast<double>(x));
      if (std::strtof(buf, nullptr) == x) return std::strtod(buf, nullptr);
    }
    return v;
  }
  [[noreturn]] void missing(const std::string& k) const { model_fail(f_.path(), "missing key '" + key(k) + "'"); }

 private:
  const GgufFile& f_;
  std::string prefix_;
};

// Llama 3.1's scaling from llama.cpp's per-frequency divisors r[j] (inverse frequency j is
// divided by r[j]): 1 for wavelengths w below L / high_freq_factor, `factor` above
// L / low_freq_factor, and 1 / ((1 - s) / factor + s) between, s = (L / w - low) / (high - low)
// linear in 1 / w. factor is the divisor of the longest wavelength; a least-squares line
// through the divisors of the transition band gives s = a / w - b, i.e. L / (high - low) = a and
// low / (high - low) = b. Only these ratios matter, so L is chosen for low_freq_factor = 1
// (Llama 3.x's value; L then comes out as its 8192). The result must reproduce every divisor.
RopeScaling llama3_from_divisors(const std::vector<float>& r, const ModelConfig& c, const std::string& where) {
  constexpr double kTol = 1e-5;
  RopeScaling rs;
  const double factor = r.back();
  bool scaled = false;
  for (float x : r) scaled = scaled || std::fabs(x - 1.0) > kTol;
  if (!scaled) return rs;  // all 1: no scaling
  auto inv_freq = [&](size_t j) { return std::pow(c.rope_theta, -2.0 * static_cast<double>(j) / static_cast<double>(c.head_dim)); };
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int n = 0;
  for (size_t j = 0; j < r.size(); ++j) {
    if (!(r[j] > 1.0 + kTol && r[j] < factor - kTol)) continue;
    const double x = inv_freq(j) / (2.0 * std::numbers::pi);  // 1 / wavelength
    const double s = (1.0 / r[j] - 1.0 / factor) / (1.0 - 1.0 / factor);
    sx += x, sy += s, sxx += x * x, sxy += x * s, ++n;
  }
  const double det = n * sxx - sx * sx;
  if (n < 2 || !(det > 0))
    model_fail(where, "cannot recover Llama 3 RoPE scaling from these divisors: fewer than two frequencies between the "
                      "unscaled and the fully scaled ones");
  const double a = (n * sxy - sx * sy) / det, b = (sx * a - sy) / n;
  const double L = a / b;
  if (!(a > 0 && b > 0) || !(L >= 1 && L <= static_cast<double>(kMaxSeq)))
    model_fail(where, "the divisors are not Llama 3 RoPE scaling (no rising transition band)");
  rs.type = "llama3";
  rs.factor = factor;
  rs.original_max_position_embeddings = std::llround(L);
  const double Lr = static_cast<double>(rs.original_max_position_embeddings);
  rs.low_freq_factor = b * Lr / a;
  rs.high_freq_factor = rs.low_freq_factor + Lr / a;
  ModelConfig scaled_config = c;
  scaled_config.rope_scaling = rs;
  const std::vector<double> f = rope_inverse_frequencies(scaled_config);
  for (size_t j = 0; j < r.size(); ++j) {
    const double divisor = inv_freq(j) / f[j];
    if (!(std::fabs(divisor - r[j]) <= 1e-4 * r[j]))
      model_fail(where, "element " + std::to_string(j) + " = " + std::to_string(r[j]) + " does not follow Llama 3 RoPE scaling (the " +
                            "fitted factor " + std::to_string(rs.factor) + ", low " + std::to_string(rs.low_freq_factor) + ", high " +
                            std::to_string(rs.high_freq_factor) + ", L " + std::to_string(rs.original_max_position_embeddings) +
                            " give " + std::to_string(divisor) + ")");
  }
  return rs;
}

RopeScaling rope_scaling_of(const GgufFile& f, const ArchKeys& k) {
  RopeScaling rs;
  std::string type = f.get_string(k.key("rope.scaling.type")).value_or("");
  std::optional<double> factor = k.number("rope.scaling.factor");
  if (type.empty() && f.find(k.key("rope.scale_linear"))) {  // the older key
    type = "linear";
    factor = k.number("rope.scale_linear");
  }
  if (type.empty() || type == "none") return rs;
  if (type != "linear")
    model_fail(f.where_key(k.key("rope.scaling.type")), "RoPE scaling '" + type + "' is not supported (none, linear; Llama 3's through " +
                                                           kRopeFreqs + ")");
  if (!factor) k.missing("rope.scaling.factor");
  if (!(*factor >= 1.0)) model_fail(f.where_key(k.key("rope.scaling.factor")), "must be >= 1");
  if (*factor == 1.0) return rs;
  rs.type = "linear";
  rs.factor = *factor;
  return rs;
}

ModelConfig gguf_model_config(const GgufFile& f, const std::string& arch) {
  const ArchKeys k(f, arch);
  ModelConfig c;
  c.architecture = arch;
  c.dim = k.need_uint("embedding_length", 1, kMaxDim);
  c.hidden_dim = k.need_uint("feed_forward_length", 1, kMaxDim);
  c.n_layers = k.need_uint("block_count", 1, 4096);
  c.n_heads = k.need_uint("attention.head_count", 1, 4096);
  c.n_kv_heads = k.uint("attention.head_count_kv", 1, 4096).value_or(c.n_heads);
  if (const auto hd = k.uint("attention.key_length", 2, 1024)) {
    c.head_dim = *hd;
  } else {
    if (c.dim % c.n_heads != 0)
      model_fail(f.path(), k.key("embedding_length") + " is not a multiple of " + k.key("attention.head_count") +
                               " and " + k.key("attention.key_length") + " is not given");
    c.head_dim = c.dim / c.n_heads;
  }
  if (const auto vd = k.uint("attention.value_length", 1, 1024); vd && *vd != c.head_dim)
    model_fail(f.where_key(k.key("attention.value_length")), std::to_string(*vd) + " differs from the key length " +
                                                                std::to_string(c.head_dim) + " (not supported)");
  if (const auto rd = k.uint("rope.dimension_count", 1, 1024); rd && *rd != c.head_dim)
    model_fail(f.where_key(k.key("rope.dimension_count")), "RoPE over " + std::to_string(*rd) + " of the " + std::to_string(c.head_dim) +
                                                              " dimensions of a head is not supported (partial rotary)");
  if (const auto experts = k.uint("expert_count", 0, 1 << 16); experts && *experts > 0)
    model_fail(f.where_key(k.key("expert_count")), "a mixture of " + std::to_string(*experts) + " experts (not supported)");
  c.max_seq_len = k.need_uint("context_length", 1, kMaxSeq);
  c.rope_theta = k.number("rope.freq_base").value_or(10000.0);
  c.rope_scaling = rope_scaling_of(f, k);
  const std::optional<double> eps = k.number("attention.layer_norm_rms_epsilon");
  if (!eps) k.missing("attention.layer_norm_rms_epsilon");
  c.rms_norm_eps = *eps;
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  if (arch == "llama") {
    c.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
    c.o_bias = f.find_tensor("blk.0.attn_output.bias") != nullptr;
    c.sliding_window = k.uint("attention.sliding_window", 0, kMaxSeq).value_or(0);
  }
  c.qkv_bias = c.qkv_bias || arch == "qwen2";
  c.qk_norm = arch == "qwen3";
  return c;
}

}  // namespace

SourceModel import_gguf(std::shared_ptr<const GgufFile> file) {
  const GgufFile& f = *file;
  const std::string& path = f.path();
  const std::optional<std::string> arch = f.get_string("general.architecture");
  if (!arch) model_fail(path, "missing key 'general.architecture'");
  if (*arch != "llama" && *arch != "qwen2" && *arch != "qwen3")
    model_fail(f.where_key("general.architecture"), "architecture '" + *arch + "' is not supported (supported: llama -- " +
                                                        "Llama and Mistral --, qwen2, qwen3)");

  SourceModel m;
  m.path = path;
  m.format = "gguf";
  ModelConfig& c = m.config;
  c = gguf_model_config(f, *arch);
  const GgufTensor* embd = f.find_tensor("token_embd.weight");
  if (!embd) model_fail(path, "missing tensor 'token_embd.weight'");
  if (embd->dims.size() != 2 || embd->dims[1] > static_cast<uint64_t>(kMaxVocab))
    model_fail(f.where(*embd), "expected a matrix of at most 2^24 rows, got dimensions " + shape_string(embd->dims) + " (ne0 first)");
  c.vocab_size = static_cast<int64_t>(embd->dims[1]);
  if (const auto v = ArchKeys(f, *arch).uint("vocab_size", 1, kMaxVocab); v && *v != c.vocab_size)
    model_fail(f.where_key(*arch + ".vocab_size"), std::to_string(*v) + " but token_embd.weight has " + std::to_string(c.vocab_size) + " rows");

  // Special tokens: BOS, EOS and the ends of a turn / of a message (generation stops at each).
  auto special = [&](const char* key) {
    const std::optional<uint64_t> id = f.get_uint(key, static_cast<uint64_t>(c.vocab_size - 1));
    return id ? static_cast<int64_t>(*id) : int64_t{-1};
  };
  c.bos_id = special("tokenizer.ggml.bos_token_id");
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
    if (const int64_t id = special(key); id >= 0 && std::find(c.eos_ids.begin(), c.eos_ids.end(), id) == c.eos_ids.end())
      c.eos_ids.push_back(id);
  m.tokenizer = load_gguf_tokenizer(f, c.vocab_size);

  c.validate(path);
  std::set<std::string> used;
  if (const GgufTensor* rf = f.find_tensor(kRopeFreqs)) {
    if (*arch != "llama") model_fail(f.where(*rf), "per-frequency RoPE divisors are only supported for llama models");
    if (c.rope_scaling.type != "none") model_fail(f.where(*rf), "RoPE divisors together with " + c.rope_scaling.type + " scaling");
    if (rf->dims != std::vector<uint64_t>{static_cast<uint64_t>(c.head_dim / 2)})
      model_fail(f.where(*rf), "dimensions " + shape_string(rf->dims) + " but a head has " + std::to_string(c.head_dim / 2) + " frequencies");
    c.rope_scaling = llama3_from_divisors(f.read_floats(*rf), c, f.where(*rf));
    used.insert(kRopeFreqs);
  }

  const bool permute_qk = *arch == "llama";
  for (const TensorSpec& spec : model_tensors(c)) {
    const std::string name = gguf_name(spec);
    const GgufTensor* t = f.find_tensor(name);
    if (!t) model_fail(path, "missing tensor '" + name + "' (the " + role_name(spec.role) + " of this " + *arch + " configuration)");
    if (t->shape() != spec.shape)
      model_fail(f.where(*t), "shape " + shape_string(t->shape()) + " but the configuration needs " + shape_string(spec.shape));
    used.insert(name);
    uint64_t heads = 0;
    if (permute_qk && (spec.role == Role::attn_q || spec.role == Role::q_bias)) heads = static_cast<uint64_t>(c.n_heads);
    if (permute_qk && (spec.role == Role::attn_k || spec.role == Role::k_bias)) heads = static_cast<uint64_t>(c.n_kv_heads);
    const uint64_t head_dim = static_cast<uint64_t>(c.head_dim), cols = spec.shape.size() > 1 ? spec.shape[1] : 1;
    auto load = [file, t, heads, head_dim, cols] {
      std::vector<float> w = file->read_floats(*t);
      return heads ? rope_rows_to_rotate_half(w, heads, head_dim, cols) : w;
    };
    m.tensors.push_back({spec, f.where(*t), load, nullptr});
  }
  for (const GgufTensor& t : f.tensors())
    if (!used.count(t.name))
      model_fail(f.where(t), "unexpected tensor: not part of a " + *arch + " model with this configuration");
  return m;
}

SourceModel import_gguf(const std::string& path) { return import_gguf(std::make_shared<const GgufFile>(GgufFile::open(path))); }

}  // namespace pqvk::model
