// The decoder on the GPU: a .pqm model's weights in device memory, the fp16 KV cache, the
// decode step recorded once and replayed, and prefill of whole prompts in chunks.
//
// The structure mirrors the CPU reference (cpu_model.h): one function per step, each
// recording one or a few kernels (runtime/kernels). Only the logits (or, with
// forward_argmax, the chosen token id) come back to the host.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/kernels.h"
#include "model/pqm.h"
#include "vk/context.h"

namespace pqvk::llm {

// Random weights of a given shape, made on the device (vk-bench --synthetic): no file.
struct SyntheticWeights {
  std::string recipe = "q4";  // q2..q8 or mixed (model/convert.h); ignored for fp16
  bool fp16 = false;          // unquantized fp16 matrices instead
  int block = 128;
  uint32_t seed = 1;
};

struct GpuOptions {
  int32_t context = 0;      // KV-cache length; 0: the model's, at most 8192
  // The KV cache: 0 fp16; 8 or 4 PolarQuant codes of each rotated key and value head with one
  // norm (--kv-type pq8 / pq4; Kernels::AttentionShape::kv_bits), read by the split decode
  // attention and, in prefill, by the tensor-core attention (heads of 64, 128) or the per-query
  // kernel (Kernels::attention_path).
  int kv_bits = 0;
  uint32_t max_batch = 128; // prompt tokens per prefill pass
  // Decode GEMVs that prepare their input themselves (RMSNorm, rotation: no kernel between
  // matrices; Kernels::GemvOp). Off by default: measured slower on the H200 (bench/RESULTS.md)
  // and on lavapipe, where repeating the rotation in every workgroup costs more than the
  // preparation kernel it saves.
  int fused_gemv = 0;
  // Continuous batching (GpuModel::step()): sequences with a KV-cache region of `context`
  // positions each. 0: none (the single-sequence entry points use region 0 either way).
  uint32_t slots = 0;
  // Which kernels multiply continuous batching's decode steps. -1 (automatic): every step
  // through the GEMM (Kernels::gemm at any M, K split where few row tiles would idle the device)
  // where the device runs the tensor-core GEMM, else the batched GEMV (Kernels::gemv_batch); on
  // the H200 the GEMM measured 3x the GEMV's aggregate at 32 sequences and equal at 8
  // (bench/RESULTS.md). 0: always the batched GEMV. N > 0: steps of N or more tokens through the
  // GEMM (for measuring: a sequence's output then depends on whether a step crossed N).
  int32_t batch_gemm_from = -1;
  // Decode steps at positions below this take the direct attention: one split of the context,
  // each head's output written by attention_decode itself, rotated for the output projection
  // (Kernels::DecodeDirect), no merge dispatch; later positions the context in splits and the
  // merge (fwht.comp MODE 4). 0: never. The environment variable PQVK_DECODE_DIRECT_MAX=N
  // overrides it. Layers whose shapes cannot (Kernels::decode_direct_supported) take the splits.
  int32_t decode_direct_max = 192;
  // The kernels' configuration (shader choices, shapes; KernelConfig). Tests use it to run the
  // tensor-core paths' emulations on devices without tensor cores.
  KernelConfig kernels = {};
};

// Continuous batching: one token of one sequence in a step (GpuModel::step()). The sequence's
// KV cache is region `slot`; the token is at position `pos` of it, every earlier position of the
// sequence being cached already or among the step's tokens.
struct BatchToken {
  int32_t token = 0;
  uint32_t slot = 0;
  int32_t pos = 0;
  // What comes back for it: nothing (a prompt token before the last), the arg max of its logits
  // (greedy), or the arg max and the logits (sampling on the host).
  enum Out : uint8_t { none, argmax, logits } out = none;
};
// What a step returns, per token in the order given: ids[i] the arg max (-1 for Out::none),
// logits[i] the logits for Out::logits (empty otherwise), valid until the next step.
struct BatchResult {
  std::vector<int32_t> ids;
  std::vector<std::span<const float>> logits;
};
// prefill: prompt tokens (tiled GEMMs); decode: one token per sequence (the batched GEMV, each
// weight read once for all of them). A token's results depend only on its own sequence, never on
// what else is in the step (the kernels compute each token in the same order whatever the batch).
enum class BatchKind { prefill, decode };

// One linear layer's weight on the device: PolarQuant-packed, or fp16.
struct Linear {
  std::optional<DeviceQuantMatrix> q;
  std::optional<DeviceF16Matrix> f;
  size_t rows = 0, cols = 0;
  // How the input must be prepared: rotated (PolarQuant), block size, fp16 path.
  bool rotated() const { return q && q->rotated; }
  int block() const { return q ? q->block : 64; }
  bool fp16() const { return f.has_value(); }
  size_t bytes() const { return q ? q->bytes() : f->bytes(); }
};

// GPU time of one kind of kernel in a profiled forward pass (GpuModel::profile()).
struct KernelTime {
  std::string name;    // "gemv attn.q", "rmsnorm+fwht", "attention", "lm_head gemv", ...
  uint32_t calls = 0;  // dispatch groups of this kind per forward pass
  double us = 0;       // their total time in the pass, microseconds
};
struct StepProfile {
  uint32_t tokens = 0;              // tokens in the pass (1: a decode step)
  int32_t pos0 = 0;                 // position of the first
  double total_us = 0;              // first to last timestamp
  uint32_t dispatches = 0, barriers = 0;  // of the normal recording of the pass (no timestamps)
  std::vector<KernelTime> kernels;  // in the order they first run
};

// Bytes one decode step reads from device memory (the roofline of vk-bench).
struct StepBytes {
  uint64_t weights = 0;      // every matrix the step's GEMVs read (codes + scales, or fp16), the embedding row
  uint64_t kv = 0;           // keys and values of the cached positions, every layer (fp16 or PolarQuant records)
  uint64_t activations = 0;  // inputs and outputs of the GEMVs (approximate; small)
  uint64_t total() const { return weights + kv + activations; }
};

// Device memory a GpuModel takes, in bytes (GpuModel::memory_plan): what is known before
// anything is allocated, so that a context that cannot fit is refused up front.
struct MemoryPlan {
  uint64_t weights = 0;      // codes, scales, codebooks, vectors (or fp16 matrices), as the model file holds them
  uint64_t kv_cache = 0;     // keys and values (fp16 or PolarQuant records), every layer, every sequence slot
  uint64_t activations = 0;  // activation buffers, decode scratch, logits
  uint64_t total() const { return weights + kv_cache + activations; }
};
// Device-local memory this process may still allocate on `info`'s device: the heap budget less
// what is in use where VK_EXT_memory_budget reports it, else the largest device-local heap.
uint64_t device_memory_available(const vk::DeviceInfo& info);

class GpuModel {
 public:
  GpuModel(vk::Context& ctx, const model::PqmFile& file, GpuOptions options = {});
  GpuModel(vk::Context& ctx, const model::ModelConfig& config, const SyntheticWeights& weights,
           GpuOptions options = {});
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  // The memory of `config` with `weight_bytes` of weights at `context` positions per sequence
  // (options.context is ignored; its slots and max_batch count).
  static MemoryPlan memory_plan(const model::ModelConfig& config, uint64_t weight_bytes, const GpuOptions& options,
                                int64_t context);
  // The longest context (per sequence, at most the model's maximum) whose plan fits in
  // `available` bytes; 0 when not even one position does.
  static int64_t max_context(const model::ModelConfig& config, uint64_t weight_bytes, const GpuOptions& options,
                             uint64_t available);
  // The device bytes of a .pqm file's weights, and of synthetic weights in `config`'s shape.
  static uint64_t planned_weight_bytes(const model::PqmFile& file);
  static uint64_t planned_weight_bytes(const model::ModelConfig& config, const SyntheticWeights& weights);

