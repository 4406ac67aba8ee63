// The GPU kernels, one function per shader, recorded into vk::Commands.
//
// Model code calls these; it never touches Vulkan. Each function records one (or, where a
// tensor is split to respect maxStorageBufferRange, a few) dispatches and no barrier: the
// caller orders dependent kernels with Commands::barrier().
//
// Activation layouts (docs/packed-layout.md):
//   row-major  [rows][cols_padded] fp32, zero padded to a multiple of the block size
//   gemv-interleaved  the layout the decode GEMV reads a prepared input in: element i of
//              32-element chunk ch lives at (ch & ~31) * 32 + (i / 4) * 128 + (ch & 31) * 4 + i % 4,
//              padded to a multiple of 1024 elements, so that 32 invocations reading elements
//              4q..4q+3 of 32 consecutive chunks issue one 512-byte contiguous load.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "quant/polarquant.h"
#include "vk/context.h"

namespace pqvk {

// Activation layout of a prepared vector / matrix: fp32 row-major or gemv-interleaved, or fp16
// row-major (two per 32-bit word; the tensor-core GEMM's input, Kernels::gemm_takes_f16()).
enum class Layout { row_major, gemv_interleaved, row_major_f16 };

// Elements in a prepared activation row of `cols` inputs, block `block`, in `layout`.
size_t rotated_row_elems(size_t cols, int block, Layout layout = Layout::row_major);

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
// row_multiple: slices hold a multiple of this many rows (2 for gate/up pairs).
DeviceQuantMatrix upload_quant(vk::Context& ctx, const pq::QuantMatrix& q, const std::string& name = "",
                               size_t max_slice_bytes = 0 /* 0: the device limits */, size_t row_multiple = 1);

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
  uint32_t gemv_wg = 32;         // threads per GEMV workgroup (a multiple of 32; at most the row's chunks)
  uint32_t gemv_rows = 2;        // rows per GEMV workgroup (bench/RESULTS.md: the H200 sweeps, 2026-12-01)
  uint32_t gemm_tile_m = 64, gemm_tile_n = 64;  // GEMM output tile (tokens x rows)
  uint32_t subgroup_size = 0;    // 0: the device's default; else pinned (subgroup size control)
  // How the GEMV looks codes up (shaders/pq_gemv.comp, LOOKUP): `automatic` takes a subgroup
  // shuffle where the codebook fits in a subgroup (2^bits <= subgroup size), with unmasked
  // indices where a probe on the device shows them exact (Kernels::gemv_lookup), else the table
  // in shared memory. `code` is a benchmark's measure of the lookups' cost: it computes no
  // GEMV of the matrix.
  enum class GemvLookup { automatic, table, shuffle, shuffle_unmasked, code } gemv_lookup = GemvLookup::automatic;
  // Shared-table lookups: copies of the table = 1 << gemv_table_shift (0..5; -1: as many as fit,
  // up to 32). One copy (the default): up to 32 entries sit in distinct banks and equal ones
  // broadcast, and at 6 bits one copy measured faster on the H200 than 32 (27.6 against 34.0 us
  // at 14336x4096) because filling the copies costs more than the conflicts they avoid. Table
  // lookups run in workgroups of at least 128 invocations (q6 at 32x4: 50.8 us).
  int gemv_table_shift = 0;
  // Decode GEMVs prepare the next matrix's input themselves (GemvOp::Fold: no RMSNorm / SwiGLU
  // preparation kernels between matrices). PQVK_GEMV_FOLD=0 turns it off (benchmarks).
  bool gemv_fold = true;
  // Which shader the quantized GEMM (Kernels::gemm, prefill) runs. `automatic`: the tensor-core
  // one (shaders/pq_gemm_coopmat.comp: VK_NV_cooperative_matrix, fp16 x fp16 products, fp32
  // sums) where the device can run it (Kernels::coopmat_gemm_unsupported()) and M >=
  // gemm_coopmat_min_m, else the portable fp32 one (shaders/pq_gemm.comp). `off`: always the
  // portable one. `on`: the tensor-core one at every M, an error where the device cannot run it.
  // `emulated`: pq_gemm_coopmat_emulated.comp at every M, the same shader with its
  // cooperative-matrix operations done by scalar code (slow; for tests on any device).
  // The environment variable PQVK_GEMM_COOPMAT overrides it: 0 (off), 1 (automatic), on, or
  // 64 / 128 (automatic with that many tokens per workgroup). Verified on the H200 against its
  // CPU twin (tools/device/coopmat_check.sh, bench/RESULTS.md), hence `automatic` by default.
  enum class GemmCoopmat { automatic, off, on, emulated } gemm_coopmat = GemmCoopmat::automatic;
  uint32_t gemm_coopmat_min_m = 16;  // automatic: fewer tokens take the portable GEMM
  uint32_t gemm_coopmat_tm = 0;      // tokens per workgroup of the tensor-core GEMM, 64 or 128; 0: 128 above 64 tokens where they fit
  // Split-K of the tensor-core GEMM where asked (GemmOut::split_k) and the tokens fit one tile:
  // K is cut into up to 16 parts while the matrix's row tiles times the parts stay within this
  // many workgroups (parts of at least 8 chunks), and splitk_sum.comp adds the partials.
  // 0: never. PQVK_GEMM_SPLIT overrides it (benchmarks).
  uint32_t gemm_split_target = 256;
  // The skinny tensor-core GEMM for decode steps of at most 32 sequences (GemmOut::max_m).
  // PQVK_GEMM_SKINNY=0 turns it off (benchmarks: the 128-row-tile GEMM with split K instead).
  bool gemm_skinny = true;
  // Its split-K target (as gemm_split_target; workgroups of 128 rows): 256 measured faster than
  // 1024 and 4096 on the H200 at every layer shape (bench/RESULTS.md, sixth session).
  // PQVK_GEMM_SKINNY_SPLIT overrides it (benchmarks).
  uint32_t gemm_skinny_split_target = 256;
  // Benchmarks only (wrong results, timings of what is left): the ABLATE specialization constant
  // of pq_gemv.comp (gemv_ablate, from PQVK_GEMV_ABLATE), of pq_gemm_coopmat.comp /
  // pq_gemm_skinny.comp (gemm_ablate, from PQVK_GEMM_ABLATE) and of attention_coopmat.comp
  // (attention_ablate, PQVK_ATTENTION_ABLATE); their headers say what each bit leaves out.
  // 0: nothing.
  uint32_t gemv_ablate = 0, gemm_ablate = 0, attention_ablate = 0;
  // Prefill attention: tiles of queries sharing each key and value they read
  // (shaders/attention_tiled.comp) where the device can run it (attention_tiled_supported()),
  // else one query per workgroup (shaders/attention.comp). false: always the latter.
  bool attention_tiled = true;
  // Prefill attention on tensor cores (shaders/attention_coopmat.comp: VK_NV_cooperative_matrix,
  // fp16 queries and probabilities, fp32 sums) for consecutive positions where the device can
  // run it (attention_coopmat_unsupported()) and heads are at most 128: `automatic`. `off`:
  // attention_tiled / attention as above. `emulated`: attention_coopmat_emulated.comp, the same
  // shader with scalar stand-ins for the cooperative-matrix operations (slow; tests on any
  // device). The environment variable PQVK_ATTENTION_COOPMAT overrides it: 0, 1 or emulated.
  enum class AttentionCoopmat { automatic, off, emulated } attention_coopmat = AttentionCoopmat::automatic;
  // The batched GEMV of continuous batching (gemv_batch, shaders/pq_gemv_batch.comp): threads
  // per workgroup (a multiple of 32), rows per workgroup, tokens per workgroup (more tokens take
  // several workgroups, each reading the weights again).
  // 64 x 4 x 8: the fastest of 14 shapes on the H200 at 8 and 32 sequences (bench/RESULTS.md).
  uint32_t batch_wg = 64, batch_rows = 4, batch_tokens = 8;
};

