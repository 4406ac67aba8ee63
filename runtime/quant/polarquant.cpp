// PolarQuant on the CPU: see polarquant.h for the interface and docs/polarquant.md for the
// method. This file is the reference (oracle) implementation: clarity and accuracy first.
#include "quant/polarquant.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <mutex>
#include <numbers>
#include <stdexcept>
#include <string>

namespace pq {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMaxHalf = 65504.0;  // largest finite fp16

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("pq: " + what); }

bool is_pow2(long long n) { return n > 0 && (n & (n - 1)) == 0; }

size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

void check_fwht_size(long long n) {
  if (!is_pow2(n) || n < 2 || n > 1024)
    fail("FWHT size must be a power of two in [2, 1024], got " + std::to_string(n));
}

void check_layout(size_t cols_padded, int bits) {
  if (bits < 1 || bits > 8) fail("code width must be 1..8 bits, got " + std::to_string(bits));
  if (cols_padded % 32 != 0)
    fail("cols_padded must be a multiple of 32, got " + std::to_string(cols_padded));
}

// ---- The standard normal distribution --------------------------------------------------
double normal_pdf(double x) {
  if (std::isinf(x)) return 0.0;
  return std::exp(-0.5 * x * x) / std::sqrt(2.0 * std::numbers::pi);
}
// Upper tail Q(x) = P(X > x), via erfc so that tail cells keep their relative precision.
double normal_tail(double x) {
  if (x == kInf) return 0.0;
  return 0.5 * std::erfc(x / std::sqrt(2.0));
}

