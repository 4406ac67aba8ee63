// The CPU reference decoder (runtime/llm/cpu_model) and the sampler (runtime/llm/sampler).
//
// CpuModel is checked against an independent, deliberately naive fp64 implementation written
// here (every prefix recomputed from scratch, no KV cache, RoPE written the HuggingFace way),
// on tiny random models of each architecture written to .pqm files with f32, f16 and PolarQuant
// q4 matrices; each fixture is also shown to be sensitive to the feature it exercises. The
// bundled stories260K (a real llama2.c model) checks the llama2.c importer's RoPE permutation
// end to end against a direct implementation of llama2.c's own layout and interleaved RoPE.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <ostream>
#include <numbers>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <unistd.h>

#include "llm/cpu_model.h"
#include "llm/sampler.h"
#include "model/convert.h"
#include "model/error.h"
#include "model/pqm.h"
#include "model/source.h"
#include "quant/polarquant.h"
#include "llm_fixtures.h"

namespace pqvk {
namespace {

using llm::CpuModel;
using llm::CpuOptions;
using llm::Sampler;
using llm::SamplerConfig;
using model::ModelConfig;
using model::PqmFile;
using model::Role;
using namespace fixtures;

// ---- fixtures ---------------------------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("pqvk-llm-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Uniform values in [-a, a] with standard deviation `sigma` (a = sigma * sqrt(3)), from raw
// mt19937 bits (the same values on every platform).
// ---- the naive fp64 oracle ----------------------------------------------------------------------

struct RefModel {
  ModelConfig c;
  std::map<std::string, std::vector<double>> w;
  const std::vector<double>& operator[](const std::string& name) const { return w.at(name); }
};

RefModel load_ref(const PqmFile& f) {
  RefModel m{f.config(), {}};
  for (const model::TensorSpec& spec : model::model_tensors(m.c)) {
    const std::vector<float> v = f.read_floats(f.tensor(spec.name));
    m.w[spec.name] = std::vector<double>(v.begin(), v.end());
  }
  return m;
}

// Deliberate deviations, to show that a fixture notices each feature.
struct Variant {
  bool no_rope_scaling = false, no_bias = false, no_qk_norm = false, no_window = false;
  bool interleaved_rope = false, gqa_modulo = false;
  bool kv_fp16 = false;  // not a deviation: keys (after RoPE) and values rounded to fp16
};

double fp16(double x) { return pq::f16_to_f32(pq::f32_to_f16(static_cast<float>(x))); }

std::vector<double> matvec(const std::vector<double>& W, const std::vector<double>& x) {
  const size_t cols = x.size(), rows = W.size() / cols;
  std::vector<double> y(rows, 0.0);
  for (size_t i = 0; i < rows; ++i)
    for (size_t j = 0; j < cols; ++j) y[i] += W[i * cols + j] * x[j];
  return y;
}

std::vector<double> rms_normalized(const double* x, size_t n, const double* weight, double eps) {
  double ss = 0.0;
  for (size_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  std::vector<double> y(n);
  for (size_t i = 0; i < n; ++i) y[i] = x[i] * r * weight[i];
  return y;
}

// HuggingFace's inverse frequency j, with rope_scaling as transformers computes it.
double inv_freq(const ModelConfig& c, int64_t j, bool no_scaling) {
  const double base = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * j) / static_cast<double>(c.head_dim));
  const model::RopeScaling& s = c.rope_scaling;
  if (no_scaling || s.type == "none") return base;
  if (s.type == "linear") return base / s.factor;
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / s.low_freq_factor, high_freq_wavelen = old_len / s.high_freq_factor;
  const double wavelen = 2.0 * std::numbers::pi / base;
  if (wavelen < high_freq_wavelen) return base;
  if (wavelen > low_freq_wavelen) return base / s.factor;
  const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  return (1.0 - smooth) * base / s.factor + smooth * base;
}

// x * cos + rotate_half(x) * sin with cos/sin = [angles, angles] (HF's apply_rotary_pos_emb).
void rope_head(double* x, int64_t hd, int64_t pos, const ModelConfig& c, const Variant& v) {
  std::vector<double> out(static_cast<size_t>(hd));
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < hd; ++i) {
    if (v.interleaved_rope) {  // llama2.c's pairs (2j, 2j+1)
      const double a = static_cast<double>(pos) * inv_freq(c, i / 2, v.no_rope_scaling);
      out[i] = i % 2 == 0 ? x[i] * std::cos(a) - x[i + 1] * std::sin(a) : x[i] * std::cos(a) + x[i - 1] * std::sin(a);
      continue;
    }
    const double a = static_cast<double>(pos) * inv_freq(c, i % half, v.no_rope_scaling);
    const double rotated = i < half ? -x[i + half] : x[i - half];
    out[static_cast<size_t>(i)] = x[i] * std::cos(a) + rotated * std::sin(a);
  }
  std::copy(out.begin(), out.end(), x);
}

