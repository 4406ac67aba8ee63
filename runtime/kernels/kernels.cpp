// Host side of the shaders: uploads matrices in the layouts the shaders read, builds the
// pipelines with their specialization constants, and records dispatches (kernels.h).
#include "kernels/kernels.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
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

}  // namespace

size_t rotated_row_elems(size_t cols, int block, Layout layout) {
  size_t padded = round_up(cols, static_cast<size_t>(block));
  return layout == Layout::row_major ? padded : round_up(padded, 1024);
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
                               size_t max_slice_bytes) {
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
  const size_t rows_per_slice = std::min(q.rows, limit / std::max(row_words * 4, round_up(nb, 2) * 2));
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
  if (const char* e = std::getenv("PQVK_GEMV_PAIRS"); e && *e) cfg_.gemv_pairs = std::strcmp(e, "0") != 0;
  if (cfg_.gemv_wg % 32 || cfg_.gemv_wg == 0 || cfg_.gemv_wg > ctx.info().max_workgroup_invocations)
    throw Error("gemv workgroup size " + std::to_string(cfg_.gemv_wg) + " must be a multiple of 32 within the device limit");
  if (cfg_.gemv_rows == 0 || cfg_.gemv_rows > 16) throw Error("gemv rows per workgroup must be 1..16");
  dummy_ = ctx_.buffer(64, vk::MemoryKind::device, "unused binding");
}

