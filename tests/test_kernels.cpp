// Every shader against its CPU twin (runtime/quant) on random data of awkward shapes, with
// outputs poisoned before each run and explicit error bounds. Validation is on throughout.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <tuple>

#include "quant/polarquant.h"
#include "vk_test_env.h"

namespace pqvk::test {
namespace {

// fp32 accumulation over at most ~15k terms against fp64: norm-wise relative error bounds.
constexpr double kFwhtTol = 1e-5;   // log2(B) <= 8 stages of adds in fp32
constexpr double kDotTol = 2e-5;    // fp32 sums of K products, K <= 15k, random signs

vk::Buffer poisoned(size_t floats) {
  vk::Buffer b = context().buffer(floats * 4, vk::MemoryKind::device, "test output");
  auto cmd = context().commands();
  cmd.fill(b, kPoison);
  cmd.run();
  return b;
}

// ---- fwht -----------------------------------------------------------------------------------

struct FwhtCase { uint32_t rows, cols, block; };

void run_fwht(const FwhtCase& c, Layout layout, Kernels& k) {
  auto x = random_vector(size_t(c.rows) * c.cols, c.rows * 131 + c.cols + c.block);
  vk::Buffer xb = context().upload_new(x, "x");
  const size_t stride = rotated_row_elems(c.cols, c.block, layout);
  vk::Buffer out = poisoned(c.rows * stride);
  auto cmd = context().commands();
  k.fwht(cmd, xb, out, c.rows, c.cols, c.block, layout);
  cmd.run();
  auto got = read_floats(out, c.rows * stride);
  const size_t padded = rotated_row_elems(c.cols, c.block);
  std::vector<float> ref(c.rows * padded);
  pq::fwht_rows(x.data(), c.rows, c.cols, static_cast<int>(c.block), ref.data());
  // Compare the elements the layout defines (the interleaved layout's tail is unspecified).
  std::vector<float> g;
  for (uint32_t row = 0; row < c.rows; ++row)
    for (size_t e = 0; e < padded; ++e)
      g.push_back(got[row * stride + (layout == Layout::gemv_interleaved ? gemv_interleaved_index(e) : e)]);
  EXPECT_LT(rel_error(g, ref), kFwhtTol) << "rows=" << c.rows << " cols=" << c.cols << " B=" << c.block;
}

TEST(Fwht, MatchesCpuAtAwkwardShapes) {
  for (uint32_t block : {64u, 128u, 256u})
    for (auto [rows, cols] : {std::pair{1u, 200u}, {3u, 129u}, {7u, 1000u}, {1u, 4096u}, {33u, 333u}, {2u, 14336u + 5u}}) {
      run_fwht({rows, cols, block}, Layout::row_major, kernels());
      run_fwht({rows, cols, block}, Layout::gemv_interleaved, kernels());
    }
}

TEST(Fwht, EverySupportedSubgroupSize) {
  const auto& info = context().info();
  int sizes_run = 0;
  for (uint32_t s = std::max(4u, info.min_subgroup_size); s <= std::min(128u, info.max_subgroup_size); s *= 2) {
    KernelConfig cfg;
    if (info.subgroup_size_control) cfg.subgroup_size = s;
    else if (s != info.subgroup_size) continue;
    Kernels k(context(), cfg);
    for (uint32_t block : {64u, 128u, 256u}) run_fwht({5, 700, block}, Layout::row_major, k);
    ++sizes_run;
  }
  EXPECT_GE(sizes_run, 1);
}

// The fp32 values of a buffer of fp16 pairs (Layout::row_major_f16).
std::vector<float> read_halves(const vk::Buffer& b, size_t n) {
  std::vector<uint32_t> words((n + 1) / 2);
  context().download(b, words.data(), words.size() * 4);
  std::vector<float> r(n);
  for (size_t i = 0; i < n; ++i) r[i] = pq::f16_to_f32(static_cast<uint16_t>(words[i / 2] >> (16 * (i % 2))));
  return r;
}

// fwht's prologues: RMSNorm, SwiGLU (separate gate and up, or pairs), with and without the
// rotation, written as fp32 (gemv-interleaved for one row) or fp16 (the tensor-core GEMM's input:
// within fp16 rounding).
TEST(Prepare, RmsNormAndSwigluMatchCpu) {
  for (uint32_t block : {64u, 128u})
    for (auto [rows, cols] : {std::pair{1u, 200u}, {5u, 384u}, {3u, 1000u}, {2u, 333u}})
      for (int mode : {1, 2, 3})
        for (int variant : {0, 1, 2}) {
          const bool rotate = variant != 1, f16 = variant == 2;
          const Layout layout = f16 ? Layout::row_major_f16 : rows == 1 ? Layout::gemv_interleaved : Layout::row_major;
          const uint32_t in_row0 = rows == 1 ? 2 : 0;  // read a later row of a taller input
          const size_t in_rows = rows + in_row0;
          auto x = random_vector(in_rows * cols * (mode == 3 ? 2 : 1), cols + 5 * rows + mode);
          auto aux = random_vector(mode == 1 ? cols : in_rows * cols, cols + 77);
          const float eps = 1e-5f;
          vk::Buffer xb = context().upload_new(x, "x"), ab = context().upload_new(aux, "aux");
          const size_t padded = rotated_row_elems(cols, block), stride = rotated_row_elems(cols, block, layout);
          vk::Buffer out = poisoned(f16 ? (rows * stride + 1) / 2 : rows * stride);
          auto cmd = context().commands();
          const Prologue::Kind kind = mode == 1 ? Prologue::rmsnorm : mode == 2 ? Prologue::swiglu : Prologue::swiglu_pairs;
          Prologue pro{kind, mode == 3 ? vk::BufferView() : vk::BufferView(ab), eps};
          kernels().prepare(cmd, xb, out, rows, cols, block, layout, rotate, pro, in_row0);
          cmd.run();
          // CPU twin: the prologue in fp64, then the blockwise rotation of pq::fwht_rows.
          std::vector<float> pre(rows * cols);
          for (uint32_t r = 0; r < rows; ++r) {
            const size_t row = r + in_row0;
            double ss = 0;
            for (uint32_t c = 0; c < cols; ++c) ss += double(x[row * cols + c]) * x[row * cols + c];
            const double inv = 1.0 / std::sqrt(ss / cols + eps);
            for (uint32_t c = 0; c < cols; ++c) {
              double v;
              if (mode == 1) v = double(x[row * cols + c]) * inv * aux[c];
              else if (mode == 2) v = double(x[row * cols + c]) / (1.0 + std::exp(-double(x[row * cols + c]))) * aux[row * cols + c];
              else v = double(x[(row * cols + c) * 2]) / (1.0 + std::exp(-double(x[(row * cols + c) * 2]))) * x[(row * cols + c) * 2 + 1];
              pre[r * cols + c] = static_cast<float>(v);
            }
          }
          std::vector<float> ref(rows * padded, 0.0f);
          if (rotate) {
            pq::fwht_rows(pre.data(), rows, cols, static_cast<int>(block), ref.data());
          } else {
            for (uint32_t r = 0; r < rows; ++r) std::copy(&pre[r * cols], &pre[r * cols] + cols, &ref[r * padded]);
          }
          const auto got = f16 ? read_halves(out, rows * stride) : read_floats(out, rows * stride);
          std::vector<float> g;
          for (uint32_t r = 0; r < rows; ++r)
            for (size_t e = 0; e < padded; ++e)
              g.push_back(got[r * stride + (layout == Layout::gemv_interleaved ? gemv_interleaved_index(e) : e)]);
          EXPECT_LT(rel_error(g, ref), f16 ? 1e-3 : kFwhtTol) << "mode " << mode << " rotate " << rotate << " fp16 " << f16
                                                              << " rows " << rows << " cols " << cols << " B " << block;
        }
}

// ---- quantized matrices -----------------------------------------------------------------------

struct MatCase { size_t rows, cols; int bits, block; pq::Method method; };

std::string describe(const MatCase& c) {
  return std::to_string(c.rows) + "x" + std::to_string(c.cols) + " q" + std::to_string(c.bits) + " B" +
         std::to_string(c.block) + " " + pq::method_name(c.method);
}

pq::QuantMatrix make_matrix(const MatCase& c) {
  auto w = random_vector(c.rows * c.cols, static_cast<uint32_t>(c.rows * 7 + c.cols * 3 + c.bits));
  return pq::quantize(w.data(), c.rows, c.cols, c.bits, c.block, c.method);
}

const std::vector<MatCase>& matrix_cases() {
  static const std::vector<MatCase> cases = [] {
    std::vector<MatCase> v;
    for (int bits = 2; bits <= 8; ++bits) {
      v.push_back({1, 200, bits, 128, pq::Method::pq});
      v.push_back({7, 1000, bits, 64, pq::Method::pq});
      v.push_back({33, 4096 + 40, bits, 256, pq::Method::pq});
      v.push_back({9, 333, bits, 128, pq::Method::absmax});
    }
    v.push_back({5, 777, 4, 128, pq::Method::rot_uniform});
    v.push_back({5, 777, 4, 128, pq::Method::lloyd});
    v.push_back({3, 14336 + 100, 5, 128, pq::Method::pq});  // a long row: 116 blocks, 4 chunk groups
    return v;
  }();
  return cases;
}

TEST(Dequant, MatchesCpu) {
  for (const auto& c : matrix_cases()) {
    auto q = make_matrix(c);
    auto d = upload_quant(context(), q, describe(c));
    vk::Buffer out = poisoned(c.rows * c.cols);
    auto cmd = context().commands();
    kernels().dequant(cmd, d, out);
    cmd.run();
    std::vector<float> ref(c.rows * c.cols);
    pq::dequantize(q, ref.data());
    EXPECT_LT(rel_error(read_floats(out, c.rows * c.cols), ref), kFwhtTol) << describe(c);
  }
}

TEST(Dequant, Fp16Output) {
  MatCase c{7, 1000, 5, 128, pq::Method::pq};
  auto q = make_matrix(c);
  auto d = upload_quant(context(), q, "f16 out");
  vk::Buffer out = poisoned(c.rows * c.cols / 2);
  auto cmd = context().commands();
  kernels().dequant(cmd, d, out, true);
  cmd.run();
  std::vector<uint16_t> h(c.rows * c.cols);
  context().download(out, h.data(), h.size() * 2);
  std::vector<float> got(h.size()), ref(h.size());
  for (size_t i = 0; i < h.size(); ++i) got[i] = pq::f16_to_f32(h[i]);
  pq::dequantize(q, ref.data());
  EXPECT_LT(rel_error(got, ref), 1e-3);  // fp16 rounding: 2^-11 relative per element
}

// The merge of split attention (Prologue::merge) with scores far below zero and an empty split
// as attention_decode writes it, (-inf, 0): it must count for nothing (a max of 0 would make
// every e^(m_s - max) underflow and the output 0 / 0); and attention_decode writes that pair.
TEST(Prepare, MergeIgnoresEmptySplitsAtVeryNegativeScores) {
  const uint32_t hd = 8, heads = 2, cols = hd * heads, splits = 3;
  const auto part = random_vector(splits * cols, 61);
  std::vector<float> ml = {-200.0f, 2.0f, -150.0f, 1.0f,   // split 0: (max, sum) of heads 0, 1
                           -201.0f, 1.0f, -149.0f, 3.0f,   // split 1
                           -INFINITY, 0.0f, -INFINITY, 0.0f};  // split 2: no key
  vk::Buffer pb = context().upload_new(part, "parts"), mb = context().upload_new(ml, "ml"), out = poisoned(64);
  auto cmd = context().commands();
  kernels().prepare(cmd, pb, out, 1, cols, 64, Layout::row_major, false, Prologue{Prologue::merge, mb, 0.0f, splits, hd});
  cmd.run();
  std::vector<double> want(cols);
  for (uint32_t c = 0; c < cols; ++c) {
    const uint32_t h = c / hd;
    const double m0 = ml[2 * h], l0 = ml[2 * h + 1], m1 = ml[4 + 2 * h], l1 = ml[4 + 2 * h + 1], m = std::max(m0, m1);
    const double w0 = std::exp(m0 - m) * l0, w1 = std::exp(m1 - m) * l1;
    want[c] = (w0 * part[c] + w1 * part[cols + c]) / (w0 + w1);
  }
  EXPECT_LT(rel_error(read_floats(out, cols), want), 1e-6);
}

// y = W x on the GPU against the fp64 twin, through `k` (any lookup, any workgroup shape: fp32
// arithmetic throughout). prepared: the input rotated by fwht() first (gemv-interleaved); else the GEMV's own
// prologue rotates it (and, with `norm`, applies the RMSNorm first).
void check_gemv(const MatCase& c, size_t max_slice_bytes, Kernels& k = kernels(), bool prepared = true,
                bool norm = false) {
  auto q = make_matrix(c);
  auto d = upload_quant(context(), q, describe(c), max_slice_bytes);
  auto x = random_vector(c.cols, static_cast<uint32_t>(c.cols + 99));
  auto w = random_vector(c.cols, static_cast<uint32_t>(c.cols + 98));
  vk::Buffer xb = context().upload_new(x, "x"), wb = context().upload_new(w, "norm weight");
  vk::Buffer xr = poisoned(rotated_row_elems(c.cols, c.block, Layout::gemv_interleaved));
  vk::Buffer y = poisoned(c.rows);
  auto cmd = context().commands();
  GemvOp op;
  if (prepared) {
    if (q.rotated) {
      k.fwht(cmd, xb, xr, 1, static_cast<uint32_t>(c.cols), static_cast<uint32_t>(c.block), Layout::gemv_interleaved);
    } else {  // unrotated methods read the plain input in the same layout
      std::vector<float> padded(q.cols_padded, 0.0f);
      std::copy(x.begin(), x.end(), padded.begin());
      context().upload(xr, interleave_for_gemv(padded.data(), q.cols_padded));
    }
    cmd.barrier();
  } else {
    op.prologue = norm ? GemvOp::rmsnorm : GemvOp::raw;
    op.norm = wb;
    op.eps = 1e-5f;
  }
  k.gemv(cmd, d, prepared ? xr : xb, y, op);
  cmd.run();
  std::vector<float> xin = x;  // the CPU twin's input: the RMSNorm applied in fp64
  if (norm) {
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const double inv = 1.0 / std::sqrt(ss / c.cols + 1e-5);
    for (size_t i = 0; i < x.size(); ++i) xin[i] = static_cast<float>(double(x[i]) * inv * w[i]);
  }
  std::vector<double> ref(c.rows);
  pq::gemv_reference(q, xin.data(), ref.data());
  const auto got = read_floats(y, c.rows);
  EXPECT_LT(rel_error(got, ref), kDotTol) << describe(c) << " slices=" << d.slices.size()
                                          << " lookup=" << int(k.gemv_lookup(c.bits)) << " wg=" << k.config().gemv_wg
                                          << " rows=" << k.config().gemv_rows << " prepared=" << prepared << " norm=" << norm;
}

// Kernels with another GEMV shape or lookup mode (made per test: pipelines must not outlive
// the shared context, which the test environment destroys before exit).
using Lookup = KernelConfig::GemvLookup;
KernelConfig gemv_config(uint32_t wg, uint32_t rows, Lookup lookup, int table_shift = -1) {
  KernelConfig cfg;
  cfg.gemv_wg = wg;
  cfg.gemv_rows = rows;
  cfg.gemv_lookup = lookup;
  cfg.gemv_table_shift = table_shift;
  return cfg;
}

TEST(Gemv, MatchesCpuEveryBitWidth) {  // the default lookups
  int shuffled = 0;
  for (const auto& c : matrix_cases()) {
    check_gemv(c, 0);
    const Lookup l = kernels().gemv_lookup(c.bits);
    shuffled += l == Lookup::shuffle || l == Lookup::shuffle_unmasked;
  }
  EXPECT_GE(shuffled, 4);  // 2 and 3 bits even where subgroups have 8 lanes (lavapipe)
}

TEST(Gemv, SharedTableMatchesCpuEveryBitWidth) {
  for (int shift : {-1, 0}) {  // 32 copies (fewer at 7-8 bits), one copy
    Kernels table(context(), gemv_config(128, 2, Lookup::table, shift));
    for (const auto& c : matrix_cases()) check_gemv(c, 0, table);
  }
}

TEST(Gemv, WorkgroupShapes) {
  // Rows per workgroup that do not divide the row count, one invocation per chunk or many,
  // chunk counts that are not multiples of the workgroup or subgroup size.
  for (auto [wg, rows] : std::vector<std::pair<uint32_t, uint32_t>>{{64, 3}, {256, 16}})
    for (Lookup lookup : {Lookup::table, Lookup::shuffle}) {
      Kernels k(context(), gemv_config(wg, rows, lookup));
      for (const MatCase& c : std::vector<MatCase>{{1, 200, 3, 128, pq::Method::pq},
                                                   {37, 4096 + 40, 2, 128, pq::Method::pq},
                                                   {19, 14336 + 100, 5, 128, pq::Method::pq},
                                                   {9, 333, 3, 64, pq::Method::absmax}})
        check_gemv(c, 0, k);
    }
}

// The GEMV's own prologue: the rotation (blocks of 64/128/256 across neighbouring invocations)
// and the RMSNorm before it, at every lookup and awkward shapes; unrotated methods only norm.
TEST(Gemv, FusedPrologueMatchesCpu) {
  for (auto [wg, rows, lookup] : std::vector<std::tuple<uint32_t, uint32_t, Lookup>>{{128, 4, Lookup::table},
                                                                                    {32, 6, Lookup::automatic}}) {
    Kernels k(context(), gemv_config(wg, rows, lookup));
    for (const MatCase& c : std::vector<MatCase>{{1, 200, 3, 128, pq::Method::pq},
                                                 {37, 4096 + 40, 4, 128, pq::Method::pq},
                                                 {19, 14336 + 100, 5, 256, pq::Method::pq},
                                                 {7, 1000, 2, 64, pq::Method::pq},
                                                 {9, 333, 6, 64, pq::Method::absmax},
                                                 {5, 777, 4, 128, pq::Method::lloyd}})
      for (bool norm : {false, true}) check_gemv(c, 0, k, false, norm);
  }
}

// Gate and up joined with interleaved rows (pq::join_rows): y[i] = silu(gate_i . h) * (up_i . h)
// with h = rmsnorm(x), from one GEMV; and the residual epilogue with output offsets.
TEST(Gemv, SwigluAndAccumulateEpilogues) {
  for (const MatCase& c : std::vector<MatCase>{{13, 1000, 3, 128, pq::Method::pq}, {64, 4096 + 40, 5, 128, pq::Method::pq}}) {
    auto gate = make_matrix(c), up = pq::quantize(random_vector(c.rows * c.cols, 5).data(), c.rows, c.cols, c.bits,
                                                  c.block, c.method);
    const pq::QuantMatrix joined = pq::join_rows({&gate, &up}, true);
    Kernels k(context(), gemv_config(128, 6, Lookup::automatic));
    auto d = upload_quant(context(), joined, "gate|up", 0, 2);
    auto x = random_vector(c.cols, 11), w = random_vector(c.cols, 12);
    vk::Buffer xb = context().upload_new(x, "x"), wb = context().upload_new(w, "norm");
    vk::Buffer h = poisoned(c.rows + 3);
    auto cmd = context().commands();
    GemvOp op;
    op.prologue = GemvOp::rmsnorm;
    op.norm = wb;
    op.eps = 1e-6f;
    op.epilogue = GemvOp::swiglu;
    op.y_offset = 3;
    k.gemv(cmd, d, xb, h, op);
    cmd.run();
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    std::vector<float> xn(c.cols);
    for (size_t i = 0; i < c.cols; ++i) xn[i] = static_cast<float>(x[i] / std::sqrt(ss / c.cols + 1e-6) * w[i]);
    std::vector<double> g(c.rows), u(c.rows), want;
    pq::gemv_reference(gate, xn.data(), g.data());
    pq::gemv_reference(up, xn.data(), u.data());
    for (size_t i = 0; i < c.rows; ++i) want.push_back(g[i] / (1.0 + std::exp(-g[i])) * u[i]);
    const auto got = read_floats(h, c.rows + 3);
    EXPECT_LT(rel_error(std::vector<float>(got.begin() + 3, got.end()), want), 1e-4) << describe(c);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(std::bit_cast<uint32_t>(got[i]), kPoison) << "wrote before y_offset";

    // y += W x at an offset: y starts random, the first rows untouched.
    auto y0 = random_vector(c.rows + 5, 13);
    vk::Buffer y = context().upload_new(y0, "residual");
    auto cmd2 = context().commands();
    GemvOp acc;
    acc.prologue = GemvOp::raw;
    acc.epilogue = GemvOp::accumulate;
    acc.y_offset = 5;
    const auto dg = upload_quant(context(), gate, "gate");
    k.gemv(cmd2, dg, xb, y, acc);
    cmd2.run();
    std::vector<double> gx(c.rows), want2(y0.begin(), y0.end());
    pq::gemv_reference(gate, x.data(), gx.data());
    for (size_t i = 0; i < c.rows; ++i) want2[5 + i] += gx[i];
    EXPECT_LT(rel_error(read_floats(y, c.rows + 5), want2), 1e-5) << describe(c) << " (accumulate)";
  }
}

// GemvOp::Fold: a GEMV that also prepares the next matrix's input (decode without preparation
// kernels). The residual GEMV (y += W1 x) prepares H_B(y * gamma) with per-block sums of squares
// for a next GEMV that applies the 1/rms itself (prepared_rms); the gate|up GEMV with the SwiGLU
// epilogue prepares H_B(h) for the down projection. Against fp64 twins: y, the prepared blocks
// (gemv-interleaved), the sums, the next GEMV's result; outputs that are not a multiple of the
// block (a partial last block), several slices, blocks of 64 and 128, two workgroup shapes; the
// counters are left zero, so a second run of the same recording gives the same result.
TEST(Gemv, FoldPreparesTheNextInput) {
  struct FoldCase {
    size_t nout, cols, next_rows;
    int bits, next_bits;
    uint32_t block, wg, rows;
    size_t slice_rows;  // 0: one slice
  };
  for (const FoldCase& f : std::vector<FoldCase>{{300, 1000, 77, 4, 5, 128, 32, 2, 0},
                                                 {130, 333, 1, 3, 4, 64, 64, 4, 0},
                                                 {1100, 640, 13, 5, 3, 128, 128, 8, 256}}) {
    Kernels k(context(), gemv_config(f.wg, f.rows, Lookup::automatic));
    const std::string what = "nout " + std::to_string(f.nout) + " block " + std::to_string(f.block) + " wg " +
                             std::to_string(f.wg) + "x" + std::to_string(f.rows);
    const size_t nb = (f.nout + f.block - 1) / f.block;
    const size_t prepared = rotated_row_elems(f.nout, static_cast<int>(f.block), Layout::gemv_interleaved);
    const auto x = random_vector(f.cols, 31), gamma = random_vector(f.nout, 32), y0 = random_vector(f.nout, 33);
    const auto w1 = pq::quantize(random_vector(f.nout * f.cols, 34).data(), f.nout, f.cols, f.bits, 128, pq::Method::pq);
    const auto w2 = pq::quantize(random_vector(f.next_rows * f.nout, 35).data(), f.next_rows, f.nout, f.next_bits,
                                 static_cast<int>(f.block), pq::Method::pq);
    const size_t slice_bytes = f.slice_rows ? f.slice_rows * (w1.cols_padded / 32) * f.bits * 4 : 0;
    auto d1 = upload_quant(context(), w1, "w1", slice_bytes), d2 = upload_quant(context(), w2, "w2");
    if (f.slice_rows) {
      ASSERT_GT(d1.slices.size(), 2u) << what;
    }
    ASSERT_TRUE(k.fold_supported(d1, GemvOp::accumulate, f.block)) << what;
    vk::Buffer xb = context().upload_new(x, "x"), gb = context().upload_new(gamma, "gamma");
    vk::Buffer xr = poisoned(rotated_row_elems(f.cols, 128, Layout::gemv_interleaved));
    vk::Buffer next = poisoned(prepared), sums = poisoned(nb), z = poisoned(f.next_rows);
    vk::Buffer counters = context().upload_new(std::vector<uint32_t>(nb, 0u), "counters");
    vk::Buffer y = context().upload_new(y0, "residual");
    auto cmd = context().commands();
    k.fwht(cmd, xb, xr, 1, static_cast<uint32_t>(f.cols), 128, Layout::gemv_interleaved);
    cmd.barrier();
    GemvOp op;
    op.epilogue = GemvOp::accumulate;
    op.fold = {GemvOp::Fold::rms_norm, next, counters, sums, gb, f.block, true};
    k.gemv(cmd, d1, xr, y, op);
    cmd.barrier();
    GemvOp op2;
    op2.prologue = GemvOp::prepared_rms;
    op2.partials = sums;
    op2.eps = 1e-5f;
    k.gemv(cmd, d2, next, z, op2);
    cmd.run();

    std::vector<double> yref(y0.begin(), y0.end()), w1x(f.nout);
    pq::gemv_reference(w1, x.data(), w1x.data());
    for (size_t i = 0; i < f.nout; ++i) yref[i] += w1x[i];
    EXPECT_LT(rel_error(read_floats(y, f.nout), yref), 1e-5) << what << " (residual)";
    std::vector<double> pref(prepared, 0.0), sref(nb, 0.0);
    double ss = 0;
    for (size_t b = 0; b < nb; ++b) {
      std::vector<double> blk(f.block, 0.0);
      for (size_t j = 0; j < f.block && b * f.block + j < f.nout; ++j) {
        const size_t e = b * f.block + j;
        blk[j] = yref[e] * gamma[e];
        sref[b] += yref[e] * yref[e];
      }
      ss += sref[b];
      pq::fwht(blk.data(), static_cast<int>(f.block));
      for (size_t j = 0; j < f.block; ++j) pref[gemv_interleaved_index(b * f.block + j)] = blk[j];
    }
    const auto got_next = read_floats(next, prepared);
    std::vector<float> got_blocks;
    std::vector<double> want_blocks;
    for (size_t e = 0; e < nb * f.block; ++e) {  // the blocks (past them the buffer is not the fold's)
      got_blocks.push_back(got_next[gemv_interleaved_index(e)]);
      want_blocks.push_back(pref[gemv_interleaved_index(e)]);
    }
    EXPECT_LT(rel_error(got_blocks, want_blocks), 1e-5) << what << " (prepared blocks)";
    EXPECT_LT(rel_error(read_floats(sums, nb), sref), 1e-5) << what << " (sums of squares)";
    std::vector<float> h(f.nout);
    const double inv = 1.0 / std::sqrt(ss / double(f.nout) + 1e-5);
    for (size_t i = 0; i < f.nout; ++i) h[i] = static_cast<float>(yref[i] * inv * gamma[i]);
    std::vector<double> zref(f.next_rows);
    pq::gemv_reference(w2, h.data(), zref.data());
    EXPECT_LT(rel_error(read_floats(z, f.next_rows), zref), kDotTol) << what << " (next GEMV)";
    EXPECT_EQ(context().download_all<uint32_t>(counters), std::vector<uint32_t>(nb, 0u)) << what << ": counters left set";
  }
}

// The gate|up GEMV with the SwiGLU epilogue preparing the down projection's input (Fold::plain),
// and where a fold cannot work: workgroups whose outputs would straddle blocks.
TEST(Gemv, FoldAfterSwiglu) {
  const size_t hid = 200, cols = 1000, down_rows = 33;
  auto gate = pq::quantize(random_vector(hid * cols, 41).data(), hid, cols, 4, 128, pq::Method::pq);
  auto up = pq::quantize(random_vector(hid * cols, 42).data(), hid, cols, 4, 128, pq::Method::pq);
  const pq::QuantMatrix joined = pq::join_rows({&gate, &up}, true);
  const auto down = pq::quantize(random_vector(down_rows * hid, 43).data(), down_rows, hid, 5, 64, pq::Method::pq);
  auto dj = upload_quant(context(), joined, "gate|up", 0, 2), dd = upload_quant(context(), down, "down");
  const auto x = random_vector(cols, 44);
  vk::Buffer xb = context().upload_new(x, "x"), xr = poisoned(rotated_row_elems(cols, 128, Layout::gemv_interleaved));
  const size_t nb = (hid + 63) / 64;
  vk::Buffer hb = poisoned(hid), next = poisoned(rotated_row_elems(hid, 64, Layout::gemv_interleaved)), z = poisoned(down_rows);
  vk::Buffer counters = context().upload_new(std::vector<uint32_t>(nb, 0u), "counters");
  ASSERT_TRUE(kernels().fold_supported(dj, GemvOp::swiglu, 64));
  for (int run = 0; run < 2; ++run) {  // the counters reset themselves
    auto cmd = context().commands();
    kernels().fwht(cmd, xb, xr, 1, static_cast<uint32_t>(cols), 128, Layout::gemv_interleaved);
    cmd.barrier();
    GemvOp op;
    op.epilogue = GemvOp::swiglu;
    op.fold.kind = GemvOp::Fold::plain;
    op.fold.next = next;
    op.fold.counters = counters;
    op.fold.block = 64;
    kernels().gemv(cmd, dj, xr, hb, op);
    cmd.barrier();
    kernels().gemv(cmd, dd, next, z);
    cmd.run();
    std::vector<double> g(hid), u(hid);
    pq::gemv_reference(gate, x.data(), g.data());
    pq::gemv_reference(up, x.data(), u.data());
    std::vector<float> h(hid);
    for (size_t i = 0; i < hid; ++i) h[i] = static_cast<float>(g[i] / (1.0 + std::exp(-g[i])) * u[i]);
    std::vector<double> zref(down_rows);
    pq::gemv_reference(down, h.data(), zref.data());
    EXPECT_LT(rel_error(read_floats(z, down_rows), zref), 1e-4) << "run " << run;
    EXPECT_EQ(context().download_all<uint32_t>(counters), std::vector<uint32_t>(nb, 0u)) << "run " << run;
  }
  Kernels three(context(), gemv_config(64, 3, Lookup::automatic));  // 3 outputs per workgroup: blocks of 64 straddled
  EXPECT_FALSE(three.fold_supported(dd, GemvOp::accumulate, 64));
  Kernels wide(context(), gemv_config(32, 2, Lookup::automatic));  // 256 values need 64 invocations
  EXPECT_FALSE(wide.fold_supported(dd, GemvOp::accumulate, 256));
  GemvOp bad;
  bad.epilogue = GemvOp::accumulate;
  bad.fold = {GemvOp::Fold::rms_norm, next, counters, z, z, 64, true};
  auto cmd = three.context().commands();
  EXPECT_THROW(three.gemv(cmd, dd, next, z, bad), vk::Error);
  // The sums of squares have one binding: a GEMV may read them or write them, not both.
  GemvOp both;
  both.prologue = GemvOp::prepared_rms;
  both.partials = z;
  both.epilogue = GemvOp::accumulate;
  both.fold = {GemvOp::Fold::rms_norm, next, counters, z, z, 64, true};
  ASSERT_TRUE(kernels().fold_supported(dd, GemvOp::accumulate, 64));
  EXPECT_THROW(kernels().gemv(cmd, dd, next, z, both), vk::Error);
}

TEST(Gemv, SplitAcrossSlices) {
  // Force several slices (as a 4 GiB limit would for an LM head) and an odd tail slice.
  MatCase c{37, 640, 3, 128, pq::Method::pq};
  check_gemv(c, 5 * 3 * 20 * 4);  // 5 rows per slice: 8 slices, the last with 2 rows
  Kernels table(context(), gemv_config(128, 2, Lookup::table));
  check_gemv(c, 5 * 3 * 20 * 4, table);
}

// ---- the GEMM: portable fp32 (pq_gemm.comp) and fp16 tiles (pq_gemm_coopmat.comp) ----------

using GemmPath = Kernels::GemmPath;
using Coopmat = KernelConfig::GemmCoopmat;

// The cooperative-matrix GEMM rounds each weight (codebook value times block scale, in fp32)
// and each activation to fp16, then sums exact products in fp32: against fp64 sums of the
// operands rounded the same way it is as close as an fp32 GEMM (with room for the tensor cores'
// summation order); against the exact operands the rounding shows (2^-11 relative each).
constexpr double kCoopmatTwinTol = 1e-4;
constexpr double kFp16Tol = 3e-3;  // vk-bench kernels --check's bound for this path

KernelConfig gemm_config(Coopmat mode, uint32_t tm = 0) {
  KernelConfig cfg;
  cfg.gemm_coopmat = mode;
  cfg.gemm_coopmat_tm = tm;
  return cfg;
}

float f16_round(float v) { return pq::f16_to_f32(pq::f32_to_f16(v)); }

struct GemmCase {
  MatCase mat;
  uint32_t m = 1;
  bool accumulate = false;
  uint32_t col = 0, extra = 0;  // output columns col .. col + rows - 1 of rows + extra
  size_t max_slice_bytes = 0;
};

std::string describe(const GemmCase& g) {
  return describe(g.mat) + " m=" + std::to_string(g.m) + (g.accumulate ? " accumulate" : "") + " col=" +
         std::to_string(g.col) + "/" + std::to_string(g.mat.rows + g.extra) + " slice bytes " +
         std::to_string(g.max_slice_bytes);
}

// One k.gemm() of g (output poisoned, or random when accumulating), checked against the twin of
// the path it took (fp32: the exact operands within kDotTol; coopmat: the fp16-rounded ones
// within kCoopmatTwinTol and the exact ones within kFp16Tol); the columns it must not write
// stay as they were. Returns the path.
// max_m: GemmOut::max_m (the skinny GEMM's family size).
GemmPath check_gemm(Kernels& k, const GemmCase& g, bool x16 = false, bool split = false, uint32_t max_m = 0) {
  const MatCase& c = g.mat;
  const uint32_t m = g.m;
  const auto q = make_matrix(c);
  const auto d = upload_quant(context(), q, describe(c), g.max_slice_bytes);
  const size_t cp = q.cols_padded, ldy = c.rows + g.extra;
  auto x = random_vector(m * c.cols, m * 3 + static_cast<uint32_t>(c.cols * 5 + c.bits));
  vk::Buffer xb = context().upload_new(x, "X");
  vk::Buffer xr = poisoned(x16 ? m * cp / 2 : m * cp);  // fp16 input: the preparation writes halves
  std::vector<float> y0 = random_vector(m * ldy, m + 17);
  if (!g.accumulate)
    for (size_t i = 0; i < y0.size(); ++i)
      if (i % ldy >= g.col && i % ldy < g.col + c.rows) y0[i] = std::bit_cast<float>(kPoison);
  vk::Buffer y = context().upload_new(y0, "Y");
  auto cmd = context().commands();
  if (q.rotated || x16) {  // fp16: the unrotated methods' input goes through the preparation unrotated
    k.prepare(cmd, xb, xr, m, static_cast<uint32_t>(c.cols), static_cast<uint32_t>(c.block),
              x16 ? Layout::row_major_f16 : Layout::row_major, q.rotated, Prologue{});
  } else {
    std::vector<float> padded(m * cp, 0.0f);
    for (uint32_t i = 0; i < m; ++i) std::copy(x.begin() + i * c.cols, x.begin() + (i + 1) * c.cols, padded.begin() + i * cp);
    context().upload(xr, padded);
  }
  cmd.barrier();
  k.gemm(cmd, d, xr, y, m, g.accumulate, GemmOut{static_cast<uint32_t>(ldy), g.col, x16, split, split, max_m});
  cmd.run();
  const GemmPath path = k.last_gemm_path();
  const auto xin = x16 ? read_halves(xr, m * cp) : read_floats(xr, m * cp);  // the activations the GEMM read
  const auto got = read_floats(y, m * ldy);
  std::vector<double> exact, rounded;
  std::vector<float> mine;  // the written columns, less what was there when accumulating
  size_t touched = 0;
  for (uint32_t t = 0; t < m; ++t)
    for (size_t j = 0; j < ldy; ++j) {
      const size_t o = t * ldy + j;
      if (j < g.col || j >= g.col + c.rows) {
        touched += std::bit_cast<uint32_t>(got[o]) != std::bit_cast<uint32_t>(y0[o]);
        continue;
      }
      const size_t r = j - g.col;
      double e = 0, h = 0;
      for (size_t b = 0; b < q.blocks_per_row(); ++b) {
        const float s = pq::f16_to_f32(q.scales[r * q.blocks_per_row() + b]);
        double de = 0;
        for (int i = 0; i < c.block; ++i) {
          const size_t col = b * c.block + i;
          const float cb = q.codebook[q.code(r, col)], xv = xin[t * cp + col];
          de += double(cb) * xv;
          h += double(f16_round(cb * s)) * f16_round(xv);
        }
        e += double(s) * de;
      }
      exact.push_back(e);
      rounded.push_back(h);
      mine.push_back(g.accumulate ? static_cast<float>(double(got[o]) - y0[o]) : got[o]);
    }
  EXPECT_EQ(touched, 0u) << describe(g) << ": elements outside the matrix's columns changed";
  if (path == GemmPath::portable) {
    EXPECT_LT(rel_error(mine, exact), kDotTol) << describe(g) << " " << Kernels::gemm_path_name(path);
  } else {
    EXPECT_LT(rel_error(mine, rounded), kCoopmatTwinTol) << describe(g) << " " << Kernels::gemm_path_name(path);
    EXPECT_LT(rel_error(mine, exact), kFp16Tol) << describe(g) << " " << Kernels::gemm_path_name(path);
  }
  return path;
}

// Awkward shapes for the 128-row x 64/128-token tiles: one row, rows and M past a tile
// boundary, long K (chunk groups of 8), slices, an output written from an odd column of a wider
// Y, accumulation, every bit width and block size, the unrotated methods, codes loaded 4 chunks
// at a time (two blocks of 64 per load) and 2 at a time (a chunk count that is not a multiple of 4).
std::vector<GemmCase> gemm_cases() {
  return {
      {{1, 200, 4, 128, pq::Method::pq}, 1},
      {{17, 4096 + 40, 6, 256, pq::Method::pq}, 16},
      {{130, 333, 5, 128, pq::Method::absmax}, 65, true, 3, 7, 60 * 240},
      {{300, 1000, 3, 64, pq::Method::pq}, 130},
      {{64, 640, 8, 128, pq::Method::lloyd}, 7},
      {{129, 192, 2, 64, pq::Method::pq}, 64, false, 1, 1},
      {{40, 500, 7, 128, pq::Method::rot_uniform}, 33, true},
      {{33, 1088, 5, 64, pq::Method::pq}, 20},  // 34 chunks: codes loaded 2 chunks at a time, a group of 2
  };
}

// The portable fp32 GEMM (pq_gemm.comp) on every device.
TEST(Gemm, MatchesCpu) {
  Kernels portable(context(), gemm_config(KernelConfig::GemmCoopmat::off));
  for (const auto& c : std::vector<MatCase>{{1, 200, 4, 128, pq::Method::pq},
                                            {65, 1000, 3, 64, pq::Method::pq},
                                            {130, 333, 5, 128, pq::Method::absmax},
                                            {17, 4096 + 40, 6, 256, pq::Method::pq},
                                            {64, 640, 8, 128, pq::Method::lloyd}}) {
    for (uint32_t m : {1u, 7u, 65u}) {
      auto q = make_matrix(c);
      auto d = upload_quant(context(), q, describe(c), c.rows == 130 ? 60 * 240 : 0);
      auto x = random_vector(m * c.cols, m + static_cast<uint32_t>(c.cols));
      vk::Buffer xb = context().upload_new(x, "X");
      vk::Buffer xr = poisoned(m * q.cols_padded);
      vk::Buffer y = poisoned(size_t(m) * c.rows);
      auto cmd = context().commands();
      if (q.rotated) {
        portable.fwht(cmd, xb, xr, m, static_cast<uint32_t>(c.cols), static_cast<uint32_t>(c.block));
      } else {
        std::vector<float> padded(m * q.cols_padded, 0.0f);
        for (uint32_t i = 0; i < m; ++i) std::copy(x.begin() + i * c.cols, x.begin() + (i + 1) * c.cols, padded.begin() + i * q.cols_padded);
        context().upload(xr, padded);
      }
      cmd.barrier();
      portable.gemm(cmd, d, xr, y, m);
      cmd.run();
      EXPECT_EQ(portable.last_gemm_path(), GemmPath::portable);
      std::vector<double> ref(size_t(m) * c.rows), yi(c.rows);
      for (uint32_t i = 0; i < m; ++i) {
        pq::gemv_reference(q, x.data() + i * c.cols, yi.data());
        std::copy(yi.begin(), yi.end(), ref.begin() + i * c.rows);
      }
      EXPECT_LT(rel_error(read_floats(y, size_t(m) * c.rows), ref), kDotTol) << describe(c) << " m=" << m;
    }
  }
}

// The batched GEMV of continuous batching: every token's row against the fp64 twin, on matrices
// of every bit width, sliced and not, several batch shapes; and bitwise the same result for a
// token alone, among others, at another place in the batch and with other workgroup shapes.
TEST(GemvBatch, MatchesCpuAndDoesNotDependOnTheBatch) {
  std::vector<MatCase> cases;
  for (int bits = 2; bits <= 8; ++bits) cases.push_back({37, size_t(1000 + 24 * bits), bits, bits % 2 ? 128 : 64, pq::Method::pq});
  cases.push_back({130, 333, 5, 128, pq::Method::absmax});
  cases.push_back({9, 4096 + 40, 4, 256, pq::Method::pq});
  cases.push_back({64, 640, 8, 128, pq::Method::lloyd});
  KernelConfig small;  // another shape: fewer threads, rows and tokens per workgroup
  small.batch_wg = 32, small.batch_rows = 3, small.batch_tokens = 2;
  Kernels other(context(), small);
  for (const auto& c : cases) {
    const auto q = make_matrix(c);
    const auto d = upload_quant(context(), q, describe(c), c.rows == 130 ? 60 * 240 : 0);  // 130 rows: 3 slices
    for (uint32_t m : {1u, 3u, 8u, 13u}) {
      auto x = random_vector(m * c.cols, m * 5 + static_cast<uint32_t>(c.cols));
      vk::Buffer xb = context().upload_new(x, "X");
      vk::Buffer xr = poisoned(m * q.cols_padded);
      const uint32_t ldy = static_cast<uint32_t>(c.rows) + 3;  // a wider output row, from column 2
      vk::Buffer y = poisoned(size_t(m) * ldy);
      auto cmd = context().commands();
      kernels().prepare(cmd, xb, xr, m, static_cast<uint32_t>(c.cols), static_cast<uint32_t>(c.block), Layout::row_major,
                        q.rotated, Prologue{});
      cmd.barrier();
      kernels().gemv_batch(cmd, d, xr, y, m, false, GemmOut{ldy, 2});
      cmd.run();
      const auto got = read_floats(y, size_t(m) * ldy);
      std::vector<float> g;
      std::vector<double> ref(size_t(m) * c.rows), yi(c.rows);
      for (uint32_t i = 0; i < m; ++i) {
        pq::gemv_reference(q, x.data() + i * c.cols, yi.data());
        std::copy(yi.begin(), yi.end(), ref.begin() + i * c.rows);
        g.insert(g.end(), got.begin() + i * ldy + 2, got.begin() + i * ldy + 2 + c.rows);
        EXPECT_EQ(std::bit_cast<uint32_t>(got[i * ldy]), kPoison) << "column 0 written";
        EXPECT_EQ(std::bit_cast<uint32_t>(got[i * ldy + ldy - 1]), kPoison) << "last column written";
      }
      EXPECT_LT(rel_error(g, ref), kDotTol) << describe(c) << " m=" << m;

      // Token i alone (m = 1, its prepared row copied to row 0) and in reverse order: bit for bit.
      const auto xr_host = context().download_all<float>(xr);
      std::vector<float> reversed(xr_host.size());
      for (uint32_t i = 0; i < m; ++i)
        std::copy(xr_host.begin() + size_t(i) * q.cols_padded, xr_host.begin() + size_t(i + 1) * q.cols_padded,
                  reversed.begin() + size_t(m - 1 - i) * q.cols_padded);
      vk::Buffer rb = context().upload_new(reversed, "reversed X"), yr = poisoned(size_t(m) * c.rows);
      auto cmd2 = context().commands();
      kernels().gemv_batch(cmd2, d, rb, yr, m);
      cmd2.run();
      const auto got_rev = read_floats(yr, size_t(m) * c.rows);
      for (uint32_t i = 0; i < m; i += std::max(1u, m / 3)) {
        vk::Buffer one = context().upload_new(std::vector<float>(xr_host.begin() + size_t(i) * q.cols_padded,
                                                                 xr_host.begin() + size_t(i + 1) * q.cols_padded), "x_i");
        vk::Buffer y1 = poisoned(c.rows), y2 = poisoned(c.rows);
        auto cmd3 = context().commands();
        kernels().gemv_batch(cmd3, d, one, y1, 1);
        other.gemv_batch(cmd3, d, one, y2, 1);
        cmd3.run();
        const auto alone = read_floats(y1, c.rows);
        for (size_t r = 0; r < c.rows; ++r) {
          ASSERT_EQ(std::bit_cast<uint32_t>(alone[r]), std::bit_cast<uint32_t>(got[i * ldy + 2 + r]))
              << describe(c) << " m=" << m << " token " << i << " row " << r << ": alone vs in the batch";
          ASSERT_EQ(std::bit_cast<uint32_t>(alone[r]), std::bit_cast<uint32_t>(got_rev[size_t(m - 1 - i) * c.rows + r]))
              << describe(c) << " m=" << m << " token " << i << " row " << r << ": another place in the batch";
        }
        // Another workgroup shape changes the order of the sums: close, not necessarily equal.
        EXPECT_LT(rel_error(read_floats(y2, c.rows), alone), 1e-5) << describe(c);
      }
    }
  }
  // Accumulate onto Y.
  const MatCase c{20, 300, 3, 64, pq::Method::pq};
  const auto q = make_matrix(c);
  const auto d = upload_quant(context(), q, describe(c));
  auto xp = random_vector(2 * q.cols_padded, 77);
  for (uint32_t i = 0; i < 2; ++i)
    for (size_t k = c.cols; k < q.cols_padded; ++k) xp[i * q.cols_padded + k] = 0.0f;  // zero padding
  const auto base = random_vector(2 * c.rows, 78);
  vk::Buffer xb = context().upload_new(xp, "X"), y = context().upload_new(base, "Y");
  auto cmd = context().commands();
  kernels().gemv_batch(cmd, d, xb, y, 2, true);
  cmd.run();
  std::vector<double> want;
  std::vector<double> yi(c.rows);
  for (uint32_t i = 0; i < 2; ++i) {
    const std::vector<double> xd(xp.begin() + i * q.cols_padded, xp.begin() + (i + 1) * q.cols_padded);
    pq::gemv_reference_prepared(q, xd.data(), yi.data());
    for (size_t r = 0; r < c.rows; ++r) want.push_back(base[i * c.rows + r] + yi[r]);
  }
  EXPECT_LT(rel_error(read_floats(y, 2 * c.rows), want), kDotTol);
}

// pq_gemm_coopmat.comp's body (loads, decode into fp16 tiles, double buffering, the subgroups'
// tiling, epilogue) with scalar stand-ins for its cooperative-matrix operations: on every
// device, at both token tiles where the shared memory allows (lavapipe's 32 KiB holds only the
// 64-token one: the 128-token tile is then refused with an error that says why).
TEST(Gemm, CoopmatShaderEmulatedMatchesCpu) {
  const bool fits128 = context().info().max_shared_memory >= 4 * 256 + 2 * (128 + 128) * 80;  // the shader's arrays
  for (uint32_t tm : {64u, 128u}) {
    Kernels k(context(), gemm_config(Coopmat::emulated, tm));
    for (const auto& g : gemm_cases()) {
      if (tm == 128 && !fits128) {
        try {
          check_gemm(k, g);
          ADD_FAILURE() << "a 128-token tile ran with " << context().info().max_shared_memory << " bytes of shared memory";
        } catch (const vk::Error& e) {
          EXPECT_NE(std::string(e.what()).find("shared memory"), std::string::npos) << e.what();
        }
        break;
      }
      EXPECT_EQ(check_gemm(k, g), GemmPath::coopmat_emulated) << describe(g);
    }
  }
}

// fp16 activations (Layout::row_major_f16, GemmOut::x_f16, what a model's prefill gives the
// tensor-core GEMM): the emulated shader on every device, the tensor-core one where the device
// has it; the portable shader refuses them.
TEST(Gemm, F16ActivationsMatchCpu) {
  Kernels emulated(context(), gemm_config(Coopmat::emulated, 64));
  EXPECT_TRUE(emulated.gemm_takes_f16(1));
  for (const auto& g : gemm_cases()) EXPECT_EQ(check_gemm(emulated, g, true), GemmPath::coopmat_emulated) << describe(g);
  Kernels automatic(context(), KernelConfig{});
  if (automatic.coopmat_gemm_unsupported().empty())
    for (uint32_t tm : {64u, 128u}) {
      Kernels on(context(), gemm_config(Coopmat::on, tm));
      for (const auto& g : gemm_cases()) EXPECT_EQ(check_gemm(on, g, true), GemmPath::coopmat) << describe(g) << " tile " << tm;
    }
  Kernels portable(context(), gemm_config(Coopmat::off));
  EXPECT_FALSE(portable.gemm_takes_f16(512));
  EXPECT_THROW(check_gemm(portable, gemm_cases()[1], true), vk::Error);
}

// gemm() on the default configuration: the tensor-core shader at M >= 16 where the device can
// run it (checked against the fp16 twin), else the portable one, which is then what ran (on
// lavapipe: no cooperative matrices), and asking for the tensor cores is an error that says why.
// The tensor-core path is also checked at LLM shapes by `vk-bench kernels --check`.
TEST(Gemm, CoopmatWhereSupportedElsePortable) {
  Kernels k(context(), KernelConfig{});  // automatic
  const std::string why = k.coopmat_gemm_unsupported();
  const bool can = why.empty();
  std::printf("[pqvk] cooperative-matrix GEMM on this device: %s\n", can ? "yes" : why.c_str());
  for (const auto& g : gemm_cases()) {
    const GemmPath want = can && g.m >= 16 ? GemmPath::coopmat : GemmPath::portable;
    EXPECT_EQ(k.gemm_path(g.m), want) << describe(g);
    EXPECT_EQ(check_gemm(k, g), want) << describe(g);
    // GemmOut::any_m (continuous batching's prefill steps): one path at every M.
    EXPECT_EQ(k.gemm_path(g.m, true), can ? GemmPath::coopmat : GemmPath::portable) << describe(g);
  }
  EXPECT_EQ(Kernels(context(), gemm_config(Coopmat::off)).gemm_path(1, true), GemmPath::portable);
  EXPECT_EQ(Kernels(context(), gemm_config(Coopmat::emulated)).gemm_path(1, true), GemmPath::coopmat_emulated);
  if (can) {
    for (uint32_t tm : {64u, 128u}) {  // every M through the tensor cores, both tiles
      Kernels on(context(), gemm_config(Coopmat::on, tm));
      for (const auto& g : gemm_cases()) EXPECT_EQ(check_gemm(on, g), GemmPath::coopmat) << describe(g) << " tile " << tm;
    }
  } else {
    EXPECT_EQ(k.gemm_path(4096), GemmPath::portable);
    Kernels on(context(), gemm_config(Coopmat::on));
    try {
      check_gemm(on, gemm_cases()[3]);
      ADD_FAILURE() << "the cooperative-matrix GEMM ran on a device that lacks it";
    } catch (const vk::Error& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
}

// Activations for a GEMM: fp32 as given, or (x16: what the tensor-core GEMMs read) rounded to fp16
// and packed two to a word.
vk::Buffer upload_activations(std::span<const float> rows, bool x16) {
  if (!x16) return context().upload_new(std::vector<float>(rows.begin(), rows.end()), "X");
  std::vector<uint32_t> packed((rows.size() + 1) / 2, 0u);
  for (size_t i = 0; i < rows.size(); ++i) packed[i / 2] |= uint32_t{pq::f32_to_f16(rows[i])} << (16 * (i % 2));
  return context().upload_new(packed, "X fp16");
}

// Continuous batching's prefill steps put a prompt's tokens into GEMMs of any size beside other
// prompts' tokens (GemmOut::any_m): a token's output row must not depend on M or on its place
// among the M, bit for bit, on every GEMM path the device runs: the portable shader, the
// tensor-core one where the device has it (both tiles) and its emulation (the tiles that fit),
// with the activations each path reads (fp16 for the tensor-core ones).
TEST(Gemm, TokenRowDoesNotDependOnTheOtherTokens) {
  std::vector<std::pair<std::string, KernelConfig>> paths = {{"fp32", gemm_config(Coopmat::off)},
                                                             {"emulated, 64-token tile", gemm_config(Coopmat::emulated, 64)}};
  if (context().info().max_shared_memory >= 4 * 256 + 2 * (128 + 128) * 80)
    paths.push_back({"emulated, 128-token tile", gemm_config(Coopmat::emulated, 128)});
  if (Kernels(context(), KernelConfig{}).coopmat_gemm_unsupported().empty())
    for (uint32_t tm : {64u, 128u}) paths.push_back({"coopmat, tile " + std::to_string(tm), gemm_config(Coopmat::automatic, tm)});
  const MatCase c{150, 320, 5, 64, pq::Method::pq};  // rows past a 128-row tile; 10 chunks: 2 per load
  const auto q = make_matrix(c);
  const auto d = upload_quant(context(), q, describe(c));
  const size_t cp = q.cols_padded;
  const uint32_t m = 70;  // past a 64-token tile
  const auto x = random_vector(m * cp, 4242);
  std::vector<float> reversed(x.size());
  for (uint32_t t = 0; t < m; ++t) std::copy(x.begin() + t * cp, x.begin() + (t + 1) * cp, reversed.begin() + (m - 1 - t) * cp);
  for (const auto& [name, cfg] : paths) {
    Kernels k(context(), cfg);
    const bool x16 = k.gemm_takes_f16(m, true);
    auto run = [&](std::span<const float> rows, uint32_t n) {
      vk::Buffer xb = upload_activations(rows, x16);
      vk::Buffer y = poisoned(size_t(n) * c.rows);
      auto cmd = context().commands();
      k.gemm(cmd, d, xb, y, n, false, GemmOut{0, 0, x16, true});
      cmd.run();
      EXPECT_EQ(k.last_gemm_path(), k.gemm_path(m, true)) << name << ": another path at " << n << " tokens";
      return read_floats(y, size_t(n) * c.rows);
    };
    const auto all = run(x, m), rev = run(reversed, m);
    for (uint32_t t : {0u, 1u, 33u, 63u, 64u, 69u}) {
      const auto alone = run(std::span<const float>(x).subspan(t * cp, cp), 1);
      const auto first3 = run(std::span<const float>(x).subspan(t * cp, std::min<size_t>(3, m - t) * cp), std::min(3u, m - t));
      for (size_t r = 0; r < c.rows; ++r) {
        const uint32_t want = std::bit_cast<uint32_t>(alone[r]);
        ASSERT_NE(want, kPoison) << name << " token " << t << " row " << r << " not written";
        ASSERT_EQ(want, std::bit_cast<uint32_t>(all[t * c.rows + r])) << name << " token " << t << " row " << r << ": alone vs among 70";
        ASSERT_EQ(want, std::bit_cast<uint32_t>(rev[(m - 1 - t) * c.rows + r])) << name << " token " << t << " row " << r << ": another place";
        ASSERT_EQ(want, std::bit_cast<uint32_t>(first3[r])) << name << " token " << t << " row " << r << ": among 3";
      }
    }
  }
}

// Continuous batching's decode GEMMs (split K, skinny): a token's output row of a 150x3000 q4
// matrix alone, among m and in another place among them, bit for bit (the parts of K depend on the
// matrix only). out: the GemmOut of every call; with out.x_f16 the input is fp16. path_ok() checks
// what the last call ran.
void expect_token_rows_alone_equal(Kernels& k, const std::string& name, uint32_t m, uint32_t seed, GemmOut out,
                                   std::initializer_list<uint32_t> tokens, const std::function<void()>& path_ok) {
  const MatCase c{150, 3000, 4, 128, pq::Method::pq};
  const auto q = make_matrix(c);
  const auto d = upload_quant(context(), q, describe(c));
  const size_t cp = q.cols_padded;
  const auto x = random_vector(m * cp, seed);
  auto run = [&](std::span<const float> rows, uint32_t n) {
    vk::Buffer xb = upload_activations(rows, out.x_f16);
    vk::Buffer y = poisoned(size_t(n) * c.rows);
    auto cmd = context().commands();
    k.gemm(cmd, d, xb, y, n, false, out);
    cmd.run();
    path_ok();
    return read_floats(y, size_t(n) * c.rows);
  };
  std::vector<float> reversed(x.size());
  for (uint32_t t = 0; t < m; ++t) std::copy(x.begin() + t * cp, x.begin() + (t + 1) * cp, reversed.begin() + (m - 1 - t) * cp);
  const auto all = run(x, m), rev = run(reversed, m);
  for (uint32_t t : tokens) {
    const auto alone = run(std::span<const float>(x).subspan(t * cp, cp), 1);
    for (size_t r = 0; r < c.rows; ++r) {
      ASSERT_NE(std::bit_cast<uint32_t>(alone[r]), kPoison) << name << " token " << t << " row " << r;
      ASSERT_EQ(std::bit_cast<uint32_t>(alone[r]), std::bit_cast<uint32_t>(all[t * c.rows + r])) << name << " token " << t << " row " << r;
      ASSERT_EQ(std::bit_cast<uint32_t>(alone[r]), std::bit_cast<uint32_t>(rev[(m - 1 - t) * c.rows + r]))
          << name << " token " << t << " row " << r << ": another place";
    }
  }
}

// Split-K (GemmOut::split_k: continuous batching's decode steps through the tensor-core GEMM):
// the partial tiles of each part of K and their sum (splitk_sum.comp) against the twins, with
// accumulation, an output column offset, slices, parts that end mid-row-group and a shorter last
// part; a token's row the same bit for bit alone and among others (the parts depend on the matrix
// only). The emulated shader on every device, the tensor-core one where the device has it.
TEST(Gemm, SplitKMatchesCpu) {
  std::vector<std::pair<std::string, KernelConfig>> paths = {{"emulated", gemm_config(Coopmat::emulated, 64)}};
  if (Kernels(context(), KernelConfig{}).coopmat_gemm_unsupported().empty())
    paths.push_back({"coopmat", gemm_config(Coopmat::automatic, 64)});
  // The case and the parts of K it takes (Kernels::gemm_splits; 0: more than one).
  const std::vector<std::pair<GemmCase, uint32_t>> cases = {
      {{{130, 4096 + 40, 4, 128, pq::Method::pq}, 1}, 11},                   // 132 chunks, 12 a part
      {{{17, 14336 - 100, 5, 128, pq::Method::pq}, 7, true, 3, 7}, 16},      // 448 chunks, 28 a part
      {{{300, 1000, 3, 64, pq::Method::pq}, 33}, 4},                         // 32 chunks, 8 a part
      {{{64, 2208, 6, 64, pq::Method::pq}, 64, false, 1, 1}, 7},              // 70 chunks loaded 2 at a time
      {{{96, 1088, 5, 64, pq::Method::pq}, 20}, 4},                          // 34 chunks: 10, 10, 10 and 4
      {{{260, 1088, 5, 64, pq::Method::pq}, 20, true, 0, 0, 60 * 1088}, 0},   // slices
      {{{40, 200, 2, 64, pq::Method::pq}, 3}, 1},                            // too short to split
  };
  for (const auto& [name, cfg] : paths) {
    Kernels k(context(), cfg);
    for (const auto& [g, parts] : cases) {
      EXPECT_NE(check_gemm(k, g, name == "coopmat", true), GemmPath::portable) << name << " " << describe(g);
      if (parts) EXPECT_EQ(k.last_gemm_splits(), parts) << name << " " << describe(g);
      else EXPECT_GT(k.last_gemm_splits(), 1u) << name << " " << describe(g);
    }
    // A token's row alone, among 40 and in another place, bit for bit.
    expect_token_rows_alone_equal(k, name, 40, 777, GemmOut{0, 0, false, true, true}, {0u, 17u, 39u},
                                  [&] { EXPECT_GT(k.last_gemm_splits(), 1u) << name; });
  }
}

// The skinny tensor-core GEMM of decode steps of up to 32 sequences (GemmOut::max_m,
// pq_gemm_skinny.comp): against the twins at every bit width (shuffle lookups up to 5 bits, the
// shared table above), with and without split K, slices, accumulation, an output column offset,
// rows past a 32-row subgroup and a 128-row tile, one and two 16-token tiles, codes loaded 2 or 4
// chunks at a time, activations staged 8 and 4 chunks at a time (lavapipe's 32 KiB of shared
// memory stage two token tiles 4 at a time), the unrotated methods, an input of exactly m rows
// (the shader stages zeros past them); and a token's row bit for bit the same alone, among
// others and in another place. The emulated shader on every device, the
// tensor-core one where the device has it.
TEST(Gemm, SkinnyMatchesCpu) {
  std::vector<std::pair<std::string, KernelConfig>> paths = {{"emulated", gemm_config(Coopmat::emulated, 64)}};
  if (Kernels(context(), KernelConfig{}).coopmat_gemm_unsupported().empty())
    paths.push_back({"coopmat", gemm_config(Coopmat::automatic, 64)});
  // The case, its max_m and the parts of K it takes (Kernels::gemm_splits; 0: more than one).
  struct Case {
    GemmCase g;
    uint32_t max_m, parts;
  };
  const std::vector<Case> cases = {
      {{{130, 4096 + 40, 4, 128, pq::Method::pq}, 1}, 1, 11},                   // 132 chunks, 12 a part
      {{{17, 14336 - 100, 5, 128, pq::Method::pq}, 7, true, 3, 7}, 8, 16},      // 448 chunks, 28 a part
      {{{300, 1000, 3, 64, pq::Method::pq}, 16}, 16, 4},                        // 32 chunks, 8 a part
      {{{64, 2208, 6, 64, pq::Method::pq}, 17, false, 1, 1}, 32, 7},             // 70 chunks loaded 2 at a time
      {{{96, 1088, 5, 64, pq::Method::pq}, 32}, 32, 4},                         // 34 chunks: 10, 10, 10 and 4
      {{{260, 1088, 8, 64, pq::Method::pq}, 20, true, 0, 0, 60 * 1088}, 24, 0},  // slices, the shared table
      {{{40, 200, 2, 64, pq::Method::pq}, 3}, 5, 1},                            // too short to split
      {{{33, 640, 7, 128, pq::Method::lloyd}, 9}, 32, 2},                      // 20 chunks: 10 a part
      {{{45, 333, 4, 128, pq::Method::absmax}, 2}, 2, 1},                       // unrotated
  };
  for (const auto& [name, cfg] : paths) {
    Kernels k(context(), cfg);
    for (const auto& [g, max_m, parts] : cases) {
      EXPECT_NE(check_gemm(k, g, true, true, max_m), GemmPath::portable) << name << " " << describe(g);
      EXPECT_TRUE(k.last_gemm_skinny()) << name << " " << describe(g);
      if (parts) EXPECT_EQ(k.last_gemm_splits(), parts) << name << " " << describe(g);
      else EXPECT_GT(k.last_gemm_splits(), 1u) << name << " " << describe(g);
    }
    // Not taken: more than 32 tokens in the family, fp32 activations; more tokens than max_m is an
    // error.
    check_gemm(k, cases[2].g, true, true, 33);
    EXPECT_FALSE(k.last_gemm_skinny()) << name;
    check_gemm(k, cases[2].g, false, true, 16);
    EXPECT_FALSE(k.last_gemm_skinny()) << name;
    EXPECT_THROW(check_gemm(k, cases[2].g, true, true, 8), vk::Error) << name;

    // A token's row alone, among 24 and in another place, bit for bit (max_m 32 throughout).
    expect_token_rows_alone_equal(k, name, 24, 778, GemmOut{0, 0, true, true, true, 32}, {0u, 15u, 16u, 23u},
                                  [&] { EXPECT_TRUE(k.last_gemm_skinny()) << name; });
  }
}

TEST(Gemm, CoopmatSwitchAndEnvironment) {
  struct Env {  // PQVK_GEMM_COOPMAT for one scope
    explicit Env(const char* v) { setenv("PQVK_GEMM_COOPMAT", v, 1); }
    ~Env() { unsetenv("PQVK_GEMM_COOPMAT"); }
  };
  {
    Env e("0");
    Kernels k(context(), KernelConfig{});
    EXPECT_EQ(k.config().gemm_coopmat, Coopmat::off);
    EXPECT_EQ(k.gemm_path(2048), GemmPath::portable);
  }
  {
    Env e("128");
    Kernels k(context(), gemm_config(Coopmat::off));
    EXPECT_EQ(k.config().gemm_coopmat, Coopmat::automatic);
    EXPECT_EQ(k.config().gemm_coopmat_tm, 128u);
  }
  {
    Env e("on");
    EXPECT_EQ(Kernels(context(), KernelConfig{}).gemm_path(1), GemmPath::coopmat);
  }
  {
    Env e("yes");
    EXPECT_THROW(Kernels(context(), KernelConfig{}), vk::Error);
  }
  EXPECT_THROW(Kernels(context(), gemm_config(Coopmat::automatic, 96)), vk::Error);
  EXPECT_EQ(KernelConfig{}.gemm_coopmat, Coopmat::automatic);  // verified on the H200
  Kernels k(context(), gemm_config(Coopmat::automatic));
  EXPECT_EQ(k.gemm_path(15), GemmPath::portable);  // below gemm_coopmat_min_m
  EXPECT_EQ(k.gemm_coopmat_tile(16), 64u);
  EXPECT_EQ(k.gemm_coopmat_tile(64), 64u);  // one 64-token tile holds them all
  const bool fits128 = context().info().max_shared_memory >= 4 * 256 + 2 * (128 + 128) * 80;
  EXPECT_EQ(k.gemm_coopmat_tile(65), fits128 ? 128u : 64u);
  EXPECT_EQ(k.gemm_coopmat_tile(512), fits128 ? 128u : 64u);  // even where a matrix of 4096 rows gives only 128 workgroups
  EXPECT_EQ(k.gemm_coopmat_tile(2048), fits128 ? 128u : 64u);
}

TEST(Copy, ShaderCopyEqualsSource) {
  for (size_t bytes : {size_t(16), size_t(16 * 1001), size_t(5u << 20) + 48}) {
    std::vector<uint32_t> src(bytes / 4);
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint32_t>(i * 2654435761u + 1);
    vk::Buffer a = context().upload_new(src, "src");
    vk::Buffer b = poisoned(bytes / 4 + 4);  // one element more than copied: must stay poisoned
    auto cmd = context().commands();
    kernels().copy(cmd, a, b, bytes);
    cmd.run();
    auto got = context().download_all<uint32_t>(b);
    EXPECT_TRUE(std::equal(src.begin(), src.end(), got.begin())) << bytes;
    for (size_t i = src.size(); i < got.size(); ++i) EXPECT_EQ(got[i], kPoison);
  }
  vk::Buffer a = context().buffer(64);
  auto cmd = context().commands();
  EXPECT_THROW(kernels().copy(cmd, a, a, 20), vk::Error);
}

TEST(Embed, GathersDequantizedRowsAcrossSlices) {
  for (const MatCase& c : {MatCase{97, 200, 5, 128, pq::Method::pq}, MatCase{50, 64, 3, 64, pq::Method::absmax}}) {
    auto q = make_matrix(c);
    // Slices of 10 rows: tokens land in different slices.
    const size_t row_bytes = pq::packed_words(1, q.cols_padded, c.bits) * 4;
    auto d = upload_quant(context(), q, describe(c), 10 * row_bytes);
    ASSERT_GT(d.slices.size(), 3u);
    const std::vector<int32_t> tokens = {0, static_cast<int32_t>(c.rows - 1), 13, 13, 42, 7};
    vk::Buffer tb = context().upload_new(tokens, "tokens");
    vk::Buffer out = poisoned(tokens.size() * c.cols);
    auto cmd = context().commands();
    kernels().embed(cmd, d, tb, out, static_cast<uint32_t>(tokens.size()));
    cmd.run();
    std::vector<float> all(c.rows * c.cols), ref;
    pq::dequantize(q, all.data());
    for (int32_t t : tokens) ref.insert(ref.end(), all.begin() + t * c.cols, all.begin() + (t + 1) * c.cols);
    EXPECT_LT(rel_error(read_floats(out, tokens.size() * c.cols), ref), kFwhtTol) << describe(c);
  }
  // fp16 tables
  const size_t rows = 33, cols = 77;
  auto w = random_vector(rows * cols, 5);
  auto d = upload_f16(context(), w.data(), rows, cols, "f16 table", 8 * 80 * 2);
  const std::vector<int32_t> tokens = {32, 0, 9, 17};
  vk::Buffer tb = context().upload_new(tokens, "tokens");
  vk::Buffer out = poisoned(tokens.size() * cols);
  auto cmd = context().commands();
  kernels().embed_f16(cmd, d, tb, out, static_cast<uint32_t>(tokens.size()));
  cmd.run();
  std::vector<float> ref;
  for (int32_t t : tokens)
    for (size_t k = 0; k < cols; ++k) ref.push_back(pq::f16_to_f32(pq::f32_to_f16(w[t * cols + k])));
  EXPECT_EQ(rel_error(read_floats(out, tokens.size() * cols), ref), 0.0);
}

TEST(Argmax, LowestIndexOfTheLargest) {
  for (size_t n : {size_t(1), size_t(257), size_t(151936)}) {
    auto x = random_vector(n, static_cast<uint32_t>(n));
    const size_t top = n / 3;
    x[top] = 100.0f;
    if (n > 10) x[n - 2] = 100.0f;  // a tie: the lower index wins
    vk::Buffer xb = context().upload_new(x, "logits");
    vk::Buffer out = poisoned(4), tokens = poisoned(4);
    auto cmd = context().commands();
    kernels().argmax(cmd, xb, static_cast<uint32_t>(n), out, tokens);
    cmd.run();
    EXPECT_EQ(context().download_all<int32_t>(out)[0], static_cast<int32_t>(top)) << n;
    EXPECT_EQ(context().download_all<int32_t>(tokens)[0], static_cast<int32_t>(top)) << n;
  }
}

TEST(Argmax, EveryRowOfABatch) {
  for (uint32_t n : {5u, 1000u, 151936u}) {
    const uint32_t rows = 7, ldx = n + 3;
    auto x = random_vector(size_t(rows) * ldx, n + 1);
    std::vector<int32_t> want;
    for (uint32_t r = 0; r < rows; ++r) {
      const uint32_t top = (r * 7919u + 3u) % n;
      x[size_t(r) * ldx + top] = 100.0f + static_cast<float>(r);
      x[size_t(r) * ldx + n] = 1000.0f;  // past the row's end: never chosen
      want.push_back(static_cast<int32_t>(top));
    }
    vk::Buffer xb = context().upload_new(x, "logits"), out = poisoned(rows + 1), tokens = poisoned(rows + 1);
    auto cmd = context().commands();
    kernels().argmax(cmd, xb, n, out, tokens, rows, ldx);
    cmd.run();
    const auto got = context().download_all<int32_t>(out), got_t = context().download_all<int32_t>(tokens);
    EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + rows), want) << n;
    EXPECT_EQ(std::vector<int32_t>(got_t.begin(), got_t.begin() + rows), want) << n;
    EXPECT_EQ(static_cast<uint32_t>(got[rows]), kPoison);
  }
  vk::Buffer xb = context().buffer(64), o = context().buffer(64);
  auto cmd = context().commands();
  EXPECT_THROW(kernels().argmax(cmd, xb, 4, o, o, Kernels::kArgmaxRows + 1), vk::Error);
  EXPECT_THROW(kernels().argmax(cmd, xb, 4, o, o, 2, 3), vk::Error);  // stride below the row
}

// Attention inputs of one case: random q/k/v for m tokens at pos0.., biases, norms, and random
// fp16 keys and values already cached at positions < pos0; with the fp64 CPU twin.
// v_scale multiplies the values (before their biases): norms at the ends of the fp16 range.
// k_ramp: cached key p (fp16 caches) times 1 + p k_ramp, so that scores grow along the context and
// a row's running maximum jumps several times (the tensor-core attention's rescale).
struct AttnCase { uint32_t n_heads, n_kv, hd, m, pos0, window; bool bias, norm; uint32_t kv_bits = 0; float v_scale = 1; float k_ramp = 0; };
using Rows = std::vector<std::vector<double>>;  // head vectors

struct AttnData {
  AttnCase c;
  Kernels::AttentionShape shape;
  size_t q_dim, kv_dim, half;
  std::vector<float> q, k, v, bias, norm, inv_freq;
  std::vector<uint32_t> kc, vc;  // the caches before the run