// The logits after the last of `tokens`, everything computed from scratch.
std::vector<double> ref_logits(const RefModel& m, std::span<const int32_t> tokens, const Variant& v = {}) {
  const ModelConfig& c = m.c;
  const size_t T = tokens.size(), dim = static_cast<size_t>(c.dim);
  const int64_t hd = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads;
  std::vector<std::vector<double>> x(T);
  for (size_t t = 0; t < T; ++t) {
    const double* row = m["embed"].data() + static_cast<size_t>(tokens[t]) * dim;
    x[t].assign(row, row + dim);
  }
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    std::vector<std::vector<double>> q(T), k(T), val(T);
    for (size_t t = 0; t < T; ++t) {
      const std::vector<double> h = rms_normalized(x[t].data(), dim, m[p + "attn_norm"].data(), c.rms_norm_eps);
      q[t] = matvec(m[p + "attn.q"], h);
      k[t] = matvec(m[p + "attn.k"], h);
      val[t] = matvec(m[p + "attn.v"], h);
      if (c.qkv_bias && !v.no_bias) {
        for (size_t i = 0; i < q[t].size(); ++i) q[t][i] += m[p + "attn.q_bias"][i];
        for (size_t i = 0; i < k[t].size(); ++i) k[t][i] += m[p + "attn.k_bias"][i];
        for (size_t i = 0; i < val[t].size(); ++i) val[t][i] += m[p + "attn.v_bias"][i];
      }
      for (int64_t h2 = 0; h2 < nh; ++h2) {
        double* qh = q[t].data() + h2 * hd;
        if (c.qk_norm && !v.no_qk_norm) {
          const std::vector<double> n = rms_normalized(qh, static_cast<size_t>(hd), m[p + "attn.q_norm"].data(), c.rms_norm_eps);
          std::copy(n.begin(), n.end(), qh);
        }
        rope_head(qh, hd, static_cast<int64_t>(t), c, v);
      }
      for (int64_t h2 = 0; h2 < nkv; ++h2) {
        double* kh = k[t].data() + h2 * hd;
        if (c.qk_norm && !v.no_qk_norm) {
          const std::vector<double> n = rms_normalized(kh, static_cast<size_t>(hd), m[p + "attn.k_norm"].data(), c.rms_norm_eps);
          std::copy(n.begin(), n.end(), kh);
        }
        rope_head(kh, hd, static_cast<int64_t>(t), c, v);
      }
      if (v.kv_fp16) {
        for (double& e : k[t]) e = fp16(e);
        for (double& e : val[t]) e = fp16(e);
      }
    }
    for (size_t t = 0; t < T; ++t) {
      std::vector<double> att(static_cast<size_t>(nh * hd), 0.0);
      const size_t window = c.sliding_window > 0 && !v.no_window ? static_cast<size_t>(c.sliding_window) : T + 1;
      const size_t first = t + 1 > window ? t + 1 - window : 0;
      for (int64_t h2 = 0; h2 < nh; ++h2) {
        const int64_t kvh = v.gqa_modulo ? h2 % nkv : h2 / (nh / nkv);
        std::vector<double> score;
        for (size_t j = first; j <= t; ++j) {
          double s = 0.0;
          for (int64_t i = 0; i < hd; ++i) s += q[t][h2 * hd + i] * k[j][kvh * hd + i];
          score.push_back(s / std::sqrt(static_cast<double>(hd)));
        }
        const double mx = *std::max_element(score.begin(), score.end());
        double sum = 0.0;
        for (double& s : score) sum += (s = std::exp(s - mx));
        for (size_t j = first; j <= t; ++j)
          for (int64_t i = 0; i < hd; ++i) att[h2 * hd + i] += score[j - first] / sum * val[j][kvh * hd + i];
      }
      std::vector<double> o = matvec(m[p + "attn.o"], att);
      for (size_t i = 0; i < dim; ++i) x[t][i] += o[i] + (c.o_bias && !v.no_bias ? m[p + "attn.o_bias"][i] : 0.0);
    }
    for (size_t t = 0; t < T; ++t) {
      const std::vector<double> h = rms_normalized(x[t].data(), dim, m[p + "mlp_norm"].data(), c.rms_norm_eps);
      std::vector<double> g = matvec(m[p + "mlp.gate"], h);
      const std::vector<double> u = matvec(m[p + "mlp.up"], h);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const std::vector<double> d = matvec(m[p + "mlp.down"], g);
      for (size_t i = 0; i < dim; ++i) x[t][i] += d[i];
    }
  }
  const std::vector<double> h = rms_normalized(x[T - 1].data(), dim, m["final_norm"].data(), c.rms_norm_eps);
  return matvec(c.tie_word_embeddings ? m["embed"] : m["lm_head"], h);
}

// max |a - ref| / max |ref|: the error relative to the logits' scale (single logits may be ~0).
double rel_error(std::span<const float> a, const std::vector<double>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num = std::max(num, std::abs(static_cast<double>(a[i]) - ref[i]));
    den = std::max(den, std::abs(ref[i]));
  }
  return num / den;
}
double rel_error(std::span<const float> a, std::span<const float> b) {
  return rel_error(a, std::vector<double>(b.begin(), b.end()));
}

double spread(const std::vector<double>& v) {
  double mean = 0.0, var = 0.0;
  for (double x : v) mean += x / static_cast<double>(v.size());
  for (double x : v) var += (x - mean) * (x - mean) / static_cast<double>(v.size());
  return std::sqrt(var);
}

std::vector<float> to_vector(std::span<const float> s) { return {s.begin(), s.end()}; }

std::string sci(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

// ---- CpuModel against the oracle ----------------------------------------------------------------

struct ArchCase {
  std::string arch;
  Storage storage;
};

void PrintTo(const ArchCase& c, std::ostream* os) { *os << c.arch << "/" << storage_name(c.storage); }

class CpuModelVsOracle : public ::testing::TestWithParam<ArchCase> {};

// fp32 arithmetic (sums of <= 112 products, exp, sqrt) against fp64 gives errors of ~1e-6 of
// the logits' scale; 1e-4 leaves room for the accumulation over 2 layers, and any mistake in the
// computation (a wrong RoPE pair or frequency, a missing bias or norm, a wrong KV head, an
// off-by-one window) moves the logits by > 1e-2 of their scale, as the variants below show.
TEST_P(CpuModelVsOracle, EveryPositionMatches) {
  const ArchCase& p = GetParam();
  TempDir dir;
  const ModelConfig c = tiny_config(p.arch);
  const std::string path = dir.file(p.arch + ".pqm");
  write_model(path, c, p.storage, 1234);
  const PqmFile file = PqmFile::open(path);
  CpuModel cpu(file);
  const RefModel ref = load_ref(file);
  const std::vector<int32_t> tokens = random_tokens(20, c.vocab_size, 99);

  double worst = 0.0;
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    const std::vector<float> logits = to_vector(cpu.forward(tokens[pos], static_cast<int32_t>(pos)));
    const std::vector<double> want = ref_logits(ref, std::span(tokens).first(pos + 1));
    ASSERT_GT(spread(want), 0.3) << "degenerate fixture at position " << pos;
    for (float l : logits) ASSERT_TRUE(std::isfinite(l));
    const double err = rel_error(logits, want);
    EXPECT_LT(err, 1e-4) << p.arch << "/" << storage_name(p.storage) << " position " << pos;
    worst = std::max(worst, err);
  }
  RecordProperty("worst_relative_error", sci(worst));

  // The fixture is sensitive to what it exercises: the oracle without the feature disagrees.
  const std::vector<float> last = to_vector(cpu.forward(tokens.back(), static_cast<int32_t>(tokens.size() - 1)));
  std::string deviations;
  auto deviation = [&](const Variant& v) {
    const double d = rel_error(last, ref_logits(ref, tokens, v));
    deviations += sci(d) + " ";
    return d;
  };
  EXPECT_GT(deviation({.interleaved_rope = true}), 1e-2) << "RoPE pairing makes no difference";
  if (c.rope_scaling.type != "none") {
    EXPECT_GT(deviation({.no_rope_scaling = true}), 1e-2);
  }
  if (c.qkv_bias || c.o_bias) {
    EXPECT_GT(deviation({.no_bias = true}), 1e-2);
  }
  if (c.qk_norm) {
    EXPECT_GT(deviation({.no_qk_norm = true}), 1e-2);
  }
  if (c.sliding_window > 0) {
    EXPECT_GT(deviation({.no_window = true}), 1e-2);
  }
  if (c.n_kv_heads > 1 && c.n_kv_heads < c.n_heads) {
    EXPECT_GT(deviation({.gqa_modulo = true}), 1e-2);
  }
  RecordProperty("variant_deviations", deviations);
}