  const model::ModelConfig& config() const { return config_; }
  int32_t context_size() const { return context_; }
  uint64_t device_bytes() const;
  uint64_t weight_bytes() const;

  // One token at position pos (the cache holds positions < pos): the logits [vocab].
  std::span<const float> forward(int32_t token, int32_t pos);
  // The same step, choosing the next token on the GPU (greedy): only the id comes back.
  int32_t forward_argmax(int32_t token, int32_t pos);
  // tokens at positions pos0, pos0 + 1, ...: the logits of the last one.
  std::span<const float> prefill(std::span<const int32_t> tokens, int32_t pos0);
  // The same, returning the logits of every position: [tokens.size()][vocab] (perplexity).
  std::vector<float> prefill_all(std::span<const int32_t> tokens, int32_t pos0);

  // One forward pass of `tokens` (at most max_batch of them; one token: the decode step with
  // the GPU argmax) at positions pos0.., recorded with a barrier and a GPU timestamp after
  // every kernel group, replayed `reps` times; the median over replays of each kernel's time.
  // The barriers serialize dispatches that the normal recording lets overlap (q, k and v; gate
  // and up), so the total is a little above an unprofiled pass. Writes the KV cache at those
  // positions. The normal decode and prefill recordings carry no timestamps.
  StepProfile profile(std::span<const int32_t> tokens, int32_t pos0, int reps = 3);