  explicit AttnData(const AttnCase& cs) : c(cs) {
    shape = Kernels::AttentionShape{c.n_heads, c.n_kv, c.hd, 512, c.window, 1e-6f, c.kv_bits};
    q_dim = size_t(c.n_heads) * c.hd, kv_dim = size_t(c.n_kv) * c.hd, half = c.hd / 2;
    std::mt19937 rng(c.hd * 31 + c.m + c.pos0);
    std::normal_distribution<float> nd;
    kc.assign(512 * c.n_kv * Kernels::kv_words(shape), 0);  // (cached positions: fp16 caches only)
    vc.assign(512 * c.n_kv * Kernels::kv_words(shape), 0);
    for (size_t i = 0; i < c.pos0 * kv_dim / 2; ++i) {
      const float ramp = 1.0f + float(i / (kv_dim / 2)) * c.k_ramp;
      kc[i] = pq::f32_to_f16(ramp * nd(rng)) | (uint32_t(pq::f32_to_f16(ramp * nd(rng))) << 16);
      vc[i] = pq::f32_to_f16(nd(rng)) | (uint32_t(pq::f32_to_f16(nd(rng))) << 16);
    }
    q = random_vector(c.m * q_dim, 1 + c.hd + c.pos0), k = random_vector(c.m * kv_dim, 2 + c.hd),
    v = random_vector(c.m * kv_dim, 3 + c.hd), bias = random_vector(q_dim + 2 * kv_dim, 4),
    norm = random_vector(2 * c.hd, 5);
    for (float& e : v) e *= c.v_scale;
    inv_freq.resize(half);
    for (size_t j = 0; j < half; ++j) inv_freq[j] = static_cast<float>(std::pow(10000.0, -2.0 * j / c.hd));
  }