// ---- FWHT --------------------------------------------------------------------------------
// Butterflies with strides 1, 2, 4, ... produce H_n x in Sylvester order (entry (i, j) of the
// unnormalized H_n is (-1)^popcount(i & j)); one final multiply makes it orthonormal.
template <typename T>
void fwht_impl(T* x, int n) {
  check_fwht_size(n);
  for (int h = 1; h < n; h *= 2) {
    for (int i = 0; i < n; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        const T a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const T norm = static_cast<T>(1.0 / std::sqrt(static_cast<double>(n)));
  for (int i = 0; i < n; ++i) x[i] *= norm;
}

// ---- Lloyd-Max -----------------------------------------------------------------------------
// Works on the positive half c[0] < ... < c[H-1] of a symmetric codebook (H = 2^bits / 2):
// cell k of the positive half is [a_k, b_k] with a_0 = 0, a_k = (c[k-1] + c[k]) / 2, b_k = a_{k+1}
// and b_{H-1} = +inf. The Lloyd-Max map replaces each c[k] by the conditional mean of its cell.
struct CellMean {
  double mean;    // E[X | a < X < b] = (phi(a) - phi(b)) / (Phi(b) - Phi(a))
  double d_da;    // d mean / d a = phi(a) (mean - a) / P
  double d_db;    // d mean / d b = phi(b) (b - mean) / P
};

CellMean cell_mean(double a, double b) {
  const double p = normal_tail(a) - normal_tail(b);  // Phi(b) - Phi(a), accurate in the tail
  const double mean = (normal_pdf(a) - normal_pdf(b)) / p;
  const double d_da = normal_pdf(a) * (mean - a) / p;
  const double d_db = b == kInf ? 0.0 : normal_pdf(b) * (b - mean) / p;
  return {mean, d_da, d_db};
}

double cell_lo(const std::vector<double>& c, size_t k) { return k == 0 ? 0.0 : 0.5 * (c[k - 1] + c[k]); }
double cell_hi(const std::vector<double>& c, size_t k) {
  return k + 1 == c.size() ? kInf : 0.5 * (c[k] + c[k + 1]);
}

// Solves the tridiagonal system (lower, diag, upper) x = rhs in place (Thomas algorithm); rhs
// becomes the solution.
void solve_tridiagonal(std::vector<double> lower, std::vector<double> diag,
                       const std::vector<double>& upper, std::vector<double>& rhs) {
  const size_t n = diag.size();
  for (size_t k = 1; k < n; ++k) {
    const double f = lower[k] / diag[k - 1];
    diag[k] -= f * upper[k - 1];
    rhs[k] -= f * rhs[k - 1];
  }
  rhs[n - 1] /= diag[n - 1];
  for (size_t k = n - 1; k-- > 0;) rhs[k] = (rhs[k] - upper[k] * rhs[k + 1]) / diag[k];
}

// The fixed point c = M(c) of the Lloyd-Max map M, to max|M(c) - c| < 1e-12. Plain Lloyd
// iteration contracts by about 1 - O(1/L^2) per step (over 10^5 steps at 8 bits), so each step
// is a Newton step on F(c) = M(c) - c instead (M has a tridiagonal Jacobian because c[k]'s
// cell depends only on c[k-1..k+1]); a step that would break the ordering falls back to a
// plain Lloyd step. Both converge to the same fixed point; Newton needs about 6 steps.
std::vector<double> solve_lloyd_max(int bits) {
  const size_t half = size_t{1} << (bits - 1);
  std::vector<double> c(half);
  for (size_t k = 0; k < half; ++k) c[k] = (static_cast<double>(k) + 0.5) * 4.0 / static_cast<double>(half);

  for (int iter = 0; iter < 10000; ++iter) {
    std::vector<double> lower(half, 0.0), diag(half, 1.0), upper(half, 0.0), resid(half);
    std::vector<double> lloyd_step(half);
    double worst = 0.0;
    for (size_t k = 0; k < half; ++k) {
      const CellMean m = cell_mean(cell_lo(c, k), cell_hi(c, k));
      lloyd_step[k] = m.mean;
      resid[k] = m.mean - c[k];
      worst = std::max(worst, std::fabs(resid[k]));
      // Row k of I - J_M (J_M = Jacobian of M): a_k moves by 1/2 per unit of c[k-1] and of
      // c[k], b_k by 1/2 per unit of c[k] and of c[k+1].
      const double da = k > 0 ? 0.5 * m.d_da : 0.0;  // a_0 = 0 is fixed by symmetry
      const double db = 0.5 * m.d_db;
      lower[k] = -da;
      upper[k] = -db;
      diag[k] = 1.0 - da - db;
    }
    if (worst < 1e-12) return c;

    // Newton: (I - J_M) delta = M(c) - c.
    solve_tridiagonal(lower, diag, upper, resid);
    std::vector<double> next(half);
    bool ordered = true;
    for (size_t k = 0; k < half; ++k) {
      next[k] = c[k] + resid[k];
      if (next[k] <= (k == 0 ? 0.0 : next[k - 1])) ordered = false;
    }
    c = ordered ? next : lloyd_step;
  }
  fail("Lloyd-Max iteration did not converge");  // unreachable for the Gaussian in practice
}

// Mirrors a positive half into a full ascending symmetric codebook.
std::vector<double> mirror(const std::vector<double>& half) {
  std::vector<double> full;
  full.reserve(2 * half.size());
  for (size_t k = half.size(); k-- > 0;) full.push_back(-half[k]);
  full.insert(full.end(), half.begin(), half.end());
  return full;
}

// ---- MSE-optimal uniform grid --------------------------------------------------------------
// E[(X - y)^2; a < X < b] for X ~ N(0,1), closed form: with P = Phi(b) - Phi(a),
// int x^2 phi = P + a phi(a) - b phi(b), int x phi = phi(a) - phi(b).
double cell_sq_error(double a, double b, double y) {
  const double p = normal_tail(a) - normal_tail(b);
  const double b_phi_b = b == kInf ? 0.0 : b * normal_pdf(b);
  const double second = p + a * normal_pdf(a) - b_phi_b;
  const double first = normal_pdf(a) - normal_pdf(b);
  return second - 2.0 * y * first + y * y * p;
}

// Gaussian MSE of the mid-rise grid +-(j + 1/2) step, j < half: by symmetry twice the positive
// half, whose cells are [j step, (j+1) step] and the last one is open to +inf.
double uniform_grid_mse(size_t half, double step) {
  double mse = 0.0;
  for (size_t j = 0; j < half; ++j) {
    const double a = static_cast<double>(j) * step;
    const double b = j + 1 == half ? kInf : a + step;
    mse += cell_sq_error(a, b, a + 0.5 * step);
  }
  return 2.0 * mse;
}

// The step minimizing uniform_grid_mse: a coarse log-spaced scan brackets the minimum, then a
// golden-section search refines it (the MSE is unimodal in the step).
double optimal_uniform_step(size_t half) {
  const int scan = 400;
  const double lo = 1e-3, hi = 4.0;
  auto at = [&](int i) { return lo * std::pow(hi / lo, static_cast<double>(i) / scan); };
  int best = 0;
  for (int i = 1; i <= scan; ++i)
    if (uniform_grid_mse(half, at(i)) < uniform_grid_mse(half, at(best))) best = i;
  double a = at(std::max(best - 1, 0)), b = at(std::min(best + 1, scan));

  // Golden section: keep a < x1 < x2 < b with the minimum inside [a, b]; each step drops the
  // end next to the worse probe and reuses the other probe.
  const double g = (std::sqrt(5.0) - 1.0) / 2.0;
  double x1 = b - g * (b - a), x2 = a + g * (b - a);
  double f1 = uniform_grid_mse(half, x1), f2 = uniform_grid_mse(half, x2);
  while (b - a > 1e-12 * b) {
    if (f1 < f2) {  // the minimum is in [a, x2]
      b = x2;
      x2 = x1;
      f2 = f1;
      x1 = b - g * (b - a);
      f1 = uniform_grid_mse(half, x1);
    } else {  // the minimum is in [x1, b]
      a = x1;
      x1 = x2;
      f1 = f2;
      x2 = a + g * (b - a);
      f2 = uniform_grid_mse(half, x2);
    }
  }
  return 0.5 * (a + b);
}

// Per-bits cache with thread-safe one-time initialization (the only mutable global state).
template <typename Build>
const std::vector<double>& cached(int bits, Build build,
                                  std::array<std::once_flag, 9>& once,
                                  std::array<std::vector<double>, 9>& table) {
  std::call_once(once[bits], [&] { table[bits] = build(bits); });
  return table[bits];
}

// ---- Quantization helpers --------------------------------------------------------------------
// fp16 of a non-negative scale, saturated at the largest finite fp16 (never inf).
uint16_t scale_to_f16(double s) { return f32_to_f16(static_cast<float>(std::min(s, kMaxHalf))); }

// Index of the nearest level of an ascending codebook: the number of cell boundaries
// (midpoints between neighbouring levels) below r. For a uniform grid this is rounding to the
// nearest level, clamped to the grid.
uint8_t nearest_level(const std::vector<double>& midpoints, double r) {
  return static_cast<uint8_t>(std::upper_bound(midpoints.begin(), midpoints.end(), r) - midpoints.begin());
}

std::vector<double> midpoints_of(const std::vector<double>& levels) {
  std::vector<double> mid(levels.size() - 1);
  for (size_t k = 0; k + 1 < levels.size(); ++k) mid[k] = 0.5 * (levels[k] + levels[k + 1]);
  return mid;
}

// The levels (in units of the normalized coordinate r, i.e. before the 1/sqrt(B) fold) that a
// normalized method quantizes against.
const std::vector<double>& normalized_levels(Method m, int bits) {
  return m == Method::rot_uniform ? gaussian_uniform_grid(bits) : lloyd_max_centroids(bits);
}

// Codes of one block of the normalized methods (pq, rot_uniform, lloyd). blk holds the B
// zero-padded weights and is overwritten. Returns the fp16 scale.
uint16_t quantize_normalized_block(double* blk, int B, bool rotate,
                                   const std::vector<double>& midpoints, uint8_t* codes) {
  double sq = 0.0;
  for (int k = 0; k < B; ++k) sq += blk[k] * blk[k];
  const double norm = std::max(std::sqrt(sq), 1e-10);
  const uint16_t h = scale_to_f16(norm);
  // Quantize against the stored (fp16-rounded) norm: given that scale, the nearest code per
  // coordinate minimizes the block's error. A norm that rounds to fp16 zero dequantizes to
  // zero whatever the codes are, so the exact norm is used for them.
  const double stored = f16_to_f32(h);
  const double divisor = stored > 0.0 ? stored : norm;
  if (rotate) fwht(blk, B);
  const double to_r = std::sqrt(static_cast<double>(B)) / divisor;  // r = sqrt(B) H w / n
  for (int k = 0; k < B; ++k) codes[k] = nearest_level(midpoints, blk[k] * to_r);
  return h;
}

}  // namespace

const std::vector<double>& lloyd_max_midpoints(int bits) {
  static std::array<std::once_flag, 9> once;
  static std::array<std::vector<double>, 9> table;
  return cached(bits, [](int b) { return midpoints_of(lloyd_max_centroids(b)); }, once, table);
}

uint16_t quantize_vector(const float* x, int n, int bits, uint8_t* codes) {
  check_fwht_size(n);
  if (bits < 1 || bits > 8) throw std::invalid_argument("quantize_vector: bits must be 1..8, got " + std::to_string(bits));
  std::vector<double> v(x, x + n);
  return quantize_normalized_block(v.data(), n, true, lloyd_max_midpoints(bits), codes);
}

void dequantize_vector(const uint8_t* codes, uint16_t norm, int n, int bits, float* out) {
  check_fwht_size(n);
  if (bits < 1 || bits > 8) throw std::invalid_argument("dequantize_vector: bits must be 1..8, got " + std::to_string(bits));
  const auto& c = lloyd_max_centroids(bits);
  const double scale = f16_to_f32(norm) / std::sqrt(static_cast<double>(n));
  std::vector<double> y(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) y[static_cast<size_t>(i)] = c[codes[i]] * scale;
  fwht(y.data(), n);
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(y[static_cast<size_t>(i)]);
}

namespace {

// Codes of one absmax block: symmetric integer grid q in [-qmax, qmax], code = q + 2^(bits-1).
uint16_t quantize_absmax_block(const double* blk, int B, int bits, uint8_t* codes) {
  const int qmax = (1 << (bits - 1)) - 1;
  double amax = 0.0;
  for (int k = 0; k < B; ++k) amax = std::max(amax, std::fabs(blk[k]));
  uint16_t h = scale_to_f16(amax / qmax);
  // An all-zero (or tiny) block would get a zero step: use the smallest fp16 subnormal instead
  // so the division below is defined (an all-zero block then gets the code of q = 0).
  if ((h & 0x7fff) == 0) h = 0x0001;
  const double step = f16_to_f32(h);  // q is computed with the stored step: dequant consistent
  for (int k = 0; k < B; ++k) {
    const double q = std::clamp(std::round(blk[k] / step), double(-qmax), double(qmax));
    codes[k] = static_cast<uint8_t>(static_cast<int>(q) + (1 << (bits - 1)));
  }
  return h;
}

std::vector<float> make_codebook(Method m, int bits, int B) {
  const size_t levels = size_t{1} << bits;
  std::vector<float> cb(levels);
  if (m == Method::absmax) {
    for (size_t k = 0; k < levels; ++k) cb[k] = static_cast<float>(static_cast<int>(k) - (1 << (bits - 1)));
    return cb;
  }
  const std::vector<double>& lv = normalized_levels(m, bits);
  const double inv_sqrt_b = 1.0 / std::sqrt(static_cast<double>(B));  // folded into the codebook
  for (size_t k = 0; k < levels; ++k) cb[k] = static_cast<float>(lv[k] * inv_sqrt_b);
  return cb;
}

// Throws unless q is internally consistent (sizes of every array match its shape).
void check_quant_matrix(const QuantMatrix& q) {
  if (q.bits < 2 || q.bits > 8) fail("QuantMatrix: bits must be 2..8");
  if (q.block != 64 && q.block != 128 && q.block != 256) fail("QuantMatrix: bad block");
  if (q.cols_padded != round_up(q.cols, q.block) || q.cols == 0 || q.rows == 0)
    fail("QuantMatrix: inconsistent shape");
  if (q.codebook.size() != (size_t{1} << q.bits)) fail("QuantMatrix: codebook size");
  if (q.codes.size() != packed_words(q.rows, q.cols_padded, q.bits)) fail("QuantMatrix: codes size");
  if (q.scales.size() != q.rows * q.blocks_per_row()) fail("QuantMatrix: scales size");
}

// Codes of one row (cols_padded values). Rows are independent in the layout: row r's words
// start at r * bits * nchunk and are laid out exactly like a one-row matrix.
std::vector<uint8_t> unpack_row(const QuantMatrix& q, size_t row) {
  std::vector<uint8_t> codes(q.cols_padded);
  const size_t row_words = packed_words(1, q.cols_padded, q.bits);
  unpack_codes(q.codes.data() + row * row_words, 1, q.cols_padded, q.bits, codes.data());
  return codes;
}

// Fourth standardized moment minus 3, two-pass in fp64. NaN when undefined.
template <typename T>
double kurtosis_of(const T* x, size_t n) {
  if (n < 2) return std::numeric_limits<double>::quiet_NaN();
  double mean = 0.0;
  for (size_t i = 0; i < n; ++i) mean += x[i];
  mean /= static_cast<double>(n);
  double m2 = 0.0, m4 = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = x[i] - mean, d2 = d * d;
    m2 += d2;
    m4 += d2 * d2;
  }
  m2 /= static_cast<double>(n);
  m4 /= static_cast<double>(n);
  if (m2 == 0.0) return std::numeric_limits<double>::quiet_NaN();
  return m4 / (m2 * m2) - 3.0;
}

}  // namespace