  // Continuous batching (GpuOptions::slots > 0): one forward pass of tokens of several
  // sequences. At most batch_rows() tokens (and at most slots() of them with an output); a
  // token's (slot, pos) at most once. The pass is recorded once per shape (kind, tokens,
  // outputs) and replayed.
  void step(std::span<const BatchToken> tokens, BatchKind kind, BatchResult& out);
  // profile() of one such step (StepProfile::tokens: the step's tokens, pos0: the first one's).
  StepProfile profile_step(std::span<const BatchToken> tokens, BatchKind kind, int reps = 3);
  uint32_t slots() const { return slots_; }
  // The kernels this model records (their configuration and what the latest calls chose).
  const Kernels& kernels() const { return kernels_; }
  uint32_t batch_rows() const { return max_batch_; }
  // What a decode step reads with `positions` cached positions (the step's own included).
  StepBytes decode_bytes(double positions) const;
  uint32_t max_batch() const { return max_batch_; }

 private:
  struct Layer;
  // Where weights come from: the file, or random on the device.
  struct WeightSource {
    std::function<Linear(const std::string& name, model::Role role, size_t rows, size_t cols)> matrix;
    std::function<vk::Buffer(const std::string& name, size_t n)> vector;
    // Several matrices of one input as one (pq::join_rows): stacked (q | k | v) or with rows
    // interleaved (gate, up); nothing where their formats differ or one is fp16.
    std::function<std::optional<Linear>(const std::string& name, const std::vector<std::string>& parts,
                                        const std::vector<model::Role>& roles, bool interleave)>
        joined;
    uint64_t bytes = 0;  // what the weights will take on the device (memory_plan)
  };
  void build(const WeightSource& src, const GpuOptions& opt, const std::string& where);
  void check_positions(int32_t pos0, size_t n) const;
  // How linear() multiplies: the GEMV for one token, else the GEMM (automatic: the
  // single-sequence paths), always the GEMM (prefill steps), or the batched GEMV (decode steps and
  // every step's logits).
  enum class MatMode { automatic, gemm, batch_gemv };
  MatMode mat_mode_ = MatMode::automatic;
  bool split_k_ = false;  // record_batch: GEMMs of decode steps may split K (GemmOut::split_k)
  void record_batch(vk::Commands& cmd, BatchKind kind, uint32_t m, uint32_t outs, uint32_t logits_rows);
  // Checks a step's tokens, writes them (ids, positions, slots) in recorded order into the
  // host-visible buffers; the counts of tokens with an output and with logits.
  std::pair<uint32_t, uint32_t> stage_batch(std::span<const BatchToken> tokens);
  // Records `record` with the profile's marks, replays it `reps` times: the median per kernel.
  StepProfile profile_recording(const std::function<void(vk::Commands&)>& record, uint32_t tokens, int32_t pos0, int reps);
  void run_decode(int32_t token, int32_t pos, bool argmax);
  // direct: one token's attention through the direct path (decode_direct()), where the layer can.
  void record_step(vk::Commands& cmd, uint32_t m, bool argmax, bool direct = false);
  // Whether a decode step at `pos` takes the direct attention (GpuOptions::decode_direct_max).
  bool decode_direct(int32_t pos) const { return pos < direct_max_; }
  bool direct_supported(const Layer& L) const;
  void embed(vk::Commands& cmd, uint32_t m);
  // The matrix multiplied right after a step and the RMSNorm weight in front of it (none: no
  // norm), so that one token's GEMV can prepare its input (GemvOp::Fold); w null: unknown.
  struct Next {
    const Linear* w;  // (no default member initializers: {} in a default argument inside the class)
    vk::BufferView norm;
  };
  Next next_of(const Layer& L) const;
  void attention_block(vk::Commands& cmd, const Layer& L, uint32_t m, bool direct = false);
  void mlp_block(vk::Commands& cmd, const Layer& L, uint32_t m, const Next& next);
  void logits(vk::Commands& cmd, uint32_t m, bool argmax);
  void logits_all(vk::Commands& cmd, uint32_t m);
  // One output of a linear step: a matrix, where its result goes (columns from `col` of rows
  // of `ld` floats; ld 0: the matrix's rows).
  struct Out {
    const Linear* w;
    vk::BufferView y;
    uint32_t col = 0, ld = 0;
    bool swiglu = false;  // one token, gate and up rows interleaved: y = silu(gate) * up (GemvOp::swiglu)
  };
  // y_i = W_i prologue(x) (or +=) for m rows of x of `cols`: for one token of PolarQuant matrices
  // the GEMV applies the prologue itself (fused_gemv()); otherwise x is prepared once (prologue,
  // rotation) for every matrix, then multiplied.
  // With `next` (one token, one PolarQuant matrix), the GEMV also prepares next's input
  // (can_fold()), which the following linear() call then reads without a preparation kernel.
  void linear(vk::Commands& cmd, std::initializer_list<Out> outs, vk::BufferView x, uint32_t cols, uint32_t m,
              const Prologue& pro, bool accumulate, uint32_t in_row0 = 0, const Next& next = {});
  bool fused_gemv(const Linear& w, uint32_t m, const Prologue& pro) const;
  // x prepared for `first` (prologue, rotation when it is rotated) in `layout`, m rows from
  // in_row0, into prep_rot_ or prep_plain_ (which it returns), with its barrier and mark.
  const vk::Buffer& prepare_input(vk::Commands& cmd, vk::BufferView x, uint32_t m, uint32_t cols, const Linear& first,
                                  Layout layout, const Prologue& pro, uint32_t in_row0);
  bool can_fold(const Linear& w, uint32_t m, bool swiglu, const Linear* next) const;
  // An input the previous kernel prepared (a GEMV's fold, or the direct decode attention):
  // fold_in_[pair], with the RMSNorm's 1/rms still to apply (from fold_sums_) when rms.
  struct Folded {
    int pair = 0;
    bool rms = false;
  };
  std::optional<Folded> folded_;

