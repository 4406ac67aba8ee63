// The GPU kernels, one function per shader, recorded into vk::Commands.
//
// Model code calls these; it never touches Vulkan. Each function records one (or, where a
// tensor is split to respect maxStorageBufferRange, a few) dispatches and no barrier: the
// caller orders dependent kernels with Commands::barrier().
//
// Activation layouts (docs/packed-layout.md):
//   row-major  [rows][cols_padded] fp32, zero padded to a multiple of the block size
//   gemv-interleaved  the layout the fused GEMV reads: element i of 32-element chunk ch of a
//              vector lives at (ch & ~31) * 32 + (i / 4) * 128 + (ch & 31) * 4 + i % 4, padded
//              to a multiple of 1024 elements, so that 32 threads reading elements 4q..4q+3 of
//              32 consecutive chunks issue one 512-byte contiguous load of 16 bytes each.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "quant/polarquant.h"
#include "vk/context.h"

namespace pqvk {

// Activation layout of a rotated vector / matrix.
enum class Layout { row_major, gemv_interleaved };

// Elements in a rotated activation row of `cols` inputs, block `block`, in `layout`.
size_t rotated_row_elems(size_t cols, int block, Layout layout);

// A PolarQuant (or ablation) matrix resident on the device. Rows are split into slices so that
// no binding exceeds maxStorageBufferRange (lavapipe: 128 MiB; most GPUs: 4 GiB).
struct DeviceQuantMatrix {
  std::string name;
  pq::Method method = pq::Method::pq;
  int bits = 0, block = 128;
  bool rotated = false;
  size_t rows = 0, cols = 0, cols_padded = 0;
  vk::Buffer codebook;  // 2^bits floats
  struct Slice {
    size_t row0 = 0, rows = 0;
    vk::Buffer codes;   // packed words of rows [row0, row0 + rows)
    vk::Buffer scales;  // fp16 scales of those rows, padded to whole 32-bit words
  };
  std::vector<Slice> slices;
  size_t bytes() const;  // codes + scales on the device
};
DeviceQuantMatrix upload_quant(vk::Context& ctx, const pq::QuantMatrix& q, const std::string& name = "",
                               size_t max_slice_bytes = 0 /* 0: the device limits */);

// An fp16 matrix [rows][cols] on the device (the unquantized baseline); each row is padded
// to a multiple of 8 halves (16 bytes).
struct DeviceF16Matrix {
  std::string name;
  size_t rows = 0, cols = 0, cols_padded = 0;
  struct Slice {
    size_t row0 = 0, rows = 0;
    vk::Buffer data;
  };
  std::vector<Slice> slices;
  size_t bytes() const;
};
DeviceF16Matrix upload_f16(vk::Context& ctx, const float* w, size_t rows, size_t cols,
                           const std::string& name = "", size_t max_slice_bytes = 0);

// Tuning knobs, chosen per device by Kernels' constructor (and overridable by benchmarks).
struct KernelConfig {
  uint32_t gemv_wg = 128;        // threads per GEMV workgroup (a multiple of 32)
  uint32_t gemv_rows = 2;        // rows per GEMV workgroup (bench/RESULTS.md: the H100 sweep)
  uint32_t gemm_tile_m = 64, gemm_tile_n = 64;  // GEMM output tile (tokens x rows)
  uint32_t subgroup_size = 0;    // 0: the device's default; else pinned (subgroup size control)
  // Experimental: GEMV of 2-6 bit matrices with two codes per lookup and fp16 arithmetic
  // inside each chunk of 32 weights (shaders/pq_gemv_pairs.comp), where the device has
  // shaderFloat16. Off by default: its ~1e-3 relative error per GEMV grows to ~4e-2 in the
  // logits of stories260K (tests/test_decoder.cpp measures 1e-4 with the fp32 shader).
  // PQVK_GEMV_PAIRS=1 turns it on (for benchmarks).
  bool gemv_pairs = false;
};

// What fwht/prepare computes before the (optional) rotation of each block.
struct Prologue {
  enum Kind { none, rmsnorm, swiglu } kind = none;
  vk::BufferView aux;  // rmsnorm: the weight [cols]; swiglu: the up projection [rows][cols]
  float eps = 1e-5f;   // rmsnorm
};

class Kernels {
 public:
  explicit Kernels(vk::Context& ctx, KernelConfig cfg = {});
  vk::Context& context() { return ctx_; }
  const KernelConfig& config() const { return cfg_; }

  // out = rotate(x): every row of x [rows][cols] (fp32, row-major) is cut into blocks of
  // `block` (64/128/256), zero padded, and each block multiplied by the orthonormal H_block.
  // out holds rows * rotated_row_elems(cols, block, layout) floats.
  void fwht(vk::Commands& cmd, vk::BufferView x, vk::BufferView out, uint32_t rows, uint32_t cols,
            uint32_t block, Layout layout = Layout::row_major);
  // The general form: out = [rotate] prologue(x), rows taken from x starting at row in_row0.
  // rmsnorm: x * w / rms(x row); swiglu: silu(x) * up. Without rotation the output is still
  // padded to a multiple of `block` and laid out as `layout`.
  void prepare(vk::Commands& cmd, vk::BufferView x, vk::BufferView out, uint32_t rows, uint32_t cols,
               uint32_t block, Layout layout, bool rotate, const Prologue& prologue, uint32_t in_row0 = 0);