std::vector<ArchCase> all_cases() {
  std::vector<ArchCase> v;
  for (const char* a : {"llama", "qwen2", "qwen3", "mistral"})
    for (Storage s : {Storage::f32, Storage::f16, Storage::pq4}) v.push_back({a, s});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Archs, CpuModelVsOracle, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<ArchCase>& i) {
                           return i.param.arch + "_" + storage_name(i.param.storage);
                         });

TEST(RopeFrequencies, Llama3ScalingHasThreeRegimes) {
  const ModelConfig c = tiny_config("llama");
  const std::vector<double> f = llm::rope_inverse_frequencies(c);
  ASSERT_EQ(f.size(), 6u);
  const double base1 = std::pow(10000.0, -2.0 / 12.0);
  EXPECT_DOUBLE_EQ(f[0], 1.0);                            // wavelength 6.3 < 64/4: kept
  EXPECT_GT(f[1], base1 / 8.0 * 1.01);                    // 29 in [16, 64]: between
  EXPECT_LT(f[1], base1 * 0.99);
  EXPECT_NEAR(f[2], std::pow(10000.0, -4.0 / 12.0) / 8.0, 1e-15);  // 135 > 64: divided by 8
  for (int64_t j = 0; j < 6; ++j) EXPECT_NEAR(f[static_cast<size_t>(j)], inv_freq(c, j, false), 1e-15);
}

// ---- CpuModel behaviour -----------------------------------------------------------------------

class CpuModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = tiny_config("llama");
    path_ = dir_.file("llama.pqm");
    write_model(path_, config_, Storage::f16, 77);
  }
  TempDir dir_;
  ModelConfig config_;
  std::string path_;
};

TEST_F(CpuModelTest, PrefillEqualsTokenByToken) {
  const PqmFile f = PqmFile::open(path_);
  const std::vector<int32_t> tokens = random_tokens(12, config_.vocab_size, 5);
  CpuModel a(f), b(f);
  std::vector<float> step;
  for (size_t i = 0; i < tokens.size(); ++i) step = to_vector(a.forward(tokens[i], static_cast<int32_t>(i)));
  const std::vector<float> pre = to_vector(b.prefill(tokens, 0));
  EXPECT_EQ(pre, step);  // the same arithmetic: bitwise equal
  EXPECT_EQ(b.cached_positions(), 12);
  // A prefill continuing a cached prefix equals the same tokens run one by one.
  CpuModel c(f);
  c.prefill(std::span(tokens).first(5), 0);
  EXPECT_EQ(to_vector(c.prefill(std::span(tokens).subspan(5), 5)), step);
}

TEST_F(CpuModelTest, ResetAndRewind) {
  const PqmFile f = PqmFile::open(path_);
  const std::vector<int32_t> a = random_tokens(10, config_.vocab_size, 1), b = random_tokens(10, config_.vocab_size, 2);
  ASSERT_NE(a, b);
  CpuModel fresh(f);
  const std::vector<float> want_b = to_vector(fresh.prefill(b, 0));

  CpuModel m(f);
  const std::vector<float> got_a = to_vector(m.prefill(a, 0));
  EXPECT_GT(rel_error(got_a, want_b), 1e-2);  // different inputs, different logits
  m.reset();
  EXPECT_EQ(m.cached_positions(), 0);
  EXPECT_THROW(m.forward(b[3], 3), std::out_of_range);  // the cache is empty after reset()
  EXPECT_EQ(to_vector(m.prefill(b, 0)), want_b);

  // Rewinding: positions 5.. overwritten with other tokens equal a fresh run of that sequence.
  std::vector<int32_t> mixed(b.begin(), b.begin() + 5);
  mixed.insert(mixed.end(), a.begin() + 5, a.end());
  CpuModel fresh_mixed(f);
  const std::vector<float> want_mixed = to_vector(fresh_mixed.prefill(mixed, 0));
  EXPECT_EQ(to_vector(m.prefill(std::span(a).subspan(5), 5)), want_mixed);
  EXPECT_EQ(m.cached_positions(), 10);
  m.forward(a[0], 2);
  EXPECT_EQ(m.cached_positions(), 3);  // later positions forgotten
}

// Sequences over one model's weights (pq-server's slots): interleaved, each gives what a model
// of its own gives, bit for bit, and the model's own cache is left alone.
TEST_F(CpuModelTest, SequencesAreIndependent) {
  const PqmFile f = PqmFile::open(path_);
  const std::vector<int32_t> a = random_tokens(9, config_.vocab_size, 11), b = random_tokens(6, config_.vocab_size, 12);
  CpuModel own_a(f), own_b(f), shared(f);
  std::vector<std::vector<float>> want_a, want_b;
  for (size_t i = 0; i < a.size(); ++i) want_a.push_back(to_vector(own_a.forward(a[i], static_cast<int32_t>(i))));
  for (size_t i = 0; i < b.size(); ++i) want_b.push_back(to_vector(own_b.forward(b[i], static_cast<int32_t>(i))));
  shared.prefill(std::span(b).first(2), 0);
  CpuModel::Sequence sa = shared.new_sequence(), sb = shared.new_sequence();
  EXPECT_EQ(to_vector(shared.prefill(sa, std::span(a).first(3), 0)), want_a[2]);
  for (size_t i = 0; i < b.size(); ++i) {
    EXPECT_EQ(to_vector(shared.forward(sb, b[i], static_cast<int32_t>(i))), want_b[i]) << i;
    if (3 + i < a.size()) {
      EXPECT_EQ(to_vector(shared.forward(sa, a[3 + i], static_cast<int32_t>(3 + i))), want_a[3 + i]) << i;
    }
  }
  EXPECT_EQ(sa.cached_positions(), 9);
  EXPECT_EQ(sb.cached_positions(), 6);
  EXPECT_EQ(shared.cached_positions(), 2);  // the model's own sequence: untouched
  EXPECT_EQ(to_vector(shared.forward(b[2], 2)), want_b[2]);
  EXPECT_THROW(shared.forward(sb, b[0], 8), std::out_of_range);  // position 7 not cached
  sb.reset();
  EXPECT_EQ(to_vector(shared.forward(sb, b[0], 0)), want_b[0]);
}