  // q, k and v as the projections leave them: [m][q | k | v].
  std::vector<float> qkv() const {
    std::vector<float> r;
    for (size_t m = 0; m < c.m; ++m) {
      r.insert(r.end(), q.begin() + m * q_dim, q.begin() + (m + 1) * q_dim);
      r.insert(r.end(), k.begin() + m * kv_dim, k.begin() + (m + 1) * kv_dim);
      r.insert(r.end(), v.begin() + m * kv_dim, v.begin() + (m + 1) * kv_dim);
    }
    return r;
  }

  // The new tokens' roped queries ([token * n_heads + h]) and keys and their values ([token *
  // n_kv + kvh]) in fp64: biases, head norms and RoPE applied, nothing rounded.
  struct Heads { Rows q, k, v; };
  Heads heads() const {
    auto rope = [&](std::vector<double>& h, size_t pos, const float* nw) {
      if (nw) {
        double ss = 0;
        for (double e : h) ss += e * e;
        const double inv = 1.0 / std::sqrt(ss / c.hd + 1e-6);
        for (size_t j = 0; j < c.hd; ++j) h[j] *= inv * nw[j];
      }
      for (size_t j = 0; j < half; ++j) {
        const double ang = double(float(pos) * inv_freq[j]), a0 = h[j], b0 = h[j + half];
        h[j] = a0 * std::cos(ang) - b0 * std::sin(ang);
        h[j + half] = b0 * std::cos(ang) + a0 * std::sin(ang);
      }
    };
    Heads x;
    for (size_t m = 0; m < c.m; ++m) {
      const size_t pos = c.pos0 + m;
      for (size_t h = 0; h < c.n_kv; ++h) {
        std::vector<double> kk(c.hd), vv(c.hd);
        for (size_t j = 0; j < c.hd; ++j) {
          kk[j] = k[m * kv_dim + h * c.hd + j] + (c.bias ? bias[q_dim + h * c.hd + j] : 0.0);
          vv[j] = v[m * kv_dim + h * c.hd + j] + (c.bias ? bias[q_dim + kv_dim + h * c.hd + j] : 0.0);
        }
        rope(kk, pos, c.norm ? norm.data() + c.hd : nullptr);
        x.k.push_back(kk);
        x.v.push_back(vv);
      }
      for (size_t h = 0; h < c.n_heads; ++h) {
        std::vector<double> qq(c.hd);
        for (size_t j = 0; j < c.hd; ++j) qq[j] = q[m * q_dim + h * c.hd + j] + (c.bias ? bias[h * c.hd + j] : 0.0);
        rope(qq, pos, c.norm ? norm.data() : nullptr);
        x.q.push_back(qq);
      }
    }
    return x;
  }