  vk::Context& ctx_;
  Kernels kernels_;
  model::ModelConfig config_;
  int32_t context_ = 0;
  uint32_t max_batch_ = 0;
  Kernels::AttentionShape shape_;

  Linear embed_;    // the token embedding table; with tied embeddings also the LM head
  std::vector<std::unique_ptr<Layer>> layers_;
  vk::Buffer final_norm_;
  Linear lm_head_;  // untied models only
  const Linear& head() const { return config_.tie_word_embeddings ? embed_ : lm_head_; }
  vk::Buffer inv_freq_;

  // Activations for up to max_batch tokens.
  vk::Buffer x_, qkv_, q_, att_, gate_, up_, hidden_, logits_, prep_rot_, prep_plain_;
  vk::Buffer tokens_, step_, next_;  // host-visible: token ids, {pos0}, argmax result
  vk::Buffer logits_all_;            // [max_batch][vocab], made on the first prefill_all()
  bool fused_gemv_ = true;           // GpuOptions::fused_gemv, resolved
  uint32_t splits_ = 0;              // decode attention's context splits (0: the prefill kernels)
  int32_t direct_max_ = 0;           // decode positions below it: the direct attention (0: none)
  vk::Buffer att_parts_, att_ml_;    // its partial outputs and (max, sum) pairs
  // Folded preparations (Kernels::GemvOp::Fold): two prepared inputs, one written while the other
  // is read; the per-block sums of squares (no GEMV reads and writes them: Kernels::gemv refuses);
  // the per-block counters (zero between uses).
  vk::Buffer fold_in_[2], fold_sums_, fold_counters_;

  std::unique_ptr<vk::Commands> decode_[2][2];  // the decode step's recordings, [direct attention][GPU argmax]

  // Continuous batching: per token (pos, slot) pairs, the logits of the tokens with an output,
  // their arg max (and argmax's token scratch), the rows the host samples from; the recordings
  // by (kind, tokens, outputs, logits rows).
  uint32_t slots_ = 0, batch_gemm_from_ = 0;
  vk::Buffer rows_, batch_logits_, batch_ids_, batch_next_, batch_logits_host_;
  std::map<std::tuple<int, uint32_t, uint32_t, uint32_t>, std::unique_ptr<vk::Commands>> batch_recordings_;
  std::vector<uint32_t> batch_order_;  // the step's tokens in recorded order: none, argmax, logits

  // Profiling (profile()): when set, mark() ends a kernel group with a barrier and a timestamp.
  struct Marks {
    std::vector<std::string> names;  // names[i]: the group ending at timestamp slot i + 1
    uint32_t slots = 0;
  };
  Marks* marks_ = nullptr;
  void mark(vk::Commands& cmd, const std::string& name);
  uint32_t mark_slots() const;
};

}  // namespace pqvk::llm