// ---- fp16 <-> fp32 ---------------------------------------------------------------------------
uint16_t f32_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t exp = (x >> 23) & 0xffu;
  const uint32_t mant = x & 0x7fffffu;

  if (exp == 0xffu) {  // inf stays inf; NaN stays a (quiet) NaN, keeping the top payload bits
    return mant == 0 ? static_cast<uint16_t>(sign | 0x7c00u)
                     : static_cast<uint16_t>(sign | 0x7e00u | (mant >> 13));
  }
  const int e = static_cast<int>(exp) - 127 + 15;  // rebiased exponent
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf

  if (e >= 1) {  // normal: keep 10 mantissa bits, round the 13 dropped ones to nearest even
    uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry may bump the exponent (to inf)
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal (or zero) result, in units of 2^-24: value = m * 2^-shift with m the 24-bit
  // significand. shift >= 25 leaves less than half a unit: rounds to zero.
  const uint32_t m = mant | 0x800000u;
  const int shift = 14 - e;  // = 126 - exp
  if (shift >= 25) return sign;
  uint32_t h = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u))) ++h;  // may round up to the smallest normal
  return static_cast<uint16_t>(sign | h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in fp32
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

// ---- Walsh-Hadamard transform ------------------------------------------------------------------
void fwht(float* x, int n) { fwht_impl(x, n); }
void fwht(double* x, int n) { fwht_impl(x, n); }

void fwht_rows(const float* x, size_t rows, size_t cols, int B, float* out) {
  check_fwht_size(B);
  const size_t cols_padded = round_up(cols, static_cast<size_t>(B));
  for (size_t r = 0; r < rows; ++r) {
    float* o = out + r * cols_padded;
    std::copy(x + r * cols, x + (r + 1) * cols, o);
    std::fill(o + cols, o + cols_padded, 0.0f);
    for (size_t b = 0; b < cols_padded; b += static_cast<size_t>(B)) fwht(o + b, B);
  }
}

// ---- Codebooks ---------------------------------------------------------------------------------
const std::vector<double>& lloyd_max_centroids(int bits) {
  if (bits < 1 || bits > 8) fail("Lloyd-Max codebooks exist for 1..8 bits, got " + std::to_string(bits));
  static std::array<std::once_flag, 9> once;
  static std::array<std::vector<double>, 9> table;
  return cached(bits, [](int b) { return mirror(solve_lloyd_max(b)); }, once, table);
}

const std::vector<double>& gaussian_uniform_grid(int bits) {
  if (bits < 1 || bits > 8) fail("uniform grids exist for 1..8 bits, got " + std::to_string(bits));
  static std::array<std::once_flag, 9> once;
  static std::array<std::vector<double>, 9> table;
  return cached(bits, [](int b) {
    const size_t levels = size_t{1} << b;
    const double step = optimal_uniform_step(levels / 2);
    std::vector<double> grid(levels);
    for (size_t k = 0; k < levels; ++k)
      grid[k] = (static_cast<double>(k) - 0.5 * static_cast<double>(levels - 1)) * step;
    return grid;
  }, once, table);
}

// ---- Method names ------------------------------------------------------------------------------
const char* method_name(Method m) {
  switch (m) {
    case Method::pq: return "pq";
    case Method::absmax: return "absmax";
    case Method::rot_uniform: return "rot-uniform";
    case Method::lloyd: return "lloyd";
  }
  return "?";
}

bool parse_method(const std::string& s, Method* out) {
  for (Method m : {Method::pq, Method::absmax, Method::rot_uniform, Method::lloyd}) {
    if (s == method_name(m)) {
      if (out) *out = m;
      return true;
    }
  }
  return false;
}

// ---- QuantMatrix ---------------------------------------------------------------------------------
uint32_t QuantMatrix::code(size_t row, size_t col) const {
  if (row >= rows || col >= cols_padded) throw std::out_of_range("pq: QuantMatrix::code out of range");
  // Code i of chunk ch occupies stream bits [i*bits, i*bits + bits); it may straddle two words.
  const size_t chunk = col / 32;
  const int first = static_cast<int>(col % 32) * bits;
  const int word = first / 32, shift = first % 32;
  uint64_t v = codes[code_word_index(cols_padded, bits, row, chunk, word)] >> shift;
  if (shift + bits > 32) v |= uint64_t{codes[code_word_index(cols_padded, bits, row, chunk, word + 1)]} << (32 - shift);
  return static_cast<uint32_t>(v & ((1u << bits) - 1u));
}

double QuantMatrix::bits_per_weight() const { return bits + 16.0 / block; }

// ---- Quantization --------------------------------------------------------------------------------
QuantMatrix quantize(const float* w, size_t rows, size_t cols, int bits, int block, Method m) {
  if (bits < 2 || bits > 8) fail("bits must be 2..8, got " + std::to_string(bits));
  if (block != 64 && block != 128 && block != 256) fail("block must be 64, 128 or 256, got " + std::to_string(block));
  if (rows == 0 || cols == 0) fail("empty matrix");

  QuantMatrix q;
  q.method = m;
  q.bits = bits;
  q.block = block;
  q.rotated = m == Method::pq || m == Method::rot_uniform;
  q.rows = rows;
  q.cols = cols;
  q.cols_padded = round_up(cols, static_cast<size_t>(block));
  q.codebook = make_codebook(m, bits, block);
  q.scales.resize(rows * q.blocks_per_row());

  std::vector<double> midpoints;
  if (m != Method::absmax) midpoints = midpoints_of(normalized_levels(m, bits));

  std::vector<uint8_t> codes(rows * q.cols_padded);
  std::vector<double> blk(block);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t b = 0; b < q.blocks_per_row(); ++b) {
      // The block's weights, zero-padded past the last real column.
      const size_t c0 = b * block;
      for (int k = 0; k < block; ++k) blk[k] = c0 + k < cols ? w[r * cols + c0 + k] : 0.0;
      uint8_t* out = codes.data() + r * q.cols_padded + c0;
      q.scales[r * q.blocks_per_row() + b] =
          m == Method::absmax ? quantize_absmax_block(blk.data(), block, bits, out)
                              : quantize_normalized_block(blk.data(), block, q.rotated, midpoints, out);
    }
  }
  q.codes.resize(packed_words(rows, q.cols_padded, bits));
  pack_codes(codes.data(), rows, q.cols_padded, bits, q.codes.data());
  return q;
}