// fp16 keys and values (relative rounding 2^-11) move the logits by ~1e-4 of their scale: a
// change that must be visible (> 1e-6) and small (< 1e-2). Against the oracle with its keys
// and values rounded the same way, the error is fp32 noise again (an element whose fp64 and
// fp32 values round to different fp16 neighbours moves the logits by ~1e-5 at most: < 1e-4).
TEST_F(CpuModelTest, KvFp16ChangesResultsSlightly) {
  const PqmFile f = PqmFile::open(path_);
  const RefModel ref = load_ref(f);
  const std::vector<int32_t> tokens = random_tokens(20, config_.vocab_size, 3);
  CpuModel full(f), half(f, CpuOptions{.kv_fp16 = true});
  double worst = 0.0, worst_ref = 0.0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::vector<float> a = to_vector(full.forward(tokens[i], static_cast<int32_t>(i)));
    const std::vector<float> b = to_vector(half.forward(tokens[i], static_cast<int32_t>(i)));
    const double err = rel_error(b, a);
    EXPECT_LT(err, 1e-2) << "position " << i;
    worst = std::max(worst, err);
    worst_ref = std::max(worst_ref, rel_error(b, ref_logits(ref, std::span(tokens).first(i + 1), {.kv_fp16 = true})));
  }
  EXPECT_GT(worst, 1e-6);
  EXPECT_LT(worst_ref, 1e-4);
  RecordProperty("worst_relative_change", sci(worst));
  RecordProperty("worst_error_vs_fp16_oracle", sci(worst_ref));
}

// CpuOptions::kv_noise (the decoder tests' measure of a KV cache's sensitivity): keys and values
// times 1 + 1e-3 u, |u| < 1, move the logits by about that much (8.9e-4 measured), and the same
// noise every run.
TEST_F(CpuModelTest, KvNoiseIsSmallAndReproducible) {
  const PqmFile f = PqmFile::open(path_);
  const std::vector<int32_t> tokens = random_tokens(20, config_.vocab_size, 6);
  CpuModel clean(f), noisy(f, CpuOptions{.kv_noise = 1e-3f}), again(f, CpuOptions{.kv_noise = 1e-3f});
  double worst = 0.0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::vector<float> a = to_vector(clean.forward(tokens[i], static_cast<int32_t>(i)));
    const std::vector<float> b = to_vector(noisy.forward(tokens[i], static_cast<int32_t>(i)));
    EXPECT_EQ(to_vector(again.forward(tokens[i], static_cast<int32_t>(i))), b) << "position " << i;
    worst = std::max(worst, rel_error(b, a));
  }
  EXPECT_GT(worst, 1e-5);
  EXPECT_LT(worst, 1e-2);
  RecordProperty("worst_relative_change", sci(worst));
}

// The thread count changes nothing: each row is summed by one thread in the same order. Every
// product is split here (parallel_min_work 1), over 3 threads (uneven splits: 72 / 3 rows,
// 100 / 3, 97 / 3), and over more threads than some products have rows.
TEST_F(CpuModelTest, ThreadsGiveIdenticalResults) {
  const PqmFile f = PqmFile::open(path_);
  const std::vector<int32_t> tokens = random_tokens(8, config_.vocab_size, 4);
  CpuModel one(f, CpuOptions{.threads = 1}), three(f, CpuOptions{.threads = 3, .parallel_min_work = 1}),
      many(f, CpuOptions{.threads = 40, .parallel_min_work = 1});
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::vector<float> a = to_vector(one.forward(tokens[i], static_cast<int32_t>(i)));
    EXPECT_EQ(to_vector(three.forward(tokens[i], static_cast<int32_t>(i))), a);
    EXPECT_EQ(to_vector(many.forward(tokens[i], static_cast<int32_t>(i))), a);
  }
}

TEST_F(CpuModelTest, ClearErrors) {
  const PqmFile f = PqmFile::open(path_);
  CpuModel m(f);
  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no exception)";
  };
  EXPECT_NE(message([&] { m.forward(97, 0); }).find("token 97 is outside the vocabulary [0, 97)"), std::string::npos);
  EXPECT_NE(message([&] { m.forward(-1, 0); }).find("token -1"), std::string::npos);
  EXPECT_NE(message([&] { m.forward(3, -1); }).find("position -1 is negative"), std::string::npos);
  EXPECT_NE(message([&] { m.forward(3, 1); }).find("position 1 needs positions 0..0"), std::string::npos);
  std::vector<int32_t> tokens(32, 5);
  m.prefill(tokens, 0);  // fills the whole context
  EXPECT_NE(message([&] { m.forward(3, 32); }).find("position 32 is outside the context [0, 32)"), std::string::npos);
  m.reset();
  m.prefill(std::span(tokens).first(4), 0);
  EXPECT_NE(message([&] { m.prefill(tokens, 4); }).find("outside the context"), std::string::npos);
  EXPECT_EQ(m.cached_positions(), 4);  // a refused prefill leaves the cache alone
  tokens[2] = 500;
  EXPECT_THROW(m.prefill(std::span(tokens).first(3), 4), std::out_of_range);
  EXPECT_EQ(m.cached_positions(), 4);
  EXPECT_THROW(m.prefill({}, 0), std::invalid_argument);
  EXPECT_THROW(CpuModel(f, CpuOptions{.threads = -1}), std::invalid_argument);
  EXPECT_THROW(CpuModel(f, CpuOptions{.kv_bits = 9}), std::invalid_argument);
  EXPECT_THROW(CpuModel(f, CpuOptions{.kv_noise = -1e-3f}), std::invalid_argument);
  EXPECT_THROW(CpuModel(f, CpuOptions{.kv_noise = std::numeric_limits<float>::quiet_NaN()}), std::invalid_argument);
  ASSERT_EQ(config_.head_dim, 12);  // the PolarQuant KV cache rotates power-of-two heads only
  EXPECT_NE(message([&] { CpuModel(f, CpuOptions{.kv_bits = 8}); }).find("power-of-two head size"), std::string::npos);
}

TEST_F(CpuModelTest, NonFiniteWeightIsAModelError) {
  const std::string path = dir_.file("nan.pqm");
  std::vector<float> norm(static_cast<size_t>(config_.dim), 1.0f);
  norm[7] = std::numeric_limits<float>::quiet_NaN();
  write_model(path, config_, Storage::f32, 3, {{"layers.1.mlp_norm", norm}});
  const PqmFile f = PqmFile::open(path);
  try {
    CpuModel m(f);
    FAIL() << "no error";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'layers.1.mlp_norm': value 7 is not finite"), std::string::npos) << e.what();
  }
}

// ---- stories260K: the llama2.c importer end to end ---------------------------------------------

// A llama2.c checkpoint read directly in its own layout (header of 7 int32, then fp32 arrays).
struct Llama2c {
  int dim = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0, seq_len = 0;
  bool shared = true;
  std::vector<float> data;
  size_t embed = 0, rms_att = 0, wq = 0, wk = 0, wv = 0, wo = 0, rms_ffn = 0, w1 = 0, w2 = 0, w3 = 0, rms_final = 0,
         freq_real = 0, freq_imag = 0, wcls = 0;
  const float* at(size_t offset) const { return data.data() + offset; }
};

