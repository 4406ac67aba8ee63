// Input detection (open_source) and what the importers share.
#include <algorithm>

#include "model/error.h"
#include "model/files.h"
#include "model/source.h"

namespace pqvk::model {

void adopt_special_ids(ModelConfig& c, const SourceTokenizer& t) {
  if (c.bos_id < 0 && t.bos_id >= 0 && t.bos_id < c.vocab_size) c.bos_id = t.bos_id;
  if (c.eos_ids.empty() && t.eos_id >= 0 && t.eos_id < c.vocab_size) c.eos_ids = {t.eos_id};
}

std::vector<float> rope_rows_to_rotate_half(const std::vector<float>& w, uint64_t heads, uint64_t head_dim, uint64_t cols) {
  std::vector<float> out(w.size());
  for (uint64_t h = 0; h < heads; ++h)
    for (uint64_t t = 0; t < 2; ++t)
      for (uint64_t i = 0; i < head_dim / 2; ++i) {
        const float* src = w.data() + (h * head_dim + 2 * i + t) * cols;
        std::copy(src, src + cols, out.data() + (h * head_dim + t * (head_dim / 2) + i) * cols);
      }
  return out;
}

namespace {

// A .gguf file, or any file whose first bytes are GGUF's magic.
bool looks_like_gguf(const std::string& path) {
  if (path.ends_with(".gguf")) return true;
  const MappedFile f(path);
  return f.size() >= 4 && std::equal(f.data(), f.data() + 4, "GGUF");
}

}  // namespace

SourceModel open_source(const std::string& path, const ImportOptions& options) {
  const bool gguf = file_exists(path) && looks_like_gguf(path);
  const bool llama2c = !gguf && !is_directory(path) && path.ends_with(".bin");
  if (!options.tokenizer_path.empty() && !llama2c)
    model_fail(options.tokenizer_path, "--tokenizer attaches a tokenizer to a llama2.c checkpoint only; " + path +
                                           " brings its own tokenizer files");
  if (is_directory(path)) {
    if (file_exists(join_path(path, "polar_config.json"))) return import_reference(path);
    if (file_exists(join_path(path, "config.json"))) return import_huggingface(path);
    model_fail(path, "neither a HuggingFace checkpoint (config.json) nor a PolarQuant reference checkpoint (polar_config.json)");
  }
  if (!file_exists(path)) model_fail(path, "no such file or directory");
  if (gguf) return import_gguf(path);
  if (path.ends_with(".safetensors")) return import_huggingface(path);
  if (llama2c) return import_llama2c(path, options.tokenizer_path);
  model_fail(path, "unknown input (expected a directory, a .safetensors file, a .gguf file or a llama2.c .bin)");
}

}  // namespace pqvk::model