void dequantize_f64(const QuantMatrix& q, double* out) {
  check_quant_matrix(q);
  const int B = q.block;
  std::vector<double> blk(B);
  for (size_t r = 0; r < q.rows; ++r) {
    const std::vector<uint8_t> codes = unpack_row(q, r);
    for (size_t b = 0; b < q.blocks_per_row(); ++b) {
      // w = scale * (rotated ? H_B c : c), c[k] = codebook[code_k].
      for (int k = 0; k < B; ++k) blk[k] = q.codebook[codes[b * B + k]];
      if (q.rotated) fwht(blk.data(), B);
      const double scale = f16_to_f32(q.scales[r * q.blocks_per_row() + b]);
      // Keep the real columns only: the padding is dropped.
      for (int k = 0; k < B && b * B + k < q.cols; ++k) out[r * q.cols + b * B + k] = scale * blk[k];
    }
  }
}

void dequantize(const QuantMatrix& q, float* out) {
  std::vector<double> w(q.rows * q.cols);
  dequantize_f64(q, w.data());
  std::transform(w.begin(), w.end(), out, [](double v) { return static_cast<float>(v); });
}

void gemv_reference(const QuantMatrix& q, const float* x, double* y) {
  check_quant_matrix(q);
  const int B = q.block;
  // x zero-padded to cols_padded, rotated block-wise when the weights are: since H_B is
  // symmetric, <H_B c, x_b> = <c, H_B x_b>, so weights are never rotated back.
  std::vector<double> xr(q.cols_padded, 0.0);
  std::copy(x, x + q.cols, xr.begin());
  if (q.rotated)
    for (size_t b = 0; b < q.blocks_per_row(); ++b) fwht(xr.data() + b * B, B);
  gemv_reference_prepared(q, xr.data(), y);
}