Llama2c read_llama2c(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  int32_t h[7];
  in.read(reinterpret_cast<char*>(h), sizeof h);
  Llama2c m;
  m.dim = h[0], m.hidden = h[1], m.layers = h[2], m.heads = h[3], m.kv_heads = h[4], m.vocab = std::abs(h[5]),
  m.seq_len = h[6], m.shared = h[5] > 0;
  std::vector<char> rest((std::istreambuf_iterator<char>(in)), {});
  m.data.resize(rest.size() / 4);
  std::memcpy(m.data.data(), rest.data(), m.data.size() * 4);
  const size_t D = static_cast<size_t>(m.dim), H = static_cast<size_t>(m.hidden), L = static_cast<size_t>(m.layers);
  const size_t hd = D / static_cast<size_t>(m.heads), kv = hd * static_cast<size_t>(m.kv_heads);
  size_t o = 0;
  auto take = [&](size_t& field, size_t n) { field = o; o += n; };
  take(m.embed, static_cast<size_t>(m.vocab) * D);
  take(m.rms_att, L * D);
  take(m.wq, L * D * D);
  take(m.wk, L * kv * D);
  take(m.wv, L * kv * D);
  take(m.wo, L * D * D);
  take(m.rms_ffn, L * D);
  take(m.w1, L * H * D);
  take(m.w2, L * D * H);
  take(m.w3, L * H * D);
  take(m.rms_final, D);
  take(m.freq_real, static_cast<size_t>(m.seq_len) * hd / 2);
  take(m.freq_imag, static_cast<size_t>(m.seq_len) * hd / 2);
  take(m.wcls, m.shared ? 0 : static_cast<size_t>(m.vocab) * D);
  if (o != m.data.size()) throw std::runtime_error(path + ": size does not match its header");
  return m;
}

