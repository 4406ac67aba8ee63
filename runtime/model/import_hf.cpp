// HuggingFace checkpoints: config.json + safetensors (one file or shards), F32/F16/BF16.
#include <set>

#include "model/error.h"
#include "model/files.h"
#include "model/hf_checkpoint.h"
#include "model/source.h"

namespace pqvk::model {

SourceModel import_huggingface(const std::string& dir_or_file) {
  const bool single_file = !is_directory(dir_or_file);
  const std::string dir = single_file ? parent_dir(dir_or_file) : dir_or_file;
  const std::string cfg_path = join_path(dir, "config.json");
  if (!file_exists(cfg_path)) model_fail(dir_or_file, "no config.json " + std::string(single_file ? "beside it" : "in it"));

  SourceModel m;
  m.path = dir_or_file;
  m.format = "huggingface";
  m.config = hf_model_config(read_json_file(cfg_path), cfg_path);
  const HfCheckpoint ck = single_file ? HfCheckpoint::open_file(dir_or_file) : HfCheckpoint::open_dir(dir);
  m.tokenizer = load_hf_tokenizer(dir, m.config.vocab_size);
  adopt_special_ids(m.config, m.tokenizer);
  m.config.validate(cfg_path);

  std::set<std::string> used;
  for (const TensorSpec& spec : model_tensors(m.config)) {
    const std::string name = hf_name(spec);
    const HfCheckpoint::Ref* ref = ck.find(name);
    if (!ref) model_fail(dir_or_file, "missing tensor '" + name + "' (the " + role_name(spec.role) + " of this config)");
    used.insert(name);
    m.tensors.push_back({spec, ref->where(), HfCheckpoint::float_loader(*ref, spec.shape), nullptr});
  }
  reject_unused(ck, used, m.config);
  return m;
}

}  // namespace pqvk::model