const vk::Pipeline& Kernels::pipeline(const std::string& shader, const vk::SpecConstants& spec,
                                      uint32_t num_buffers, uint32_t push_bytes, uint32_t local_size_x) {
  std::string key = shader;
  for (const auto& [id, v] : spec) key += ":" + std::to_string(id) + "=" + std::to_string(v);
  auto it = pipelines_.find(key);
  if (it != pipelines_.end()) return *it->second;
  vk::PipelineDesc desc;
  desc.shader = shader;
  desc.spec = spec;
  desc.num_buffers = num_buffers;
  desc.push_constant_bytes = push_bytes;
  desc.required_subgroup_size = cfg_.subgroup_size;
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
  check_view(x, (size_t(in_row0) + rows) * cols, "fwht input");
  check_view(out, size_t(rows) * stride, "fwht output");
  if (pro.kind == Prologue::rmsnorm) check_view(pro.aux, cols, "rmsnorm weight");
  if (pro.kind == Prologue::swiglu) check_view(pro.aux, (size_t(in_row0) + rows) * cols, "swiglu up input");
  struct { uint32_t rows, cols, nblocks, out_stride, in_row0; float eps; } push{
      rows, cols, u32((cols + block - 1) / block, "blocks"), u32(stride, "row stride"), in_row0, pro.eps};
  const uint32_t mode = pro.kind == Prologue::rmsnorm ? 1u : pro.kind == Prologue::swiglu ? 2u : 0u;
  const auto& p = pipeline("fwht",
                           {{0, block / 4}, {1, block}, {2, layout == Layout::gemv_interleaved ? 1u : 0u}, {3, mode},
                            {4, rotate ? 1u : 0u}},
                           3, sizeof(push), block / 4);
  uint32_t gx, gy;
  grid(ctx_, size_t(rows) * push.nblocks, &gx, &gy);
  cmd.dispatch(p, {x, out, pro.kind == Prologue::none ? vk::BufferView(dummy_) : pro.aux}, push, gx, gy);
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

void Kernels::gemv(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y,
                   bool accumulate) {
  check_view(x_rot, rotated_row_elems(w.cols, w.block, Layout::gemv_interleaved), w.name + " gemv input");
  check_view(y, w.rows, w.name + " gemv output");
  const uint32_t bits = static_cast<uint32_t>(w.bits);
  // Table replicas (a power of two, up to one per bank) within a share of shared memory.
  const bool pairs = uses_gemv_pairs(w.bits);
  const size_t entries = size_t(1) << (pairs ? 2 * bits : bits);
  const size_t budget = std::min<size_t>(32768, ctx_.info().max_shared_memory * 2 / 3);
  uint32_t rep_shift = 5;
  while (rep_shift > 0 && (entries << rep_shift) * 4 > budget) --rep_shift;
  const auto& p = pipeline(pairs ? "pq_gemv_pairs" : "pq_gemv",
                           {{0, cfg_.gemv_wg}, {1, bits}, {2, cfg_.gemv_rows}, {3, uint32_t(w.block)}, {4, rep_shift}}, 5, 20,
                           cfg_.gemv_wg);
  const uint32_t nblocks = u32(w.cols_padded / w.block, "blocks"), nchunk = u32(w.cols_padded / 32, "chunks");
  for (const auto& s : w.slices) {
    struct { uint32_t rows, nchunk, nblocks, y_offset, accumulate; } push{u32(s.rows, "rows"), nchunk, nblocks,
                                                                          u32(s.row0, "row"), accumulate ? 1u : 0u};
    uint32_t gx, gy;
    grid(ctx_, (s.rows + cfg_.gemv_rows - 1) / cfg_.gemv_rows, &gx, &gy);
    cmd.dispatch(p, {s.codes, s.scales, w.codebook, x_rot, y}, push, gx, gy);
  }
}

bool Kernels::uses_gemv_pairs(int bits) const {
  const size_t table = (size_t(1) << (2 * bits)) * 4;
  return cfg_.gemv_pairs && ctx_.info().fp16 && bits >= 2 && bits <= 6 &&
         table <= std::min<size_t>(32768, ctx_.info().max_shared_memory * 2 / 3);
}

void Kernels::gemm(vk::Commands& cmd, const DeviceQuantMatrix& w, vk::BufferView x_rot, vk::BufferView y, uint32_t m,
                   bool accumulate) {
  if (m == 0) throw Error(w.name + ": gemm with 0 tokens");
  check_view(x_rot, size_t(m) * w.cols_padded, w.name + " gemm input");
  check_view(y, size_t(m) * w.rows, w.name + " gemm output");
  const auto& p = pipeline("pq_gemm", {{0, uint32_t(w.bits)}, {1, uint32_t(w.block)}}, 5, 32, 256);
  const uint32_t nblocks = u32(w.cols_padded / w.block, "blocks"), nchunk = u32(w.cols_padded / 32, "chunks");
  for (const auto& s : w.slices) {
    struct { uint32_t rows, m, nchunk, nblocks, ldx, ldy, y_offset, accumulate; } push{
        u32(s.rows, "rows"), m, nchunk, nblocks, u32(w.cols_padded, "cols"), u32(w.rows, "rows"), u32(s.row0, "row"),
        accumulate ? 1u : 0u};
    cmd.dispatch(p, {s.codes, s.scales, w.codebook, x_rot, y}, push, u32((s.rows + 63) / 64, "tiles"), (m + 63) / 64);
  }
}

void Kernels::gemv_f16(vk::Commands& cmd, const DeviceF16Matrix& w, vk::BufferView x, vk::BufferView y,
                       bool accumulate) {
  check_view(x, w.cols, w.name + " gemv input");
  check_view(y, w.rows, w.name + " gemv output");
  const auto& p = pipeline("f16_gemv", {{0, cfg_.gemv_wg}, {1, cfg_.gemv_rows}}, 3, 20, cfg_.gemv_wg);
  for (const auto& s : w.slices) {
    struct { uint32_t rows, cols, ldw, y_offset, accumulate; } push{u32(s.rows, "rows"), u32(w.cols, "cols"),
                                                                     u32(w.cols_padded, "cols"), u32(s.row0, "row"),
                                                                     accumulate ? 1u : 0u};
    uint32_t gx, gy;
    grid(ctx_, (s.rows + cfg_.gemv_rows - 1) / cfg_.gemv_rows, &gx, &gy);
    cmd.dispatch(p, {s.data, x, y}, push, gx, gy);
  }
}

void Kernels::gemm_f16(vk::Commands& cmd, const DeviceF16Matrix& w, vk::BufferView x, vk::BufferView y, uint32_t m,
                       bool accumulate, uint32_t ldx) {
  if (m == 0) throw Error(w.name + ": gemm with 0 tokens");
  if (ldx == 0) ldx = u32(w.cols, "cols");
  if (ldx < w.cols) throw Error(w.name + ": gemm input stride below the column count");
  check_view(x, size_t(m - 1) * ldx + w.cols, w.name + " gemm input");
  check_view(y, size_t(m) * w.rows, w.name + " gemm output");
  const auto& p = pipeline("f16_gemm", {}, 3, 32, 256);
  for (const auto& s : w.slices) {
    struct { uint32_t rows, m, cols, ldw, ldy, y_offset, accumulate, ldx; } push{
        u32(s.rows, "rows"), m, u32(w.cols, "cols"), u32(w.cols_padded, "cols"), u32(w.rows, "rows"), u32(s.row0, "row"),
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

void Kernels::qkv_rope(vk::Commands& cmd, const AttentionShape& a, vk::BufferView q, vk::BufferView k,
                       vk::BufferView v, vk::BufferView kcache, vk::BufferView vcache, vk::BufferView inv_freq,
                       vk::BufferView bias, vk::BufferView norm, vk::BufferView step, uint32_t m) {
  if (a.head_dim % 2 || a.n_kv == 0 || a.n_heads % a.n_kv) throw Error("qkv_rope: bad attention shape");
  const size_t q_dim = size_t(a.n_heads) * a.head_dim, kv_dim = size_t(a.n_kv) * a.head_dim;
  check_view(q, m * q_dim, "q");
  check_view(k, m * kv_dim, "k");
  check_view(v, m * kv_dim, "v");
  check_view(kcache, size_t(a.max_ctx) * kv_dim / 2, "k cache");
  check_view(vcache, size_t(a.max_ctx) * kv_dim / 2, "v cache");
  check_view(inv_freq, a.head_dim / 2, "rope frequencies");
  const bool has_bias = bias.buffer != nullptr, has_norm = norm.buffer != nullptr;
  if (has_bias) check_view(bias, q_dim + 2 * kv_dim, "q/k/v biases");
  if (has_norm) check_view(norm, 2 * size_t(a.head_dim), "q/k norms");
  const auto& p = pipeline("qkv_rope", {{0, has_bias ? 1u : 0u}, {1, has_norm ? 1u : 0u}}, 9, 20, 64);
  struct { uint32_t n_heads, n_kv, hd, max_ctx; float eps; } push{a.n_heads, a.n_kv, a.head_dim, a.max_ctx, a.eps};
  cmd.dispatch(p, {q, k, v, kcache, vcache, inv_freq, has_bias ? bias : vk::BufferView(dummy_),
                   has_norm ? norm : vk::BufferView(dummy_), step},
               push, a.n_heads + a.n_kv, m);
}

void Kernels::attention(vk::Commands& cmd, const AttentionShape& a, vk::BufferView q, vk::BufferView kcache,
                        vk::BufferView vcache, vk::BufferView out, vk::BufferView step, uint32_t m) {
  if (a.head_dim % 2 || a.head_dim > 256 || a.n_kv == 0 || a.n_heads % a.n_kv)
    throw Error("attention: head size " + std::to_string(a.head_dim) + " (even, at most 256) or head counts unsupported");
  const size_t q_dim = size_t(a.n_heads) * a.head_dim;
  check_view(q, m * q_dim, "attention q");
  check_view(out, m * q_dim, "attention output");
  const auto& p = pipeline("attention", {}, 5, 16, 128);
  struct { uint32_t n_heads, n_kv, hd, window; } push{a.n_heads, a.n_kv, a.head_dim, a.window};
  cmd.dispatch(p, {q, kcache, vcache, out, step}, push, a.n_heads, m);
}

void Kernels::argmax(vk::Commands& cmd, vk::BufferView x, uint32_t n, vk::BufferView out, vk::BufferView tokens) {
  if (n == 0) throw Error("argmax of nothing");
  check_view(x, n, "argmax input");
  // Pass 0: segments of at least 1024 entries, at most 256 workgroups; pass 1: their results.
  const uint32_t groups = std::min<uint32_t>(256, (n + 1023) / 1024);
  const uint32_t seg = (n + groups - 1) / groups;
  if (!argmax_parts_.valid()) argmax_parts_ = ctx_.buffer(256 * 8, vk::MemoryKind::device, "argmax partial results");
  struct { uint32_t n, seg; } first{n, seg}, second{groups, 0};
  cmd.dispatch(pipeline("argmax", {{0, 0u}}, 4, 8, 256), {x, out, tokens, argmax_parts_}, first, groups);
  cmd.barrier();
  cmd.dispatch(pipeline("argmax", {{0, 1u}}, 4, 8, 256), {x, out, tokens, argmax_parts_}, second, 1);
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
