#include "model/hf_checkpoint.h"

#include <cmath>

#include "model/checked_math.h"
#include "model/error.h"
#include "model/files.h"
#include "model/json_fields.h"

namespace pqvk::model {

namespace {

constexpr int64_t kMaxDim = int64_t{1} << 20;

struct Arch {
  const char* hf;        // architectures[0]
  const char* model_type;
  const char* name;      // ModelConfig::architecture
};
constexpr Arch kArchs[] = {{"LlamaForCausalLM", "llama", "llama"},
                           {"MistralForCausalLM", "mistral", "mistral"},
                           {"Qwen2ForCausalLM", "qwen2", "qwen2"},
                           {"Qwen3ForCausalLM", "qwen3", "qwen3"}};

std::string architecture_of(const json& cfg, const std::string& where) {
  if (has_key(cfg, "architectures")) {
    const json& a = cfg["architectures"];
    if (!a.is_array() || a.empty() || !a[0].is_string()) model_fail(where, "architectures must be a non-empty list of strings");
    const std::string hf = a[0].get<std::string>();
    for (const Arch& k : kArchs)
      if (hf == k.hf) return k.name;
    model_fail(where, "unsupported architecture '" + hf +
                          "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)");
  }
  const std::string mt = get_string(cfg, "model_type", where);
  for (const Arch& k : kArchs)
    if (mt == k.model_type) return k.name;
  model_fail(where, "unsupported model_type '" + mt + "'");
}

RopeScaling hf_rope_scaling(const json& cfg, const std::string& where) {
  RopeScaling r;
  if (!has_key(cfg, "rope_scaling")) return r;
  const json& j = cfg["rope_scaling"];
  const std::string w = where + ": rope_scaling";
  require_object(j, w);
  const std::string type = has_key(j, "rope_type") ? get_string(j, "rope_type", w) : get_string(j, "type", w);
  if (type == "default") return r;
  if (type != "llama3" && type != "linear")
    model_fail(w, "unsupported rope scaling type '" + type + "' (supported: default, linear, llama3)");
  r.type = type;
  r.factor = get_number(j, "factor", w);
  if (type == "llama3") {
    r.low_freq_factor = get_number(j, "low_freq_factor", w);
    r.high_freq_factor = get_number(j, "high_freq_factor", w);
    r.original_max_position_embeddings = get_int(j, "original_max_position_embeddings", w, 1, int64_t{1} << 26);
  }
  return r;
}

std::vector<int64_t> eos_ids_of(const json& cfg, const std::string& where) {
  if (!has_key(cfg, "eos_token_id")) return {};
  const json& e = cfg["eos_token_id"];
  if (!e.is_array()) return {as_int(e, where + ": eos_token_id", 0, INT32_MAX)};
  std::vector<int64_t> ids;
  for (size_t i = 0; i < e.size(); ++i) ids.push_back(as_int(e[i], where + ": eos_token_id[" + std::to_string(i) + "]", 0, INT32_MAX));
  return ids;
}

// A shard's file name from the index: a plain name inside the checkpoint directory.
std::string shard_path(const std::string& dir, const std::string& file, const std::string& where) {
  if (file.empty() || file.find('/') != std::string::npos || file.find('\\') != std::string::npos || file == "." || file == "..")
    model_fail(where, "shard file name '" + file + "' is not a plain file name");
  return join_path(dir, file);
}

}  // namespace

ModelConfig hf_model_config(const json& cfg, const std::string& where) {
  require_object(cfg, where);
  ModelConfig c;
  c.architecture = architecture_of(cfg, where);
  c.dim = get_int(cfg, "hidden_size", where, 1, kMaxDim);
  c.hidden_dim = get_int(cfg, "intermediate_size", where, 1, kMaxDim);
  c.n_layers = get_int(cfg, "num_hidden_layers", where, 1, 4096);
  c.n_heads = get_int(cfg, "num_attention_heads", where, 1, 4096);
  c.n_kv_heads = get_int_or(cfg, "num_key_value_heads", where, 1, 4096, c.n_heads);
  if (has_key(cfg, "head_dim")) {
    c.head_dim = get_int(cfg, "head_dim", where, 2, 1024);
  } else {
    if (c.dim % c.n_heads != 0) model_fail(where, "hidden_size is not a multiple of num_attention_heads and head_dim is not given");
    c.head_dim = c.dim / c.n_heads;
  }
  c.vocab_size = get_int(cfg, "vocab_size", where, 1, int64_t{1} << 24);
  c.max_seq_len = get_int(cfg, "max_position_embeddings", where, 1, int64_t{1} << 26);
  c.rope_theta = get_number_or(cfg, "rope_theta", where, 10000.0);
  c.rope_scaling = hf_rope_scaling(cfg, where);
  c.rms_norm_eps = get_number(cfg, "rms_norm_eps", where);
  c.tie_word_embeddings = get_bool_or(cfg, "tie_word_embeddings", where, false);
  const bool attention_bias = get_bool_or(cfg, "attention_bias", where, false);
  if (c.architecture == "qwen2") {
    c.qkv_bias = true;  // Qwen2 attention always has q/k/v biases and no output bias
  } else if (c.architecture != "mistral") {
    c.qkv_bias = c.o_bias = attention_bias;
  }
  c.qk_norm = c.architecture == "qwen3";
  if (c.architecture == "mistral") c.sliding_window = get_int_or(cfg, "sliding_window", where, 0, int64_t{1} << 26, 0);
  if (get_bool_or(cfg, "use_sliding_window", where, false))
    model_fail(where, "use_sliding_window = true is not supported (per-layer sliding windows)");
  if (get_string_or(cfg, "hidden_act", where, "silu") != "silu")
    model_fail(where, "hidden_act '" + get_string(cfg, "hidden_act", where) + "' is not supported (only silu)");
  c.bos_id = get_int_or(cfg, "bos_token_id", where, 0, INT32_MAX, -1);
  c.eos_ids = eos_ids_of(cfg, where);
  return c;
}

HfCheckpoint HfCheckpoint::open_file(const std::string& path) {
  HfCheckpoint ck;
  auto f = std::make_shared<SafetensorsFile>(path);
  for (const SafeTensor& t : f->tensors()) ck.tensors_[t.name] = {f, &t};
  return ck;
}

HfCheckpoint HfCheckpoint::open_dir(const std::string& dir) {
  const std::string single = join_path(dir, "model.safetensors");
  const std::string index_path = join_path(dir, "model.safetensors.index.json");
  if (file_exists(single)) return open_file(single);
  if (!file_exists(index_path))
    model_fail(dir, "no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)");
  const json index = read_json_file(index_path);
  const json& map = require_key(index, "weight_map", index_path);
  require_object(map, index_path + ": weight_map");
  HfCheckpoint ck;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
  for (const auto& [name, file_j] : map.items()) {
    const std::string w = index_path + ": weight_map['" + name + "']";
    if (!file_j.is_string()) model_fail(w, "expected a file name");
    const std::string path = shard_path(dir, file_j.get<std::string>(), w);
    auto& shard = shards[path];
    if (!shard) shard = std::make_shared<SafetensorsFile>(path);
    const SafeTensor* t = shard->find(name);
    if (!t) model_fail(path, "no tensor '" + name + "' although " + index_path + " places it there");
    ck.tensors_[name] = {shard, t};
  }
  return ck;
}

const HfCheckpoint::Ref* HfCheckpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> HfCheckpoint::names() const {
  std::vector<std::string> n;
  for (const auto& [name, ref] : tensors_) n.push_back(name);
  return n;
}

std::function<std::vector<float>()> HfCheckpoint::float_loader(const Ref& ref, const std::vector<uint64_t>& shape) {
  const std::string where = ref.where();
  const std::string& dt = ref.tensor->dtype;
  if (dt != "F32" && dt != "F16" && dt != "BF16")
    model_fail(where, "dtype " + dt + " is not supported for weights (F32, F16, BF16)");
  if (ref.tensor->shape != shape)
    model_fail(where, "shape " + shape_string(ref.tensor->shape) + " but the config needs " + shape_string(shape));
  return [ref, where] {
    std::vector<float> v = ref.file->read_floats(*ref.tensor);
    for (size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i])) model_fail(where, "element " + std::to_string(i) + " is not finite");
    return v;
  };
}

void reject_unused(const HfCheckpoint& ck, const std::set<std::string>& used, const ModelConfig& c) {
  for (const std::string& name : ck.names()) {
    if (used.count(name)) continue;
    if (name == "lm_head.weight" && c.tie_word_embeddings) continue;  // a copy of the embeddings
    if (name.ends_with(".rotary_emb.inv_freq")) continue;             // a RoPE buffer, recomputed
    model_fail(ck.find(name)->where(), "unexpected tensor: not part of a " + c.architecture +
                                           " model with this config (check config.json)");
  }
}

}  // namespace pqvk::model