// What fwht/prepare computes before the (optional) rotation of each block.
struct Prologue {
  // swiglu_pairs: x [rows][2 * cols] holds gate and up alternating (a GEMM of a matrix whose
  // rows alternate, pq::join_rows): silu(x[2c]) * x[2c + 1].
  // merge: x is attention_decode()'s partial outputs [splits][rows][cols] and aux its (max, sum)
  // pairs [splits][rows][cols / head_dim][2]; the prologue merges the splits.
  enum Kind { none, rmsnorm, swiglu, swiglu_pairs, merge } kind = none;
  vk::BufferView aux;  // rmsnorm: the weight [cols]; swiglu: the up projection [rows][cols]
  float eps = 1e-5f;   // rmsnorm
  uint32_t splits = 1, head_dim = 0;  // merge
};

// The direct path of decode attention (Kernels::attention_decode with one split): instead of a
// split's partial output and (max, sum) pairs, each query head's normalized output written as
// the output projection's prepared input, what prepare() with Prologue::merge of one split
// writes: blocks of `block` (64/128/256), each times the orthonormal H_block when `rotate`,
// gemv-interleaved (rotated_row_elems(n_heads * head_dim, block, Layout::gemv_interleaved)
// floats; past n_heads * head_dim nothing is written). `out` empty: the split path.
struct DecodeDirect {
  vk::BufferView out;
  uint32_t block = 128;
  bool rotate = true;
};

