// Every shader against its CPU twin (runtime/quant) on random data of awkward shapes, with
// outputs poisoned before each run and explicit error bounds. Validation is on throughout.
#include <gtest/gtest.h>

#include <cmath>
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
  const size_t padded = rotated_row_elems(c.cols, c.block, Layout::row_major);
  std::vector<float> ref(c.rows * padded);
  pq::fwht_rows(x.data(), c.rows, c.cols, static_cast<int>(c.block), ref.data());
  // Compare the elements the layout defines (the interleaved layout's tail is unspecified).
  std::vector<float> g, r;
  for (uint32_t row = 0; row < c.rows; ++row) {
    std::vector<float> want(ref.begin() + row * padded, ref.begin() + (row + 1) * padded);
    if (layout == Layout::gemv_interleaved) {
      auto inter = interleave_for_gemv(want.data(), padded);
      for (size_t e = 0; e < padded; ++e) {
        size_t idx = gemv_interleaved_index(e);
        g.push_back(got[row * stride + idx]);
        r.push_back(inter[idx]);
      }
    } else {
      g.insert(g.end(), got.begin() + row * stride, got.begin() + row * stride + padded);
      r.insert(r.end(), want.begin(), want.end());
    }
  }
  EXPECT_LT(rel_error(g, r), kFwhtTol) << "rows=" << c.rows << " cols=" << c.cols << " B=" << c.block;
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

// y = W x on the GPU (fused GEMV on the rotated, interleaved input) against the fp64 twin.
void check_gemv(const MatCase& c, size_t max_slice_bytes) {
  auto q = make_matrix(c);
  auto d = upload_quant(context(), q, describe(c), max_slice_bytes);
  auto x = random_vector(c.cols, static_cast<uint32_t>(c.cols + 99));
  vk::Buffer xb = context().upload_new(x, "x");
  vk::Buffer xr = poisoned(rotated_row_elems(c.cols, c.block, Layout::gemv_interleaved));
  vk::Buffer y = poisoned(c.rows);
  auto cmd = context().commands();
  if (q.rotated) {
    kernels().fwht(cmd, xb, xr, 1, static_cast<uint32_t>(c.cols), static_cast<uint32_t>(c.block), Layout::gemv_interleaved);
  } else {  // unrotated methods read the plain input in the same layout
    std::vector<float> padded(q.cols_padded, 0.0f);
    std::copy(x.begin(), x.end(), padded.begin());
    context().upload(xr, interleave_for_gemv(padded.data(), q.cols_padded));
  }
  cmd.barrier();
  kernels().gemv(cmd, d, xr, y);
  cmd.run();
  std::vector<double> ref(c.rows);
  pq::gemv_reference(q, x.data(), ref.data());
  EXPECT_LT(rel_error(read_floats(y, c.rows), ref), kDotTol) << describe(c) << " slices=" << d.slices.size();
}

TEST(Gemv, MatchesCpuEveryBitWidth) {
  for (const auto& c : matrix_cases()) check_gemv(c, 0);
}

TEST(Gemv, SplitAcrossSlices) {
  // Force several slices (as a 4 GiB limit would for an LM head) and an odd tail slice.
  MatCase c{37, 640, 3, 128, pq::Method::pq};
  check_gemv(c, 5 * 3 * 20 * 4);  // 5 rows per slice: 8 slices, the last with 2 rows
}

TEST(Gemm, MatchesCpu) {
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
        kernels().fwht(cmd, xb, xr, m, static_cast<uint32_t>(c.cols), static_cast<uint32_t>(c.block));
      } else {
        std::vector<float> padded(m * q.cols_padded, 0.0f);
        for (uint32_t i = 0; i < m; ++i) std::copy(x.begin() + i * c.cols, x.begin() + (i + 1) * c.cols, padded.begin() + i * q.cols_padded);
        context().upload(xr, padded);
      }
      cmd.barrier();
      kernels().gemm(cmd, d, xr, y, m);
      cmd.run();
      std::vector<double> ref(size_t(m) * c.rows), yi(c.rows);
      for (uint32_t i = 0; i < m; ++i) {
        pq::gemv_reference(q, x.data() + i * c.cols, yi.data());
        std::copy(yi.begin(), yi.end(), ref.begin() + i * c.rows);
      }
      EXPECT_LT(rel_error(read_floats(y, size_t(m) * c.rows), ref), kDotTol) << describe(c) << " m=" << m;
    }
  }
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
