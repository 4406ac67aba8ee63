// The CPU reference forward pass: a Llama-family decoder (Llama 2/3/3.x, Mistral, Qwen2, Qwen3)
// in plain C++ fp32, one token at a time with a KV cache. It is the oracle of the GPU decoder's
// tests and the engine of `pq-run --cpu`.
//
// Weights come from a .pqm file through PqmFile::read_floats(): PolarQuant matrices are
// dequantized once at load time, so the CPU computes with exactly the quantized weights the GPU
// reads (in fp32: a model takes 4 bytes per weight in memory here).
//
// What is computed (cpu_model.cpp reads top to bottom in this order):
//
//   x = embed[token]
//   for each layer:
//     h = rmsnorm(x) * attn_norm
//     q, k, v = Wq h (+ q_bias), Wk h (+ k_bias), Wv h (+ v_bias)
//     q, k = per-head rmsnorm (Qwen3), then RoPE (rotate-half pairs (j, j + head_dim/2))
//     append k, v to the cache (rounded to fp16 with CpuOptions::kv_fp16)
//     a = softmax(q k^T / sqrt(head_dim)) v over the cached positions (GQA: query head h reads
//         key/value head h / (n_heads / n_kv_heads); sliding window: the last `sliding_window`
//         positions, the current one included)
//     x += Wo a (+ o_bias)
//     h = rmsnorm(x) * mlp_norm
//     x += Wdown (silu(Wgate h) * Wup h)
//   logits = Wlm rmsnorm(x) * final_norm      (Wlm = embed when the embeddings are tied)
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/pqm.h"

namespace pqvk::llm {

// A product needs at least this many multiply-adds (a millisecond or so of work) to be split
// across threads: each split starts and joins std::threads, which costs tens of microseconds.
inline constexpr uint64_t kParallelMinWork = uint64_t{1} << 22;

struct CpuOptions {
  // Round every stored key and value to IEEE fp16 (pq::f32_to_f16, round to nearest even), as
  // the GPU's fp16 KV cache does; the arithmetic stays fp32.
  bool kv_fp16 = false;
  // PolarQuant KV cache (issue 13; the GPU has only fp16 so far): 0 off, else every stored key
  // and value head is rotated by the WHT, scaled by its fp16 norm and rounded to the nearest of
  // 2^kv_bits Lloyd-Max levels (pq::quantize_vector), and the cache holds what the codes stand
  // for (the attention itself is unchanged: the rotation is orthonormal, so q . k and the
  // weighted sum of values are the same in either basis). Needs a power-of-two head size.
  int kv_bits = 0;
  // Tests only: every key and value, before the cache stores it, times 1 + kv_noise * u with u
  // uniform in [-1, 1), fixed per (layer, position, element): rounding noise like another
  // implementation's, to measure how far the KV cache lets the logits move under it
  // (tests/test_decoder.cpp). 0: off; at most 0.1.
  float kv_noise = 0.0f;
  // Threads for the matrix-vector products (rows split evenly): 0 = every hardware thread,
  // 1 = none. The result does not depend on the thread count (each row is summed by one thread).
  int threads = 0;
  // Products of fewer multiply-adds run on one thread.
  uint64_t parallel_min_work = kParallelMinWork;
};

class CpuModel {
 public:
  // Reads and checks every tensor (a non-finite weight is a ModelError naming the tensor).
  // Throws std::invalid_argument for bad options.
  explicit CpuModel(const model::PqmFile& file, CpuOptions options = {});

  const model::ModelConfig& config() const { return config_; }
  const CpuOptions& options() const { return options_; }

  // Forgets every cached position: the next call must start at position 0.
  void reset();
  // How many positions the cache holds: forward() accepts pos <= cached_positions().
  int32_t cached_positions() const { return cached_; }

  // Runs `token` at position `pos` and returns the logits [vocab_size], valid until the next
  // call. Positions 0..pos-1 must already be cached; a pos below cached_positions() overwrites
  // that position and forgets the later ones (e.g. to regenerate). Throws std::out_of_range for
  // a token outside the vocabulary or a position outside [0, max_seq_len) or past the cache.
  std::span<const float> forward(int32_t token, int32_t pos);
  // Runs tokens[i] at positions pos0 + i and returns the last position's logits. The whole
  // range is checked before anything runs (an error leaves the cache as it was).
  std::span<const float> prefill(std::span<const int32_t> tokens, int32_t pos0);

  // Several sequences over the same weights (pq-server's slots): a Sequence holds its own KV
  // cache and activations, and forward() / prefill() with it work on it as the calls above work on
  // the model's own (which they leave untouched). Logits stay valid until the next call with the
  // same sequence.
  class Sequence;
  Sequence new_sequence() const;
  std::span<const float> forward(Sequence& seq, int32_t token, int32_t pos);
  std::span<const float> prefill(Sequence& seq, std::span<const int32_t> tokens, int32_t pos0);

 private:
  struct LayerWeights {
    std::vector<float> attn_norm, wq, wk, wv, wo;
    std::vector<float> q_bias, k_bias, v_bias, o_bias;  // empty when the model has none
    std::vector<float> q_norm, k_norm;                  // empty unless qk_norm
    std::vector<float> mlp_norm, w_gate, w_up, w_down;
  };
  struct Weights {
    std::vector<float> embed;  // [vocab][dim]
    std::vector<LayerWeights> layers;
    std::vector<float> final_norm;
    std::vector<float> lm_head;  // [vocab][dim]; empty when tied (embed is used)
  };
  // Everything forward() writes: activations of the current token and the KV cache.
  struct RunState {
    std::vector<float> x;       // residual stream [dim]
    std::vector<float> xb;      // normalized input of a block [dim]
    std::vector<float> q;       // [n_heads * head_dim]
    std::vector<float> k, v;    // [n_kv_heads * head_dim]
    std::vector<float> att;     // attention output [n_heads * head_dim]
    std::vector<float> scores;  // attention weights of one head [positions]
    std::vector<float> proj;    // output of Wo or Wdown [dim]
    std::vector<float> gate, up;  // [hidden_dim]
    std::vector<float> cos, sin;  // RoPE rotation of the current position [head_dim / 2]
    std::vector<float> logits;  // [vocab]
    // Per layer, [position][n_kv_heads * head_dim]; grown as positions are used.
    std::vector<std::vector<float>> key_cache, value_cache;
    int64_t cache_capacity = 0;  // positions allocated per layer
  };

  void init_state(RunState& s) const;
  struct UseSequence;  // swaps a Sequence's state in for a call
  void check_token(int32_t token, const char* what) const;
  void check_position(int32_t pos, int64_t count, const char* what) const;
  void grow_cache(int64_t positions);

  model::ModelConfig config_;
  CpuOptions options_;
  int threads_ = 1;
  std::vector<double> inv_freq_;  // RoPE inverse frequencies, scaling applied [head_dim / 2]
  Weights w_;
  RunState s_;
  int32_t cached_ = 0;
};

class CpuModel::Sequence {
 public:
  int32_t cached_positions() const { return cached_; }
  void reset() { cached_ = 0; }

 private:
  friend class CpuModel;
  RunState s_;
  int32_t cached_ = 0;
};

// The RoPE inverse frequencies of a configuration (model/config.h).
using model::rope_inverse_frequencies;

}  // namespace pqvk::llm