// What the decode GEMV does before and after the product (shaders/pq_gemv.comp).
struct GemvOp {
  // The input: already prepared (rotated when the matrix is, gemv-interleaved: fwht()), or raw
  // [cols] row-major, the GEMV rotating it itself (rotated matrices), optionally after an
  // RMSNorm with weight `norm` (measured slower on the H200 than a separate fwht(): the
  // rotation is repeated in every workgroup, and raw rows are read uncoalesced).
  // prepared_rms: prepared by a fold (below) without the RMSNorm's 1/rms, which the GEMV takes
  // from the fold's per-block sums of squares (`partials` below; eps as for rmsnorm).
  enum Prologue { prepared, raw, rmsnorm, prepared_rms } prologue = prepared;
  vk::BufferView norm;
  float eps = 1e-5f;
  // y = W x; y += W x (residual); or, on a matrix whose rows alternate gate and up
  // (interleave_rows()), y[i] = silu(gate_i . x) * (up_i . x) with rows / 2 outputs.
  enum Epilogue { store, accumulate, swiglu } epilogue = store;
  uint32_t y_offset = 0;  // where row 0's result goes in y (swiglu: output 0), in floats
  uint32_t x_offset = 0;  // where x starts in its buffer, in floats (a multiple of 4)
  vk::BufferView partials;  // prepared_rms: the fold's sums of squares, one per block
  // After the epilogue, the next matrix's input prepared from y (all of it: y_offset 0), so that
  // no preparation kernel runs in between (decode): the last workgroup to finish each block of
  // `block` outputs writes that block, gemv-interleaved and rotated when `rotate`, to `next`:
  //   rms_norm: y * norm, the RMSNorm's 1/rms left to the next GEMV (prepared_rms), with the
  //            block's sum of squares of y in partials[block index];
  //   plain:   y (after a SwiGLU epilogue: the down projection's input).
  // `counters` holds one zero per block and is left zero. fold_supported() says where it works.
  struct Fold {
    enum Kind { none, rms_norm, plain } kind = none;
    vk::BufferView next, counters, partials, norm;
    uint32_t block = 128;
    bool rotate = true;
  } fold;
};

// Where a GEMM writes: Y [m][ldy] from column `col` (ldy 0: the matrix's rows), so that
// several matrices can fill the columns of one output.
struct GemmOut {
  uint32_t ldy = 0, col = 0;
  bool x_f16 = false;  // x_rot is fp16 (Layout::row_major_f16): only where gemm_takes_f16(m, any_m)
  // KernelConfig::GemmCoopmat::automatic only: the tensor-core GEMM wherever the device has it,
  // whatever m (not from gemm_coopmat_min_m tokens on), so that one path computes every step:
  // continuous batching's prefill steps, whose size depends on what else runs.
  bool any_m = false;
  // Tensor-core paths, M within one token tile: K may be split among several workgroups where
  // few row tiles would leave the device idle (KernelConfig::gemm_split_target; how many parts
  // depends on the matrix only, so a token's result does not depend on M). Continuous batching's
  // decode steps ask for it.
  bool split_k = false;
  // With split_k: the most tokens any call of this family has (continuous batching: the slots;
  // 0: unknown). Where it is at most 32 and the activations are fp16, the tensor-core paths take
  // the skinny GEMM (pq_gemm_skinny.comp: each subgroup decodes its own rows, no workgroup
  // barrier; KernelConfig::gemm_skinny) at every m up to max_m, so that a token's result still
  // does not depend on m.
  uint32_t max_m = 0;
};