  // out [rows][cols] = the dequantized matrix (fp32, or fp16 packed in pairs when f16_out;
  // cols must then be even).
  void dequant(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView out, bool f16_out = false);

  // y[rows] = W x for one token. x_rot is the rotated input in gemv-interleaved layout when
  // w.rotated, else the plain input in the same layout (interleave_for_gemv()). y is fp32.
  // Uses the fp16 pair-lookup shader when config().gemv_pairs allows it (uses_gemv_pairs()).
  // accumulate: y += W x instead of y = W x (residual connections).
  void gemv(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y,
            bool accumulate = false);

  // Y [m][rows] = X W^T for m tokens; X_rot [m][cols_padded] row-major, rotated when w.rotated.
  void gemm(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y, uint32_t m,
            bool accumulate = false);

  // fp16 baseline: y[rows] = W x (x [cols] fp32) and Y [m][rows] = X W^T (X [m][cols] fp32).
  void gemv_f16(vk::Commands& cmd, const DeviceF16Matrix& w, vk::BufferView x, vk::BufferView y,
                bool accumulate = false);
  // ldx: the row stride of x in floats (0: cols).
  void gemm_f16(vk::Commands& cmd, const DeviceF16Matrix& w, vk::BufferView x, vk::BufferView y, uint32_t m,
                bool accumulate = false, uint32_t ldx = 0);

  bool uses_gemv_pairs(int bits) const;

  // Embedding lookup: out [m][cols] fp32 = rows tokens[0..m) of the table (dequantized).
  void embed(vk::Commands& cmd, const DeviceQuantMatrix& table, vk::BufferView tokens, vk::BufferView out, uint32_t m);
  void embed_f16(vk::Commands& cmd, const DeviceF16Matrix& table, vk::BufferView tokens, vk::BufferView out, uint32_t m);

  // Attention pieces (shaders/qkv_rope.comp, shaders/attention.comp): the geometry of a layer.
  struct AttentionShape {
    uint32_t n_heads = 0, n_kv = 0, head_dim = 0, max_ctx = 0, window = 0;
    float eps = 1e-6f;  // q/k norms
  };
  // q, k, v [m][...] -> biases, q/k norms, RoPE at positions step[0] + i; k, v into the caches.
  // bias / norm may be empty views when the model has none.
  void qkv_rope(vk::Commands& cmd, const AttentionShape& a, vk::BufferView q, vk::BufferView k, vk::BufferView v,
                vk::BufferView kcache, vk::BufferView vcache, vk::BufferView inv_freq, vk::BufferView bias,
                vk::BufferView norm, vk::BufferView step, uint32_t m);
  // out [m][n_heads * head_dim] = causal attention of q over the caches.
  void attention(vk::Commands& cmd, const AttentionShape& a, vk::BufferView q, vk::BufferView kcache,
                 vk::BufferView vcache, vk::BufferView out, vk::BufferView step, uint32_t m);
  // out[0] = tokens[0] = argmax(x[0..n)) (lowest index among equals), in two passes.
  void argmax(vk::Commands& cmd, vk::BufferView x, uint32_t n, vk::BufferView out, vk::BufferView tokens);

  // dst[0 .. words) = random 32-bit words (random_fill_word(seed, i)), or with fp16_range two
  // fp16 values uniform in [lo, hi) per word: synthetic weights made on the device.
  void random_fill(vk::Commands& cmd, vk::BufferView dst, size_t words, uint32_t seed, bool fp16_range = false,
                   float lo = 0.0f, float hi = 1.0f);

  // dst[0 .. bytes) = src[0 .. bytes) through a shader (bytes a multiple of 16): the
  // benchmark's measure of copy bandwidth with the loads and stores kernels issue.
  void copy(vk::Commands& cmd, const vk::Buffer& src, const vk::Buffer& dst, size_t bytes);

  // The pipeline for a shader + specialization, built on first use and kept.
  const vk::Pipeline& pipeline(const std::string& shader, const vk::SpecConstants& spec,
                               uint32_t num_buffers, uint32_t push_bytes, uint32_t local_size_x);

 private:
  vk::Context& ctx_;
  KernelConfig cfg_;
  vk::Buffer dummy_;  // bound where a shader's optional buffer is unused
  vk::Buffer argmax_parts_;  // argmax's per-workgroup results
  std::map<std::string, std::unique_ptr<vk::Pipeline>> pipelines_;
};

// CPU helpers matching the GPU layouts (used by the tests and the CPU reference).
// The CPU twin of random_fill: word i for `seed`.
uint32_t random_fill_word(uint32_t seed, uint32_t i);

// Position of element e of a vector in gemv-interleaved layout.
inline size_t gemv_interleaved_index(size_t e) {
  const size_t ch = e / 32, i = e % 32;
  return (ch & ~size_t(31)) * 32 + (i / 4) * 128 + (ch & 31) * 4 + i % 4;
}
// Reorders one row-major rotated row (cols_padded elements) into gemv-interleaved layout.
std::vector<float> interleave_for_gemv(const float* row, size_t cols_padded);

}  // namespace pqvk