// llama2.c's forward, in fp64 over the whole sequence at once (causal): interleaved RoPE pairs
// (2i, 2i+1) rotated by the file's own freq_cis tables. Returns the logits of every position.
std::vector<std::vector<double>> llama2c_logits(const Llama2c& m, std::span<const int32_t> tokens) {
  const size_t D = static_cast<size_t>(m.dim), H = static_cast<size_t>(m.hidden), T = tokens.size();
  const size_t nh = static_cast<size_t>(m.heads), hd = D / nh, kv = hd * static_cast<size_t>(m.kv_heads);
  auto mv = [](const float* W, const std::vector<double>& x, size_t rows) {
    std::vector<double> y(rows, 0.0);
    for (size_t i = 0; i < rows; ++i)
      for (size_t j = 0; j < x.size(); ++j) y[i] += double{W[i * x.size() + j]} * x[j];
    return y;
  };
  auto norm = [&](const std::vector<double>& x, const float* w) {
    double ss = 0.0;
    for (double v : x) ss += v * v;
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] / std::sqrt(ss / static_cast<double>(D) + 1e-5) * w[i];
    return y;
  };
  auto rotate = [&](std::vector<double>& v, size_t pos) {
    for (size_t i = 0; i < v.size(); i += 2) {
      const size_t j = (i % hd) / 2;
      const double c = m.at(m.freq_real)[pos * hd / 2 + j], s = m.at(m.freq_imag)[pos * hd / 2 + j];
      const double a = v[i], b = v[i + 1];
      v[i] = a * c - b * s;
      v[i + 1] = a * s + b * c;
    }
  };
  std::vector<std::vector<double>> x(T);
  for (size_t t = 0; t < T; ++t) x[t].assign(m.at(m.embed) + static_cast<size_t>(tokens[t]) * D, m.at(m.embed) + (static_cast<size_t>(tokens[t]) + 1) * D);
  for (size_t l = 0; l < static_cast<size_t>(m.layers); ++l) {
    std::vector<std::vector<double>> q(T), k(T), v(T);
    for (size_t t = 0; t < T; ++t) {
      const std::vector<double> h = norm(x[t], m.at(m.rms_att) + l * D);
      q[t] = mv(m.at(m.wq) + l * D * D, h, D);
      k[t] = mv(m.at(m.wk) + l * kv * D, h, kv);
      v[t] = mv(m.at(m.wv) + l * kv * D, h, kv);
      rotate(q[t], t);
      rotate(k[t], t);
    }
    for (size_t t = 0; t < T; ++t) {
      std::vector<double> att(D, 0.0);
      for (size_t h = 0; h < nh; ++h) {
        const size_t kvh = h / (nh / static_cast<size_t>(m.kv_heads));
        std::vector<double> s(t + 1);
        for (size_t j = 0; j <= t; ++j) {
          for (size_t i = 0; i < hd; ++i) s[j] += q[t][h * hd + i] * k[j][kvh * hd + i];
          s[j] /= std::sqrt(static_cast<double>(hd));
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double sum = 0.0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (size_t j = 0; j <= t; ++j)
          for (size_t i = 0; i < hd; ++i) att[h * hd + i] += s[j] / sum * v[j][kvh * hd + i];
      }
      const std::vector<double> o = mv(m.at(m.wo) + l * D * D, att, D);
      for (size_t i = 0; i < D; ++i) x[t][i] += o[i];
    }
    for (size_t t = 0; t < T; ++t) {
      const std::vector<double> h = norm(x[t], m.at(m.rms_ffn) + l * D);
      std::vector<double> g = mv(m.at(m.w1) + l * H * D, h, H);
      const std::vector<double> u = mv(m.at(m.w3) + l * H * D, h, H);
      for (size_t i = 0; i < H; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const std::vector<double> d = mv(m.at(m.w2) + l * D * H, g, D);
      for (size_t i = 0; i < D; ++i) x[t][i] += d[i];
    }
  }
  std::vector<std::vector<double>> logits(T);
  for (size_t t = 0; t < T; ++t)
    logits[t] = mv(m.at(m.shared ? m.embed : m.wcls), norm(x[t], m.at(m.rms_final)), static_cast<size_t>(m.vocab));
  return logits;
}

std::string stories_path() { return std::string(PQVK_TEST_DATA) + "/stories260K.bin"; }

int32_t argmax(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}
int32_t argmax(const std::vector<double>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

class CpuStories260K : public ::testing::Test {
 protected:
  void SetUp() override {
    bin_ = stories_path();
    ASSERT_TRUE(std::filesystem::exists(bin_)) << bin_ << " is missing (the bundled model, tests/data/README.md)";
    direct_ = read_llama2c(bin_);
    src_ = model::import_llama2c(bin_);
  }
  // The imported tensors at full precision (f32); `raw_qk` keeps llama2.c's q/k row order.
  std::string write_f32(const std::string& name, bool raw_qk = false) {
    const std::string path = dir_.file(name);
    model::PqmWriter w(path);
    const size_t D = static_cast<size_t>(direct_.dim), kv = D / static_cast<size_t>(direct_.heads) * static_cast<size_t>(direct_.kv_heads);
    for (const model::SourceTensor& t : src_.tensors) {
      std::vector<float> v = t.load_floats();
      const size_t l = t.spec.layer < 0 ? 0 : static_cast<size_t>(t.spec.layer);
      if (raw_qk && t.spec.role == Role::attn_q) v.assign(direct_.at(direct_.wq) + l * D * D, direct_.at(direct_.wq) + (l + 1) * D * D);
      if (raw_qk && t.spec.role == Role::attn_k) v.assign(direct_.at(direct_.wk) + l * kv * D, direct_.at(direct_.wk) + (l + 1) * kv * D);
      w.add_f32(t.spec.name, t.spec.shape, v);
    }
    w.finish(src_.config, src_.tokenizer.info);
    return path;
  }
  TempDir dir_;
  std::string bin_;
  Llama2c direct_;
  model::SourceModel src_;
};

// The stored freq_cis tables are exactly what the runtime computes: theta^(-2j/head_dim), 10000.
TEST_F(CpuStories260K, StoredRopeTablesMatchTheFormula) {
  const size_t hd = static_cast<size_t>(direct_.dim / direct_.heads);
  const std::vector<double> f = llm::rope_inverse_frequencies(src_.config);
  ASSERT_EQ(f.size(), hd / 2);
  double worst = 0.0;
  for (size_t pos = 0; pos < static_cast<size_t>(direct_.seq_len); ++pos)
    for (size_t j = 0; j < hd / 2; ++j) {
      worst = std::max(worst, std::abs(direct_.at(direct_.freq_real)[pos * hd / 2 + j] - std::cos(pos * f[j])));
      worst = std::max(worst, std::abs(direct_.at(direct_.freq_imag)[pos * hd / 2 + j] - std::sin(pos * f[j])));
    }
  RecordProperty("worst_table_error", sci(worst));
  EXPECT_LT(worst, 1e-4);  // fp32 tables (computed in fp32 at training time)
}

// Imported at f32, CpuModel (rotate-half RoPE on permuted q/k rows) equals llama2.c's own
// computation (interleaved RoPE on the original rows) at every position: the importer's
// permutation is right. fp32 vs fp64 over 5 layers: ~1e-6 of the logits' scale; bound 1e-4.
// The same file with the rows left in llama2.c's order disagrees by far more.
TEST_F(CpuStories260K, ImportedModelMatchesLlama2cLayout) {
  const std::vector<int32_t> tokens = {1, 403, 407, 261, 378, 285, 429, 345, 261, 266, 300, 373,
                                       419, 290, 275, 272, 322, 311, 260, 500, 280, 365, 391, 302};
  const std::vector<std::vector<double>> want = llama2c_logits(direct_, tokens);
  const PqmFile f32 = PqmFile::open(write_f32("stories-f32.pqm"));
  const PqmFile raw = PqmFile::open(write_f32("stories-raw-qk.pqm", true));
  CpuModel m(f32), unpermuted(raw);
  double worst = 0.0, worst_raw = 0.0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::span<const float> got = m.forward(tokens[i], static_cast<int32_t>(i));
    for (float l : got) ASSERT_TRUE(std::isfinite(l));
    ASSERT_GT(spread(want[i]), 1.0);
    worst = std::max(worst, rel_error(got, want[i]));
    worst_raw = std::max(worst_raw, rel_error(unpermuted.forward(tokens[i], static_cast<int32_t>(i)), want[i]));
  }
  EXPECT_LT(worst, 1e-4);
  EXPECT_GT(worst_raw, 1e-2);
  RecordProperty("worst_relative_error", sci(worst));
  RecordProperty("unpermuted_relative_error", sci(worst_raw));
}

// Greedy continuation: the same tokens from CpuModel on the f32 and fp16 imports, from the
// direct llama2.c computation, and again after reset(); logits finite, the text not one token.
TEST_F(CpuStories260K, GreedyContinuationIsStable) {
  const PqmFile f32 = PqmFile::open(write_f32("stories-f32.pqm"));
  const std::string f16_path = dir_.file("stories-f16.pqm");
  model::quantize_model(src_, f16_path, model::QuantizeOptions{.method = "fp16", .threads = 2});
  const PqmFile f16 = PqmFile::open(f16_path);
  ASSERT_EQ(f16.tensor("layers.0.attn.q").kind, model::TensorKind::f16);

  const std::vector<int32_t> prompt = {1, 403, 407, 261};
  auto greedy = [&](CpuModel& m, int n) {
    std::vector<int32_t> seq = prompt;
    std::span<const float> logits = m.prefill(prompt, 0);
    for (int i = 0; i < n; ++i) {
      for (float l : logits) EXPECT_TRUE(std::isfinite(l));
      seq.push_back(argmax(logits));
      logits = m.forward(seq.back(), static_cast<int32_t>(seq.size() - 1));
    }
    return std::vector<int32_t>(seq.begin() + static_cast<ptrdiff_t>(prompt.size()), seq.end());
  };
  CpuModel m32(f32), m16(f16);
  const std::vector<int32_t> g32 = greedy(m32, 24);
  m32.reset();
  EXPECT_EQ(greedy(m32, 24), g32);
  EXPECT_EQ(greedy(m16, 24), g32);
  EXPECT_GE(std::set<int32_t>(g32.begin(), g32.end()).size(), 4u) << "degenerate continuation";

  std::vector<int32_t> all = prompt;
  all.insert(all.end(), g32.begin(), g32.end() - 1);
  const std::vector<std::vector<double>> direct = llama2c_logits(direct_, all);
  for (size_t i = 0; i < g32.size(); ++i) EXPECT_EQ(argmax(direct[prompt.size() - 1 + i]), g32[i]) << "step " << i;
  std::string ids;
  for (int32_t t : g32) ids += std::to_string(t) + " ";
  RecordProperty("greedy", ids);
}

// The PolarQuant KV cache (CpuOptions::kv_bits) on a real model at the level of token ids: 400
// tokens sampled from the f32 model (fp16 KV, temperature 1), then the perplexity of that
// sequence under fp16, 8-bit and 4-bit PolarQuant keys and values (head size 8 here: each head
// vector is rotated by H_8; bench/RESULTS.md records these numbers beside the bundled model's).
// Bounds: the measured values with room, and fewer bits worse.
TEST_F(CpuStories260K, PolarQuantKvCachePerplexity) {
  const PqmFile f32 = PqmFile::open(write_f32("stories-f32.pqm"));
  std::vector<int32_t> seq = {1};
  {
    CpuModel m(f32, CpuOptions{.kv_fp16 = true});
    Sampler sampler(SamplerConfig{.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
                                  .repeat_penalty = 1.0f, .repeat_last_n = 0, .seed = 11});
    std::span<const float> logits = m.forward(seq[0], 0);
    while (seq.size() < 400) {
      seq.push_back(sampler.sample(logits, seq));
      logits = m.forward(seq.back(), static_cast<int32_t>(seq.size() - 1));
    }
  }
  auto ppl = [&](CpuOptions o) {
    CpuModel m(f32, o);
    double nll = 0.0;
    for (size_t i = 0; i + 1 < seq.size(); ++i) {
      const std::span<const float> l = m.forward(seq[i], static_cast<int32_t>(i));
      double mx = -1e300, sum = 0.0;
      for (float v : l) mx = std::max(mx, double(v));
      for (float v : l) sum += std::exp(double(v) - mx);
      nll += std::log(sum) + mx - double(l[static_cast<size_t>(seq[i + 1])]);
    }
    return std::exp(nll / double(seq.size() - 1));
  };
  const double f16 = ppl({.kv_fp16 = true}), pq8 = ppl({.kv_bits = 8}), pq4 = ppl({.kv_bits = 4});
  RecordProperty("ppl_f16", std::to_string(f16));
  RecordProperty("ppl_pq8", std::to_string(pq8));
  RecordProperty("ppl_pq4", std::to_string(pq4));
  std::printf("[pqvk] stories260K, 400 sampled ids: PPL f16 KV %.4f, pq8 %.4f (%+.3f%%), pq4 %.4f (%+.3f%%)\n", f16, pq8,
              100 * (pq8 / f16 - 1), pq4, 100 * (pq4 / f16 - 1));
  // Measured: f16 9.4153, pq8 9.5528 (+1.46%), pq4 42.2 (+348%: 16 levels for 8-dimensional heads
  // are too coarse; issue 13's targets are for real head sizes, see the bundled model's numbers).
  EXPECT_LT(std::abs(pq8 / f16 - 1), 0.03);
  EXPECT_GT(pq4, pq8 * 1.5);
  EXPECT_LT(pq4, f16 * 8);
}

// ---- Sampler ----------------------------------------------------------------------------------

SamplerConfig plain(float temperature, uint64_t seed = 1) {
  return {.temperature = temperature, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .repeat_penalty = 1.0f,
          .repeat_last_n = 0, .seed = seed};
}

std::vector<float> random_logits(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  return random_values(n, rng, 2.0);
}

std::vector<double> softmax(const std::vector<float>& logits, double temperature) {
  std::vector<double> p(logits.size());
  double mx = -1e300, sum = 0.0;
  for (float l : logits) mx = std::max(mx, l / temperature);
  for (size_t i = 0; i < p.size(); ++i) sum += (p[i] = std::exp(logits[i] / temperature - mx));
  for (double& x : p) x /= sum;
  return p;
}

std::vector<double> frequencies(Sampler& s, const std::vector<float>& logits, int n) {
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < n; ++i) f[static_cast<size_t>(s.sample(logits, {}))] += 1.0 / n;
  return f;
}

