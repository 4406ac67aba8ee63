// Writes the seed corpus of fuzz_gguf: small valid GGUF models of each architecture, tensor type
// and tokenizer kind, and a file holding one tensor of every type pqvk decodes.
//   fuzz_gguf_seeds DIR
#include <cstdio>
#include <random>
#include <string>

#include "gguf_fixtures.h"
#include "quant/polarquant.h"

namespace {

using namespace pqvk::test;

// Random blocks of `type` whose scales are small finite halves (at the offsets given).
std::vector<uint8_t> random_blocks(size_t blocks, size_t block_bytes, std::vector<size_t> half_offsets, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(blocks * block_bytes);
  for (uint8_t& x : b) x = static_cast<uint8_t>(rng());
  for (size_t i = 0; i < blocks; ++i)
    for (size_t off : half_offsets) {
      const uint16_t h = pq::f32_to_f16(0.01f * static_cast<float>(1 + rng() % 100));
      b[i * block_bytes + off] = static_cast<uint8_t>(h & 0xff);
      b[i * block_bytes + off + 1] = static_cast<uint8_t>(h >> 8);
    }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_gguf_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  try {
    GgufModelSpec s;
    s.dim = 32, s.hidden = 32, s.layers = 1, s.heads = 2, s.kv_heads = 1, s.ctx = 16;
    gguf_model_builder(s).write(dir + "/llama-f16-gpt2.gguf");
    s.tokenizer = "llama", s.matrix_type = kQ8_0, s.tied = true, s.bias = true;
    gguf_model_builder(s).write(dir + "/llama-q8_0-spm-tied.gguf");
    s.tokenizer = "none", s.bias = false, s.rope = "llama3", s.heads = 1, s.head_dim = 32, s.matrix_type = kF16;
    gguf_model_builder(s).write(dir + "/llama-llama3-rope.gguf");
    s.arch = "qwen2", s.pre = "qwen2", s.tokenizer = "gpt2", s.rope = "none", s.heads = 2, s.head_dim = 0, s.matrix_type = kBF16;
    gguf_model_builder(s).write(dir + "/qwen2-bf16.gguf");
    s.arch = "qwen3", s.head_dim = 32, s.tokenizer = "none", s.rope = "linear", s.matrix_type = kF16;
    gguf_model_builder(s).write(dir + "/qwen3-f16.gguf");

    GgufBuilder all;
    all.set_alignment(64);
    all.string("general.architecture", "llama");
    all.tensor("f32", {8}, kF32, random_blocks(8, 4, {}, 1));
    all.tensor("f16", {8}, kF16, random_blocks(8, 2, {0}, 2));
    all.tensor("bf16", {8}, kBF16, random_blocks(8, 2, {}, 3));
    all.tensor("q8_0", {32, 2}, kQ8_0, random_blocks(2, 34, {0}, 4));
    all.tensor("q4_0", {64}, kQ4_0, random_blocks(2, 18, {0}, 5));
    all.tensor("q4_1", {32}, kQ4_1, random_blocks(1, 20, {0, 2}, 6));
    all.tensor("q5_0", {32}, kQ5_0, random_blocks(1, 22, {0}, 7));
    all.tensor("q5_1", {32}, kQ5_1, random_blocks(1, 24, {0, 2}, 8));
    all.tensor("q4_k", {256}, kQ4_K, random_blocks(1, 144, {0, 2}, 9));
    all.tensor("q5_k", {256}, kQ5_K, random_blocks(1, 176, {0, 2}, 10));
    all.tensor("q6_k", {256}, kQ6_K, random_blocks(1, 210, {208}, 11));
    all.write(dir + "/every-type.gguf");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_gguf_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