class Kernels {
 public:
  using GemvOp = pqvk::GemvOp;
  using GemmOut = pqvk::GemmOut;
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

  // y = W x for one token (x as GemvOp says). y is fp32.
  void gemv(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x, vk::BufferView y, const GemvOp& op);
  // Whether gemv() on w can fold the preparation of a next input of blocks of `block` (GemvOp::Fold)
  // after the epilogue `epilogue`: whole blocks of outputs per workgroup and slice, a block no
  // wider than four values per invocation.
  bool fold_supported(const DeviceQuantMatrix& w, GemvOp::Epilogue epilogue, uint32_t block) const;
  void gemv(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y,
            bool accumulate = false) {
    gemv(cmd, w, x_rot, y, GemvOp{GemvOp::prepared, {}, 0.0f, accumulate ? GemvOp::accumulate : GemvOp::store, 0, 0});
  }

  // Y [m][rows] = X W^T for m tokens; X_rot [m][cols_padded] row-major, rotated when w.rotated.
  // The shader is chosen per call (KernelConfig::gemm_coopmat, gemm_path()).
  void gemm(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y, uint32_t m,
            bool accumulate = false, GemmOut out = {});

  // The shaders gemm() chooses between: pq_gemm (fp32), pq_gemm_coopmat (tensor cores),
  // pq_gemm_coopmat_emulated.
  enum class GemmPath { portable, coopmat, coopmat_emulated };
  static const char* gemm_path_name(GemmPath p);  // "fp32", "coopmat", "coopmat-emulated"
  // Why this device (with this configuration's subgroup size) cannot run pq_gemm_coopmat:
  // empty when it can. It needs VK_NV_cooperative_matrix with a 16x16x16 fp16 x fp16 + fp32
  // subgroup shape in compute shaders, fp16 arithmetic, the Vulkan memory model, subgroups of
  // 32 and the shared memory of a 64-token tile.
  std::string coopmat_gemm_unsupported() const;
  // The shader gemm() takes for m tokens (before the input's alignment is seen: an input
  // binding whose offset is not a multiple of 16 bytes takes the portable one in `automatic`).
  GemmPath gemm_path(uint32_t m, bool any_m = false) const;
  // The shader the latest gemm() call recorded (portable before any).
  GemmPath last_gemm_path() const { return last_gemm_; }
  // The parts of K of its last slice (1: not split; GemmOut::split_k).
  uint32_t last_gemm_splits() const { return last_splits_; }
  // Whether the latest gemm() call took the skinny shader (pq_gemm_skinny.comp or its emulation).
  bool last_gemm_skinny() const { return last_skinny_; }
  // The scratch buffer split-K GEMMs share (allocated by the first one).
  static constexpr size_t kSplitScratchBytes = size_t(64) << 20;
  // Whether gemm() at m tokens runs a shader that can read fp16 activations (GemmOut::x_f16):
  // the tensor-core one and its emulation.
  bool gemm_takes_f16(uint32_t m, bool any_m = false) const { return gemm_path(m, any_m) != GemmPath::portable; }
  // Tokens per workgroup of the cooperative-matrix GEMM for m tokens.
  uint32_t gemm_coopmat_tile(uint32_t m) const;

  // Y [m][rows] = X W^T for the m tokens of a batched decode step (different sequences), each
  // code read once per config().batch_tokens tokens (pq_gemv_batch.comp); X as gemm() reads it.
  // A token's result does not depend on m or on its place among the m (the same arithmetic in
  // the same order), so a sequence decodes the same alone and in a batch.
  void gemv_batch(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y, uint32_t m,
                  bool accumulate = false, GemmOut out = {});

