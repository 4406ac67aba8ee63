#include "model/config.h"

#include <cmath>
#include <numbers>
#include <set>

#include "model/error.h"
#include "model/json_fields.h"

namespace pqvk::model {

namespace {

constexpr int64_t kMaxDim = int64_t{1} << 20;      // hidden and MLP sizes
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxSeq = int64_t{1} << 26;

const char* const kArchitectures[] = {"llama", "mistral", "qwen2", "qwen3"};

json rope_scaling_json(const RopeScaling& r) {
  if (r.type == "none") return nullptr;
  json j = {{"type", r.type}, {"factor", r.factor}};
  if (r.type == "llama3") {
    j["low_freq_factor"] = r.low_freq_factor;
    j["high_freq_factor"] = r.high_freq_factor;
    j["original_max_position_embeddings"] = r.original_max_position_embeddings;
  }
  return j;
}

RopeScaling rope_scaling_from_json(const json& j, const std::string& where) {
  RopeScaling r;
  if (j.is_null()) return r;
  const std::string w = where + ": rope_scaling";
  require_object(j, w);
  r.type = get_string(j, "type", w);
  if (r.type == "none") return r;
  if (r.type != "linear" && r.type != "llama3")
    model_fail(w, "unsupported type '" + r.type + "' (supported: none, linear, llama3)");
  r.factor = get_number(j, "factor", w);
  if (r.factor < 1.0) model_fail(w, "factor must be >= 1");
  if (r.type == "llama3") {
    r.low_freq_factor = get_number(j, "low_freq_factor", w);
    r.high_freq_factor = get_number(j, "high_freq_factor", w);
    r.original_max_position_embeddings = get_int(j, "original_max_position_embeddings", w, 1, kMaxSeq);
    if (!(r.low_freq_factor > 0.0) || !(r.high_freq_factor > r.low_freq_factor))
      model_fail(w, "needs 0 < low_freq_factor < high_freq_factor");
  }
  return r;
}

}  // namespace

json ModelConfig::to_json() const {
  return {{"architecture", architecture}, {"dim", dim}, {"hidden_dim", hidden_dim}, {"n_layers", n_layers},
          {"n_heads", n_heads}, {"n_kv_heads", n_kv_heads}, {"head_dim", head_dim}, {"vocab_size", vocab_size},
          {"max_seq_len", max_seq_len}, {"rope_theta", rope_theta}, {"rope_scaling", rope_scaling_json(rope_scaling)},
          {"rms_norm_eps", rms_norm_eps}, {"tie_word_embeddings", tie_word_embeddings}, {"qkv_bias", qkv_bias},
          {"o_bias", o_bias}, {"qk_norm", qk_norm}, {"sliding_window", sliding_window}, {"bos_id", bos_id},
          {"eos_ids", eos_ids}, {"hidden_act", "silu"}};
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& where) {
  require_object(j, where);
  ModelConfig c;
  c.architecture = get_string(j, "architecture", where);
  c.dim = get_int(j, "dim", where, 1, kMaxDim);
  c.hidden_dim = get_int(j, "hidden_dim", where, 1, kMaxDim);
  c.n_layers = get_int(j, "n_layers", where, 1, kMaxLayers);
  c.n_heads = get_int(j, "n_heads", where, 1, kMaxHeads);
  c.n_kv_heads = get_int(j, "n_kv_heads", where, 1, kMaxHeads);
  c.head_dim = get_int(j, "head_dim", where, 2, 1024);
  c.vocab_size = get_int(j, "vocab_size", where, 1, kMaxVocab);
  c.max_seq_len = get_int(j, "max_seq_len", where, 1, kMaxSeq);
  c.rope_theta = get_number(j, "rope_theta", where);
  c.rope_scaling = rope_scaling_from_json(j.contains("rope_scaling") ? j["rope_scaling"] : json(), where);
  c.rms_norm_eps = get_number(j, "rms_norm_eps", where);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", where);
  c.qkv_bias = get_bool(j, "qkv_bias", where);
  c.o_bias = get_bool(j, "o_bias", where);
  c.qk_norm = get_bool(j, "qk_norm", where);
  c.sliding_window = get_int(j, "sliding_window", where, 0, kMaxSeq);
  c.bos_id = get_int(j, "bos_id", where, -1, kMaxVocab - 1);
  const json& eos = require_key(j, "eos_ids", where);
  if (!eos.is_array()) model_fail(where + ": key 'eos_ids'", std::string("expected an array, got ") + json_type_name(eos));
  for (size_t i = 0; i < eos.size(); ++i)
    c.eos_ids.push_back(as_int(eos[i], where + ": eos_ids[" + std::to_string(i) + "]", 0, kMaxVocab - 1));
  if (get_string_or(j, "hidden_act", where, "silu") != "silu")
    model_fail(where, "hidden_act must be 'silu' (the only activation pqvk implements)");
  c.validate(where);
  return c;
}

void ModelConfig::validate(const std::string& where) const {
  bool known = false;
  for (const char* a : kArchitectures) known = known || architecture == a;
  if (!known) model_fail(where, "unknown architecture '" + architecture + "' (known: llama, mistral, qwen2, qwen3)");
  auto in_range = [&](const char* name, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
      model_fail(where, std::string(name) + " = " + std::to_string(v) + " is out of range [" + std::to_string(lo) +
                            ", " + std::to_string(hi) + "]");
  };
  in_range("dim", dim, 1, kMaxDim);
  in_range("hidden_dim", hidden_dim, 1, kMaxDim);
  in_range("n_layers", n_layers, 1, kMaxLayers);
  in_range("n_heads", n_heads, 1, kMaxHeads);
  in_range("n_kv_heads", n_kv_heads, 1, kMaxHeads);
  in_range("head_dim", head_dim, 2, 1024);
  in_range("vocab_size", vocab_size, 1, kMaxVocab);
  in_range("max_seq_len", max_seq_len, 1, kMaxSeq);
  if (n_heads % n_kv_heads != 0)
    model_fail(where, "n_heads (" + std::to_string(n_heads) + ") is not a multiple of n_kv_heads (" +
                          std::to_string(n_kv_heads) + ")");
  if (head_dim % 2 != 0) model_fail(where, "head_dim must be even (RoPE rotates pairs), got " + std::to_string(head_dim));
  if (!(rope_theta > 0.0)) model_fail(where, "rope_theta must be positive");
  if (!(rms_norm_eps > 0.0) || rms_norm_eps > 1.0) model_fail(where, "rms_norm_eps must be in (0, 1]");
  if (bos_id >= vocab_size) model_fail(where, "bos_id " + std::to_string(bos_id) + " is not below vocab_size");
  for (int64_t e : eos_ids)
    if (e < 0 || e >= vocab_size) model_fail(where, "eos id " + std::to_string(e) + " is not a token id");
}

// ---- RoPE -------------------------------------------------------------------------------------

std::vector<double> rope_inverse_frequencies(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  const RopeScaling& rs = c.rope_scaling;
  std::vector<double> f(static_cast<size_t>(half));
  for (int64_t j = 0; j < half; ++j) {
    double inv = std::pow(c.rope_theta, -2.0 * static_cast<double>(j) / static_cast<double>(c.head_dim));
    if (rs.type == "linear") {
      inv /= rs.factor;
    } else if (rs.type == "llama3") {
      // Llama 3.1: long wavelengths are slowed down by `factor`, short ones kept, and the band
      // between L / high_freq_factor and L / low_freq_factor interpolated.
      const double L = static_cast<double>(rs.original_max_position_embeddings);
      const double wavelength = 2.0 * std::numbers::pi / inv;
      if (wavelength > L / rs.low_freq_factor) {
        inv /= rs.factor;
      } else if (wavelength >= L / rs.high_freq_factor) {
        const double s = (L / wavelength - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        inv = (1.0 - s) * inv / rs.factor + s * inv;
      }
    }
    f[static_cast<size_t>(j)] = inv;
  }
  return f;
}

// ---- tokenizer -------------------------------------------------------------------------------

json TokenizerInfo::to_json() const {
  json added = json::array();
  for (const AddedToken& t : added_tokens) added.push_back({{"id", t.id}, {"content", t.content}, {"special", t.special}});
  json j = {{"kind", kind}, {"added_tokens", added}, {"options", options}};
  j["chat_template"] = chat_template.empty() ? json(nullptr) : json(chat_template);
  j["chat_templates"] = chat_templates;
  return j;
}

TokenizerInfo TokenizerInfo::from_json(const json& j, const std::string& where) {
  require_object(j, where);
  TokenizerInfo t;
  t.kind = get_string(j, "kind", where);
  if (t.kind != "none" && t.kind != "sentencepiece" && t.kind != "bpe" && t.kind != "llama2c")
    model_fail(where, "unknown tokenizer kind '" + t.kind + "' (known: none, sentencepiece, bpe, llama2c)");
  if (has_key(j, "added_tokens")) {
    const json& a = j["added_tokens"];
    if (!a.is_array()) model_fail(where + ": added_tokens", "expected an array");
    std::set<int64_t> ids;
    for (size_t i = 0; i < a.size(); ++i) {
      const std::string w = where + ": added_tokens[" + std::to_string(i) + "]";
      AddedToken tok;
      tok.id = get_int(a[i], "id", w, 0, kMaxVocab - 1);
      tok.content = get_string(a[i], "content", w);
      tok.special = get_bool_or(a[i], "special", w, true);
      if (!ids.insert(tok.id).second) model_fail(w, "duplicate id " + std::to_string(tok.id));
      t.added_tokens.push_back(std::move(tok));
    }
  }
  t.chat_template = get_string_or(j, "chat_template", where, "");
  if (has_key(j, "chat_templates")) {
    t.chat_templates = j["chat_templates"];
    require_object(t.chat_templates, where + ": chat_templates");
    for (const auto& [name, tmpl] : t.chat_templates.items())
      if (!tmpl.is_string()) model_fail(where + ": chat_templates['" + name + "']", "expected a string");
  }
  if (has_key(j, "options")) {
    t.options = j["options"];
    require_object(t.options, where + ": options");
  }
  if (t.kind == "llama2c") get_int(t.options, "max_token_length", where + ": options", 0, 1 << 20);
  return t;
}

std::vector<std::string> tokenizer_tensor_names(const std::string& kind) {
  if (kind == "sentencepiece") return {"tokenizer.model"};
  if (kind == "bpe") return {"tokenizer.vocab", "tokenizer.merges"};
  if (kind == "llama2c") return {"tokenizer.vocab", "tokenizer.scores"};
  return {};
}

// ---- tensors ---------------------------------------------------------------------------------

const char* role_name(Role r) {
  switch (r) {
    case Role::embed: return "embed";
    case Role::attn_norm: return "attn_norm";
    case Role::attn_q: return "attn_q";
    case Role::attn_k: return "attn_k";
    case Role::attn_v: return "attn_v";
    case Role::attn_o: return "attn_o";
    case Role::q_bias: return "q_bias";
    case Role::k_bias: return "k_bias";
    case Role::v_bias: return "v_bias";
    case Role::o_bias: return "o_bias";
    case Role::q_norm: return "q_norm";
    case Role::k_norm: return "k_norm";
    case Role::mlp_norm: return "mlp_norm";
    case Role::mlp_gate: return "mlp_gate";
    case Role::mlp_up: return "mlp_up";
    case Role::mlp_down: return "mlp_down";
    case Role::final_norm: return "final_norm";
    case Role::lm_head: return "lm_head";
  }
  return "?";
}

bool is_matrix(Role r) {
  switch (r) {
    case Role::embed: case Role::attn_q: case Role::attn_k: case Role::attn_v: case Role::attn_o:
    case Role::mlp_gate: case Role::mlp_up: case Role::mlp_down: case Role::lm_head: return true;
    default: return false;
  }
}

std::vector<TensorSpec> model_tensors(const ModelConfig& c) {
  using S = std::vector<uint64_t>;
  const auto dim = static_cast<uint64_t>(c.dim), hid = static_cast<uint64_t>(c.hidden_dim);
  const auto hd = static_cast<uint64_t>(c.head_dim);
  const uint64_t q_out = static_cast<uint64_t>(c.n_heads) * hd, kv_out = static_cast<uint64_t>(c.n_kv_heads) * hd;
  std::vector<TensorSpec> t;
  t.push_back({"embed", Role::embed, -1, S{static_cast<uint64_t>(c.vocab_size), dim}});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    t.push_back({p + "attn_norm", Role::attn_norm, l, S{dim}});
    t.push_back({p + "attn.q", Role::attn_q, l, S{q_out, dim}});
    t.push_back({p + "attn.k", Role::attn_k, l, S{kv_out, dim}});
    t.push_back({p + "attn.v", Role::attn_v, l, S{kv_out, dim}});
    t.push_back({p + "attn.o", Role::attn_o, l, S{dim, q_out}});
    if (c.qkv_bias) {
      t.push_back({p + "attn.q_bias", Role::q_bias, l, S{q_out}});
      t.push_back({p + "attn.k_bias", Role::k_bias, l, S{kv_out}});
      t.push_back({p + "attn.v_bias", Role::v_bias, l, S{kv_out}});
    }
    if (c.o_bias) t.push_back({p + "attn.o_bias", Role::o_bias, l, S{dim}});
    if (c.qk_norm) {
      t.push_back({p + "attn.q_norm", Role::q_norm, l, S{hd}});
      t.push_back({p + "attn.k_norm", Role::k_norm, l, S{hd}});
    }
    t.push_back({p + "mlp_norm", Role::mlp_norm, l, S{dim}});
    t.push_back({p + "mlp.gate", Role::mlp_gate, l, S{hid, dim}});
    t.push_back({p + "mlp.up", Role::mlp_up, l, S{hid, dim}});
    t.push_back({p + "mlp.down", Role::mlp_down, l, S{dim, hid}});
  }
  t.push_back({"final_norm", Role::final_norm, -1, S{dim}});
  if (!c.tie_word_embeddings) t.push_back({"lm_head", Role::lm_head, -1, S{static_cast<uint64_t>(c.vocab_size), dim}});
  return t;
}

namespace {

// Each role's tensor name in HuggingFace's and in llama.cpp's (GGUF) convention; for the roles
// of a layer, the part after the layer's prefix.
struct RoleNames {
  Role role;
  const char* hf;
  const char* gguf;
};
constexpr RoleNames kRoleNames[] = {
    {Role::embed, "model.embed_tokens.weight", "token_embd.weight"},
    {Role::attn_norm, "input_layernorm.weight", "attn_norm.weight"},
    {Role::attn_q, "self_attn.q_proj.weight", "attn_q.weight"},
    {Role::attn_k, "self_attn.k_proj.weight", "attn_k.weight"},
    {Role::attn_v, "self_attn.v_proj.weight", "attn_v.weight"},
    {Role::attn_o, "self_attn.o_proj.weight", "attn_output.weight"},
    {Role::q_bias, "self_attn.q_proj.bias", "attn_q.bias"},
    {Role::k_bias, "self_attn.k_proj.bias", "attn_k.bias"},
    {Role::v_bias, "self_attn.v_proj.bias", "attn_v.bias"},
    {Role::o_bias, "self_attn.o_proj.bias", "attn_output.bias"},
    {Role::q_norm, "self_attn.q_norm.weight", "attn_q_norm.weight"},
    {Role::k_norm, "self_attn.k_norm.weight", "attn_k_norm.weight"},
    {Role::mlp_norm, "post_attention_layernorm.weight", "ffn_norm.weight"},
    {Role::mlp_gate, "mlp.gate_proj.weight", "ffn_gate.weight"},
    {Role::mlp_up, "mlp.up_proj.weight", "ffn_up.weight"},
    {Role::mlp_down, "mlp.down_proj.weight", "ffn_down.weight"},
    {Role::final_norm, "model.norm.weight", "output_norm.weight"},
    {Role::lm_head, "lm_head.weight", "output.weight"}};

std::string name_in(const TensorSpec& t, const char* RoleNames::*convention, const std::string& layer_prefix) {
  for (const RoleNames& r : kRoleNames)
    if (r.role == t.role) return t.layer < 0 ? std::string(r.*convention) : layer_prefix + r.*convention;
  return t.name;
}

}  // namespace

std::string hf_name(const TensorSpec& t) { return name_in(t, &RoleNames::hf, "model.layers." + std::to_string(t.layer) + "."); }

std::string gguf_name(const TensorSpec& t) { return name_in(t, &RoleNames::gguf, "blk." + std::to_string(t.layer) + "."); }

}  // namespace pqvk::model
