// Converting a SourceModel into a .pqm file: quantization recipes, per-tensor quantization on a
// thread pool (rows split across threads), statistics, and the optional dequantized fp16
// safetensors copy. pq-quantize is a thin command line over quantize_model().
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/source.h"

namespace pqvk::model {

// Bits for a tensor of `role` under a recipe: "q2".."q8" (every matrix), or "mixed" (q/k/v 5,
// attention output 6, gate/up 3, down 4, embeddings 5, LM head 6). 0 for norms and biases
// (stored f32). Throws a ModelError for an unknown recipe.
int recipe_bits(const std::string& recipe, Role role);
bool is_valid_recipe(const std::string& recipe);

struct QuantizeOptions {
  std::string recipe = "q5";
  std::string method = "pq";  // pq | absmax | rot-uniform | lloyd | fp16 (matrices stored as f16)
  int block = 128;            // 64 | 128 | 256
  int threads = 0;            // 0: every hardware thread
  std::string dequant_out;    // "": none; else a .safetensors path for the dequantized fp16 weights
  // Called after each piece of work with the weights done so far (of total_weights), from
  // one thread at a time.
  std::function<void(uint64_t done, uint64_t total, const std::string& tensor)> progress;
};

struct TensorReport {
  std::string name;
  std::vector<uint64_t> shape;
  std::string storage;         // "pq", "absmax", ..., "f16", "f32", "imported pq"
  int bits = 0;                // 0 for f32/f16
  double bpw = 0.0;            // stored bits per weight (codes + scales; codebook excluded)
  double sqnr_db = 0.0;        // NaN when no original is known (imported), +inf when exact
  double rel_rmse = 0.0;       // ||w - w_q|| / ||w||
  double kurtosis_before = 0.0, kurtosis_after = 0.0;  // excess kurtosis of block coordinates; NaN for vectors
  uint64_t bytes = 0;          // stored bytes
  double seconds = 0.0;
};

struct QuantizeResult {
  std::vector<TensorReport> tensors;
  uint64_t file_bytes = 0;
  double seconds = 0.0;
};

// Throws a ModelError naming the option when an option is invalid (checked before any work).
void validate_options(const QuantizeOptions& o);
QuantizeResult quantize_model(const SourceModel& src, const std::string& out_path, const QuantizeOptions& o);

}  // namespace pqvk::model
