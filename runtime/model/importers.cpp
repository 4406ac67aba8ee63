// Input detection (open_source) and what the importers share.
#include "model/error.h"
#include "model/files.h"
#include "model/source.h"

namespace pqvk::model {

void adopt_special_ids(ModelConfig& c, const SourceTokenizer& t) {
  if (c.bos_id < 0 && t.bos_id >= 0 && t.bos_id < c.vocab_size) c.bos_id = t.bos_id;
  if (c.eos_ids.empty() && t.eos_id >= 0 && t.eos_id < c.vocab_size) c.eos_ids = {t.eos_id};
}

SourceModel open_source(const std::string& path, const ImportOptions& options) {
  const bool llama2c = !is_directory(path) && path.ends_with(".bin");
  if (!options.tokenizer_path.empty() && !llama2c)
    model_fail(options.tokenizer_path, "--tokenizer attaches a tokenizer to a llama2.c checkpoint only; " + path +
                                           " brings its own tokenizer files");
  if (is_directory(path)) {
    if (file_exists(join_path(path, "polar_config.json"))) return import_reference(path);
    if (file_exists(join_path(path, "config.json"))) return import_huggingface(path);
    model_fail(path, "neither a HuggingFace checkpoint (config.json) nor a PolarQuant reference checkpoint (polar_config.json)");
  }
  if (!file_exists(path)) model_fail(path, "no such file or directory");
  if (path.ends_with(".safetensors")) return import_huggingface(path);
  if (llama2c) return import_llama2c(path, options.tokenizer_path);
  model_fail(path, "unknown input (expected a directory, a .safetensors file or a llama2.c .bin)");
}

}  // namespace pqvk::model