  // fp64 causal attention of the queries Q of tokens m0 .. m-1 ([(token - m0) * n_heads + h])
  // over the keys K and values V of positions 0 .. pos0+m-1 ([position * n_kv + kvh]): the
  // outputs [m - m0][n_heads * hd].
  std::vector<double> attend(const Rows& Q, const Rows& K, const Rows& V, size_t m0) const {
    std::vector<double> out;
    for (size_t m = m0; m < c.m; ++m) {
      const size_t pos = c.pos0 + m, lo = c.window && pos + 1 > c.window ? pos + 1 - c.window : 0;
      for (size_t h = 0; h < c.n_heads; ++h) {
        const size_t kvh = h / (c.n_heads / c.n_kv);
        const std::vector<double>& qq = Q[(m - m0) * c.n_heads + h];
        std::vector<double> s;
        double mx = -INFINITY;
        for (size_t t = lo; t <= pos; ++t) {
          double dt = 0;
          for (size_t j = 0; j < c.hd; ++j) dt += qq[j] * K[t * c.n_kv + kvh][j];
          s.push_back(dt / std::sqrt(double(c.hd)));
          mx = std::max(mx, s.back());
        }
        double sum = 0;
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (size_t j = 0; j < c.hd; ++j) {
          double o = 0;
          for (size_t t = lo; t <= pos; ++t) o += s[t - lo] * V[t * c.n_kv + kvh][j];
          out.push_back(o / sum);
        }
      }
    }
    return out;
  }