std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

TEST(Sampler, GreedyIsArgmax) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const std::vector<float> logits = random_logits(1000, seed);
    Sampler s(plain(0.0f));
    EXPECT_EQ(s.sample(logits, {}), argmax(logits));
  }
  Sampler s(plain(0.0f));
  EXPECT_EQ(s.sample(std::vector<float>{1.0f, 3.0f, -2.0f, 3.0f}, {}), 1);  // ties: the lowest id
}

TEST(Sampler, TopK1IsArgmax) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const std::vector<float> logits = random_logits(500, seed + 100);
    SamplerConfig c = plain(1.5f, seed);
    c.top_k = 1;
    Sampler s(c);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(s.sample(logits, {}), argmax(logits));
  }
}

TEST(Sampler, SeedsReproduce) {
  const std::vector<float> logits = random_logits(50, 7);
  auto run = [&](uint64_t seed) {
    Sampler s(SamplerConfig{.temperature = 1.0f, .top_k = 40, .top_p = 0.95f, .min_p = 0.01f, .seed = seed});
    std::vector<int32_t> out, recent;
    for (int i = 0; i < 200; ++i) {
      out.push_back(s.sample(logits, recent));
      recent.push_back(out.back());
    }
    return out;
  };
  const std::vector<int32_t> a = run(42);
  EXPECT_EQ(run(42), a);
  EXPECT_NE(run(43), a);
  EXPECT_GE(std::set<int32_t>(a.begin(), a.end()).size(), 10u);
  // Pinned: std::mt19937_64's sequence is fixed by the standard and the sampler derives its
  // floats from raw bits, so this is what every platform must produce.
  Sampler s(plain(1.0f, 2024));
  std::vector<int32_t> pinned;
  for (int i = 0; i < 12; ++i) pinned.push_back(s.sample(logits_of({0.4, 0.3, 0.2, 0.1}), {}));
  EXPECT_EQ(pinned, (std::vector<int32_t>{1, 2, 0, 0, 0, 0, 3, 1, 0, 1, 1, 1}));
}

// 100k samples: the standard deviation of a frequency is <= sqrt(0.25 / 1e5) = 0.0016, so a
// bound of 0.01 is > 6 sigma; T = 0.7 moves some probabilities by > 0.05 from T = 1, so a
// sampler ignoring the temperature fails.
TEST(Sampler, TemperatureMatchesSoftmax) {
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 1.4f, 0.0f, -2.0f};
  const std::vector<double> want = softmax(logits, 0.7), t1 = softmax(logits, 1.0);
  double moved = 0.0;
  for (size_t i = 0; i < want.size(); ++i) moved = std::max(moved, std::abs(want[i] - t1[i]));
  ASSERT_GT(moved, 0.05);
  Sampler s(plain(0.7f, 11));
  const std::vector<double> got = frequencies(s, logits, 100000);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 0.01) << "token " << i;
}

TEST(Sampler, TopKTopPMinPExcludeWhatTheyShould) {
  const std::vector<float> logits = logits_of({0.5, 0.3, 0.12, 0.05, 0.03});
  auto support = [&](SamplerConfig c) {
    Sampler s(c);
    const std::vector<double> f = frequencies(s, logits, 20000);
    std::vector<int32_t> ids;
    for (size_t i = 0; i < f.size(); ++i)
      if (f[i] > 0.0) ids.push_back(static_cast<int32_t>(i));
    return ids;
  };
  SamplerConfig c = plain(1.0f);
  EXPECT_EQ(support(c), (std::vector<int32_t>{0, 1, 2, 3, 4}));
  c.top_k = 2;
  EXPECT_EQ(support(c), (std::vector<int32_t>{0, 1}));
  c = plain(1.0f);
  c.top_p = 0.75f;  // 0.5 < 0.75 <= 0.8
  EXPECT_EQ(support(c), (std::vector<int32_t>{0, 1}));
  c.top_p = 0.85f;  // 0.8 < 0.85 <= 0.92
  EXPECT_EQ(support(c), (std::vector<int32_t>{0, 1, 2}));
  c = plain(1.0f);
  c.min_p = 0.2f;  // threshold 0.1: 0.12 stays, 0.05 goes
  EXPECT_EQ(support(c), (std::vector<int32_t>{0, 1, 2}));
  c.min_p = 0.7f;  // threshold 0.35
  EXPECT_EQ(support(c), (std::vector<int32_t>{0}));
  // Renormalized: with top_p 0.75, tokens 0 and 1 in the ratio 0.5 : 0.3.
  c = plain(1.0f, 5);
  c.top_p = 0.75f;
  Sampler s(c);
  EXPECT_NEAR(frequencies(s, logits, 50000)[0], 0.625, 0.01);
  // -inf masks a token.
  Sampler m(plain(1.0f, 3));
  std::vector<float> masked = {0.0f, -std::numeric_limits<float>::infinity(), 0.0f};
  for (int i = 0; i < 1000; ++i) EXPECT_NE(m.sample(masked, {}), 1);
}

