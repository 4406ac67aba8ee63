// HuggingFace checkpoints: config.json -> ModelConfig, and the safetensors of a directory
// (model.safetensors, or the shards named by model.safetensors.index.json) by tensor name.
// Shared by the HuggingFace and the PolarQuant-reference importers.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/safetensors.h"

namespace pqvk::model {

// config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM).
ModelConfig hf_model_config(const nlohmann::json& cfg, const std::string& where);

class HfCheckpoint {
 public:
  struct Ref {
    std::shared_ptr<SafetensorsFile> file;
    const SafeTensor* tensor = nullptr;
    std::string where() const { return file->path() + ": tensor '" + tensor->name + "'"; }
  };
  // A directory with model.safetensors or model.safetensors.index.json.
  static HfCheckpoint open_dir(const std::string& dir);
  // One safetensors file.
  static HfCheckpoint open_file(const std::string& path);

  const Ref* find(const std::string& name) const;
  std::vector<std::string> names() const;
  // A loader of a float tensor (F32/F16/BF16) that must have `shape`; checked now, read later.
  // Non-finite values are rejected when it runs.
  static std::function<std::vector<float>()> float_loader(const Ref& ref, const std::vector<uint64_t>& shape);

 private:
  std::map<std::string, Ref> tensors_;
};

// Throws naming the first tensor of the checkpoint that is neither in `used` nor ignorable
// (lm_head.weight of a tied model, rotary_emb.inv_freq buffers): nothing is silently dropped.
void reject_unused(const HfCheckpoint& ck, const std::set<std::string>& used, const ModelConfig& c);

}  // namespace pqvk::model