  // fp16 baseline: y[rows] = W x (x [cols] fp32) and Y [m][rows] = X W^T (X [m][cols] fp32).
  // y_offset: where row 0's result goes in y.
  void gemv_f16(vk::Commands& cmd, const DeviceF16Matrix& w, vk::BufferView x, vk::BufferView y,
                bool accumulate = false, uint32_t y_offset = 0);
  // ldx: the row stride of x in floats (0: cols).
  void gemm_f16(vk::Commands& cmd, const DeviceF16Matrix& w, vk::BufferView x, vk::BufferView y, uint32_t m,
                bool accumulate = false, uint32_t ldx = 0, GemmOut out = {});

  // The lookup the GEMV of a `bits`-bit matrix uses (never automatic). The first call that
  // could use unmasked shuffle indices runs the probe (unmasked_shuffle_exact()).
  KernelConfig::GemvLookup gemv_lookup(int bits);
  // Whether GEMVs with unmasked shuffle indices give bit-identical results to masked ones on
  // this device at every bit width a shuffle serves (a small GEMV of random codes each).
  bool unmasked_shuffle_exact();

  // Embedding lookup: out [m][cols] fp32 = rows tokens[0..m) of the table (dequantized).
  void embed(vk::Commands& cmd, const DeviceQuantMatrix& table, vk::BufferView tokens, vk::BufferView out, uint32_t m);
  void embed_f16(vk::Commands& cmd, const DeviceF16Matrix& table, vk::BufferView tokens, vk::BufferView out, uint32_t m);