  // The attention outputs [m][n_heads * hd] over the fp16 cache: the cached words, then the new
  // keys and values rounded to fp16. new_k / new_v: the roped key and the value of each new
  // token [m][n_kv * hd] (before fp16 rounding).
  std::vector<double> reference(std::vector<double>* new_k = nullptr, std::vector<double>* new_v = nullptr) const {
    auto r16 = [](double x) { return double(pq::f16_to_f32(pq::f32_to_f16(static_cast<float>(x)))); };
    const Heads x = heads();
    Rows K((c.pos0 + c.m) * c.n_kv), V((c.pos0 + c.m) * c.n_kv);
    for (size_t p = 0; p < c.pos0; ++p)
      for (size_t h = 0; h < c.n_kv; ++h) {
        auto& kk = K[p * c.n_kv + h];
        auto& vv = V[p * c.n_kv + h];
        kk.assign(c.hd, 0);
        vv.assign(c.hd, 0);
        for (size_t j = 0; j < half; ++j) {
          const uint32_t kw = kc[(p * c.n_kv + h) * half + j], vw = vc[(p * c.n_kv + h) * half + j];
          kk[j] = pq::f16_to_f32(kw & 0xffff), kk[j + half] = pq::f16_to_f32(kw >> 16);
          vv[2 * j] = pq::f16_to_f32(vw & 0xffff), vv[2 * j + 1] = pq::f16_to_f32(vw >> 16);
        }
      }
    for (size_t i = 0; i < c.m * c.n_kv; ++i) {
      if (new_k) new_k->insert(new_k->end(), x.k[i].begin(), x.k[i].end());
      if (new_v) new_v->insert(new_v->end(), x.v[i].begin(), x.v[i].end());
      for (const double e : x.k[i]) K[c.pos0 * c.n_kv + i].push_back(r16(e));
      for (const double e : x.v[i]) V[c.pos0 * c.n_kv + i].push_back(r16(e));
    }
    return attend(x.q, K, V, 0);
  }
};

std::string describe(const AttnCase& c) {
  return "heads " + std::to_string(c.n_heads) + "/" + std::to_string(c.n_kv) + " hd " + std::to_string(c.hd) + " m " +
         std::to_string(c.m) + " pos0 " + std::to_string(c.pos0) + " window " + std::to_string(c.window);
}

// qkv_rope + attention against a direct fp64 computation over the same fp16-rounded cache, with
// every prefill attention shader: query tiles (attention_tiled.comp: M across several tiles of 32,
// head sizes not a multiple of 4, windows; 8 keys a tile on lavapipe, 16 where the shared memory
// allows), one query per workgroup (attention.comp, also for heads over 128), and the tensor-core
// one (attention_coopmat.comp: tiles of 64 queries and 16 keys, heads padded to a multiple of 16;
// keys growing along the context make its online softmax rescale) where the device has it, and its emulation everywhere (the same shader body with scalar
// cooperative-matrix operations). The tensor-core paths round queries and probabilities to fp16.
TEST(Attention, RopeCacheAndCausalAttentionMatchCpu) {
  const auto& info = context().info();
  const bool can_tile = info.subgroup_shuffle && (info.min_subgroup_size ? info.min_subgroup_size : info.subgroup_size) >= 8;
  using A = KernelConfig::AttentionCoopmat;
  struct Mode { bool tiled; A coopmat; };
  std::vector<Mode> modes = {{true, A::off}, {false, A::off}, {true, A::emulated}};
  if (kernels().attention_coopmat_unsupported().empty()) modes.push_back({true, A::automatic});
  for (const auto [tiled, coopmat] : modes) {
    KernelConfig cfg;
    cfg.attention_tiled = tiled;
    cfg.attention_coopmat = coopmat;
    Kernels k(context(), cfg);
    for (const AttnCase& c :
         {AttnCase{4, 2, 16, 1, 0, 0, false, false}, AttnCase{6, 2, 12, 37, 3, 0, true, false},
          AttnCase{4, 1, 20, 70, 130, 0, false, true}, AttnCase{2, 2, 64, 45, 200, 7, true, true},
          AttnCase{8, 8, 128, 33, 140, 0, false, false}, AttnCase{3, 3, 14, 5, 9, 0, true, false},
          AttnCase{4, 2, 256, 20, 100, 0, false, false}, AttnCase{4, 2, 200, 17, 50, 13, false, true},
          AttnCase{8, 2, 128, 101, 300, 0, true, false}, AttnCase{2, 1, 6, 3, 0, 2, false, false},
          AttnCase{4, 2, 128, 40, 300, 0, false, false, 0, 1, 0.1f}}) {
      const AttnData d(c);
      EXPECT_EQ(k.attention_tiled_supported(d.shape), tiled && can_tile && c.hd <= 128) << describe(c);
      vk::Buffer qkv = context().upload_new(d.qkv(), "q|k|v"), qb = poisoned(c.m * d.q_dim);
      vk::Buffer kcb = context().upload_new(d.kc, "kc"), vcb = context().upload_new(d.vc, "vc");
      vk::Buffer fb = context().upload_new(d.inv_freq, "freq"), bb = context().upload_new(d.bias, "bias"),
                 nb = context().upload_new(d.norm, "norm");
      vk::Buffer step = context().upload_new(std::vector<uint32_t>{c.pos0, 0, 0, 0}, "step");
      vk::Buffer out = poisoned(c.m * d.q_dim);
      auto cmd = context().commands();
      k.qkv_rope(cmd, d.shape, qkv, qb, kcb, vcb, fb, c.bias ? vk::BufferView(bb) : vk::BufferView(),
                 c.norm ? vk::BufferView(nb) : vk::BufferView(), step, c.m);
      cmd.barrier();
      k.attention(cmd, d.shape, qb, kcb, vcb, out, step, c.m);
      cmd.run();
      const std::string path = k.attention_path(d.shape);
      EXPECT_EQ(path, coopmat == A::off ? (tiled && can_tile && c.hd <= 128 ? "tiled" : "per-query")
                      : c.hd > 128 ? "per-query"
                      : coopmat == A::emulated ? "coopmat-emulated" : "coopmat") << describe(c);
      const double bound = path.rfind("coopmat", 0) == 0 ? 3e-3 : 1e-4;
      EXPECT_LT(rel_error(read_floats(out, c.m * d.q_dim), d.reference()), bound) << describe(c) << " " << path;
    }
  }
}

// ---- the PolarQuant KV cache ------------------------------------------------------------------

// How far the GPU's roped queries and keys (and values) may lie from the exact fp64 ones, relative
// to the head vector's norm. Its sin and cos need not be fp64's: NVIDIA's reduce the angle to one
// period in fp32 (an error of about angle x 2^-24: 4e-6 at the 69 radians of the last position
// here) and then approximate (~1e-6); fp32 norms, rotation and division add ~1e-6. 3e-5 is several
// times that. (Vulkan lets sin and cos be off by 2^-11; a device that used that much would fail the
// fp16 cache's 1e-4 attention bound above as well.)
constexpr double kKvInputTol = 3e-5;
// The attention over the GPU's own queries and records against fp64: fp32 dot products of at most
// 256 terms, a softmax over at most 70 keys, the query's and the output's fp32 rotations (8 stages):
// ~1e-7 each, 7e-8..4e-7 measured on lavapipe. 1e-5 leaves room for another device's exp and
// summation order, and stays far below what a misread record gives (0.4..1.4 with every key record
// read one position early, tried by hand).
constexpr double kPqAttnTol = 1e-5;
// The tensor-core attention over PolarQuant records: queries, decoded keys and values and the
// probabilities rounded to fp16 (2^-11 relative each), as for the fp16 cache (3e-3 there).
constexpr double kPqCoopmatTol = 3e-3;

// The codes of a PolarQuant record (qkv_rope.comp's layout: code i at bits i * bits of the
// little-endian word stream).
std::vector<uint8_t> record_codes(const uint32_t* rec, uint32_t hd, uint32_t bits) {
  const uint32_t per_word = 32 / bits;
  std::vector<uint8_t> codes(hd);
  for (uint32_t i = 0; i < hd; ++i) codes[i] = static_cast<uint8_t>((rec[i / per_word] >> (i % per_word * bits)) & ((1u << bits) - 1));
  return codes;
}

// The vectors the records of positions 0 .. pos0+m-1 stand for ([position * n_kv + kvh]), by the
// CPU twin (pq::dequantize_vector: centroids times norm / sqrt(hd), rotated back).
Rows decode_records(const std::vector<uint32_t>& words, const AttnData& d) {
  const AttnCase& c = d.c;
  const size_t w = Kernels::kv_words(d.shape);
  Rows out((c.pos0 + c.m) * c.n_kv);
  for (size_t r = 0; r < out.size(); ++r) {
    const uint16_t norm = pq::f32_to_f16(std::bit_cast<float>(words[r * w + w - 1]));
    std::vector<float> back(c.hd);
    pq::dequantize_vector(record_codes(&words[r * w], c.hd, c.kv_bits).data(), norm, int(c.hd), int(c.kv_bits), back.data());
    out[r].assign(back.begin(), back.end());
  }
  return out;
}

// The records of the new tokens' keys (or values) against the CPU twin's quantization of the
// exact head vectors X (pq::quantize_vector: fp16 norm n, code i the Lloyd-Max cell of r_i =
// sqrt(hd) (H x)_i / n); returns how many codes differ from the twin's. The GPU quantizes its own
// vectors, within kKvInputTol |x| of X, so
// - its norm is the fp16 rounding of |x| (1 +- kKvInputTol): the twin's, or the neighbouring fp16
//   value where |x| lies that close to the midpoint between two;
// - its code i is the twin's, or a neighbouring cell's where r_i lies within the distance the
//   GPU's r_i may be off of the boundary between the two: sqrt(hd) kKvInputTol (an error e moves
//   (H e)_i by at most |e|), plus |r_i| times the relative difference of the two norms (each
//   side divides by its own). Any other code, or norm, is a bug.
size_t check_records(const std::vector<uint32_t>& words, const Rows& X, const AttnData& d, const std::string& what) {
  const AttnCase& c = d.c;
  const size_t w = Kernels::kv_words(d.shape);
  const std::vector<double>& mids = pq::lloyd_max_midpoints(int(c.kv_bits));
  size_t flips = 0, bad = 0, bad_norms = 0;
  std::string first_bad, first_bad_norm;
  for (size_t r = 0; r < X.size(); ++r) {
    const std::vector<float> x(X[r].begin(), X[r].end());
    std::vector<uint8_t> cpu(c.hd);
    const double cpu_norm = pq::f16_to_f32(pq::quantize_vector(x.data(), int(c.hd), int(c.kv_bits), cpu.data()));
    const uint32_t* rec = &words[(c.pos0 * c.n_kv + r) * w];
    const std::vector<uint8_t> gpu = record_codes(rec, c.hd, c.kv_bits);
    const float gpu_norm = std::bit_cast<float>(rec[w - 1]);
    double ss = 0;
    for (const double e : X[r]) ss += e * e;
    const double exact = std::sqrt(ss);
    const std::string at = what + " token " + std::to_string(r / c.n_kv) + " head " + std::to_string(r % c.n_kv);
    auto twin_norm = [&](double f) {  // the twin's stored norm of x times f
      std::vector<float> xf(x);
      for (float& e : xf) e = float(e * f);
      std::vector<uint8_t> unused(c.hd);
      return pq::f16_to_f32(pq::quantize_vector(xf.data(), int(c.hd), int(c.kv_bits), unused.data()));
    };
    if (gpu_norm != cpu_norm && gpu_norm != twin_norm(1 - kKvInputTol) && gpu_norm != twin_norm(1 + kKvInputTol) && bad_norms++ == 0)
      first_bad_norm = at + ": " + std::to_string(gpu_norm) + ", the twin's " + std::to_string(cpu_norm) + " (exact " +
                       std::to_string(exact) + ")";
    std::vector<double> y(X[r]);
    pq::fwht(y.data(), int(c.hd));
    const double norm_shift = std::abs(cpu_norm / gpu_norm - 1);
    for (size_t i = 0; i < c.hd; ++i) {
      if (gpu[i] == cpu[i]) continue;
      ++flips;
      const double ri = std::sqrt(double(c.hd)) * y[i] / cpu_norm;
      const double slack = std::sqrt(double(c.hd)) * kKvInputTol + std::abs(ri) * norm_shift;
      const int lo = std::min(gpu[i], cpu[i]);
      if (std::abs(gpu[i] - cpu[i]) == 1 && std::abs(ri - mids[size_t(lo)]) <= slack) continue;
      if (bad++ == 0)
        first_bad = at + " code " + std::to_string(i) + ": " + std::to_string(gpu[i]) + ", the twin's " +
                    std::to_string(cpu[i]) + " (r = " + std::to_string(ri) + ", the cells meet at " +
                    std::to_string(mids[size_t(lo)]) + ", allowed distance " + std::to_string(slack) + ")";
    }
  }
  EXPECT_EQ(bad_norms, 0u) << bad_norms << " norms are not the CPU twin's (nor its neighbour at an fp16 rounding boundary); the first: "
                           << first_bad_norm;
  EXPECT_EQ(bad, 0u) << bad << " codes differ from the CPU twin's away from a cell boundary; the first: " << first_bad;
  return flips;
}

// The GPU's prepared input (gemv-interleaved, `floats` of it) in natural order: its first n values.
std::vector<float> deinterleave(const std::vector<float>& got, size_t n) {
  std::vector<float> g(n);
  for (size_t e = 0; e < n; ++e) g[e] = got[gemv_interleaved_index(e)];
  return g;
}

// How many entries of an interleaved buffer of `floats` outside the positions of elements 0..n-1
// no longer hold the poison (written where nothing should be).
size_t written_outside(const std::vector<float>& got, size_t n) {
  std::vector<bool> defined(got.size(), false);
  for (size_t e = 0; e < n; ++e) defined[gemv_interleaved_index(e)] = true;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) bad += !defined[i] && std::bit_cast<uint32_t>(got[i]) != kPoison;
  return bad;
}

// Head vectors one after the other, and back.
std::vector<double> flat(const Rows& rows) {
  std::vector<double> v;
  for (const auto& r : rows) v.insert(v.end(), r.begin(), r.end());
  return v;
}

Rows head_rows(const std::vector<float>& v, size_t hd) {
  Rows rows;
  for (size_t i = 0; i < v.size(); i += hd) rows.emplace_back(v.begin() + i, v.begin() + i + hd);
  return rows;
}

// The PolarQuant KV cache (AttentionShape::kv_bits, 4 and 8): qkv_rope stores each head's codes
// and norm, attention (one query per workgroup, the path this cache takes) computes in the
// rotated basis. Head sizes 8..256, GQA, windows, biases, norms; prefill of all tokens, and the
// last token alone after the others (a decode step reading the records already there), through
// attention.comp and through the split decode attention (1, 3 and 16 splits). Two checks, so that
// a code the GPU rounds into the neighbouring cell (its fp32 sin and cos are not the CPU's) is
// told apart from a bug:
// - the records qkv_rope stores, against the CPU twin's quantization of the exact head vectors
//   (check_records: every norm and code the twin's, but at a cell boundary); the same records
//   whatever the batch, and the split decode stores the same, bit for bit;
// - the attention outputs against fp64 attention over the GPU's own queries and records (decoded
//   by the CPU twin), at kPqAttnTol; the queries against the exact ones at kKvInputTol.
// Head sizes that are not powers of two are refused with an error that says so.
TEST(Attention, PolarQuantCacheMatchesCpu) {
  for (const uint32_t bits : {8u, 4u})
    for (const AttnCase& c0 : {AttnCase{4, 2, 16, 37, 0, 0, true, false}, AttnCase{2, 1, 8, 20, 0, 0, false, true},
                               AttnCase{4, 1, 64, 70, 0, 9, false, false}, AttnCase{8, 8, 128, 33, 0, 0, true, true},
                               AttnCase{2, 2, 256, 17, 0, 0, false, false},
                               // values whose norms are fp16 subnormals, and over the largest fp16 (saturated)
                               AttnCase{4, 2, 16, 9, 0, 0, false, false, 0, 1e-6f}, AttnCase{4, 2, 32, 9, 0, 0, false, false, 0, 3e4f}}) {
      AttnCase c = c0;
      c.kv_bits = bits;
      const AttnData d(c);
      const AttnData::Heads x = d.heads();
      const std::string what = describe(c) + " pq" + std::to_string(bits);
      vk::Buffer qkv = context().upload_new(d.qkv(), "q|k|v"), qb = poisoned(c.m * d.q_dim);
      vk::Buffer kcb = context().upload_new(d.kc, "kc"), vcb = context().upload_new(d.vc, "vc");
      vk::Buffer fb = context().upload_new(d.inv_freq, "freq"), bb = context().upload_new(d.bias, "bias"),
                 nb = context().upload_new(d.norm, "norm");
      const vk::BufferView bias = c.bias ? vk::BufferView(bb) : vk::BufferView(), nrm = c.norm ? vk::BufferView(nb) : vk::BufferView();
      // The tensor-core path (heads of 64 and 128, where the device has it) rounds its operands
      // to fp16 (kPqCoopmatTol; PolarQuantCacheOnTensorCores runs it emulated on any device).
      const std::string path = kernels().attention_path(d.shape);
      EXPECT_TRUE(path == "per-query" || ((c.hd == 64 || c.hd == 128) && path == "coopmat")) << what << " " << path;
      const double bound = path == "coopmat" ? kPqCoopmatTol : kPqAttnTol;
      EXPECT_TRUE(kernels().decode_attention_supported(d.shape));
      // All m tokens in one pass (q read back before the attention, which may overwrite it).
      vk::Buffer step = context().upload_new(std::vector<uint32_t>{0, 0, 0, 0}, "step"), out = poisoned(c.m * d.q_dim);
      auto cmd = context().commands();
      kernels().qkv_rope(cmd, d.shape, qkv, qb, kcb, vcb, fb, bias, nrm, step, c.m);
      cmd.run();
      const auto q_gpu = read_floats(qb, c.m * d.q_dim);
      auto cmd_att = context().commands();
      kernels().attention(cmd_att, d.shape, qb, kcb, vcb, out, step, c.m);
      cmd_att.run();
      const auto kc1 = context().download_all<uint32_t>(kcb), vc1 = context().download_all<uint32_t>(vcb);
      const size_t key_flips = check_records(kc1, x.k, d, what + " keys"), value_flips = check_records(vc1, x.v, d, what + " values");
      const double q_err = rel_error(q_gpu, flat(x.q));
      EXPECT_LT(q_err, kKvInputTol) << what << ": the roped queries";
      const Rows K = decode_records(kc1, d), V = decode_records(vc1, d);
      const double err = rel_error(read_floats(out, c.m * d.q_dim), d.attend(head_rows(q_gpu, c.hd), K, V, 0));
      EXPECT_LT(err, bound) << what << " " << path;
      // The last token alone, over the records the others left (fresh caches: m - 1 tokens first).
      vk::Buffer kc2 = context().upload_new(d.kc, "kc"), vc2 = context().upload_new(d.vc, "vc");
      vk::Buffer step2 = context().upload_new(std::vector<uint32_t>{c.m - 1, 0, 0, 0}, "step"), out2 = poisoned(d.q_dim);
      const std::vector<float> all = d.qkv();
      const size_t row = d.q_dim + 2 * d.kv_dim;
      vk::Buffer first = context().upload_new(std::vector<float>(all.begin(), all.end() - row), "first rows");
      vk::Buffer last = context().upload_new(std::vector<float>(all.end() - row, all.end()), "last row");
      vk::Buffer q1 = poisoned(c.m * d.q_dim);
      auto c2 = context().commands();
      kernels().qkv_rope(c2, d.shape, first, qb, kc2, vc2, fb, bias, nrm, step, c.m - 1);
      c2.barrier();
      kernels().qkv_rope(c2, d.shape, last, q1, kc2, vc2, fb, bias, nrm, step2, 1);
      c2.run();
      const std::vector<float> q_last = read_floats(q1, d.q_dim);
      auto c2_att = context().commands();
      kernels().attention(c2_att, d.shape, q1, kc2, vc2, out2, step2, 1);
      c2_att.run();
      EXPECT_EQ(context().download_all<uint32_t>(kc2), kc1) << what << ": other key records in two passes than in one";
      EXPECT_EQ(context().download_all<uint32_t>(vc2), vc1) << what << ": other value records in two passes than in one";
      const std::vector<double> ref_last = d.attend(head_rows(q_last, c.hd), K, V, c.m - 1);
      const double err_last = rel_error(read_floats(out2, d.q_dim), ref_last);
      EXPECT_LT(err_last, bound) << what << " last token alone";
      // The same last token through the split decode attention (which quantizes and stores it
      // itself), merged by the output projection's preparation: the same records, and the output
      // over them (its own queries are qkv_rope's but for rounding: the same formula on the device).
      double err_split = 0;
      for (const uint32_t splits : {1u, 3u, 16u}) {
        vk::Buffer kc3 = context().upload_new(d.kc, "kc"), vc3 = context().upload_new(d.vc, "vc");
        vk::Buffer part = poisoned(splits * d.q_dim), ml = poisoned(splits * c.n_heads * 2);
        vk::Buffer merged = poisoned(rotated_row_elems(d.q_dim, 64));
        auto c3 = context().commands();
        kernels().qkv_rope(c3, d.shape, first, qb, kc3, vc3, fb, bias, nrm, step, c.m - 1);
        c3.barrier();
        kernels().attention_decode(c3, d.shape, last, kc3, vc3, fb, bias, nrm, step2, part, ml, splits);
        c3.barrier();
        kernels().prepare(c3, part, merged, 1, static_cast<uint32_t>(d.q_dim), 64, Layout::row_major, false,
                          Prologue{Prologue::merge, ml, 0.0f, splits, c.hd});
        c3.run();
        const double e = rel_error(read_floats(merged, d.q_dim), ref_last);
        EXPECT_LT(e, kPqAttnTol) << what << " split decode, " << splits << " splits";
        err_split = std::max(err_split, e);
        EXPECT_EQ(context().download_all<uint32_t>(kc3), kc1)
            << what << ": the split decode stored other key records than qkv_rope";
        EXPECT_EQ(context().download_all<uint32_t>(vc3), vc1)
            << what << ": the split decode stored other value records than qkv_rope";
      }
      // And through the direct decode attention, for every block size whose blocks lie in one
      // KV head's query heads: rotated per block (where the blocks are the heads, straight from
      // the rotated basis; else rotated back, then per block), and not rotated.
      // (8 bits only, and without rotation once: pipelines take ~10 s each on lavapipe.)
      double err_direct = 0;
      int direct_runs = 0;
      for (const uint32_t block : {64u, 128u, 256u})
        for (const bool rotate : {true, false}) {
          if (bits != 8 || (!rotate && (c.hd != 64 || block != 128))) continue;
          if (!kernels().decode_direct_supported(d.shape, block)) {
            EXPECT_FALSE(c.hd % block == 0 || (block % c.hd == 0 && c.n_heads / c.n_kv * c.hd % block == 0)) << what << " block " << block;
            continue;
          }
          const std::string wb = what + " direct, block " + std::to_string(block) + (rotate ? "" : ", not rotated");
          vk::Buffer kc3 = context().upload_new(d.kc, "kc"), vc3 = context().upload_new(d.vc, "vc");
          const size_t floats = rotated_row_elems(d.q_dim, static_cast<int>(block), Layout::gemv_interleaved);
          vk::Buffer direct = poisoned(floats);
          auto c3 = context().commands();
          kernels().qkv_rope(c3, d.shape, first, qb, kc3, vc3, fb, bias, nrm, step, c.m - 1);
          c3.barrier();
          kernels().attention_decode(c3, d.shape, last, kc3, vc3, fb, bias, nrm, step2, {}, {}, 1, DecodeDirect{direct, block, rotate});
          c3.run();
          std::vector<float> want(ref_last.begin(), ref_last.end());
          if (rotate) {
            std::vector<float> rot(d.q_dim);
            pq::fwht_rows(want.data(), 1, d.q_dim, static_cast<int>(block), rot.data());
            want = rot;
          }
          const auto got = read_floats(direct, floats);
          const double e = rel_error(deinterleave(got, d.q_dim), std::vector<double>(want.begin(), want.end()));
          EXPECT_LT(e, kPqAttnTol) << wb;
          EXPECT_EQ(written_outside(got, d.q_dim), 0u) << wb;
          err_direct = std::max(err_direct, e);
          ++direct_runs;
          EXPECT_EQ(context().download_all<uint32_t>(kc3), kc1) << wb << ": other key records than qkv_rope's";
          EXPECT_EQ(context().download_all<uint32_t>(vc3), vc1) << wb << ": other value records than qkv_rope's";
        }
      std::printf("[pqvk] %s: codes unlike the CPU twin's: keys %zu of %zu, values %zu of %zu; roped queries against "
                  "fp64 %.1e; attention against fp64 over the records %.1e, last token %.1e, split decode %.1e, direct %.1e (%d runs)\n",
                  what.c_str(), key_flips, x.k.size() * c.hd, value_flips, x.v.size() * c.hd, q_err, err, err_last, err_split,
                  err_direct, direct_runs);
    }
  Kernels::AttentionShape s{4, 2, 12, 512, 0, 1e-6f, 4};  // heads of 12
  EXPECT_NE(Kernels::kv_cache_unsupported(s).find("power-of-two head size"), std::string::npos);
  EXPECT_THROW(Kernels::kv_words(s), vk::Error);
  EXPECT_FALSE(kernels().decode_attention_supported(s));
  s.head_dim = 16;
  s.kv_bits = 5;
  EXPECT_NE(Kernels::kv_cache_unsupported(s).find("4 or 8"), std::string::npos);
  EXPECT_THROW(Kernels::kv_words(s), vk::Error);
  s.kv_bits = 4;
  EXPECT_EQ(Kernels::kv_cache_unsupported(s), "");
  EXPECT_EQ(Kernels::kv_words(s), 16u * 4 / 32 + 1);
}

// The PolarQuant KV cache through the tensor-core prefill attention (emulated: any device runs
// it): queries rotated per head by fwht, keys and values decoded into the fp16 tiles in the
// rotated basis, the output rotated back; against fp64 attention over the GPU's own records, at
// heads of 64 and 128, GQA, a window, biases and norms, token counts that are not multiples of 64.
TEST(Attention, PolarQuantCacheOnTensorCores) {
  KernelConfig cfg;
  cfg.attention_coopmat = KernelConfig::AttentionCoopmat::emulated;
  Kernels em(context(), cfg);
  for (const uint32_t bits : {8u, 4u})
    for (const AttnCase& c0 : {AttnCase{4, 1, 64, 70, 0, 9, false, false}, AttnCase{8, 8, 128, 33, 0, 0, true, true},
                               AttnCase{4, 2, 128, 100, 0, 0, false, true}, AttnCase{2, 1, 64, 1, 0, 0, true, false}}) {
      AttnCase c = c0;
      c.kv_bits = bits;
      const AttnData d(c);
      const std::string what = describe(c) + " pq" + std::to_string(bits);
      ASSERT_EQ(em.attention_path(d.shape), "coopmat-emulated") << what;
      vk::Buffer qkv = context().upload_new(d.qkv(), "q|k|v"), qb = poisoned(c.m * d.q_dim), out = poisoned(c.m * d.q_dim);
      vk::Buffer kcb = context().upload_new(d.kc, "kc"), vcb = context().upload_new(d.vc, "vc");
      vk::Buffer fb = context().upload_new(d.inv_freq, "freq"), bb = context().upload_new(d.bias, "bias"),
                 nb = context().upload_new(d.norm, "norm");
      vk::Buffer step = context().upload_new(std::vector<uint32_t>{0, 0, 0, 0}, "step");
      auto cmd = context().commands();
      em.qkv_rope(cmd, d.shape, qkv, qb, kcb, vcb, fb, c.bias ? vk::BufferView(bb) : vk::BufferView(),
                  c.norm ? vk::BufferView(nb) : vk::BufferView(), step, c.m);
      cmd.run();
      const auto q_gpu = read_floats(qb, c.m * d.q_dim);
      auto cmd_att = context().commands();
      em.attention(cmd_att, d.shape, qb, kcb, vcb, out, step, c.m);
      cmd_att.run();
      const Rows K = decode_records(context().download_all<uint32_t>(kcb), d), V = decode_records(context().download_all<uint32_t>(vcb), d);
      const double err = rel_error(read_floats(out, c.m * d.q_dim), d.attend(head_rows(q_gpu, c.hd), K, V, 0));
      EXPECT_LT(err, kPqCoopmatTol) << what;
      std::printf("[pqvk] %s through the tensor-core attention (emulated): %.1e against fp64 over the records\n",
                  what.c_str(), err);
    }
  Kernels::AttentionShape s{4, 2, 32, 512, 0, 1e-6f, 4};  // heads of 32: fwht has no 32-blocks
  EXPECT_EQ(em.attention_path(s), "per-query");
}

// Continuous batching: tokens of several sequences, each in its own cache region (slot), at their
// own positions, in an arbitrary order in one batch: qkv_rope + attention per row against the fp64
// twin of each sequence, and the other slots' regions untouched.
TEST(Attention, PerRowSlotsAndPositionsMatchCpu) {
  for (const auto& [heads, kv, hd, bias, norm, window] :
       {std::tuple{4u, 2u, 16u, false, false, 0u}, std::tuple{6u, 2u, 12u, true, true, 0u}, std::tuple{8u, 8u, 128u, false, true, 5u}}) {
    // Three sequences: (tokens, first position, slot); one more slot stays empty.
    const std::vector<std::tuple<uint32_t, uint32_t, uint32_t>> seqs = {{1, 0, 2}, {3, 140, 0}, {1, 9, 3}};
    const uint32_t slots = 4, ctx_len = 512;
    std::vector<AttnData> data;
    for (const auto& [m, pos0, slot] : seqs) data.emplace_back(AttnCase{heads, kv, hd, m, pos0, window, bias, norm});
    const AttnData& d0 = data[0];
    Kernels::AttentionShape shape = d0.shape;
    shape.max_ctx = ctx_len;
    // Each sequence's cache region; random words in the empty slot 1 must stay.
    const size_t region = size_t(ctx_len) * d0.kv_dim / 2;
    std::vector<uint32_t> kc(slots * region), vc(slots * region);
    std::mt19937 rng(99);
    for (auto& w : kc) w = rng();
    for (auto& w : vc) w = rng();
    for (size_t i = 0; i < seqs.size(); ++i) {
      const uint32_t slot = std::get<2>(seqs[i]), pos0 = std::get<1>(seqs[i]);
      std::copy(data[i].kc.begin(), data[i].kc.begin() + size_t(pos0) * d0.kv_dim / 2, kc.begin() + slot * region);
      std::copy(data[i].vc.begin(), data[i].vc.begin() + size_t(pos0) * d0.kv_dim / 2, vc.begin() + slot * region);
    }
    const auto kc_before = kc;
    // Rows in a shuffled order: (sequence, token).
    const std::vector<std::pair<size_t, uint32_t>> order = {{1, 2}, {0, 0}, {1, 0}, {2, 0}, {1, 1}};
    std::vector<float> qkv;
    std::vector<uint32_t> rows;
    for (const auto& [si, tk] : order) {
      const auto all = data[si].qkv();
      const size_t w = d0.q_dim + 2 * d0.kv_dim;
      qkv.insert(qkv.end(), all.begin() + tk * w, all.begin() + (tk + 1) * w);
      rows.push_back(std::get<1>(seqs[si]) + tk);
      rows.push_back(std::get<2>(seqs[si]));
    }
    const uint32_t m = static_cast<uint32_t>(order.size());
    vk::Buffer qkvb = context().upload_new(qkv, "q|k|v"), qb = poisoned(m * d0.q_dim);
    vk::Buffer kcb = context().upload_new(kc, "kc"), vcb = context().upload_new(vc, "vc");
    vk::Buffer fb = context().upload_new(d0.inv_freq, "freq"), bb = context().upload_new(d0.bias, "bias"),
               nb = context().upload_new(d0.norm, "norm");
    vk::Buffer rb = context().upload_new(rows, "rows"), out = poisoned(m * d0.q_dim);
    auto cmd = context().commands();
    kernels().qkv_rope(cmd, shape, qkvb, qb, kcb, vcb, fb, bias ? vk::BufferView(bb) : vk::BufferView(),
                       norm ? vk::BufferView(nb) : vk::BufferView(), rb, m, Kernels::Positions::per_row);
    cmd.barrier();
    kernels().attention(cmd, shape, qb, kcb, vcb, out, rb, m, Kernels::Positions::per_row);
    cmd.run();
    const auto got = read_floats(out, m * d0.q_dim);
    const std::string what = "heads " + std::to_string(heads) + "/" + std::to_string(kv) + " hd " + std::to_string(hd);
    for (size_t r = 0; r < order.size(); ++r) {
      const auto [si, tk] = order[r];
      const auto ref = data[si].reference();
      const std::vector<double> want(ref.begin() + tk * d0.q_dim, ref.begin() + (tk + 1) * d0.q_dim);
      EXPECT_LT(rel_error(std::vector<float>(got.begin() + r * d0.q_dim, got.begin() + (r + 1) * d0.q_dim), want), 1e-4)
          << what << " row " << r;
    }
    const auto kc_after = context().download_all<uint32_t>(kcb);
    EXPECT_TRUE(std::equal(kc_before.begin() + region, kc_before.begin() + 2 * region, kc_after.begin() + region))
        << what << ": the empty slot's region was written";
  }
}

// attention_decode (q/k preparation fused, the context split over workgroups) + the merge in
// fwht's prologue (plain, and rotated for the GEMV), against the same fp64 twin; also the key and
// value it appends to the caches.
TEST(Attention, SplitDecodeMatchesCpu) {
  for (const AttnCase& c : {AttnCase{4, 2, 16, 1, 0, 0, false, false}, AttnCase{6, 2, 12, 1, 3, 0, true, false},
                            AttnCase{4, 1, 20, 1, 130, 0, false, true}, AttnCase{2, 2, 64, 1, 200, 7, true, true},
                            AttnCase{8, 2, 128, 1, 333, 0, false, false}, AttnCase{28, 4, 128, 1, 301, 0, true, true},
                            AttnCase{16, 2, 256, 1, 45, 0, false, true}, AttnCase{16, 1, 8, 1, 400, 100, false, false}})
    for (uint32_t splits : {3u, 128u}) {  // several keys per split, and many splits without keys (the most there are)
      const AttnData d(c);
      std::vector<double> new_k, new_v;
      const auto ref = d.reference(&new_k, &new_v);
      vk::Buffer qkv = context().upload_new(d.qkv(), "q|k|v");
      vk::Buffer kcb = context().upload_new(d.kc, "kc"), vcb = context().upload_new(d.vc, "vc");
      vk::Buffer fb = context().upload_new(d.inv_freq, "freq"), bb = context().upload_new(d.bias, "bias"),
                 nb = context().upload_new(d.norm, "norm");
      vk::Buffer step = context().upload_new(std::vector<uint32_t>{c.pos0, 0, 0, 0}, "step");
      vk::Buffer part = poisoned(splits * d.q_dim), ml = poisoned(splits * c.n_heads * 2);
      const uint32_t block = c.hd % 64 == 0 ? 64 : 128;  // a rotation block that is not the head size
      vk::Buffer out = poisoned(rotated_row_elems(d.q_dim, block));
      vk::Buffer rotated = poisoned(rotated_row_elems(d.q_dim, block, Layout::gemv_interleaved));
      auto cmd = context().commands();
      kernels().attention_decode(cmd, d.shape, qkv, kcb, vcb, fb, c.bias ? vk::BufferView(bb) : vk::BufferView(),
                                 c.norm ? vk::BufferView(nb) : vk::BufferView(), step, part, ml, splits);
      cmd.barrier();
      const Prologue merge{Prologue::merge, ml, 0.0f, splits, c.hd};
      const auto q_dim = static_cast<uint32_t>(d.q_dim);
      kernels().prepare(cmd, part, out, 1, q_dim, block, Layout::row_major, false, merge);
      kernels().prepare(cmd, part, rotated, 1, q_dim, block, Layout::gemv_interleaved, true, merge);
      cmd.run();
      const std::string what = describe(c) + " splits " + std::to_string(splits);
      // The plain output (its padding past q_dim is not compared).
      const auto got = read_floats(out, rotated_row_elems(d.q_dim, block));
      EXPECT_LT(rel_error(std::vector<float>(got.begin(), got.begin() + d.q_dim), ref), 1e-4) << what;
      // Rotated and interleaved for the GEMV: the CPU rotation of the reference.
      std::vector<float> ref_f(ref.begin(), ref.end()), ref_rot(rotated_row_elems(d.q_dim, block));
      pq::fwht_rows(ref_f.data(), 1, d.q_dim, static_cast<int>(block), ref_rot.data());
      const auto got_rot = read_floats(rotated, rotated_row_elems(d.q_dim, block, Layout::gemv_interleaved));
      std::vector<float> g;
      for (size_t e = 0; e < ref_rot.size(); ++e) g.push_back(got_rot[gemv_interleaved_index(e)]);
      EXPECT_LT(rel_error(g, ref_rot), 1e-4) << what << " (rotated)";
      // Splits past the used ones (at least 64 keys each) hold no key: (max, sum) = (-inf, 0).
      const uint32_t n = c.pos0 + 1 - (c.window > 0 && c.pos0 + 1 > c.window ? c.pos0 + 1 - c.window : 0);
      const uint32_t used = std::min(splits, (n + 63) / 64);
      const auto mls = read_floats(ml, splits * c.n_heads * 2);
      for (uint32_t sp = used; sp < splits; ++sp)
        for (uint32_t h = 0; h < c.n_heads; ++h) {
          const size_t at = (size_t(sp) * c.n_heads + h) * 2;
          EXPECT_TRUE(std::isinf(mls[at]) && mls[at] < 0 && mls[at + 1] == 0.0f) << what << " empty split " << sp;
        }
      // The appended key (RoPE pairs) and value, fp16.
      const auto kc_after = context().download_all<uint32_t>(kcb), vc_after = context().download_all<uint32_t>(vcb);
      std::vector<float> gk, gv;
      std::vector<double> wk, wv;
      for (size_t h = 0; h < c.n_kv; ++h)
        for (size_t j = 0; j < d.half; ++j) {
          const uint32_t kw = kc_after[(c.pos0 * c.n_kv + h) * d.half + j], vw = vc_after[(c.pos0 * c.n_kv + h) * d.half + j];
          gk.push_back(pq::f16_to_f32(kw & 0xffff)), gk.push_back(pq::f16_to_f32(kw >> 16));
          wk.push_back(new_k[h * c.hd + j]), wk.push_back(new_k[h * c.hd + j + d.half]);
          gv.push_back(pq::f16_to_f32(vw & 0xffff)), gv.push_back(pq::f16_to_f32(vw >> 16));
          wv.push_back(new_v[h * c.hd + 2 * j]), wv.push_back(new_v[h * c.hd + 2 * j + 1]);
        }
      EXPECT_LT(rel_error(gk, wk), 1e-3) << what << " (appended key)";  // fp16 rounding
      EXPECT_LT(rel_error(gv, wv), 1e-3) << what << " (appended value)";
      // Earlier positions untouched.
      EXPECT_TRUE(std::equal(d.kc.begin(), d.kc.begin() + c.pos0 * d.kv_dim / 2, kc_after.begin())) << what;
    }
}

// The direct decode attention (DecodeDirect: one split, each head's output written as the output
// projection's prepared input): against the fp64 twin rotated per block on the CPU, nothing
// written past the heads' elements; for some cases also against what the split path with one
// split and fwht's merge write (the same values but for float rounding: 1e-6) and the key and
// value it appends, and without rotation. Head sizes 16..256, one to 16 query heads per KV head
// (shapes whose shared memory fits lavapipe's 32 KiB), blocks that are a part of a head, one head
// and several heads, positions 0, 1, odd ones, 510 and 511 (the last of the default threshold), a
// window, biases and norms. (Each shape and block is a pipeline of its own, compiled in ~10 s by
// lavapipe: a selection, not every combination.)
TEST(Attention, DirectDecodeMatchesCpu) {
  struct Case { AttnCase c; std::vector<uint32_t> blocks; bool against_split, plain; };
  for (const Case& k : {Case{AttnCase{4, 2, 64, 1, 0, 0, false, false}, {128}, true, false},
                        Case{AttnCase{8, 8, 128, 1, 1, 0, true, false}, {64}, false, false},
                        Case{AttnCase{32, 8, 128, 1, 77, 0, false, true}, {256}, true, false},
                        Case{AttnCase{6, 2, 64, 1, 131, 0, true, true}, {64}, true, true},
                        Case{AttnCase{16, 2, 64, 1, 511, 0, false, false}, {128}, false, false},
                        Case{AttnCase{2, 1, 256, 1, 45, 0, true, true}, {64, 256}, false, false},
                        Case{AttnCase{16, 1, 16, 1, 257, 0, true, true}, {256}, true, false},
                        Case{AttnCase{28, 4, 128, 1, 510, 100, true, false}, {128}, false, false}})
    for (const uint32_t block : k.blocks) {
      const AttnCase& c = k.c;
      const AttnData d(c);
      const std::string what = describe(c) + " block " + std::to_string(block);
      ASSERT_TRUE(kernels().decode_direct_supported(d.shape, block)) << what;
      const auto ref = d.reference();
      std::vector<float> ref_f(ref.begin(), ref.end()), ref_rot(d.q_dim);
      pq::fwht_rows(ref_f.data(), 1, d.q_dim, static_cast<int>(block), ref_rot.data());
      const auto q_dim = static_cast<uint32_t>(d.q_dim);
      const size_t floats = rotated_row_elems(d.q_dim, static_cast<int>(block), Layout::gemv_interleaved);
      vk::Buffer qkv = context().upload_new(d.qkv(), "q|k|v");
      vk::Buffer fb = context().upload_new(d.inv_freq, "freq"), bb = context().upload_new(d.bias, "bias"),
                 nb = context().upload_new(d.norm, "norm");
      const vk::BufferView bias = c.bias ? vk::BufferView(bb) : vk::BufferView(), nrm = c.norm ? vk::BufferView(nb) : vk::BufferView();
      vk::Buffer step = context().upload_new(std::vector<uint32_t>{c.pos0, 0, 0, 0}, "step");
      vk::Buffer kc_d = context().upload_new(d.kc, "kc"), vc_d = context().upload_new(d.vc, "vc");
      vk::Buffer direct = poisoned(floats);
      auto cmd = context().commands();
      kernels().attention_decode(cmd, d.shape, qkv, kc_d, vc_d, fb, bias, nrm, step, {}, {}, 1, DecodeDirect{direct, block, true});
      cmd.run();
      const auto got = read_floats(direct, floats);
      EXPECT_LT(rel_error(deinterleave(got, d.q_dim), ref_rot), 1e-4) << what;
      EXPECT_EQ(written_outside(got, d.q_dim), 0u) << what;
      if (k.against_split) {  // the split path with one split, and the merge
        vk::Buffer kc_s = context().upload_new(d.kc, "kc"), vc_s = context().upload_new(d.vc, "vc");
        vk::Buffer part = poisoned(d.q_dim), ml = poisoned(c.n_heads * 2), merged = poisoned(floats);
        auto c2 = context().commands();
        kernels().attention_decode(c2, d.shape, qkv, kc_s, vc_s, fb, bias, nrm, step, part, ml, 1);
        c2.barrier();
        kernels().prepare(c2, part, merged, 1, q_dim, block, Layout::gemv_interleaved, true,
                          Prologue{Prologue::merge, ml, 0.0f, 1, c.hd});
        c2.run();
        EXPECT_LT(rel_error(deinterleave(got, d.q_dim), deinterleave(read_floats(merged, floats), d.q_dim)), 1e-6)
            << what << " (against the merge)";
        EXPECT_EQ(context().download_all<uint32_t>(kc_d), context().download_all<uint32_t>(kc_s))
            << what << ": another key appended than by the split path";
        EXPECT_EQ(context().download_all<uint32_t>(vc_d), context().download_all<uint32_t>(vc_s))
            << what << ": another value appended than by the split path";
      }
      if (k.plain) {  // not rotated (a PolarQuant W_o without rotation)
        vk::Buffer kc_p = context().upload_new(d.kc, "kc"), vc_p = context().upload_new(d.vc, "vc"), plain = poisoned(floats);
        auto c3 = context().commands();
        kernels().attention_decode(c3, d.shape, qkv, kc_p, vc_p, fb, bias, nrm, step, {}, {}, 1, DecodeDirect{plain, block, false});
        c3.run();
        const auto got_plain = read_floats(plain, floats);
        EXPECT_LT(rel_error(deinterleave(got_plain, d.q_dim), ref), 1e-4) << what << " (not rotated)";
        EXPECT_EQ(written_outside(got_plain, d.q_dim), 0u) << what << " (not rotated)";
      }
    }
  // Which shapes and blocks: every block must lie in one KV head's query heads.
  for (const auto& [heads, kv, hd] : {std::tuple{4u, 2u, 64u}, {8u, 8u, 128u}, {32u, 8u, 128u}, {6u, 2u, 64u}, {16u, 2u, 64u},
                                      {2u, 1u, 256u}, {16u, 1u, 16u}, {28u, 4u, 128u}, {4u, 2u, 12u}, {8u, 4u, 32u}})
    for (const uint32_t block : {64u, 128u, 256u}) {
      const Kernels::AttentionShape a{heads, kv, hd, 512, 0, 1e-6f, 0};
      const bool whole = hd % block == 0 || (block % hd == 0 && heads / kv * hd % block == 0);
      EXPECT_EQ(kernels().decode_direct_supported(a, block), whole) << heads << "/" << kv << " hd " << hd << " block " << block;
    }

  // Refused: blocks across two workgroups' heads (a 128-block of heads of 64 in threes), heads
  // that do not tile a block (12), more than one split, a buffer too small.
  Kernels::AttentionShape s{6, 2, 64, 512, 0, 1e-6f, 0};
  EXPECT_TRUE(kernels().decode_direct_supported(s, 64));
  EXPECT_FALSE(kernels().decode_direct_supported(s, 128));
  EXPECT_FALSE(kernels().decode_direct_supported(Kernels::AttentionShape{4, 2, 12, 512, 0, 1e-6f, 0}, 64));
  EXPECT_FALSE(kernels().decode_direct_supported(s, 32));
  vk::Buffer big = context().buffer(1 << 20), out = poisoned(1024);
  auto cmd = context().commands();
  EXPECT_THROW(kernels().attention_decode(cmd, s, big, big, big, big, {}, {}, big, {}, {}, 1, DecodeDirect{out, 128, true}), vk::Error);
  EXPECT_THROW(kernels().attention_decode(cmd, s, big, big, big, big, {}, {}, big, {}, {}, 2, DecodeDirect{out, 64, true}), vk::Error);
  EXPECT_THROW(kernels().attention_decode(cmd, s, big, big, big, big, {}, {}, big, {}, {}, 1,
                                          DecodeDirect{vk::BufferView(out, 0, 512 * 4), 64, true}), vk::Error);
}

TEST(RandomFill, MatchesCpuTwin) {
  const size_t n = 300001;
  vk::Buffer b = poisoned(n), h = poisoned(n);
  auto cmd = context().commands();
  kernels().random_fill(cmd, b, n, 42);
  kernels().random_fill(cmd, h, n, 7, true, 0.5f, 1.5f);
  cmd.run();
  auto words = context().download_all<uint32_t>(b), halves = context().download_all<uint32_t>(h);
  size_t distinct_bits = 0;
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(words[i], random_fill_word(42, static_cast<uint32_t>(i))) << i;
    distinct_bits |= words[i];
    for (int k = 0; k < 2; ++k) {
      const float v = pq::f16_to_f32(static_cast<uint16_t>(halves[i] >> (16 * k)));
      ASSERT_GE(v, 0.5f);
      ASSERT_LE(v, 1.5f);
    }
  }
  EXPECT_EQ(distinct_bits, 0xffffffffu);  // every bit position varies
}

