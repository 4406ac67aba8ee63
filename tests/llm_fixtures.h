// Tiny random decoder models written to .pqm files, shared by the CPU reference tests
// (test_llm_cpu.cpp) and the GPU decoder tests (test_decoder.cpp).
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "model/config.h"

namespace pqvk::fixtures {

std::vector<float> random_values(size_t n, std::mt19937& rng, double sigma, double mean = 0.0);
std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint32_t seed);

enum class Storage { f32, f16, pq4 };
const char* storage_name(Storage s);

// Tiny models of each architecture: "llama" (GQA 6/2, Llama 3.1 RoPE scaling, untied, dim 72),
// "qwen2" (q/k/v biases, tied), "qwen3" (q/k norms, head_dim != dim / heads, one KV head, tied),
// "mistral" (sliding window, linear RoPE scaling, an output bias).
model::ModelConfig tiny_config(const std::string& arch);

// Writes a model with random weights; matrices stored as `storage` (pq4: PolarQuant 4 bits,
// block 64), vectors as f32; `overrides` replaces named tensors' values.
void write_model(const std::string& path, const model::ModelConfig& c, Storage storage, uint32_t seed,
                 const std::map<std::string, std::vector<float>>& overrides = {});

}  // namespace pqvk::fixtures