  // Attention pieces (shaders/qkv_rope.comp, shaders/attention.comp): the geometry of a layer.
  struct AttentionShape {
    uint32_t n_heads = 0, n_kv = 0, head_dim = 0, max_ctx = 0, window = 0;
    float eps = 1e-6f;  // q/k norms
    // The KV cache: 0 fp16; 4 or 8: PolarQuant records (qkv_rope.comp: per head, the codes of
    // the rotated, normalized vector and its norm; head_dim a power of two from 8 to 256).
    uint32_t kv_bits = 0;
  };
  // Why the shape cannot have its KV cache type (empty when it can): PolarQuant records need
  // 4 or 8 bits and a power-of-two head size from 8 to 256.
  static std::string kv_cache_unsupported(const AttentionShape& a);
  // Words the cache holds per position and KV head: head_dim / 2 (fp16), or the record's
  // head_dim * kv_bits / 32 codes + 1 norm. Throws where kv_cache_unsupported() says why.
  static size_t kv_words(const AttentionShape& a);
  // Where the m tokens of qkv_rope / attention are: one sequence at positions step[0] + i
  // (consecutive), or per_row (continuous batching): token i at position step[2i] of the sequence
  // whose cache region is slot step[2i + 1] (cache positions slot * max_ctx ..); the caches then
  // hold slots * max_ctx positions.
  enum class Positions { consecutive, per_row };
  // qkv [m][q | k | v] (rows of n_heads * head_dim + 2 * n_kv * head_dim) -> biases, q/k
  // norms, RoPE at the tokens' positions; q into q_out [m][n_heads * head_dim], k, v into the
  // caches. bias / norm may be empty views when the model has none.
  void qkv_rope(vk::Commands& cmd, const AttentionShape& a, vk::BufferView qkv, vk::BufferView q_out,
                vk::BufferView kcache, vk::BufferView vcache, vk::BufferView inv_freq, vk::BufferView bias,
                vk::BufferView norm, vk::BufferView step, uint32_t m, Positions positions = Positions::consecutive);
  // Decode (one token at position step[0]): qkv_rope's work for that token fused with
  // attention over the caches split into `splits` ranges of the context (flash-decoding).
  // qkv: q [n_heads * head_dim] | k [n_kv * head_dim] | v [n_kv * head_dim]. Writes each
  // split's normalized output part [splits][n_heads * head_dim] and its (max, sum) pairs
  // ml [splits][n_heads][2]; prepare() with Prologue::merge combines them. Needs an even
  // head_dim <= 256, at most 16 query heads per KV head and the shared memory that takes
  // (decode_attention_supported()).
  // With direct.out (one split; part and ml may be empty views): no partial outputs, the
  // output projection's prepared input instead (DecodeDirect; decode_direct_supported()).
  void attention_decode(vk::Commands& cmd, const AttentionShape& a, vk::BufferView qkv, vk::BufferView kcache,
                        vk::BufferView vcache, vk::BufferView inv_freq, vk::BufferView bias, vk::BufferView norm,
                        vk::BufferView step, vk::BufferView part, vk::BufferView ml, uint32_t splits,
                        const DecodeDirect& direct = {});
  bool decode_attention_supported(const AttentionShape& a) const;
  // Whether attention_decode() can write the prepared input in blocks of `block` directly: a
  // block lies in one workgroup's query heads (those of one KV head: head_dim a multiple of the
  // block, or the block a multiple of head_dim that divides the workgroup's n_heads / n_kv
  // heads), block 64, 128 or 256, subgroup shuffles, the shared memory of the outputs and the
  // transform; any KV cache attention_decode reads.
  bool decode_direct_supported(const AttentionShape& a, uint32_t block) const;
  // out [m][n_heads * head_dim] = causal attention of q over the caches, each token over its own
  // sequence's positions up to its own. Consecutive positions: attention_path() names the shader
  // (all compute the same); per_row (continuous batching): attention.comp. With a PolarQuant
  // cache on the tensor-core path this records three dispatches with barriers between them
  // (q rotated, attention, output rotated back) and overwrites q.
  void attention(vk::Commands& cmd, const AttentionShape& a, vk::BufferView q, vk::BufferView kcache,
                 vk::BufferView vcache, vk::BufferView out, vk::BufferView step, uint32_t m,
                 Positions positions = Positions::consecutive);
  // Whether attention() takes attention_tiled.comp for this shape on this device: heads of at
  // most 128, subgroups of at least 8 invocations, 25 KiB of shared memory, the switch on.
  bool attention_tiled_supported(const AttentionShape& a) const;
  // Why this device cannot run attention_coopmat.comp (empty when it can): VK_NV_cooperative_matrix
  // with a 16x16x16 fp16 shape, fp16, the memory model, subgroups of 32, 31 KiB of shared memory
  // (43.5 KiB for 32-key tiles, taken where they fit; PolarQuant records of kv_bits: their centroids more).
  std::string attention_coopmat_unsupported(uint32_t kv_bits = 0) const;
  // The shader attention() takes for consecutive positions with this shape: "coopmat",
  // "coopmat-emulated", "tiled" or "per-query". A PolarQuant cache (kv_bits) takes the
  // tensor-core shader for heads of 64 or 128, else the per-query one.
  std::string attention_path(const AttentionShape& a) const;
  // out[r] = tokens[r] = argmax(x[r][0..n)) (lowest index among equals) for each of `rows` rows of
  // x of `ldx` floats (0: n), in two passes; at most kArgmaxRows rows.
  static constexpr uint32_t kArgmaxRows = 256;
  void argmax(vk::Commands& cmd, vk::BufferView x, uint32_t n, vk::BufferView out, vk::BufferView tokens,
              uint32_t rows = 1, uint32_t ldx = 0);

  // dst[0 .. words) = random 32-bit words (random_fill_word(seed, i)), or with fp16_range two
  // fp16 values uniform in [lo, hi) per word: synthetic weights made on the device.
  void random_fill(vk::Commands& cmd, vk::BufferView dst, size_t words, uint32_t seed, bool fp16_range = false,
                   float lo = 0.0f, float hi = 1.0f);

  // dst[0 .. bytes) = src[0 .. bytes) through a shader (bytes a multiple of 16): the
  // benchmark's measure of copy bandwidth with the loads and stores kernels issue.
  void copy(vk::Commands& cmd, const vk::Buffer& src, const vk::Buffer& dst, size_t bytes);

