// The one exception type of runtime/model: every failure on bad input (a file, a tensor, a
// key, an option) is a ModelError whose message starts with what was being read, e.g.
//   "model.pqm: tensor 'layers.0.attn.q': offset 4096 + size 8192 is past the end (10000 bytes)".
#pragma once

#include <stdexcept>
#include <string>

namespace pqvk {

class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws ModelError("<where>: <what>").
[[noreturn]] inline void model_fail(const std::string& where, const std::string& what) {
  throw ModelError(where + ": " + what);
}

}  // namespace pqvk
