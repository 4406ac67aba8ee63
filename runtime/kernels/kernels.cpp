// Host side of the shaders: uploads matrices in the layouts the shaders read, builds the
// pipelines with their specialization constants, and records dispatches (kernels.h).
#include "kernels/kernels.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>

namespace pqvk {

using vk::Error;

namespace {

size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

// Largest byte count one binding (and one allocation) may have on this device.
size_t binding_limit(const vk::Context& ctx, size_t requested) {
  size_t lim = ctx.info().max_storage_buffer_range;
  if (ctx.info().max_allocation_size) lim = std::min<size_t>(lim, ctx.info().max_allocation_size);
  if (requested) lim = std::min(lim, requested);
  return lim;
}

// Workgroup grid for n groups: x first, spilling into y past the device's x limit.
void grid(const vk::Context& ctx, size_t n, uint32_t* gx, uint32_t* gy) {
  const size_t max_x = ctx.info().max_workgroup_count_x;
  *gx = static_cast<uint32_t>(std::min(n, max_x));
  *gy = static_cast<uint32_t>(n == 0 ? 0 : (n + max_x - 1) / max_x);
}

// Shared memory a GEMV's replicated lookup table may take.
size_t gemv_table_budget(const vk::Context& ctx) { return std::min<size_t>(32768, ctx.info().max_shared_memory * 2 / 3); }

void check_block(uint32_t block, const char* what) {
  if (block != 64 && block != 128 && block != 256)
    throw Error(std::string(what) + ": block size " + std::to_string(block) + " is not 64, 128 or 256");
}

void check_view(const vk::BufferView& v, size_t floats, const std::string& what) {
  if (!v.buffer) throw Error(what + ": no buffer");
  if (v.bytes() < floats * 4)
    throw Error(what + ": buffer holds " + std::to_string(v.bytes()) + " bytes, needs " + std::to_string(floats * 4));
}

uint32_t u32(size_t v, const char* what) {
  if (v > UINT32_MAX) throw Error(std::string(what) + " exceeds 32 bits");
  return static_cast<uint32_t>(v);
}

// pq_gemm_coopmat.comp's tile: 128 rows of W, tm tokens; its shared memory (the codebook of
// 2^bits floats, two fp16 buffers of 40 halves per row and per token).
constexpr uint32_t kCoopmatTileN = 128;
constexpr size_t kSplitMaxFloats = Kernels::kSplitScratchBytes / 4;  // split-K partial outputs
size_t coopmat_shared_bytes(int bits, uint32_t tm) { return (size_t(4) << bits) + 2 * (size_t(tm) + kCoopmatTileN) * 80; }
// pq_gemm_skinny.comp's: the codebook, two fp16 tiles of 32 rows x 40 halves per subgroup (4),
// `tokens` rows of sx chunks of staged activations (+ 16 bytes).
size_t skinny_shared_bytes(int bits, uint32_t tokens, uint32_t sx) {
  return (size_t(4) << bits) + 4 * 2 * 32 * 80 + size_t(tokens) * (sx * 64 + 16);
}

}  // namespace

size_t rotated_row_elems(size_t cols, int block, Layout layout) {
  const size_t padded = round_up(cols, static_cast<size_t>(block));
  return layout == Layout::gemv_interleaved ? round_up(padded, 1024) : padded;
}

std::vector<float> interleave_for_gemv(const float* row, size_t cols_padded) {
  std::vector<float> out(round_up(cols_padded, 1024), 0.0f);
  for (size_t e = 0; e < cols_padded; ++e) out[gemv_interleaved_index(e)] = row[e];
  return out;
}

// ---- uploads ---------------------------------------------------------------------------------

size_t DeviceQuantMatrix::bytes() const {
  size_t n = 0;
  for (const auto& s : slices) n += s.codes.size() + s.scales.size();
  return n;
}

DeviceQuantMatrix upload_quant(vk::Context& ctx, const pq::QuantMatrix& q, const std::string& name,
                               size_t max_slice_bytes, size_t row_multiple) {
  DeviceQuantMatrix d;
  d.name = name.empty() ? "matrix" : name;
  d.method = q.method;
  d.bits = q.bits;
  d.block = q.block;
  d.rotated = q.rotated;
  d.rows = q.rows;
  d.cols = q.cols;
  d.cols_padded = q.cols_padded;
  if (q.codes.size() != pq::packed_words(q.rows, q.cols_padded, q.bits) ||
      q.scales.size() != q.rows * q.blocks_per_row() || q.codebook.size() != (size_t(1) << q.bits))
    throw Error(d.name + ": inconsistent quantized matrix (codes, scales or codebook size)");
  d.codebook = ctx.upload_new(q.codebook, d.name + " codebook");
  const size_t row_words = q.codes.size() / q.rows;
  const size_t nb = q.blocks_per_row();
  const size_t limit = binding_limit(ctx, max_slice_bytes);
  size_t rows_per_slice = std::min(q.rows, limit / std::max(row_words * 4, round_up(nb, 2) * 2));
  if (rows_per_slice < q.rows) rows_per_slice -= rows_per_slice % std::max<size_t>(1, row_multiple);
  if (rows_per_slice == 0)
    throw Error(d.name + ": one row (" + std::to_string(row_words * 4) + " bytes) exceeds the device's binding limit");
  for (size_t r0 = 0; r0 < q.rows; r0 += rows_per_slice) {
    DeviceQuantMatrix::Slice s;
    s.row0 = r0;
    s.rows = std::min(rows_per_slice, q.rows - r0);
    const std::string what = d.name + " rows " + std::to_string(r0) + ".." + std::to_string(r0 + s.rows);
    s.codes = ctx.buffer(s.rows * row_words * 4, vk::MemoryKind::device, what + " codes");
    ctx.upload(s.codes, q.codes.data() + r0 * row_words, s.rows * row_words * 4);
    std::vector<uint16_t> sc(round_up(s.rows * nb, 2), 0);
    std::memcpy(sc.data(), q.scales.data() + r0 * nb, s.rows * nb * 2);
    s.scales = ctx.upload_new(sc, what + " scales");
    d.slices.push_back(std::move(s));
  }
  return d;
}

size_t DeviceF16Matrix::bytes() const {
  size_t n = 0;
  for (const auto& s : slices) n += s.data.size();
  return n;
}

DeviceF16Matrix upload_f16(vk::Context& ctx, const float* w, size_t rows, size_t cols, const std::string& name,
                           size_t max_slice_bytes) {
  DeviceF16Matrix d;
  d.name = name.empty() ? "matrix" : name;
  if (rows == 0 || cols == 0) throw Error(d.name + ": empty matrix");
  d.rows = rows;
  d.cols = cols;
  d.cols_padded = round_up(cols, 8);
  const size_t limit = binding_limit(ctx, max_slice_bytes);
  const size_t rows_per_slice = std::min(rows, limit / (d.cols_padded * 2));
  if (rows_per_slice == 0) throw Error(d.name + ": one row exceeds the device's binding limit");
  for (size_t r0 = 0; r0 < rows; r0 += rows_per_slice) {
    DeviceF16Matrix::Slice s;
    s.row0 = r0;
    s.rows = std::min(rows_per_slice, rows - r0);
    std::vector<uint16_t> h(s.rows * d.cols_padded, 0);
    for (size_t r = 0; r < s.rows; ++r)
      for (size_t c = 0; c < cols; ++c) h[r * d.cols_padded + c] = pq::f32_to_f16(w[(r0 + r) * cols + c]);
    s.data = ctx.upload_new(h, d.name + " rows " + std::to_string(r0));
    d.slices.push_back(std::move(s));
  }
  return d;
}

// ---- kernels ---------------------------------------------------------------------------------

Kernels::Kernels(vk::Context& ctx, KernelConfig cfg) : ctx_(ctx), cfg_(cfg) {
  if (const char* e = std::getenv("PQVK_GEMV"); e && *e) {  // "WGxROWS": benchmarks' override of the GEMV shape
    unsigned wg = 0, rows = 0;
    if (std::sscanf(e, "%ux%u", &wg, &rows) != 2) throw Error(std::string("PQVK_GEMV='") + e + "' is not WGxROWS (e.g. 256x8)");
    cfg_.gemv_wg = wg;
    cfg_.gemv_rows = rows;
  }
  if (const char* e = std::getenv("PQVK_GEMV_LOOKUP"); e && *e) {  // table, shuffle, unmasked (benchmarks)
    const std::string v = e;
    if (v == "table") cfg_.gemv_lookup = KernelConfig::GemvLookup::table;
    else if (v == "shuffle") cfg_.gemv_lookup = KernelConfig::GemvLookup::shuffle;
    else if (v == "unmasked") cfg_.gemv_lookup = KernelConfig::GemvLookup::shuffle_unmasked;
    else throw Error("PQVK_GEMV_LOOKUP='" + v + "' is not table, shuffle or unmasked");
  }
  if (const char* e = std::getenv("PQVK_GEMV_FOLD"); e && *e) {  // 0 / 1: folded preparations (benchmarks)
    const std::string v = e;
    if (v != "0" && v != "1") throw Error("PQVK_GEMV_FOLD='" + v + "' is not 0 or 1");
    cfg_.gemv_fold = v == "1";
  }
  if (const char* e = std::getenv("PQVK_GEMV_BATCH"); e && *e) {  // "WGxROWSxTOKENS": the batched GEMV's shape (benchmarks)
    unsigned wg = 0, rows = 0, tokens = 0;
    if (std::sscanf(e, "%ux%ux%u", &wg, &rows, &tokens) != 3)
      throw Error(std::string("PQVK_GEMV_BATCH='") + e + "' is not WGxROWSxTOKENS (e.g. 128x8x8)");
    cfg_.batch_wg = wg;
    cfg_.batch_rows = rows;
    cfg_.batch_tokens = tokens;
  }
  if (cfg_.batch_wg % 32 || cfg_.batch_wg == 0 || cfg_.batch_wg > ctx.info().max_workgroup_invocations ||
      cfg_.batch_rows == 0 || cfg_.batch_rows > 32 || cfg_.batch_tokens == 0 || cfg_.batch_tokens > 64)
    throw Error("batched gemv: workgroup " + std::to_string(cfg_.batch_wg) + " (a multiple of 32 within the device limit), " +
                std::to_string(cfg_.batch_rows) + " rows (1..32), " + std::to_string(cfg_.batch_tokens) + " tokens (1..64)");
  if (const char* e = std::getenv("PQVK_GEMM_COOPMAT"); e && *e) {  // benchmarks: which prefill GEMM
    const std::string v = e;
    using G = KernelConfig::GemmCoopmat;
    if (v == "0" || v == "off") cfg_.gemm_coopmat = G::off;
    else if (v == "1" || v == "auto") cfg_.gemm_coopmat = G::automatic;
    else if (v == "on") cfg_.gemm_coopmat = G::on;
    else if (v == "64" || v == "128") {
      cfg_.gemm_coopmat = G::automatic;
      cfg_.gemm_coopmat_tm = static_cast<uint32_t>(std::stoul(v));
    } else {
      throw Error("PQVK_GEMM_COOPMAT='" + v + "' is not 0, 1, on, 64 or 128");
    }
  }
  if (const char* e = std::getenv("PQVK_ATTENTION_COOPMAT"); e && *e) {  // benchmarks: which prefill attention
    const std::string v = e;
    using A = KernelConfig::AttentionCoopmat;
    if (v == "0" || v == "off") cfg_.attention_coopmat = A::off;
    else if (v == "1" || v == "auto") cfg_.attention_coopmat = A::automatic;
    else if (v == "emulated") cfg_.attention_coopmat = A::emulated;
    else throw Error("PQVK_ATTENTION_COOPMAT='" + v + "' is not 0, 1 or emulated");
  }
  // Benchmarks: the split-K targets of the 128-row-tile and the skinny tensor-core GEMMs (0: off).
  for (auto [var, field] : {std::pair{"PQVK_GEMM_SPLIT", &cfg_.gemm_split_target},
                            std::pair{"PQVK_GEMM_SKINNY_SPLIT", &cfg_.gemm_skinny_split_target}})
    if (const char* e = std::getenv(var); e && *e) {
      char* end = nullptr;
      const unsigned long v = std::strtoul(e, &end, 10);
      if (*end || v > 65536) throw Error(std::string(var) + "='" + e + "' is not a workgroup count (0..65536)");
      *field = static_cast<uint32_t>(v);
    }
  if (const char* e = std::getenv("PQVK_GEMM_SKINNY"); e && *e) {  // benchmarks: 0 turns the skinny GEMM off
    const std::string v = e;
    if (v != "0" && v != "1") throw Error("PQVK_GEMM_SKINNY='" + v + "': 0 or 1");
    cfg_.gemm_skinny = v == "1";
  }
  for (auto [var, field] : {std::pair{"PQVK_GEMV_ABLATE", &cfg_.gemv_ablate}, std::pair{"PQVK_GEMM_ABLATE", &cfg_.gemm_ablate},
                            std::pair{"PQVK_ATTENTION_ABLATE", &cfg_.attention_ablate}})
    if (const char* e = std::getenv(var); e && *e) {  // benchmarks only
      char* end = nullptr;
      const unsigned long v = std::strtoul(e, &end, 10);
      if (*end || v > 255) throw Error(std::string(var) + "='" + e + "' is not an ablation (0..255)");
      *field = static_cast<uint32_t>(v);
    }
  if (cfg_.gemm_coopmat_tm != 0 && cfg_.gemm_coopmat_tm != 64 && cfg_.gemm_coopmat_tm != 128)
    throw Error("cooperative-matrix GEMM tile: " + std::to_string(cfg_.gemm_coopmat_tm) + " tokens (64 or 128)");
  if (cfg_.gemv_table_shift > 5) throw Error("gemv table copies: at most 32 (shift 5)");
  if (cfg_.gemv_wg % 32 || cfg_.gemv_wg == 0 || cfg_.gemv_wg > ctx.info().max_workgroup_invocations)
    throw Error("gemv workgroup size " + std::to_string(cfg_.gemv_wg) + " must be a multiple of 32 within the device limit");
  if (cfg_.gemv_rows == 0 || cfg_.gemv_rows > 16) throw Error("gemv rows per workgroup must be 1..16");
  dummy_ = ctx_.buffer(64, vk::MemoryKind::device, "unused binding");
  // What pq_gemm_coopmat.comp needs (its header): each missing piece, in words.
  const auto& info = ctx.info();
  std::vector<std::string> missing;
  if (!info.has_coopmat_nv_f16(16, 16, 16))
    missing.push_back("no VK_NV_cooperative_matrix 16x16x16 fp16 x fp16 + fp32 subgroup shape in compute shaders");
  if (!info.fp16) missing.push_back("no fp16 arithmetic (shaderFloat16)");
  if (!info.vulkan_memory_model) missing.push_back("no Vulkan memory model");
  const uint32_t sg = coopmat_subgroup_size() ? coopmat_subgroup_size() : info.subgroup_size;
  if (sg != 32) missing.push_back("subgroups of " + std::to_string(sg) + " invocations (the shader needs 8 subgroups of 32)");
  if (coopmat_shared_bytes(8, 64) > info.max_shared_memory)
    missing.push_back(std::to_string(info.max_shared_memory) + " bytes of shared memory (the shader needs " +
                      std::to_string(coopmat_shared_bytes(8, 64)) + ")");
  for (const auto& m : missing) coopmat_unsupported_ += (coopmat_unsupported_.empty() ? "" : "; ") + m;
}

uint32_t Kernels::coopmat_subgroup_size() const {
  if (cfg_.subgroup_size) return cfg_.subgroup_size;
  const auto& info = ctx_.info();
  // Pinned where the device can (with full subgroups), so that 256 invocations are 8 subgroups.
  return info.subgroup_size_control && info.min_subgroup_size <= 32 && info.max_subgroup_size >= 32 ? 32 : 0;
}

const vk::Pipeline& Kernels::pipeline(const std::string& shader, const vk::SpecConstants& spec,
                                      uint32_t num_buffers, uint32_t push_bytes, uint32_t local_size_x,
                                      std::optional<uint32_t> subgroup_size) {
  std::string key = shader;
  for (const auto& [id, v] : spec) key += ":" + std::to_string(id) + "=" + std::to_string(v);
  if (subgroup_size) key += "/subgroup=" + std::to_string(*subgroup_size);
  auto it = pipelines_.find(key);
  if (it != pipelines_.end()) return *it->second;
  vk::PipelineDesc desc;
  desc.shader = shader;
  desc.spec = spec;
  desc.num_buffers = num_buffers;
  desc.push_constant_bytes = push_bytes;
  desc.required_subgroup_size = subgroup_size ? *subgroup_size : cfg_.subgroup_size;
  desc.local_size_x = local_size_x;
  auto p = std::make_unique<vk::Pipeline>(ctx_.pipeline(desc));
  return *pipelines_.emplace(key, std::move(p)).first->second;
}

void Kernels::fwht(vk::Commands& cmd, vk::BufferView x, vk::BufferView out, uint32_t rows, uint32_t cols,
                   uint32_t block, Layout layout) {
  prepare(cmd, x, out, rows, cols, block, layout, true, Prologue{});
}

void Kernels::prepare(vk::Commands& cmd, vk::BufferView x, vk::BufferView out, uint32_t rows, uint32_t cols,
                      uint32_t block, Layout layout, bool rotate, const Prologue& pro, uint32_t in_row0) {
  check_block(block, "fwht");
  if (rows == 0 || cols == 0) throw Error("fwht: empty input");
  const size_t stride = rotated_row_elems(cols, static_cast<int>(block), layout);
  const bool f16_out = layout == Layout::row_major_f16;  // two per word: rows of whole blocks, an even count
  check_view(x, (size_t(in_row0) + rows) * cols, "fwht input");
  check_view(out, f16_out ? size_t(rows) * stride / 2 : size_t(rows) * stride, "fwht output");
  if (pro.kind == Prologue::rmsnorm) check_view(pro.aux, cols, "rmsnorm weight");
  if (pro.kind == Prologue::swiglu) check_view(pro.aux, (size_t(in_row0) + rows) * cols, "swiglu up input");
  if (pro.kind == Prologue::swiglu_pairs) check_view(x, (size_t(in_row0) + rows) * cols * 2, "swiglu gate/up input");
  const bool merge = pro.kind == Prologue::merge;
  if (merge) {
    if (in_row0 != 0 || pro.splits == 0 || pro.head_dim == 0 || cols % pro.head_dim)
      throw Error("fwht: an attention merge needs whole heads, at least one split and rows from 0");
    check_view(x, size_t(pro.splits) * rows * cols, "attention partial outputs");
    check_view(pro.aux, size_t(pro.splits) * rows * (cols / pro.head_dim) * 2, "attention (max, sum) pairs");
  }
  struct { uint32_t rows, cols, nblocks, out_stride, in_row0; float eps; uint32_t splits; } push{
      rows, cols, u32((cols + block - 1) / block, "blocks"), u32(stride, "row stride"), in_row0, pro.eps,
      merge ? pro.splits : 1u};
  const uint32_t mode = static_cast<uint32_t>(pro.kind);
  const uint32_t wg = std::max<uint32_t>(block / 4, 256);  // several blocks per workgroup
  const auto& p = pipeline("fwht",
                           {{0, wg}, {1, block}, {2, mode}, {3, rotate ? 1u : 0u},
                            {4, layout == Layout::gemv_interleaved ? 1u : f16_out ? 2u : 0u},
                            {5, merge ? pro.head_dim : 128u}},
                           3, sizeof(push), wg);
  const size_t groups = (push.nblocks + wg / (block / 4) - 1) / (wg / (block / 4));
  uint32_t gx, gy;
  grid(ctx_, size_t(rows) * groups, &gx, &gy);
  cmd.dispatch(p, {x, out, pro.aux.buffer ? pro.aux : vk::BufferView(dummy_)}, push, gx, gy);
}

void Kernels::dequant(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView out, bool f16_out) {
  if (f16_out && w.cols % 2) throw Error(w.name + ": fp16 dequantization needs an even column count");
  const size_t out_row_bytes = w.cols * (f16_out ? 2 : 4);
  if (!out.buffer || out.bytes() < w.rows * out_row_bytes) throw Error(w.name + ": dequant output buffer too small");
  const uint32_t block = static_cast<uint32_t>(w.block);
  const auto& p = pipeline("pq_dequant",
                           {{0, block / 4}, {1, block}, {2, uint32_t(w.bits)}, {3, w.rotated ? 1u : 0u}, {4, f16_out ? 1u : 0u},
                            {5, 0u}},
                           5, 24, block / 4);
  const uint32_t nblocks = u32(w.cols_padded / w.block, "blocks"), nchunk = u32(w.cols_padded / 32, "chunks");
  for (const auto& s : w.slices) {
    const size_t off = out.offset + s.row0 * out_row_bytes;
    struct { uint32_t rows, cols, nblocks, nchunk, row0, slice_rows; } push{
        u32(s.rows, "rows"), u32(w.cols, "cols"), nblocks, nchunk, u32(s.row0, "row"), u32(s.rows, "rows")};
    uint32_t gx, gy;
    grid(ctx_, s.rows * nblocks, &gx, &gy);
    cmd.dispatch(p, {s.codes, s.scales, w.codebook, vk::BufferView(*out.buffer, off, s.rows * out_row_bytes), dummy_},
                 push, gx, gy);
  }
}

namespace {
// Invocations of a GEMV workgroup: no more than chunks of a row (rounded up to 32), so that short
// rows leave none idle; table lookups fill shared memory per workgroup: at least 128 share the fill.
uint32_t gemv_workgroup(const KernelConfig& cfg, uint32_t nchunk, bool table) {
  const uint32_t want = table ? std::max<uint32_t>(cfg.gemv_wg, 128) : cfg.gemv_wg;
  return std::min<uint32_t>(want, static_cast<uint32_t>(round_up(nchunk, 32)));
}
}  // namespace

void Kernels::gemv(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x, vk::BufferView y,
                   const GemvOp& op) {
  gemv_as(cmd, w, x, y, op, gemv_lookup(w.bits));
}

void Kernels::gemv_as(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x, vk::BufferView y,
                      const GemvOp& op, KernelConfig::GemvLookup lookup) {
  using L = KernelConfig::GemvLookup;
  const bool swiglu = op.epilogue == GemvOp::swiglu;
  if (op.x_offset % 4) throw Error(w.name + ": gemv input offset is not a multiple of 4 floats");
  check_view(x, size_t(op.x_offset) + (op.prologue == GemvOp::prepared
                                           ? rotated_row_elems(w.cols_padded, w.block, Layout::gemv_interleaved)
                                           : w.cols), w.name + " gemv input");
  check_view(y, size_t(op.y_offset) + (swiglu ? w.rows / 2 : w.rows), w.name + " gemv output");
  if (op.prologue == GemvOp::rmsnorm) check_view(op.norm, w.cols, w.name + " rmsnorm weight");
  if (op.prologue == GemvOp::prepared_rms) check_view(op.partials, w.cols_padded / w.block, w.name + " sums of squares");
  const GemvOp::Fold& fold = op.fold;
  const uint32_t nout = u32(swiglu ? w.rows / 2 : w.rows, "outputs");
  if (fold.kind != GemvOp::Fold::none) {
    if (!fold_supported(w, op.epilogue, fold.block))
      throw Error(w.name + ": the GEMV cannot prepare a next input of blocks of " + std::to_string(fold.block));
    if (op.y_offset != 0) throw Error(w.name + ": a GEMV that prepares the next input writes y from 0");
    // The shader has one binding for the sums of squares: read (prepared_rms) or written (rms_norm).
    if (op.prologue == GemvOp::prepared_rms && fold.kind == GemvOp::Fold::rms_norm)
      throw Error(w.name + ": a GEMV cannot both read and write sums of squares (prepared_rms and Fold::rms_norm)");
    const size_t nb = (nout + fold.block - 1) / fold.block;
    check_view(fold.next, rotated_row_elems(nout, static_cast<int>(fold.block), Layout::gemv_interleaved), w.name + " next input");
    check_view(fold.counters, nb, w.name + " fold counters");
    if (fold.kind == GemvOp::Fold::rms_norm) {
      check_view(fold.partials, nb, w.name + " sums of squares");
      check_view(fold.norm, nout, w.name + " next rmsnorm weight");
    }
  }
  if (swiglu && (w.rows % 2 || cfg_.gemv_rows % 2))
    throw Error(w.name + ": the SwiGLU epilogue needs an even row count and rows per workgroup");
  const uint32_t bits = static_cast<uint32_t>(w.bits);
  // Table copies (a power of two, up to one per lane of a 32-wide subgroup) within a share of
  // shared memory.
  uint32_t rep_shift = 5;
  while (rep_shift > 0 && (size_t(4) << (bits + rep_shift)) > gemv_table_budget(ctx_)) --rep_shift;
  if (cfg_.gemv_table_shift >= 0) rep_shift = std::min<uint32_t>(rep_shift, static_cast<uint32_t>(cfg_.gemv_table_shift));
  const uint32_t mode = lookup == L::table ? 0u : lookup == L::shuffle ? 1u : lookup == L::shuffle_unmasked ? 2u : 3u;
  const uint32_t prologue = op.prologue == GemvOp::prepared       ? 0u
                            : op.prologue == GemvOp::prepared_rms ? 8u
                                                                  : 4u | (w.rotated ? 1u : 0u) | (op.prologue == GemvOp::rmsnorm ? 2u : 0u);
  if ((prologue & 1u) && (w.block / 32 > static_cast<int>(cfg_.subgroup_size ? cfg_.subgroup_size : ctx_.info().subgroup_size)))
    throw Error(w.name + ": rotating blocks of " + std::to_string(w.block) + " inside the GEMV needs subgroups of at least " +
                std::to_string(w.block / 32) + " invocations");
  const uint32_t epilogue = static_cast<uint32_t>(op.epilogue);
  const uint32_t nblocks = u32(w.cols_padded / w.block, "blocks"), nchunk = u32(w.cols_padded / 32, "chunks");
  const uint32_t wg = gemv_workgroup(cfg_, nchunk, lookup == L::table);
  const uint32_t fold_kind = fold.kind == GemvOp::Fold::rms_norm ? 1u : fold.kind == GemvOp::Fold::plain ? 2u : 0u;
  const auto& p = pipeline("pq_gemv",
                           {{0, wg}, {1, bits}, {2, cfg_.gemv_rows}, {3, uint32_t(w.block)},
                            {4, mode == 0 ? rep_shift : 0u}, {5, mode}, {6, prologue}, {7, epilogue},
                            {8, fold_kind}, {9, fold_kind ? fold.block : 128u}, {10, fold.rotate ? 1u : 0u},
                            {11, cfg_.gemv_ablate}},
                           10, 32, wg);
  const auto or_dummy = [&](vk::BufferView v) { return v.buffer ? v : vk::BufferView(dummy_); };
  for (const auto& s : w.slices) {
    if (swiglu && (s.row0 % 2 || s.rows % 2)) throw Error(w.name + ": a slice splits a gate/up row pair");
    struct { uint32_t rows, nchunk, nblocks, cols, y_offset, x_offset; float eps; uint32_t nout; } push{
        u32(s.rows, "rows"), nchunk, nblocks, u32(op.prologue == GemvOp::prepared ? w.cols_padded : w.cols, "cols"),
        u32(op.y_offset + (swiglu ? s.row0 / 2 : s.row0), "row"), op.x_offset, op.eps, nout};
    uint32_t gx, gy;
    grid(ctx_, (s.rows + cfg_.gemv_rows - 1) / cfg_.gemv_rows, &gx, &gy);
    cmd.dispatch(p, {s.codes, s.scales, w.codebook, x, y, or_dummy(op.norm), or_dummy(fold.counters), or_dummy(fold.next),
                     or_dummy(op.prologue == GemvOp::prepared_rms ? op.partials : fold.partials), or_dummy(fold.norm)},
                 push, gx, gy);
  }
}

bool Kernels::fold_supported(const DeviceQuantMatrix& w, GemvOp::Epilogue epilogue, uint32_t block) const {
  const uint32_t outr = epilogue == GemvOp::swiglu ? cfg_.gemv_rows / 2 : cfg_.gemv_rows;
  const uint32_t wg = gemv_workgroup(cfg_, static_cast<uint32_t>(w.cols_padded / 32), gemv_table(w.bits));
  if (!cfg_.gemv_fold || outr == 0 || (block != 64 && block != 128 && block != 256) || block % outr || block / 4 > wg) return false;
  for (const auto& s : w.slices)  // every workgroup's outputs inside one block
    if ((epilogue == GemvOp::swiglu ? s.row0 / 2 : s.row0) % outr) return false;
  return true;
}

bool Kernels::shuffle_fits(int bits) const {
  // A shuffle needs every entry in one subgroup; the pipeline's subgroup size may be pinned.
  const uint32_t sg = cfg_.subgroup_size ? cfg_.subgroup_size : ctx_.info().subgroup_size;
  return ctx_.info().subgroup_shuffle && bits >= 1 && (1u << bits) <= sg;
}

bool Kernels::gemv_table(int bits) const {
  // The table where asked for, and where a shuffle is asked for (or left to automatic) but the
  // codebook does not fit in a subgroup; `code` is no lookup at all.
  using L = KernelConfig::GemvLookup;
  return cfg_.gemv_lookup == L::table || (cfg_.gemv_lookup != L::code && !shuffle_fits(bits));
}

KernelConfig::GemvLookup Kernels::gemv_lookup(int bits) {
  using L = KernelConfig::GemvLookup;
  if (gemv_table(bits)) return L::table;
  if (cfg_.gemv_lookup == L::automatic) return unmasked_shuffle_exact() ? L::shuffle_unmasked : L::shuffle;
  return cfg_.gemv_lookup;
}

bool Kernels::unmasked_shuffle_exact() {
  if (unmasked_exact_) return *unmasked_exact_;
  // Random codes of every value (and random bits above each code), an awkward shape, both
  // lookups on the same input: the results must be identical to the bit.
  bool exact = true;
  std::mt19937 rng(12345);
  for (int bits = 1; bits <= 8 && exact; ++bits) {
    if (!shuffle_fits(bits)) continue;
    pq::QuantMatrix q;
    q.method = pq::Method::pq;
    q.bits = bits;
    q.block = 128;
    q.rotated = true;
    q.rows = 37;
    q.cols = q.cols_padded = 1152;
    q.codes.resize(pq::packed_words(q.rows, q.cols_padded, bits));
    for (auto& c : q.codes) c = static_cast<uint32_t>(rng());
    q.scales.resize(q.rows * q.blocks_per_row());
    for (auto& sc : q.scales) sc = pq::f32_to_f16(0.5f + static_cast<float>(rng() % 1000) / 1000.0f);
    for (int k = 0; k < (1 << bits); ++k) q.codebook.push_back(static_cast<float>(k) * 0.37f - 1.1f);
    const DeviceQuantMatrix d = upload_quant(ctx_, q, "unmasked-shuffle probe");
    std::vector<float> x(rotated_row_elems(q.cols, q.block, Layout::gemv_interleaved));
    for (auto& v : x) v = static_cast<float>(rng() % 2001) / 1000.0f - 1.0f;
    const vk::Buffer xb = ctx_.upload_new(x, "probe input");
    const vk::Buffer y1 = ctx_.buffer(q.rows * 4, vk::MemoryKind::device, "probe output");
    const vk::Buffer y2 = ctx_.buffer(q.rows * 4, vk::MemoryKind::device, "probe output");
    auto cmd = ctx_.commands();
    gemv_as(cmd, d, xb, y1, GemvOp{}, KernelConfig::GemvLookup::shuffle);
    gemv_as(cmd, d, xb, y2, GemvOp{}, KernelConfig::GemvLookup::shuffle_unmasked);
    cmd.run();
    exact = ctx_.download_all<uint32_t>(y1) == ctx_.download_all<uint32_t>(y2);
  }
  unmasked_exact_ = exact;
  return exact;
}

void Kernels::gemm(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y, uint32_t m,
                   bool accumulate, GemmOut out) {
  if (m == 0) throw Error(w.name + ": gemm with 0 tokens");
  const uint32_t ldy = out.ldy ? out.ldy : u32(w.rows, "rows");
  if (out.col + w.rows > ldy) throw Error(w.name + ": gemm output columns exceed its row stride");
  check_view(x_rot, out.x_f16 ? size_t(m) * w.cols_padded / 2 : size_t(m) * w.cols_padded, w.name + " gemm input");
  check_view(y, size_t(m - 1) * ldy + out.col + w.rows, w.name + " gemm output");
  using G = KernelConfig::GemmCoopmat;
  GemmPath path = gemm_path(m, out.any_m);
  if (path == GemmPath::coopmat && !coopmat_unsupported_.empty())
    throw Error(w.name + ": the cooperative-matrix GEMM was asked for (gemm_coopmat on), but '" + ctx_.info().name +
                "' cannot run it: " + coopmat_unsupported_);
  if (path != GemmPath::portable && x_rot.offset % 16) {  // the shader reads the input as vec4
    if (cfg_.gemm_coopmat != G::automatic || out.x_f16)
      throw Error(w.name + ": the cooperative-matrix GEMM needs its input bound at a multiple of 16 bytes");
    path = GemmPath::portable;
  }
  if (out.x_f16 && path == GemmPath::portable)
    throw Error(w.name + ": fp16 activations need the cooperative-matrix GEMM, which does not run here (gemm_takes_f16)");
  const uint32_t bits = static_cast<uint32_t>(w.bits), block = static_cast<uint32_t>(w.block);
  uint32_t tile_m = 64, tile_n = 64;
  // Tensor cores: codes of 4 chunks per load where every group of a row holds a multiple of 4 chunks, else 2.
  const uint32_t chunks_per_load = (w.cols_padded / 32) % 4 == 0 ? 4 : 2;
  const vk::Pipeline* p = nullptr;
  if (path == GemmPath::portable) {
    p = &pipeline("pq_gemm", {{0, bits}, {1, block}}, 5, 32, 256);
  } else {
    tile_m = gemm_coopmat_tile(m);
    tile_n = kCoopmatTileN;
    const vk::SpecConstants spec = {{0, bits}, {1, block}, {2, tile_m}, {3, chunks_per_load}, {4, cfg_.gemm_ablate},
                                    {5, out.x_f16 ? 1u : 0u}};
    p = path == GemmPath::coopmat ? &pipeline("pq_gemm_coopmat", spec, 5, 40, 256, coopmat_subgroup_size())
                                  : &pipeline("pq_gemm_coopmat_emulated", spec, 5, 40, 256);
  }
  last_gemm_ = path;
  last_splits_ = 1;
  last_skinny_ = false;
  const uint32_t nblocks = u32(w.cols_padded / w.block, "blocks"), nchunk = u32(w.cols_padded / 32, "chunks");
  // Decode steps of at most 32 sequences: the skinny shader, whatever m (GemmOut::max_m).
  if (path != GemmPath::portable && cfg_.gemm_skinny && out.split_k && out.x_f16 && out.max_m >= 1 && out.max_m <= 32 &&
      skinny_shared_bytes(w.bits, 32, 4) <= ctx_.info().max_shared_memory) {
    if (m > out.max_m) throw Error(w.name + ": gemm of " + std::to_string(m) + " tokens, more than GemmOut::max_m");
    gemm_skinny(cmd, w, x_rot, y, m, accumulate, ldy, out, path == GemmPath::coopmat, chunks_per_load);
    return;
  }
  for (const auto& s : w.slices) {
    const uint32_t tiles = u32((s.rows + tile_n - 1) / tile_n, "tiles");
    if (path == GemmPath::portable) {
      struct { uint32_t rows, m, nchunk, nblocks, ldx, ldy, y_offset, accumulate; } push{
          u32(s.rows, "rows"), m, nchunk, nblocks, u32(w.cols_padded, "cols"), ldy, u32(out.col + s.row0, "row"),
          accumulate ? 1u : 0u};
      cmd.dispatch(*p, {s.codes, s.scales, w.codebook, x_rot, y}, push, tiles, (m + tile_m - 1) / tile_m);
      continue;
    }
    uint32_t kc = nchunk;
    const uint32_t splits = out.split_k && m <= tile_m ? gemm_splits(s.rows, nchunk, chunks_per_load, &kc, cfg_.gemm_split_target, 128) : 1;
    last_splits_ = splits;
    dispatch_tensor_gemm(cmd, *p, w, s, x_rot, y, m, accumulate, ldy, out.col, (m + tile_m - 1) / tile_m, splits, kc);
  }
}

void Kernels::gemm_skinny(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y, uint32_t m,
                          bool accumulate, uint32_t ldy, const GemmOut& out, bool real, uint32_t chunks_per_load) {
  // Shuffle lookups where the codebook fits in the 32 lanes (the emulation reads shared memory).
  const uint32_t lookup = real && w.bits <= 5 ? 1u : 0u, tiles16 = (out.max_m + 15) / 16;
  // Activations staged 8 chunks at a time where the shared memory holds them, else 4.
  const uint32_t sx = skinny_shared_bytes(w.bits, 16 * tiles16, 8) <= ctx_.info().max_shared_memory ? 8 : 4;
  const vk::SpecConstants spec = {{0, uint32_t(w.bits)}, {1, uint32_t(w.block)}, {2, tiles16}, {3, chunks_per_load},
                                  {4, lookup}, {5, cfg_.gemm_ablate}, {6, sx}};
  const vk::Pipeline& p = real ? pipeline("pq_gemm_skinny", spec, 5, 40, 128, coopmat_subgroup_size())
                               : pipeline("pq_gemm_skinny_emulated", spec, 5, 40, 128);
  last_skinny_ = true;
  const uint32_t nchunk = u32(w.cols_padded / 32, "chunks");
  for (const auto& s : w.slices) {
    uint32_t kc = nchunk;
    const uint32_t splits = gemm_splits(s.rows, nchunk, chunks_per_load, &kc, cfg_.gemm_skinny_split_target, 32);
    last_splits_ = splits;
    dispatch_tensor_gemm(cmd, p, w, s, x_rot, y, m, accumulate, ldy, out.col, 1, splits, kc);
  }
}

void Kernels::dispatch_tensor_gemm(vk::Commands& cmd, const vk::Pipeline& p, const DeviceQuantMatrix& w,
                                   const DeviceQuantMatrix::Slice& s, vk::BufferView x_rot, vk::BufferView y, uint32_t m,
                                   bool accumulate, uint32_t ldy, uint32_t col, uint32_t token_tiles, uint32_t splits,
                                   uint32_t kc) {
  const uint32_t rows = u32(s.rows, "rows"), tiles = (rows + kCoopmatTileN - 1) / kCoopmatTileN;
  const uint32_t nblocks = u32(w.cols_padded / w.block, "blocks"), nchunk = u32(w.cols_padded / 32, "chunks");
  struct { uint32_t rows, m, nchunk, nblocks, ldx, ldy, y_offset, accumulate, kc, zstride; } push{
      rows, m, nchunk, nblocks, u32(w.cols_padded, "cols"), ldy, u32(col + s.row0, "row"), accumulate ? 1u : 0u, kc, 0u};
  if (splits == 1) {
    cmd.dispatch(p, {s.codes, s.scales, w.codebook, x_rot, y}, push, tiles, token_tiles);
    return;
  }
  // Split-K: the partials [splits][m][rows] into the scratch buffer, then their sum into y.
  if (!splitk_.valid())
    splitk_ = ctx_.buffer(size_t(kSplitMaxFloats) * 4, vk::MemoryKind::device, "split-K partial outputs");
  push.ldy = rows;
  push.y_offset = 0;
  push.accumulate = 0;
  push.zstride = m * rows;
  cmd.dispatch(p, {s.codes, s.scales, w.codebook, x_rot, splitk_}, push, tiles, token_tiles, splits);
  cmd.barrier();
  struct { uint32_t rows, m, splits, ldy, y_offset, accumulate; } sum{rows, m, splits, ldy, u32(col + s.row0, "row"),
                                                                       accumulate ? 1u : 0u};
  cmd.dispatch(pipeline("splitk_sum", {}, 2, 24, 256), {splitk_, y}, sum, (m * rows + 255) / 256);
  cmd.barrier();  // the next split GEMM reuses the scratch buffer
}

uint32_t Kernels::gemm_splits(size_t rows, uint32_t nchunk, uint32_t chunks_per_load, uint32_t* kc, uint32_t target,
                              uint32_t max_tokens) const {
  *kc = nchunk;
  const size_t tiles = (rows + kCoopmatTileN - 1) / kCoopmatTileN;
  uint32_t splits = 1;
  // The scratch holds the partials of up to max_tokens tokens.
  while (splits < 16 && tiles * splits * 2 <= target && nchunk / (splits * 2) >= 8 &&
         size_t(splits) * 2 * max_tokens * rows <= kSplitMaxFloats)
    splits *= 2;
  if (splits == 1) return 1;
  // Parts of a whole number of code loads; the last part may be shorter (or the count smaller).
  *kc = (nchunk + splits - 1) / splits;
  *kc = (*kc + chunks_per_load - 1) / chunks_per_load * chunks_per_load;
  return (nchunk + *kc - 1) / *kc;
}

void Kernels::gemv_batch(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y,
                         uint32_t m, bool accumulate, GemmOut out) {
  if (m == 0) throw Error(w.name + ": batched gemv of 0 tokens");
  const uint32_t ldy = out.ldy ? out.ldy : u32(w.rows, "rows");
  if (out.col + w.rows > ldy) throw Error(w.name + ": batched gemv output columns exceed its row stride");
  check_view(x_rot, size_t(m) * w.cols_padded, w.name + " batched gemv input");
  check_view(y, size_t(m - 1) * ldy + out.col + w.rows, w.name + " batched gemv output");
  const uint32_t wg = cfg_.batch_wg, rows = cfg_.batch_rows, nb = cfg_.batch_tokens;
  if (wg == 0 || wg % 32 || rows == 0 || nb == 0 || size_t(rows) * nb * (wg / 4) * 4 > ctx_.info().max_shared_memory)
    throw Error("batched gemv: workgroup of " + std::to_string(wg) + " threads, " + std::to_string(rows) + " rows and " +
                std::to_string(nb) + " tokens is not supported on this device");
  // Shuffle lookups where the codebook fits in a subgroup and the GEMV would take them
  // (gemv_lookup), in workgroups that fill whole subgroups.
  const KernelConfig::GemvLookup lookup = gemv_lookup(w.bits);
  const uint32_t sg = cfg_.subgroup_size ? cfg_.subgroup_size : ctx_.info().subgroup_size;
  const uint32_t mode = (lookup == KernelConfig::GemvLookup::shuffle || lookup == KernelConfig::GemvLookup::shuffle_unmasked) &&
                                wg >= sg
                            ? 1u
                            : 0u;
  const auto& p = pipeline("pq_gemv_batch",
                           {{0, wg}, {1, uint32_t(w.bits)}, {2, rows}, {3, nb}, {4, uint32_t(w.block)}, {5, mode}}, 5, 32, wg);
  const uint32_t nblocks = u32(w.cols_padded / w.block, "blocks"), nchunk = u32(w.cols_padded / 32, "chunks");
  for (const auto& s : w.slices) {
    struct { uint32_t rows, nchunk, nblocks, m, ldx, ldy, y_offset, accumulate; } push{
        u32(s.rows, "rows"), nchunk, nblocks, m, u32(w.cols_padded, "cols"), ldy, u32(out.col + s.row0, "row"),
        accumulate ? 1u : 0u};
    uint32_t gx, gy;
    grid(ctx_, (s.rows + rows - 1) / rows, &gx, &gy);
    cmd.dispatch(p, {s.codes, s.scales, w.codebook, x_rot, y}, push, gx, gy, (m + nb - 1) / nb);
  }
}

const char* Kernels::gemm_path_name(GemmPath p) {
  switch (p) {
    case GemmPath::portable: return "fp32";
    case GemmPath::coopmat: return "coopmat";
    case GemmPath::coopmat_emulated: return "coopmat-emulated";
  }
  return "?";
}

std::string Kernels::coopmat_gemm_unsupported() const { return coopmat_unsupported_; }

Kernels::GemmPath Kernels::gemm_path(uint32_t m, bool any_m) const {
  switch (cfg_.gemm_coopmat) {
    case KernelConfig::GemmCoopmat::off: return GemmPath::portable;
    case KernelConfig::GemmCoopmat::on: return GemmPath::coopmat;
    case KernelConfig::GemmCoopmat::emulated: return GemmPath::coopmat_emulated;
    case KernelConfig::GemmCoopmat::automatic: break;
  }
  return (any_m || m >= cfg_.gemm_coopmat_min_m) && coopmat_unsupported_.empty() ? GemmPath::coopmat : GemmPath::portable;
}

uint32_t Kernels::gemm_coopmat_tile(uint32_t m) const {
  const size_t shared = ctx_.info().max_shared_memory;
  if (cfg_.gemm_coopmat_tm) {
    if (coopmat_shared_bytes(8, cfg_.gemm_coopmat_tm) > shared)
      throw Error("cooperative-matrix GEMM: a " + std::to_string(cfg_.gemm_coopmat_tm) + "-token tile needs " +
                  std::to_string(coopmat_shared_bytes(8, cfg_.gemm_coopmat_tm)) + " bytes of shared memory; the device has " +
                  std::to_string(shared));
    return cfg_.gemm_coopmat_tm;
  }
  // 128 tokens halve the decoding and the shared-memory traffic per product. They also halve the
  // workgroups, which measured no loss on the H200 even at 4096 rows x 512 tokens (128
  // workgroups: 12.8 against 23.0 ms for the 32 down projections of a 512-token pass,
  // bench/RESULTS.md), so every M above one 64-token tile takes them.
  return m > 64 && coopmat_shared_bytes(8, 128) <= shared ? 128 : 64;
}

void Kernels::gemv_f16(vk::Commands& cmd, const DeviceF16Matrix& w, vk::BufferView x, vk::BufferView y,
                       bool accumulate, uint32_t y_offset) {
  check_view(x, w.cols, w.name + " gemv input");
  check_view(y, size_t(y_offset) + w.rows, w.name + " gemv output");
  const auto& p = pipeline("f16_gemv", {{0, cfg_.gemv_wg}, {1, cfg_.gemv_rows}}, 3, 20, cfg_.gemv_wg);
  for (const auto& s : w.slices) {
    struct { uint32_t rows, cols, ldw, y_offset, accumulate; } push{u32(s.rows, "rows"), u32(w.cols, "cols"),
                                                                     u32(w.cols_padded, "cols"), u32(y_offset + s.row0, "row"),
                                                                     accumulate ? 1u : 0u};
    uint32_t gx, gy;
    grid(ctx_, (s.rows + cfg_.gemv_rows - 1) / cfg_.gemv_rows, &gx, &gy);
    cmd.dispatch(p, {s.data, x, y}, push, gx, gy);
  }
}

void Kernels::gemm_f16(vk::Commands& cmd, const DeviceF16Matrix& w, vk::BufferView x, vk::BufferView y, uint32_t m,
                       bool accumulate, uint32_t ldx, GemmOut out) {
  if (m == 0) throw Error(w.name + ": gemm with 0 tokens");
  if (ldx == 0) ldx = u32(w.cols, "cols");
  if (ldx < w.cols) throw Error(w.name + ": gemm input stride below the column count");
  const uint32_t ldy = out.ldy ? out.ldy : u32(w.rows, "rows");
  if (out.col + w.rows > ldy) throw Error(w.name + ": gemm output columns exceed its row stride");
  check_view(x, size_t(m - 1) * ldx + w.cols, w.name + " gemm input");
  check_view(y, size_t(m - 1) * ldy + out.col + w.rows, w.name + " gemm output");
  const auto& p = pipeline("f16_gemm", {}, 3, 32, 256);
  for (const auto& s : w.slices) {
    struct { uint32_t rows, m, cols, ldw, ldy, y_offset, accumulate, ldx; } push{
        u32(s.rows, "rows"), m, u32(w.cols, "cols"), u32(w.cols_padded, "cols"), ldy, u32(out.col + s.row0, "row"),
        accumulate ? 1u : 0u, ldx};
    cmd.dispatch(p, {s.data, x, y}, push, u32((s.rows + 63) / 64, "tiles"), (m + 63) / 64);
  }
}

void Kernels::embed(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView tokens, vk::BufferView out, uint32_t m) {
  if (m == 0) throw Error(w.name + ": embedding lookup of 0 tokens");
  check_view(tokens, m, w.name + " tokens");
  check_view(out, size_t(m) * w.cols, w.name + " embedding output");
  const uint32_t block = static_cast<uint32_t>(w.block);
  const auto& p = pipeline("pq_dequant",
                           {{0, block / 4}, {1, block}, {2, uint32_t(w.bits)}, {3, w.rotated ? 1u : 0u}, {4, 0u}, {5, 1u}},
                           5, 24, block / 4);
  const uint32_t nblocks = u32(w.cols_padded / w.block, "blocks"), nchunk = u32(w.cols_padded / 32, "chunks");
  for (const auto& s : w.slices) {
    struct { uint32_t rows, cols, nblocks, nchunk, row0, slice_rows; } push{
        m, u32(w.cols, "cols"), nblocks, nchunk, u32(s.row0, "row"), u32(s.rows, "rows")};
    uint32_t gx, gy;
    grid(ctx_, size_t(m) * nblocks, &gx, &gy);
    cmd.dispatch(p, {s.codes, s.scales, w.codebook, out, tokens}, push, gx, gy);
  }
}

void Kernels::embed_f16(vk::Commands& cmd, const DeviceF16Matrix& w, vk::BufferView tokens, vk::BufferView out, uint32_t m) {
  if (m == 0) throw Error(w.name + ": embedding lookup of 0 tokens");
  check_view(tokens, m, w.name + " tokens");
  check_view(out, size_t(m) * w.cols, w.name + " embedding output");
  const auto& p = pipeline("f16_gather", {}, 3, 16, 256);
  for (const auto& s : w.slices) {
    struct { uint32_t cols, ldw, row0, slice_rows; } push{u32(w.cols, "cols"), u32(w.cols_padded, "cols"),
                                                          u32(s.row0, "row"), u32(s.rows, "rows")};
    cmd.dispatch(p, {s.data, tokens, out}, push, u32((w.cols + 255) / 256, "cols"), m);
  }
}

std::string Kernels::kv_cache_unsupported(const AttentionShape& a) {
  if (a.kv_bits == 0) return "";
  if (a.kv_bits != 4 && a.kv_bits != 8) return "KV cache: " + std::to_string(a.kv_bits) + "-bit PolarQuant codes (4 or 8)";
  if (a.head_dim < 8 || a.head_dim > 256 || (a.head_dim & (a.head_dim - 1)))
    return "a PolarQuant KV cache needs a power-of-two head size from 8 to 256, not " + std::to_string(a.head_dim);
  return "";
}

size_t Kernels::kv_words(const AttentionShape& a) {
  if (const std::string why = kv_cache_unsupported(a); !why.empty()) throw Error(why);
  return a.kv_bits == 0 ? a.head_dim / 2 : size_t(a.head_dim) * a.kv_bits / 32 + 1;
}

vk::BufferView Kernels::kv_codebook(uint32_t bits) {
  if (bits == 0) return dummy_;
  auto it = kv_codebooks_.find(bits);
  if (it != kv_codebooks_.end()) return it->second;
  const auto& c = pq::lloyd_max_centroids(static_cast<int>(bits));
  const auto& mid = pq::lloyd_max_midpoints(static_cast<int>(bits));
  std::vector<float> v(c.begin(), c.end());
  v.insert(v.end(), mid.begin(), mid.end());
  return kv_codebooks_.emplace(bits, ctx_.upload_new(v, "KV cache codebook")).first->second;
}

void Kernels::qkv_rope(vk::Commands& cmd, const AttentionShape& a, vk::BufferView qkv, vk::BufferView q_out,
                       vk::BufferView kcache, vk::BufferView vcache, vk::BufferView inv_freq, vk::BufferView bias,
                       vk::BufferView norm, vk::BufferView step, uint32_t m, Positions positions) {
  if (a.head_dim % 2 || a.n_kv == 0 || a.n_heads % a.n_kv) throw Error("qkv_rope: bad attention shape");
  const bool per_row = positions == Positions::per_row;
  check_view(step, per_row ? 2 * size_t(m) : 1, "token positions");
  const size_t q_dim = size_t(a.n_heads) * a.head_dim, kv_dim = size_t(a.n_kv) * a.head_dim;
  check_view(qkv, m * (q_dim + 2 * kv_dim), "q/k/v");
  check_view(q_out, m * q_dim, "q");
  const size_t words = kv_words(a) * a.n_kv;
  check_view(kcache, size_t(a.max_ctx) * words, "k cache");
  check_view(vcache, size_t(a.max_ctx) * words, "v cache");
  check_view(inv_freq, a.head_dim / 2, "rope frequencies");
  const bool has_bias = bias.buffer != nullptr, has_norm = norm.buffer != nullptr;
  if (has_bias) check_view(bias, q_dim + 2 * kv_dim, "q/k/v biases");
  if (has_norm) check_view(norm, 2 * size_t(a.head_dim), "q/k norms");
  const auto& p = pipeline("qkv_rope", {{0, has_bias ? 1u : 0u}, {1, has_norm ? 1u : 0u}, {2, per_row ? 1u : 0u}, {3, a.kv_bits}},
                           9, 20, 64);
  struct { uint32_t n_heads, n_kv, hd, max_ctx; float eps; } push{a.n_heads, a.n_kv, a.head_dim, a.max_ctx, a.eps};
  cmd.dispatch(p, {qkv, q_out, kcache, vcache, inv_freq, has_bias ? bias : vk::BufferView(dummy_),
                   has_norm ? norm : vk::BufferView(dummy_), step, kv_codebook(a.kv_bits)},
               push, a.n_heads + a.n_kv, m);
}

size_t Kernels::decode_shared_bytes(const AttentionShape& a, bool direct) {
  const size_t gq = a.n_heads / a.n_kv;  // attention_decode.comp's shared arrays (its header)
  const size_t half = a.head_dim / 2, vw0 = gq <= 4 ? 4 : gq <= 8 ? 2 : 1;
  const size_t vw = half % vw0 == 0 ? vw0 : std::min<size_t>(half % 2 == 0 ? 2 : 1, vw0);
  const size_t slots = 128 / (half / vw);
  size_t shared = half * (gq + 1) * 8 + 128 * (gq + 1) * 4 + gq * 33 * 4 + slots * gq * half * 8 + half * 8;
  if (a.kv_bits) shared += ((size_t(1) << a.kv_bits) + a.head_dim) * 4;  // cbs, hvq
  if (a.kv_bits || direct) shared += gq * a.head_dim * 4;               // qrot: rotated queries, outputs
  if (direct) shared += 128 * 16;                                        // fwht_sh
  return shared;
}

bool Kernels::decode_attention_supported(const AttentionShape& a) const {
  if (!kv_cache_unsupported(a).empty()) return false;
  if (a.head_dim % 2 || a.head_dim > 256 || a.n_kv == 0 || a.n_heads % a.n_kv || a.n_heads / a.n_kv > 16) return false;
  return decode_shared_bytes(a, false) <= ctx_.info().max_shared_memory;
}

bool Kernels::decode_direct_supported(const AttentionShape& a, uint32_t block) const {
  if (!decode_attention_supported(a) || !ctx_.info().subgroup_shuffle) return false;
  if (block != 64 && block != 128 && block != 256) return false;
  const uint32_t wg_values = a.n_heads / a.n_kv * a.head_dim;  // one workgroup's query heads
  const bool in_workgroup = a.head_dim % block == 0 || (block % a.head_dim == 0 && wg_values % block == 0);
  return in_workgroup && decode_shared_bytes(a, true) <= ctx_.info().max_shared_memory;
}

void Kernels::attention_decode(vk::Commands& cmd, const AttentionShape& a, vk::BufferView qkv, vk::BufferView kcache,
                               vk::BufferView vcache, vk::BufferView inv_freq, vk::BufferView bias, vk::BufferView norm,
                               vk::BufferView step, vk::BufferView part, vk::BufferView ml, uint32_t splits,
                               const DecodeDirect& direct) {
  if (!decode_attention_supported(a))
    throw Error("attention_decode: head size " + std::to_string(a.head_dim) + " or head counts " +
                std::to_string(a.n_heads) + "/" + std::to_string(a.n_kv) + " unsupported");
  if (splits == 0 || splits > 128) throw Error("attention_decode: 1..128 splits");
  const bool is_direct = direct.out.buffer != nullptr;
  if (is_direct && !decode_direct_supported(a, direct.block))
    throw Error("attention_decode: no direct output in blocks of " + std::to_string(direct.block) + " for heads of " +
                std::to_string(a.head_dim) + ", " + std::to_string(a.n_heads) + "/" + std::to_string(a.n_kv) +
                " heads on this device (decode_direct_supported)");
  if (is_direct && splits != 1) throw Error("attention_decode: the direct output takes one split");
  const size_t q_dim = size_t(a.n_heads) * a.head_dim, kv_dim = size_t(a.n_kv) * a.head_dim;
  check_view(qkv, q_dim + 2 * kv_dim, "q/k/v");
  check_view(kcache, size_t(a.max_ctx) * a.n_kv * kv_words(a), "k cache");
  check_view(vcache, size_t(a.max_ctx) * a.n_kv * kv_words(a), "v cache");
  check_view(inv_freq, a.head_dim / 2, "rope frequencies");
  if (is_direct) {
    check_view(direct.out, rotated_row_elems(q_dim, static_cast<int>(direct.block), Layout::gemv_interleaved),
               "attention output (prepared input)");
  } else {
    check_view(part, size_t(splits) * q_dim, "attention partial outputs");
    check_view(ml, size_t(splits) * a.n_heads * 2, "attention (max, sum) pairs");
  }
  const bool has_bias = bias.buffer != nullptr, has_norm = norm.buffer != nullptr;
  if (has_bias) check_view(bias, q_dim + 2 * kv_dim, "q/k/v biases");
  if (has_norm) check_view(norm, 2 * size_t(a.head_dim), "q/k norms");
  const auto& p = pipeline("attention_decode",
                           {{0, has_bias ? 1u : 0u}, {1, has_norm ? 1u : 0u}, {2, a.n_heads / a.n_kv}, {3, a.head_dim},
                            {4, a.kv_bits}, {5, is_direct ? 1u : 0u}, {6, is_direct ? direct.block : 128u},
                            {7, is_direct && direct.rotate ? 1u : 0u}},
                           10, 20, 128);
  struct { uint32_t n_heads, n_kv, window, splits; float eps; } push{a.n_heads, a.n_kv, a.window, splits, a.eps};
  cmd.dispatch(p, {qkv, kcache, vcache, inv_freq, has_bias ? bias : vk::BufferView(dummy_),
                   has_norm ? norm : vk::BufferView(dummy_), step, is_direct ? direct.out : part,
                   is_direct ? vk::BufferView(dummy_) : ml, kv_codebook(a.kv_bits)},
               push, a.n_kv, splits);
}

namespace {
// attention_tiled.comp's shared memory with bk keys per tile: 32 + 2 bk rows of 132 floats.
size_t attention_tiled_shared_bytes(uint32_t bk) { return size_t(32 + 2 * bk) * 132 * 4; }
}  // namespace

bool Kernels::attention_tiled_supported(const AttentionShape& a) const {
  const auto& info = ctx_.info();
  const uint32_t min_sg = info.min_subgroup_size ? info.min_subgroup_size : info.subgroup_size;
  return cfg_.attention_tiled && info.subgroup_shuffle && min_sg >= 8 && a.head_dim <= 128 &&
         attention_tiled_shared_bytes(8) <= info.max_shared_memory;
}

// attention_coopmat.comp's shared memory with bk keys per tile: 64 + 2 bk rows of 17 uvec4, 64
// of bk / 4 + 1, 128 floats, and (PolarQuant records of kv_bits) the centroids.
size_t attention_coopmat_shared_bytes(uint32_t bk, uint32_t kv_bits) {
  return (64 + 2 * bk) * 17 * 16 + 64 * (bk / 4 + 1) * 16 + 128 * 4 + (kv_bits ? (size_t(1) << kv_bits) * 4 : 0);
}

// Keys per tile of attention_coopmat.comp for m queries (0: the most it may take): 32 where the
// shared memory allows and the pass has fewer than kAttentionBk16From queries, else 16. Few
// workgroups (a 512-token pass: 8 a head) gain from the longer tiles, 2048 queries a pass are even,
// passes of 4096 gain from the workgroups an SM holds with the smaller ones (7 against 5 on the
// H200: bench/RESULTS.md, eighth session).
constexpr uint32_t kAttentionBk16From = 4096;
uint32_t attention_coopmat_bk(const vk::DeviceInfo& info, uint32_t kv_bits, uint32_t m) {
  if (const char* e = std::getenv("PQVK_ATTENTION_BK"); e && *e) return std::string(e) == "32" ? 32 : 16;  // benchmarks
  return attention_coopmat_shared_bytes(32, kv_bits) <= info.max_shared_memory && m < kAttentionBk16From ? 32 : 16;
}

std::string Kernels::attention_coopmat_unsupported(uint32_t kv_bits) const {
  std::string why = coopmat_unsupported_;
  const size_t need = attention_coopmat_shared_bytes(attention_coopmat_bk(ctx_.info(), kv_bits, 0), kv_bits);
  if (need > ctx_.info().max_shared_memory)
    why += (why.empty() ? "" : "; ") + std::to_string(ctx_.info().max_shared_memory) + " bytes of shared memory (the shader needs " +
           std::to_string(need) + ")";
  return why;
}

std::string Kernels::attention_path(const AttentionShape& a) const {
  using A = KernelConfig::AttentionCoopmat;
  // PolarQuant records: the tensor-core shader for heads that fwht() rotates (64, 128), else
  // the per-query one; the tiled one does not read them.
  const bool coopmat_hd = a.kv_bits ? a.head_dim == 64 || a.head_dim == 128 : a.head_dim <= 128;
  if (coopmat_hd && cfg_.attention_coopmat == A::emulated) return "coopmat-emulated";
  if (coopmat_hd && cfg_.attention_coopmat == A::automatic && attention_coopmat_unsupported(a.kv_bits).empty()) return "coopmat";
  return !a.kv_bits && attention_tiled_supported(a) ? "tiled" : "per-query";
}

void Kernels::attention(vk::Commands& cmd, const AttentionShape& a, vk::BufferView q, vk::BufferView kcache,
                        vk::BufferView vcache, vk::BufferView out, vk::BufferView step, uint32_t m, Positions positions) {
  if (a.head_dim % 2 || a.head_dim > 256 || a.n_kv == 0 || a.n_heads % a.n_kv)
    throw Error("attention: head size " + std::to_string(a.head_dim) + " (even, at most 256) or head counts unsupported");
  if (m == 0) throw Error("attention of 0 queries");
  const bool per_row = positions == Positions::per_row;
  const size_t q_dim = size_t(a.n_heads) * a.head_dim;
  check_view(q, m * q_dim, "attention q");
  check_view(out, m * q_dim, "attention output");
  const size_t words = kv_words(a) * a.n_kv;
  check_view(kcache, size_t(a.max_ctx) * words, "k cache");
  check_view(vcache, size_t(a.max_ctx) * words, "v cache");
  check_view(step, per_row ? 2 * size_t(m) : 1, "token positions");
  const std::string path = per_row ? "" : attention_path(a);
  if (path == "coopmat" || path == "coopmat-emulated") {
    const bool real = path == "coopmat";
    const uint32_t bk = attention_coopmat_bk(ctx_.info(), a.kv_bits, m);
    const auto& p = real ? pipeline("attention_coopmat", {{0, bk}, {1, a.kv_bits}, {2, cfg_.attention_ablate}}, 6, 20, 128, coopmat_subgroup_size())
                         : pipeline("attention_coopmat_emulated", {{0, bk}, {1, a.kv_bits}, {2, cfg_.attention_ablate}}, 6, 20, 128);
    struct { uint32_t n_heads, n_kv, hd, window, m; } push{a.n_heads, a.n_kv, a.head_dim, a.window, m};
    if (!a.kv_bits) {
      cmd.dispatch(p, {q, kcache, vcache, out, step, dummy_}, push, a.n_heads, (m + 63) / 64);
      return;
    }
    // PolarQuant records are read in the rotated basis: H q per head into out, the attention
    // from there into q (its rotated output), H of that per head into out.
    const auto hd = a.head_dim, cols = static_cast<uint32_t>(q_dim);
    fwht(cmd, q, out, m, cols, hd);
    cmd.barrier();
    cmd.dispatch(p, {out, kcache, vcache, q, step, kv_codebook(a.kv_bits)}, push, a.n_heads, (m + 63) / 64);
    cmd.barrier();
    fwht(cmd, q, out, m, cols, hd);
    return;
  }
  if (path == "tiled") {
    const uint32_t bk = attention_tiled_shared_bytes(16) <= ctx_.info().max_shared_memory ? 16 : 8;
    const auto& p = pipeline("attention_tiled", {{0, bk}}, 5, 20, 128);
    struct { uint32_t n_heads, n_kv, hd, window, m; } push{a.n_heads, a.n_kv, a.head_dim, a.window, m};
    cmd.dispatch(p, {q, kcache, vcache, out, step}, push, a.n_heads, (m + 31) / 32);
    return;
  }
  const auto& p = pipeline("attention", {{0, per_row ? 1u : 0u}, {1, a.kv_bits}}, 6, 20, 128);
  struct { uint32_t n_heads, n_kv, hd, window, max_ctx; } push{a.n_heads, a.n_kv, a.head_dim, a.window, a.max_ctx};
  cmd.dispatch(p, {q, kcache, vcache, out, step, kv_codebook(a.kv_bits)},
               push, a.n_heads, m);
}

void Kernels::argmax(vk::Commands& cmd, vk::BufferView x, uint32_t n, vk::BufferView out, vk::BufferView tokens,
                     uint32_t rows, uint32_t ldx) {
  if (n == 0 || rows == 0) throw Error("argmax of nothing");
  if (rows > kArgmaxRows) throw Error("argmax of " + std::to_string(rows) + " rows: at most " + std::to_string(kArgmaxRows));
  if (ldx == 0) ldx = n;
  if (ldx < n) throw Error("argmax: row stride below the row length");
  check_view(x, size_t(rows - 1) * ldx + n, "argmax input");
  check_view(out, rows, "argmax output");
  check_view(tokens, rows, "argmax tokens");
  // Pass 0: segments of at least 1024 entries, at most 256 workgroups per row; pass 1: their results.
  const uint32_t groups = std::min<uint32_t>(256, (n + 1023) / 1024);
  const uint32_t seg = (n + groups - 1) / groups;
  if (!argmax_parts_.valid())
    argmax_parts_ = ctx_.buffer(size_t(kArgmaxRows) * 512 * 4, vk::MemoryKind::device, "argmax partial results");
  struct { uint32_t n, seg, ldx; } first{n, seg, ldx}, second{groups, 0, ldx};
  cmd.dispatch(pipeline("argmax", {{0, 0u}}, 4, 12, 256), {x, out, tokens, argmax_parts_}, first, groups, rows);
  cmd.barrier();
  cmd.dispatch(pipeline("argmax", {{0, 1u}}, 4, 12, 256), {x, out, tokens, argmax_parts_}, second, 1, rows);
}

uint32_t random_fill_word(uint32_t seed, uint32_t x) {
  x ^= seed * 0x9e3779b9u;
  x = x * 747796405u + 2891336453u;
  x = ((x >> ((x >> 28u) + 4u)) ^ x) * 277803737u;
  return (x >> 22u) ^ x;
}

void Kernels::random_fill(vk::Commands& cmd, vk::BufferView dst, size_t words, uint32_t seed, bool fp16_range,
                          float lo, float hi) {
  check_view(dst, words, "random_fill output");
  const auto& p = pipeline("random_fill", {{0, fp16_range ? 1u : 0u}}, 1, 16, 256);
  struct { uint32_t n, seed; float lo, hi; } push{u32(words, "words"), seed, lo, hi};
  cmd.dispatch(p, {dst}, push, static_cast<uint32_t>(std::min<size_t>((words + 255) / 256, 4096)));
}

void Kernels::copy(vk::Commands& cmd, const vk::Buffer& src, const vk::Buffer& dst, size_t bytes) {
  if (bytes % 16 || bytes > src.size() || bytes > dst.size())
    throw Error("copy: " + std::to_string(bytes) + " bytes is not a multiple of 16 or exceeds a buffer");
  const auto& p = pipeline("copy", {}, 2, 4, 256);
  const uint32_t n = u32(bytes / 16, "copy elements");
  const uint32_t groups = std::min<uint32_t>((n + 255) / 256, 65535);
  cmd.dispatch(p, {vk::BufferView(src, 0, bytes), vk::BufferView(dst, 0, bytes)}, n, groups);
}

}  // namespace pqvk