// ---- fp16 baseline ---------------------------------------------------------------------------

std::vector<double> f16_reference(const std::vector<float>& w, const float* x, size_t rows, size_t cols) {
  std::vector<double> y(rows, 0.0);
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) y[r] += double(pq::f16_to_f32(pq::f32_to_f16(w[r * cols + c]))) * x[c];
  return y;
}

TEST(F16, GemvAndGemmMatchCpu) {
  for (auto [rows, cols] : {std::pair<size_t, size_t>{1, 3}, {7, 1001}, {65, 333}, {130, 4096 + 8}}) {
    auto w = random_vector(rows * cols, static_cast<uint32_t>(rows + cols));
    auto d = upload_f16(context(), w.data(), rows, cols, "f16", rows == 65 ? 20 * 336 * 2 : 0);
    for (uint32_t m : {1u, 5u, 66u}) {
      auto x = random_vector(m * cols, m * 5 + static_cast<uint32_t>(cols));
      vk::Buffer xb = context().upload_new(x, "x");
      vk::Buffer y = poisoned(size_t(m) * rows);
      auto cmd = context().commands();
      if (m == 1) kernels().gemv_f16(cmd, d, xb, y);
      else kernels().gemm_f16(cmd, d, xb, y, m);
      cmd.run();
      std::vector<double> ref;
      for (uint32_t i = 0; i < m; ++i) {
        auto yi = f16_reference(w, x.data() + i * cols, rows, cols);
        ref.insert(ref.end(), yi.begin(), yi.end());
      }
      EXPECT_LT(rel_error(read_floats(y, size_t(m) * rows), ref), kDotTol) << rows << "x" << cols << " m=" << m;
    }
  }
}

}  // namespace
}  // namespace pqvk::test