  // The pipeline for a shader + specialization, built on first use and kept. subgroup_size:
  // the required subgroup size (0: the driver's choice); unset: the configuration's.
  const vk::Pipeline& pipeline(const std::string& shader, const vk::SpecConstants& spec,
                               uint32_t num_buffers, uint32_t push_bytes, uint32_t local_size_x,
                               std::optional<uint32_t> subgroup_size = std::nullopt);

 private:
  vk::Context& ctx_;
  KernelConfig cfg_;
  vk::Buffer dummy_;  // bound where a shader's optional buffer is unused
  vk::Buffer splitk_;  // split-K partial outputs (allocated on first use, never resized: recordings keep it)
  // Parts of K for a split tensor-core GEMM of `rows` rows and nchunk chunks loaded
  // chunks_per_load at a time (1: no split), up to `target` workgroups of 128 rows, the scratch
  // holding the partials of max_tokens tokens; *kc the chunks per part. Depends on the matrix only.
  uint32_t gemm_splits(size_t rows, uint32_t nchunk, uint32_t chunks_per_load, uint32_t* kc, uint32_t target,
                       uint32_t max_tokens) const;
  // One slice of a tensor-core GEMM (pq_gemm_coopmat.comp or pq_gemm_skinny.comp: the same
  // buffers and push constants): 128-row tiles x token_tiles workgroups, K in `splits` parts of kc
  // chunks (more than one: the parts into the scratch buffer, splitk_sum.comp adds them into y).
  void dispatch_tensor_gemm(vk::Commands& cmd, const vk::Pipeline& p, const DeviceQuantMatrix& w,
                            const DeviceQuantMatrix::Slice& s, vk::BufferView x_rot, vk::BufferView y, uint32_t m,
                            bool accumulate, uint32_t ldy, uint32_t col, uint32_t token_tiles, uint32_t splits, uint32_t kc);
  // gemm() through pq_gemm_skinny.comp (real) or its emulation; ldy resolved.
  void gemm_skinny(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y, uint32_t m,
                   bool accumulate, uint32_t ldy, const GemmOut& out, bool real, uint32_t chunks_per_load);
  vk::Buffer argmax_parts_;  // argmax's per-workgroup results
  std::map<std::string, std::unique_ptr<vk::Pipeline>> pipelines_;
  std::optional<bool> unmasked_exact_;  // the probe's answer, once run
  std::map<uint32_t, vk::Buffer> kv_codebooks_;  // per width: Lloyd-Max centroids | cell boundaries
  // The shaders' KV codebook binding: the width's centroids | cell boundaries (fp16 cache: unused).
  vk::BufferView kv_codebook(uint32_t bits);
  GemmPath last_gemm_ = GemmPath::portable;
  uint32_t last_splits_ = 1;
  bool last_skinny_ = false;
  std::string coopmat_unsupported_;  // coopmat_gemm_unsupported(), found by the constructor
  uint32_t coopmat_subgroup_size() const;  // the required subgroup size of pq_gemm_coopmat (0: the driver's)
  void gemv_as(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x, vk::BufferView y, const GemvOp& op,
               KernelConfig::GemvLookup lookup);
  bool shuffle_fits(int bits) const;
  // Whether gemv_lookup(bits) is the shared table (known without the probe).
  bool gemv_table(int bits) const;
  // attention_decode.comp's shared memory for the shape, with or without the direct path.
  static size_t decode_shared_bytes(const AttentionShape& a, bool direct);
};

// CPU helpers matching the GPU layouts (used by the tests and the CPU reference).
// Position of element e of a vector in gemv-interleaved layout.
inline size_t gemv_interleaved_index(size_t e) {
  const size_t ch = e / 32, i = e % 32;
  return (ch & ~size_t(31)) * 32 + (i / 4) * 128 + (ch & 31) * 4 + i % 4;
}
// Reorders one row-major prepared row (cols_padded elements) into gemv-interleaved layout.
std::vector<float> interleave_for_gemv(const float* row, size_t cols_padded);
// The CPU twin of random_fill: word i for `seed`.
uint32_t random_fill_word(uint32_t seed, uint32_t i);

}  // namespace pqvk