void gemv_reference_prepared(const QuantMatrix& q, const double* xr, double* y) {
  check_quant_matrix(q);
  const int B = q.block;
  for (size_t r = 0; r < q.rows; ++r) {
    const std::vector<uint8_t> codes = unpack_row(q, r);
    double acc = 0.0;
    for (size_t b = 0; b < q.blocks_per_row(); ++b) {
      double dot = 0.0;
      for (int k = 0; k < B; ++k) dot += double{q.codebook[codes[b * B + k]]} * xr[b * B + k];
      acc += double{f16_to_f32(q.scales[r * q.blocks_per_row() + b])} * dot;
    }
    y[r] = acc;
  }
}

QuantMatrix join_rows(const std::vector<const QuantMatrix*>& parts, bool interleave) {
  if (parts.empty()) throw std::invalid_argument("join_rows: no matrices");
  const QuantMatrix& a = *parts[0];
  QuantMatrix out = a;
  out.rows = 0;
  out.codes.clear();
  out.scales.clear();
  for (const QuantMatrix* p : parts) {
    check_quant_matrix(*p);
    if (p->method != a.method || p->bits != a.bits || p->block != a.block || p->rotated != a.rotated ||
        p->cols != a.cols || p->codebook != a.codebook)
      throw std::invalid_argument("join_rows: the matrices differ in method, bits, block, rotation, columns or codebook");
    if (interleave && p->rows != a.rows) throw std::invalid_argument("join_rows: interleaved matrices differ in rows");
    out.rows += p->rows;
  }
  const size_t words = a.codes.size() / a.rows, nb = a.blocks_per_row();
  auto append = [&](const QuantMatrix& m, size_t r) {
    out.codes.insert(out.codes.end(), m.codes.begin() + r * words, m.codes.begin() + (r + 1) * words);
    out.scales.insert(out.scales.end(), m.scales.begin() + r * nb, m.scales.begin() + (r + 1) * nb);
  };
  if (interleave) {
    for (size_t r = 0; r < a.rows; ++r)
      for (const QuantMatrix* p : parts) append(*p, r);
  } else {
    for (const QuantMatrix* p : parts)
      for (size_t r = 0; r < p->rows; ++r) append(*p, r);
  }
  return out;
}