TEST(Sampler, RepetitionPenaltyMath) {
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f, -0.25f};
  const std::vector<int32_t> recent = {0, 4, 1, 1, 3};
  llm::apply_repeat_penalty(l, recent, 1.1f, 3);  // window {1, 1, 3}: each distinct token once
  EXPECT_EQ(l, (std::vector<float>{2.0f, -1.0f * 1.1f, 0.5f, 3.0f / 1.1f, -0.25f}));
  llm::apply_repeat_penalty(l, recent, 1.5f, 0);  // off
  llm::apply_repeat_penalty(l, recent, 1.0f, 5);  // off
  EXPECT_EQ(l, (std::vector<float>{2.0f, -1.0f * 1.1f, 0.5f, 3.0f / 1.1f, -0.25f}));
  std::vector<float> all = {2.0f, -1.0f, 0.5f, 3.0f, -0.25f};
  llm::apply_repeat_penalty(all, recent, 2.0f, 100);  // window longer than recent: all of it
  EXPECT_EQ(all, (std::vector<float>{1.0f, -2.0f, 0.5f, 1.5f, -0.5f}));

  // Through the sampler (greedy): the penalty is applied before the choice, once per token.
  SamplerConfig c = plain(0.0f);
  c.repeat_penalty = 1.1f;
  c.repeat_last_n = 64;
  Sampler s(c);
  EXPECT_EQ(s.sample(std::vector<float>{2.0f, 1.9f}, std::vector<int32_t>{0}), 1);     // 1.818 < 1.9
  EXPECT_EQ(s.sample(std::vector<float>{2.0f, 1.7f}, std::vector<int32_t>{0, 0}), 0);  // once: 1.818 > 1.7
  EXPECT_EQ(s.sample(std::vector<float>{-1.0f, -1.05f}, std::vector<int32_t>{0}), 1);  // -1.1 < -1.05
  EXPECT_THROW(s.sample(std::vector<float>{1.0f, 2.0f}, std::vector<int32_t>{2}), std::invalid_argument);
}

TEST(Sampler, PresenceAndFrequencyPenaltiesMath) {
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f, -0.25f};
  const std::vector<int32_t> generated = {3, 1, 3, 3};  // token 3 three times, token 1 once
  llm::apply_presence_frequency_penalty(l, generated, 0.5f, 0.25f);
  EXPECT_EQ(l, (std::vector<float>{2.0f, -1.0f - 0.75f, 0.5f, 3.0f - 1.25f, -0.25f}));
  llm::apply_presence_frequency_penalty(l, generated, 0.0f, 0.0f);  // off
  EXPECT_EQ(l, (std::vector<float>{2.0f, -1.0f - 0.75f, 0.5f, 3.0f - 1.25f, -0.25f}));
  std::vector<float> neg = {1.0f, 1.0f};
  llm::apply_presence_frequency_penalty(neg, std::vector<int32_t>{1}, -1.0f, 0.0f);  // negative: encourages
  EXPECT_EQ(neg, (std::vector<float>{1.0f, 2.0f}));
  EXPECT_THROW(llm::apply_presence_frequency_penalty(neg, std::vector<int32_t>{2}, 1.0f, 0.0f), std::invalid_argument);

  // Through the sampler (greedy): only `generated` counts, not `recent` (the prompt).
  SamplerConfig c = plain(0.0f);
  c.frequency_penalty = 0.2f;
  Sampler s(c);
  EXPECT_FALSE(s.is_plain_greedy());
  const std::vector<float> logits = {2.0f, 1.7f};
  EXPECT_EQ(s.sample(logits, std::vector<int32_t>{0, 0, 0}, {}), 0);
  EXPECT_EQ(s.sample(logits, {}, std::vector<int32_t>{0}), 0);        // 1.8 > 1.7
  EXPECT_EQ(s.sample(logits, {}, std::vector<int32_t>{0, 0}), 1);     // 1.6 < 1.7
  c = plain(0.0f);
  c.presence_penalty = 0.35f;
  Sampler p(c);
  EXPECT_EQ(p.sample(logits, {}, std::vector<int32_t>{0}), 1);        // 1.65 < 1.7
  EXPECT_EQ(p.sample(logits, {}, std::vector<int32_t>{0, 1}), 0);     // both present: 1.65 > 1.35
  EXPECT_TRUE(Sampler(plain(0.0f)).is_plain_greedy());
  EXPECT_FALSE(Sampler(plain(0.5f)).is_plain_greedy());
}

TEST(Sampler, BadConfigsAndInputsThrow) {
  auto bad = [](SamplerConfig c, const std::string& what) {
    try {
      Sampler s(c);
      ADD_FAILURE() << "no error for " << what;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  bad({.temperature = -0.1f}, "temperature");
  bad({.temperature = std::numeric_limits<float>::infinity()}, "temperature");
  bad({.top_k = -1}, "top_k");
  bad({.top_p = 0.0f}, "top_p must be in (0, 1]");
  bad({.top_p = 1.5f}, "top_p must be in (0, 1] (1: off), got 1.5");
  bad({.top_p = std::numeric_limits<float>::quiet_NaN()}, "got nan");
  bad({.min_p = -0.5f}, "min_p");
  bad({.min_p = 1.01f}, "min_p");
  bad({.repeat_penalty = 0.0f}, "repeat_penalty");
  bad({.repeat_last_n = -1}, "repeat_last_n");
  bad({.presence_penalty = 2.5f}, "presence_penalty must be in [-2, 2]");
  bad({.frequency_penalty = -3.0f}, "frequency_penalty");
  bad({.frequency_penalty = std::numeric_limits<float>::quiet_NaN()}, "frequency_penalty");
  EXPECT_NO_THROW(Sampler(SamplerConfig{}));

  Sampler s(plain(1.0f));
  EXPECT_THROW(s.sample({}, {}), std::invalid_argument);
  EXPECT_THROW(s.sample(std::vector<float>{0.0f, std::numeric_limits<float>::quiet_NaN()}, {}), std::invalid_argument);
  EXPECT_THROW(s.sample(std::vector<float>{0.0f, std::numeric_limits<float>::infinity()}, {}), std::invalid_argument);
  const float ninf = -std::numeric_limits<float>::infinity();
  EXPECT_THROW(s.sample(std::vector<float>{ninf, ninf}, {}), std::invalid_argument);
}

}  // namespace
}  // namespace pqvk
