// libFuzzer target for GGUF input (built with PQVK_FUZZ=ON, run by tools/run-fuzz.sh): every
// input is opened as a GGUF file, each of its tensors decoded, then imported as a model (the
// hyperparameters, the tokenizer -- a "llama" vocabulary goes through libsentencepiece --, every
// tensor loaded). The only acceptable outcome of bad bytes is a pqvk::ModelError; anything else
// (a crash, a sanitizer report, another exception escaping) is a finding.
#include <cstdint>
#include <memory>

#include "model/error.h"
#include "model/gguf.h"
#include "model/source.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using pqvk::model::GgufFile;
  try {
    const auto f = std::make_shared<const GgufFile>(GgufFile::from_memory({data, size}, "fuzz.gguf"));
    for (const pqvk::model::GgufTensor& t : f->tensors()) {
      try {
        f->read_floats(t);
      } catch (const pqvk::ModelError&) {
      }
    }
    const pqvk::model::SourceModel m = pqvk::model::import_gguf(f);
    for (const pqvk::model::SourceTensor& t : m.tensors) t.load_floats();
  } catch (const pqvk::ModelError&) {
  }
  return 0;
}