// ---- Packed layout ---------------------------------------------------------------------------------
size_t packed_words(size_t rows, size_t cols_padded, int bits) {
  check_layout(cols_padded, bits);
  return rows * (cols_padded / 32) * static_cast<size_t>(bits);
}

size_t code_word_index(size_t cols_padded, int bits, size_t row, size_t chunk, int word) {
  check_layout(cols_padded, bits);
  const size_t nchunk = cols_padded / 32;
  if (chunk >= nchunk || word < 0 || word >= bits) fail("code_word_index: chunk or word out of range");
  const size_t row_base = row * static_cast<size_t>(bits) * nchunk;
  const size_t g = chunk / 32, c = chunk % 32;          // group of 32 chunks, position in it
  const size_t gs = std::min<size_t>(32, nchunk - 32 * g);  // chunks in this group (last may be short)
  return row_base + g * 32 * static_cast<size_t>(bits) + static_cast<size_t>(word) * gs + c;
}

void pack_codes(const uint8_t* codes, size_t rows, size_t cols_padded, int bits, uint32_t* out) {
  const size_t nchunk = packed_words(1, cols_padded, bits) / static_cast<size_t>(bits);
  const uint32_t limit = 1u << bits;
  for (size_t r = 0; r < rows; ++r) {
    for (size_t ch = 0; ch < nchunk; ++ch) {
      // Build the chunk's bit stream: code i at stream bits [i*bits, i*bits + bits).
      std::array<uint32_t, 9> words{};  // one spare word so a straddling code needs no branch
      const uint8_t* src = codes + r * cols_padded + ch * 32;
      for (int i = 0; i < 32; ++i) {
        if (src[i] >= limit) fail("pack_codes: code " + std::to_string(src[i]) + " does not fit in " + std::to_string(bits) + " bits");
        const int first = i * bits, word = first / 32, shift = first % 32;
        const uint64_t v = uint64_t{src[i]} << shift;
        words[word] |= static_cast<uint32_t>(v);
        words[word + 1] |= static_cast<uint32_t>(v >> 32);
      }
      for (int j = 0; j < bits; ++j) out[code_word_index(cols_padded, bits, r, ch, j)] = words[j];
    }
  }
}

void unpack_codes(const uint32_t* words, size_t rows, size_t cols_padded, int bits, uint8_t* out) {
  const size_t nchunk = packed_words(1, cols_padded, bits) / static_cast<size_t>(bits);
  const uint32_t mask = (1u << bits) - 1u;
  for (size_t r = 0; r < rows; ++r) {
    for (size_t ch = 0; ch < nchunk; ++ch) {
      std::array<uint32_t, 9> w{};
      for (int j = 0; j < bits; ++j) w[j] = words[code_word_index(cols_padded, bits, r, ch, j)];
      uint8_t* dst = out + r * cols_padded + ch * 32;
      for (int i = 0; i < 32; ++i) {
        const int first = i * bits, word = first / 32, shift = first % 32;
        const uint64_t pair = uint64_t{w[word]} | (uint64_t{w[word + 1]} << 32);  // straddle-safe
        dst[i] = static_cast<uint8_t>((pair >> shift) & mask);
      }
    }
  }
}

// ---- Statistics --------------------------------------------------------------------------------------
double sqnr_db(const float* ref, const float* approx, size_t n) {
  double signal = 0.0, noise = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double{ref[i]} - double{approx[i]};
    signal += double{ref[i]} * ref[i];
    noise += d * d;
  }
  if (noise == 0.0) return kInf;
  return 10.0 * std::log10(signal / noise);
}

double excess_kurtosis(const float* x, size_t n) { return kurtosis_of(x, n); }

double block_kurtosis(const float* w, size_t rows, size_t cols, int block, bool rotate) {
  check_fwht_size(block);
  const size_t cols_padded = round_up(cols, static_cast<size_t>(block));
  std::vector<double> coords;
  coords.reserve(rows * cols_padded);
  std::vector<double> blk(block);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c0 = 0; c0 < cols_padded; c0 += block) {
      // The block as the quantizer sees it (zero-padded), normalized to sqrt(B) * w / |w|.
      double sq = 0.0;
      for (int k = 0; k < block; ++k) {
        blk[k] = c0 + k < cols ? w[r * cols + c0 + k] : 0.0;
        sq += blk[k] * blk[k];
      }
      if (sq == 0.0) continue;  // an all-zero block has no direction
      if (rotate) fwht(blk.data(), block);
      const double to_r = std::sqrt(block / sq);
      for (int k = 0; k < block; ++k) coords.push_back(blk[k] * to_r);
    }
  }
  return kurtosis_of(coords.data(), coords.size());
}

}  // namespace pq
