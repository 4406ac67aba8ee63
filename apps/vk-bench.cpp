// vk-bench: headless throughput runs.
//   vk-bench [-m MODEL.pqm | --synthetic SHAPE] -p 512 -n 128 -r 5
//                      whole models in the conventions of llama-bench: pp<N> (prompt
//                      processing) and tg<N> (generation) in tokens/s, mean +- standard
//                      deviation over repetitions after a warm-up; the per-kernel breakdown of a
//                      decode step and a prefill pass from GPU timestamps; device memory; the
//                      roofline (bytes a generated token reads over the copy bandwidth measured
//                      in the same run). Markdown, JSON or CSV.
//   vk-bench ... -np 1,8,32
//                      continuous batching, llama.cpp's batched-bench measure: N sequences
//                      decoding together (one batched step per token of all of them), the
//                      aggregate tokens/s of the N.
//   vk-bench kernels   FWHT, GEMV (M = 1) and GEMM (M = 512) at LLM shapes for Q3..Q6 and fp16,
//                      and the causal prefill attention at Llama-3-8B's heads (M = 512), timed
//                      with GPU timestamps, against the device-to-device copy bandwidth measured
//                      in the same run.
//   vk-bench --list-devices
// Kernel weights are random codes and scales (timing does not depend on their values, but never
// on zeros); matrices smaller than 256 MiB are replicated and cycled so that repeated runs read
// device memory, not the last-level cache. Synthetic models (--synthetic) have the exact shape of
// a published checkpoint and random PolarQuant (or fp16) weights generated on the device.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "kernels/kernels.h"
#include "llm/gpu_model.h"
#include "model/config.h"
#include "model/convert.h"
#include "model/pqm.h"
#include "quant/polarquant.h"
#include "vk/context.h"
#include "kv_type_option.h"

namespace {

using pqvk::Kernels;
using pqvk::Layout;
namespace vk = pqvk::vk;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// GPU clocks drop while the host prepares the next case and take a second or more to climb
// back: every measurement replays its command buffer until three consecutive replays agree
// within 3% (at least g_warmup_ms, at most 20 times that) and reports the last replay.
double g_warmup_ms = 1000;

// Times `reps` repetitions of record(cmd, rep), each between two timestamps and separated by
// barriers; returns the median in nanoseconds (and the minimum through *min_ns).
template <class F>
double time_median_ns(vk::Context& ctx, int reps, F&& record, double* min_ns = nullptr) {
  auto cmd = ctx.commands(static_cast<uint32_t>(2 * reps));
  for (int r = 0; r < reps; ++r) {
    cmd.timestamp(2 * r);
    record(cmd, r);
    cmd.timestamp(2 * r + 1);
    cmd.barrier();
  }
  auto replay_median = [&] {
    cmd.run();
    auto ts = cmd.timestamps_ns();
    std::vector<double> d;
    for (int r = 0; r < reps; ++r) d.push_back(ts[2 * r + 1] - ts[2 * r]);
    return median(d);
  };
  const auto start = std::chrono::steady_clock::now();
  auto elapsed_ms = [&] { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count(); };
  std::vector<double> history;
  for (;;) {
    history.push_back(replay_median());
    const size_t n = history.size();
    const bool stable = n >= 3 && std::max({history[n - 1], history[n - 2], history[n - 3]}) <=
                                      1.03 * std::min({history[n - 1], history[n - 2], history[n - 3]});
    if ((stable && elapsed_ms() >= g_warmup_ms) || elapsed_ms() >= 20 * g_warmup_ms || g_warmup_ms == 0) break;
  }
  auto ts = cmd.timestamps_ns();
  std::vector<double> d;
  for (int r = 0; r < reps; ++r) d.push_back(ts[2 * r + 1] - ts[2 * r]);
  if (min_ns) *min_ns = *std::min_element(d.begin(), d.end());
  return median(d);
}

// Device-to-device copy bandwidth in GB/s (bytes read + bytes written): the better of
// vkCmdCopyBuffer and a plain shader copy.
double copy_bandwidth(vk::Context& ctx, Kernels& k, size_t bytes, int reps, double* api_gbs, double* shader_gbs) {
  vk::Buffer a = ctx.buffer(bytes, vk::MemoryKind::device, "copy source");
  vk::Buffer b = ctx.buffer(bytes, vk::MemoryKind::device, "copy destination");
  {
    auto cmd = ctx.commands();
    cmd.fill(a, 0x3f800001u);
    cmd.run();
  }
  *api_gbs = 2.0 * double(bytes) / time_median_ns(ctx, reps, [&](vk::Commands& cmd, int) { cmd.copy(a, b, bytes); });
  *shader_gbs = 2.0 * double(bytes) / time_median_ns(ctx, reps, [&](vk::Commands& cmd, int) { k.copy(cmd, a, b, bytes); });
  return std::max(*api_gbs, *shader_gbs);
}

pq::QuantMatrix random_quant(size_t rows, size_t cols, int bits, std::mt19937& rng) {
  pq::QuantMatrix q;
  q.method = pq::Method::pq;
  q.bits = bits;
  q.block = 128;
  q.rotated = true;
  q.rows = rows;
  q.cols = cols;
  q.cols_padded = (cols + 127) / 128 * 128;
  const auto& c = pq::lloyd_max_centroids(bits);
  for (double v : c) q.codebook.push_back(static_cast<float>(v / std::sqrt(128.0)));
  q.codes.resize(pq::packed_words(rows, q.cols_padded, bits));
  for (auto& w : q.codes) w = rng();
  q.scales.resize(rows * q.blocks_per_row());
  std::uniform_real_distribution<float> u(0.5f, 2.0f);
  for (auto& s : q.scales) s = pq::f32_to_f16(u(rng));
  return q;
}

struct Row {
  std::string kernel, format, shape;
  uint32_t m = 1;
  double us = 0, gbs = 0, pct = 0, tflops = 0, min_us = 0;
  double check_err = -1;  // --check: relative error against the CPU twin (-1: not checked)
  double check_tol = 1e-4;  // ... and its bound: fp32 sums 1e-4; fp16 operands (coopmat) 3e-3
  std::string path;         // quantized GEMM: the shader that ran (Kernels::gemm_path_name)
};

// Which GEMM prefill passes of m tokens run, in words (Kernels::gemm chooses per call).
std::string gemm_path_line(const Kernels& k, uint32_t m) {
  const auto path = k.gemm_path(m);
  std::string s = "quantized GEMM at M = " + std::to_string(m) + ": " + Kernels::gemm_path_name(path);
  if (path == Kernels::GemmPath::coopmat) return s + " (pq_gemm_coopmat: fp16 tiles, VK_NV_cooperative_matrix, fp32 sums)";
  if (path == Kernels::GemmPath::coopmat_emulated) return s + " (pq_gemm_coopmat_emulated: scalar stand-ins, a test path)";
  s += " (pq_gemm";
  if (k.config().gemm_coopmat == pqvk::KernelConfig::GemmCoopmat::off) return s + "; tensor cores switched off)";
  if (!k.coopmat_gemm_unsupported().empty()) return s + "; no tensor-core GEMM here: " + k.coopmat_gemm_unsupported() + ")";
  return s + "; below the tensor-core GEMM's " + std::to_string(k.config().gemm_coopmat_min_m) + " tokens)";
}

// --check: y [m][rows] from the GPU against the fp64 twin (pq::gemv_reference_prepared's sum)
// on a sample of rows and tokens; x [m][ldx] is the prepared input as the kernel read it,
// gemv-interleaved for one token. The norm-wise relative error over the sample.
double check_quant(const pq::QuantMatrix& q, const std::vector<float>& x, size_t ldx, const std::vector<float>& y,
                   uint32_t m) {
  std::vector<size_t> rows = {0, q.rows / 2, q.rows - 1};
  std::mt19937 rng(7);
  for (int i = 0; i < 29; ++i) rows.push_back(rng() % q.rows);
  double num = 0, den = 0;
  for (uint32_t t : std::set<uint32_t>{0, m / 2, m - 1})
    for (size_t r : rows) {
      double acc = 0;
      for (size_t b = 0; b < q.blocks_per_row(); ++b) {
        double dot = 0;
        for (int k = 0; k < q.block; ++k) {
          const size_t e = b * q.block + k;
          dot += double{q.codebook[q.code(r, e)]} * x[t * ldx + (m == 1 ? pqvk::gemv_interleaved_index(e) : e)];
        }
        acc += double{pq::f16_to_f32(q.scales[r * q.blocks_per_row() + b])} * dot;
      }
      const double d = double{y[t * q.rows + r]} - acc;
      num += d * d;
      den += acc * acc;
    }
  return std::sqrt(num / std::max(den, 1e-300));
}

struct KernelArgs {
  std::string device, json_path;
  bool smoke = false, no_f16 = false;
  int reps = 20;
  std::vector<int> bits = {3, 4, 5, 6};
  std::vector<std::string> shapes;  // "OUTxIN"
  std::vector<uint32_t> ms;
  uint32_t gemv_wg = 0, gemv_rows = 0;
  std::vector<std::string> gemv_configs;  // "WGxROWS" + lookup letter (parse_gemv_config)
  bool check = false;  // every timed GEMV / GEMM also against its CPU twin
  bool batched = false;  // for M > 1 also the batched GEMV of continuous batching
  bool no_attention = false;  // skip the prefill attention rows
  bool chain = false;  // also GEMVs timed in chains of 8, with and without barriers between them
};

// --check of a prefill attention: out [m][n_heads * hd] from the GPU against fp64 over the same
// queries and fp16 cache words (kc, vc: qkv_rope.comp's layout, positions 0 .. m - 1, consecutive
// queries from position 0), on a sample of query rows and every head. The norm-wise relative error.
double check_attention(const Kernels::AttentionShape& a, const std::vector<float>& q, const std::vector<uint32_t>& kc,
                       const std::vector<uint32_t>& vc, const std::vector<float>& out, uint32_t m) {
  const size_t hd = a.head_dim, half = hd / 2, qdim = size_t(a.n_heads) * hd;
  std::vector<uint32_t> sample = {0, m / 2, m - 1};
  std::mt19937 rng(11);
  for (int i = 0; i < 5; ++i) sample.push_back(rng() % m);
  double num = 0, den = 0;
  for (uint32_t t : std::set<uint32_t>(sample.begin(), sample.end()))
    for (uint32_t h = 0; h < a.n_heads; ++h) {
      const uint32_t kvh = h / (a.n_heads / a.n_kv);
      const float* qh = &q[t * qdim + h * hd];
      std::vector<double> score(t + 1), o(hd, 0.0);
      double mx = -1e300, sum = 0;
      for (uint32_t p = 0; p <= t; ++p) {
        const uint32_t* kw = &kc[(size_t(p) * a.n_kv + kvh) * half];
        double d = 0;
        for (size_t j = 0; j < half; ++j)
          d += double{qh[j]} * pq::f16_to_f32(kw[j] & 0xffff) + double{qh[j + half]} * pq::f16_to_f32(kw[j] >> 16);
        score[p] = d / std::sqrt(double(hd));
        mx = std::max(mx, score[p]);
      }
      for (uint32_t p = 0; p <= t; ++p) {
        const double e = std::exp(score[p] - mx);
        sum += e;
        const uint32_t* vw = &vc[(size_t(p) * a.n_kv + kvh) * half];
        for (size_t j = 0; j < half; ++j) {
          o[2 * j] += e * pq::f16_to_f32(vw[j] & 0xffff);
          o[2 * j + 1] += e * pq::f16_to_f32(vw[j] >> 16);
        }
      }
      for (size_t i = 0; i < hd; ++i) {
        const double ref = o[i] / sum, d = double{out[t * qdim + h * hd + i]} - ref;
        num += d * d;
        den += ref * ref;
      }
    }
  return std::sqrt(num / std::max(den, 1e-300));
}

// A --gemv-configs entry: "256x8h" -> workgroup 256, 8 rows, lookups by subgroup shuffle.
// Letters: t table (as many copies as fit), u table with one copy, h shuffle, r shuffle with
// unmasked indices, d no lookup (a float from the code's bits: the lookups' cost, not a GEMV).
pqvk::KernelConfig parse_gemv_config(const std::string& s, pqvk::KernelConfig cfg) {
  using L = pqvk::KernelConfig::GemvLookup;
  const size_t x = s.find('x');
  const std::string letters = "tuhrd";
  try {
    if (x != std::string::npos && s.size() > x + 2 && letters.find(s.back()) != std::string::npos) {
      cfg.gemv_wg = static_cast<uint32_t>(std::stoul(s.substr(0, x)));
      cfg.gemv_rows = static_cast<uint32_t>(std::stoul(s.substr(x + 1, s.size() - x - 2)));
      const char l = s.back();
      cfg.gemv_lookup = l == 'h' ? L::shuffle : l == 'r' ? L::shuffle_unmasked : l == 'd' ? L::code : L::table;
      cfg.gemv_table_shift = l == 'u' ? 0 : -1;
      return cfg;
    }
  } catch (const std::exception&) {
  }
  throw std::runtime_error("--gemv-configs '" + s + "' is not WGxROWS followed by t, u, h, r or d (e.g. 256x8h)");
}

std::pair<size_t, size_t> parse_shape(const std::string& s) {
  size_t x = s.find('x');
  try {
    if (x != std::string::npos) {
      size_t a = std::stoul(s.substr(0, x)), b = std::stoul(s.substr(x + 1));
      if (a > 0 && b > 0) return {a, b};
    }
  } catch (const std::exception&) {
  }
  throw std::runtime_error("--shape '" + s + "' is not OUTxIN (e.g. 4096x14336)");
}

int run_kernels(const KernelArgs& a) {
  const std::string& device = a.device;
  const bool smoke = a.smoke;
  const int reps = a.reps;
  const std::vector<int>& bits_list = a.bits;
  const std::string& json_path = a.json_path;
  const uint32_t gemv_wg = a.gemv_wg, gemv_rows = a.gemv_rows;
  vk::ContextOptions opts;
  opts.device = device;
  vk::Context ctx(opts);
  pqvk::KernelConfig cfg;
  if (gemv_wg) cfg.gemv_wg = gemv_wg;
  if (gemv_rows) cfg.gemv_rows = gemv_rows;
  Kernels k(ctx, cfg);
  const auto& info = ctx.info();
  std::printf("device: %s (%s, subgroup %u)\n", info.name.c_str(), info.driver.c_str(), info.subgroup_size);

  // (At most what one binding may span: lavapipe's 128 MiB.)
  const size_t copy_bytes = smoke ? (8u << 20)
                                  : std::min<size_t>({size_t(1) << 30, info.max_allocation_size / 2, info.max_storage_buffer_range});
  if (smoke) g_warmup_ms = 0;
  double api_bw = 0, shader_bw = 0;
  const double bw = copy_bandwidth(ctx, k, copy_bytes, reps, &api_bw, &shader_bw);
  std::printf("device-to-device copy: %.1f GB/s (vkCmdCopyBuffer %.1f, shader copy %.1f; %zu MiB, bytes read + written)\n\n",
              bw, api_bw, shader_bw, copy_bytes >> 20);

  std::vector<std::pair<size_t, size_t>> shapes = {{4096, 4096}, {14336, 4096}, {4096, 14336}, {151936, 4096}};
  std::vector<uint32_t> ms = {1, 512};
  if (smoke) {
    shapes = {{96, 200}, {33, 1000}};
    ms = {1, 17};
  }
  if (!a.shapes.empty()) {
    shapes.clear();
    for (const auto& s : a.shapes) shapes.push_back(parse_shape(s));
  }
  if (!a.ms.empty()) ms = a.ms;
  std::printf("%s\n\n", gemm_path_line(k, *std::max_element(ms.begin(), ms.end())).c_str());
  const size_t min_bytes = smoke ? 0 : (256u << 20);  // cycle copies up to this much
  std::mt19937 rng(1234);
  std::vector<Row> rows;

  for (auto [out, in] : shapes) {
    const std::string shape = std::to_string(out) + "x" + std::to_string(in);
    // Rotation of the activations (once per input vector / matrix).
    for (uint32_t m : ms) {
      std::vector<float> x(size_t(m) * in);
      for (auto& v : x) v = std::normal_distribution<float>()(rng);
      vk::Buffer xb = ctx.upload_new(x, "x");
      vk::Buffer xr = ctx.buffer(size_t(m) * pqvk::rotated_row_elems(in, 128, Layout::gemv_interleaved) * 4);
      double min_ns = 0;
      double ns = time_median_ns(ctx, reps, [&](vk::Commands& c, int) {
        k.fwht(c, xb, xr, m, static_cast<uint32_t>(in), 128, m == 1 ? Layout::gemv_interleaved : Layout::row_major);
      }, &min_ns);
      double bytes = 2.0 * m * in * 4;
      rows.push_back({"fwht", "fp32", "1x" + std::to_string(in), m, ns / 1e3, bytes / ns, 100 * bytes / ns / bw, 0, min_ns / 1e3});
    }
    std::vector<std::string> formats;
    for (int b : bits_list) formats.push_back("q" + std::to_string(b));
    if (!a.no_f16) formats.push_back("f16");
    for (const auto& fmt : formats) {
      const bool f16 = fmt == "f16";
      const int bits = f16 ? 16 : std::stoi(fmt.substr(1));
      // Replicas so that the working set exceeds the cache.
      const double one = f16 ? double(out) * ((in + 7) / 8 * 8) * 2 : double(out) * in * (bits + 16.0 / 128) / 8;
      const int copies = static_cast<int>(std::max(1.0, std::ceil(min_bytes / one)));
      std::vector<pqvk::DeviceQuantMatrix> qs;
      pq::QuantMatrix first;  // replica 0 on the host, for --check
      std::vector<pqvk::DeviceF16Matrix> fs;
      size_t weight_bytes = 0;
      for (int i = 0; i < copies; ++i) {
        if (f16) {
          std::vector<float> w(out * in);
          for (auto& v : w) v = std::uniform_real_distribution<float>(-1, 1)(rng);
          fs.push_back(pqvk::upload_f16(ctx, w.data(), out, in, shape));
          weight_bytes = fs.back().bytes();
        } else {
          pq::QuantMatrix q = random_quant(out, in, bits, rng);
          qs.push_back(pqvk::upload_quant(ctx, q, shape));
          if (i == 0 && a.check) first = std::move(q);
          weight_bytes = qs.back().bytes();
        }
      }
      for (uint32_t m : ms) {
        std::vector<float> x(size_t(m) * (in + 1024));
        for (auto& v : x) v = std::normal_distribution<float>()(rng);
        vk::Buffer xb = ctx.upload_new(x, "x");
        vk::Buffer yb = ctx.buffer(size_t(m) * out * 4, vk::MemoryKind::device, "y");
        const double bytes = double(weight_bytes) + double(m) * in * (m > 1 && !f16 && k.gemm_takes_f16(m) ? 2 : 4) +
                             double(m) * out * 4;
        const double flops = 2.0 * m * double(out) * in;
        // The GEMV once per --gemv-configs entry (on the same matrices), else once.
        std::vector<std::pair<std::string, Kernels*>> variants = {{"", &k}};
        std::vector<std::unique_ptr<Kernels>> owned;
        if (m == 1 && !f16 && !a.gemv_configs.empty()) {
          variants.clear();
          for (const auto& gc : a.gemv_configs) {
            owned.push_back(std::make_unique<Kernels>(ctx, parse_gemv_config(gc, cfg)));
            variants.push_back({" [" + gc + "]", owned.back().get()});
          }
        }
        // --batched: also what continuous batching's decode steps may run, the batched GEMV, the
        // GEMM at every M with K split (GemmOut::any_m, split_k) and, up to 32 tokens, the skinny
        // GEMM (GemmOut::max_m = M).
        if (a.batched && m > 1 && !f16) {
          variants.push_back({" batched", &k});
          variants.push_back({" split-K", &k});
          if (m <= 32) variants.push_back({" skinny", &k});
        }
        for (auto& [label, kv] : variants) {
          const bool batch = label == " batched", skinny = label == " skinny", split = label == " split-K" || skinny;
          // The tensor-core GEMM reads fp16 activations, as a model's prefill gives it.
          const bool x16 = m > 1 && !f16 && !batch && kv->gemm_takes_f16(m, split);
          std::vector<float> xin = x;  // the activations the kernel reads, as fp32
          vk::Buffer xh;
          if (x16) {
            std::vector<uint32_t> packed((x.size() + 1) / 2, 0u);
            for (size_t i = 0; i < x.size(); ++i) {
              packed[i / 2] |= uint32_t{pq::f32_to_f16(x[i])} << (16 * (i % 2));
              xin[i] = pq::f16_to_f32(pq::f32_to_f16(x[i]));
            }
            xh = ctx.upload_new(packed, "x fp16");
          }
          const pqvk::GemmOut gout{static_cast<uint32_t>(out), 0, x16, split, split, skinny ? m : 0u};
          double min_ns = 0;
          double ns = time_median_ns(ctx, reps, [&](vk::Commands& c, int r) {
            if (f16) {
              if (m == 1) kv->gemv_f16(c, fs[r % copies], xb, yb);
              else kv->gemm_f16(c, fs[r % copies], xb, yb, m);
            } else {
              if (m == 1) kv->gemv(c, qs[r % copies], xb, yb);
              else if (batch) kv->gemv_batch(c, qs[r % copies], xb, yb, m);
              else kv->gemm(c, qs[r % copies], x16 ? xh : xb, yb, m, false, gout);
            }
          }, &min_ns);
          Row row{m == 1 ? "gemv" : batch ? "gemv_batch" : "gemm", batch ? fmt : fmt + label, shape, m, ns / 1e3,
                  bytes / ns, 100 * bytes / ns / bw, flops / ns / 1e3, min_ns / 1e3};
          if (m > 1 && !f16 && !batch) {  // which GEMM ran, and the error its arithmetic allows
            const auto path = kv->last_gemm_path();
            row.path = Kernels::gemm_path_name(path);
            row.format += " [" + row.path + (kv->last_gemm_skinny() ? ", skinny" : "") +
                          (kv->last_gemm_splits() > 1 ? ", split-K " + std::to_string(kv->last_gemm_splits()) : "") + "]";
            if (path != Kernels::GemmPath::portable) row.check_tol = 3e-3;
          }
          const size_t row_index = rows.size();
          rows.push_back(row);
          if (a.chain && m == 1 && !batch) {
            // What a dependent dispatch costs inside a decode step: 8 GEMVs (of different replicas)
            // between two timestamps, with the barrier a step puts between them and without it
            // (nothing waits; the device may overlap them). Per GEMV.
            for (bool barriers : {true, false}) {
              constexpr int kChain = 8;
              double cmin = 0;
              const double cns = time_median_ns(ctx, reps, [&](vk::Commands& c, int r) {
                for (int i = 0; i < kChain; ++i) {
                  if (i > 0 && barriers) c.barrier();
                  const int rep = (r * kChain + i) % copies;
                  if (f16) kv->gemv_f16(c, fs[rep], xb, yb);
                  else kv->gemv(c, qs[rep], xb, yb);
                }
              }, &cmin) / kChain;
              rows.push_back({barriers ? "gemv chain of 8" : "gemv chain of 8, no barriers", row.format, shape, m,
                              cns / 1e3, bytes / cns, 100 * bytes / cns / bw, flops / cns / 1e3, cmin / kChain / 1e3});
            }
          }
          if (a.check && !f16 && kv->config().gemv_lookup != pqvk::KernelConfig::GemvLookup::code) {
            auto c = ctx.commands();
            c.fill(yb, 0x7fc00000u);  // NaN: an output the kernel does not write fails
            c.barrier();
            if (m == 1) kv->gemv(c, qs[0], xb, yb);
            else if (batch) kv->gemv_batch(c, qs[0], xb, yb, m);
            else kv->gemm(c, qs[0], x16 ? xh : xb, yb, m, false, gout);
            c.run();
            const auto y = ctx.download_all<float>(yb);
            rows[row_index].check_err = check_quant(first, xin, first.cols_padded, y, m);
          }
        }
      }
    }
  }

  // Prefill attention over an fp16 cache (the shader Kernels::attention_path takes here), causal,
  // queries at positions 0 .. M - 1: Llama-3-8B's heads (32 of 128, 8 KV heads), M >= 16 of -m.
  if (!a.no_attention) {
    Kernels::AttentionShape as{32, 8, 128, 0, 0, 1e-6f, 0};
    std::vector<uint32_t> ams;
    for (uint32_t m : ms)
      if (m >= 16) ams.push_back(m);
    if (smoke) {
      as = {4, 2, 64, 0, 0, 1e-6f, 0};
      ams = {33, 100};
    }
    for (uint32_t m : ams) {
      as.max_ctx = m;
      const size_t qdim = size_t(as.n_heads) * as.head_dim, words = size_t(m) * as.n_kv * Kernels::kv_words(as);
      std::vector<float> q(m * qdim);
      for (auto& v : q) v = std::normal_distribution<float>()(rng);
      std::vector<uint32_t> kc(words), vc(words);
      for (auto* c : {&kc, &vc})
        for (auto& w : *c)
          w = pq::f32_to_f16(std::normal_distribution<float>()(rng)) | uint32_t{pq::f32_to_f16(std::normal_distribution<float>()(rng))} << 16;
      vk::Buffer qb = ctx.upload_new(q, "attention q"), kb = ctx.upload_new(kc, "k cache"), vb = ctx.upload_new(vc, "v cache");
      vk::Buffer ob = ctx.buffer(m * qdim * 4, vk::MemoryKind::device, "attention out");
      vk::Buffer step = ctx.upload_new(std::vector<uint32_t>{0, 0, 0, 0}, "step");
      double min_ns = 0;
      const double ns = time_median_ns(ctx, reps, [&](vk::Commands& c, int) { k.attention(c, as, qb, kb, vb, ob, step, m); }, &min_ns);
      // Causal: query i sees i + 1 keys; 2 FLOPs a multiply-add, hd of them for q.k and for p v.
      const double pairs = double(m) * (m + 1) / 2 * as.n_heads, flops = pairs * as.head_dim * 4;
      const double bytes = 2.0 * m * qdim * 4 + 2.0 * words * 4;
      const std::string path = k.attention_path(as);
      Row row{"attention", "f16 kv [" + path + "]", std::to_string(as.n_heads) + "/" + std::to_string(as.n_kv) + " heads of " +
              std::to_string(as.head_dim), m, ns / 1e3, bytes / ns, 100 * bytes / ns / bw, flops / ns / 1e3, min_ns / 1e3};
      row.path = path;
      if (path.rfind("coopmat", 0) == 0) row.check_tol = 3e-3;  // queries and probabilities in fp16
      if (a.check) {
        auto c = ctx.commands();
        c.fill(ob, 0x7fc00000u);  // NaN: an output the kernel does not write fails
        c.barrier();
        k.attention(c, as, qb, kb, vb, ob, step, m);
        c.run();
        row.check_err = check_attention(as, q, kc, vc, ctx.download_all<float>(ob), m);
      }
      rows.push_back(row);
    }
  }

  std::printf("| kernel | format | out x in | M | median (us) | min (us) | GB/s | %% of copy BW | TFLOP/s |%s\n",
              a.check ? " check (rel. error) |" : "");
  std::printf("|---|---|---|---|---|---|---|---|---|%s\n", a.check ? "---|" : "");
  int failed = 0;
  for (const auto& r : rows) {
    std::printf("| %s | %s | %s | %u | %.1f | %.1f | %.1f | %.1f%% | %.2f |", r.kernel.c_str(), r.format.c_str(),
                r.shape.c_str(), r.m, r.us, r.min_us, r.gbs, r.pct, r.tflops);
    if (a.check) {
      const bool checked = r.check_err != -1;  // NaN (a poisoned output left unwritten) is checked, and fails
      const bool bad = checked && !(r.check_err < r.check_tol);
      failed += bad;
      if (checked) std::printf(" %.1e%s |", r.check_err, bad ? " FAILED" : "");
      else std::printf(" - |");
    }
    std::printf("\n");
  }

  if (!json_path.empty()) {
    nlohmann::json j = {{"device", info.name}, {"driver", info.driver}, {"copy_bandwidth_gbs", bw}, {"copy_api_gbs", api_bw}, {"copy_shader_gbs", shader_bw}, {"results", nlohmann::json::array()}};
    for (const auto& r : rows)
      j["results"].push_back({{"kernel", r.kernel}, {"format", r.format}, {"shape", r.shape}, {"m", r.m},
                              {"time_us", r.us}, {"min_time_us", r.min_us}, {"gbs", r.gbs}, {"pct_copy_bw", r.pct}, {"tflops", r.tflops},
                              {"check_rel_error", r.check_err}, {"check_bound", r.check_tol}, {"path", r.path}});
    std::ofstream f(json_path);
    if (!f) throw std::runtime_error("cannot write --json file '" + json_path + "'");
    f << j.dump(2) << "\n";
  }
  if (ctx.validation_messages()) {
    std::fprintf(stderr, "vk-bench: %u Vulkan validation messages\n", ctx.validation_messages());
    return 1;
  }
  if (failed) {
    std::fprintf(stderr, "vk-bench: %d kernels differ from their CPU twins (relative error at or above 1e-4, or 3e-3 where the GEMM or the attention rounds its operands to fp16)\n", failed);
    return 1;
  }
  return 0;
}

// ---- whole models ------------------------------------------------------------------------------

// The exact shapes of published checkpoints (their HuggingFace config.json).
pqvk::model::ModelConfig synthetic_config(const std::string& name) {
  pqvk::model::ModelConfig c;
  c.rms_norm_eps = 1e-5;
  c.bos_id = 1;
  auto llama3_rope = [&](double factor) {
    c.rope_theta = 500000;
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = factor;
    c.rope_scaling.low_freq_factor = 1;
    c.rope_scaling.high_freq_factor = 4;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.max_seq_len = 131072;
    c.bos_id = 128000;
  };
  if (name == "llama3-8b") {  // Meta-Llama-3.1-8B
    c.architecture = "llama";
    c.dim = 4096, c.hidden_dim = 14336, c.n_layers = 32, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 128;
    c.vocab_size = 128256;
    llama3_rope(8);
  } else if (name == "llama3.2-1b") {  // Llama-3.2-1B
    c.architecture = "llama";
    c.dim = 2048, c.hidden_dim = 8192, c.n_layers = 16, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 64;
    c.vocab_size = 128256;
    c.tie_word_embeddings = true;
    llama3_rope(32);
  } else if (name == "qwen3-8b") {  // Qwen3-8B
    c.architecture = "qwen3";
    c.dim = 4096, c.hidden_dim = 12288, c.n_layers = 36, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 128;
    c.vocab_size = 151936, c.max_seq_len = 40960, c.rope_theta = 1e6, c.rms_norm_eps = 1e-6;
    c.qk_norm = true;
    c.bos_id = -1;
  } else if (name == "qwen2.5-7b") {  // Qwen2.5-7B
    c.architecture = "qwen2";
    c.dim = 3584, c.hidden_dim = 18944, c.n_layers = 28, c.n_heads = 28, c.n_kv_heads = 4, c.head_dim = 128;
    c.vocab_size = 152064, c.max_seq_len = 32768, c.rope_theta = 1e6, c.rms_norm_eps = 1e-6;
    c.qkv_bias = true;
    c.bos_id = -1;
  } else if (name == "mistral-7b") {  // Mistral-7B-v0.1
    c.architecture = "mistral";
    c.dim = 4096, c.hidden_dim = 14336, c.n_layers = 32, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 128;
    c.vocab_size = 32000, c.max_seq_len = 32768, c.rope_theta = 10000;
    c.sliding_window = 4096;
  } else if (name == "tiny") {  // not a published model: a small shape for tests and CI
    c.architecture = "qwen2";
    c.dim = 256, c.hidden_dim = 640, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64;
    c.vocab_size = 1000, c.max_seq_len = 2048;
    c.qkv_bias = true;
  } else {
    throw std::runtime_error("--synthetic: unknown shape '" + name +
                             "' (known: llama3-8b, llama3.2-1b, qwen3-8b, qwen2.5-7b, mistral-7b; tiny for tests)");
  }
  return c;
}

uint64_t parameter_count(const pqvk::model::ModelConfig& c) {
  uint64_t n = 0;
  for (const auto& t : pqvk::model::model_tensors(c)) {
    uint64_t k = 1;
    for (uint64_t d : t.shape) k *= d;
    n += k;
  }
  return n;
}

struct Stat {
  double mean = 0, sd = 0;
};
Stat mean_sd(const std::vector<double>& v) {
  Stat s;
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  if (v.size() > 1) {
    double q = 0;
    for (double x : v) q += (x - s.mean) * (x - s.mean);
    s.sd = std::sqrt(q / double(v.size() - 1));
  }
  return s;
}

struct TestResult {
  std::string name;  // "pp512", "tg128", "tg128 @ d4096", "tg128 x8" (8 sequences together)
  int n_prompt = 0, n_gen = 0, n_depth = 0;
  int n_parallel = 0;       // sequences decoding together (continuous batching); 0: the single-sequence path
  std::vector<double> tps;  // one per repetition
  Stat stat;
};

struct ModelResult {
  std::string model, format, source;  // source: the .pqm path or "synthetic"
  uint64_t params = 0, weight_bytes = 0, device_bytes = 0;
  double load_s = 0;
  std::vector<TestResult> tests;
  // Roofline of the (last) tg test.
  bool has_roofline = false;
  int tg_n = 0;
  pqvk::llm::StepBytes bytes;
  double ideal_tps = 0, tg_tps = 0, pct = 0;
  std::optional<pqvk::llm::StepProfile> decode_profile, prefill_profile, batch_profile;
};

struct ModelArgs {
  std::string device, output = "md", json_path, csv_path;
  std::vector<std::string> models, synthetic, recipes;
  std::vector<int> bits, n_prompt = {512}, n_gen = {128}, n_depth = {0}, n_parallel;
  int batch_gemm_from = -1;  // -np: decode steps of at least this many sequences through the GEMM (GpuOptions)
  std::string kv_type = "f16";  // the KV cache (GpuOptions::kv_bits)
  bool fp16 = false, no_breakdown = false;
  int reps = 5, ubatch = 512, profile_reps = 5;
  double warmup_ms = 1000;
  size_t copy_mib = 1024;
  uint32_t seed = 1;
};

// What to load: a file, or a synthetic shape in one format.
struct ModelSpec {
  std::string path, shape, format;  // format: "q3".."q8", "mixed", "f16" (synthetic)
};

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}
std::string gib(uint64_t bytes) {
  return bytes >= (1ull << 30) ? fmt("%.2f GiB", double(bytes) / double(1ull << 30))
                               : fmt("%.2f MiB", double(bytes) / double(1ull << 20));
}
std::string mib(uint64_t bytes) { return fmt("%.1f", double(bytes) / double(1ull << 20)); }

// The format of a .pqm file in words: "q5", "mixed (3-6 bits)", "f16", "absmax q4", ...
std::string file_format(const pqvk::model::PqmFile& f) {
  std::map<std::string, int> kinds;
  int lo = 99, hi = 0;
  std::string method;
  for (const auto& spec : pqvk::model::model_tensors(f.config())) {
    if (!pqvk::model::is_matrix(spec.role)) continue;
    const auto& t = f.tensor(spec.name);
    if (t.kind == pqvk::model::TensorKind::pq) {
      const pq::QuantMatrix q = f.read_quant(t);
      lo = std::min(lo, q.bits);
      hi = std::max(hi, q.bits);
      method = pq::method_name(q.method);
      kinds["q"]++;
    } else {
      kinds["f"]++;
    }
  }
  if (!kinds.count("q")) return "f16";
  std::string s = (method == "pq" ? "" : method + " ") + (lo == hi ? "q" + std::to_string(lo) : "mixed q" + std::to_string(lo) + "-q" + std::to_string(hi));
  if (kinds.count("f")) s += " + f16";
  return s;
}

// Times `run` (returns nothing; blocks until the GPU is done): first replays it until warmup_ms
// have passed (at least once), then `reps` timed repetitions; tokens / seconds per repetition.
template <class F>
std::vector<double> timed_runs(int tokens, int reps, double warmup_ms, F&& run) {
  using Clock = std::chrono::steady_clock;
  const auto w0 = Clock::now();
  do {
    run();
  } while (std::chrono::duration<double, std::milli>(Clock::now() - w0).count() < warmup_ms);
  std::vector<double> tps;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    run();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    tps.push_back(double(tokens) / std::max(s, 1e-12));
  }
  return tps;
}

std::vector<int32_t> bench_tokens(int n, const pqvk::model::ModelConfig& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size));
  if (n > 0 && c.bos_id >= 0) ids[0] = static_cast<int32_t>(c.bos_id);
  return ids;
}

ModelResult bench_model(vk::Context& ctx, const ModelSpec& spec, const ModelArgs& a, double copy_gbs) {
  using Clock = std::chrono::steady_clock;
  ModelResult res;
  const int max_p = *std::max_element(a.n_prompt.begin(), a.n_prompt.end());
  const int max_n = *std::max_element(a.n_gen.begin(), a.n_gen.end());
  const int max_d = *std::max_element(a.n_depth.begin(), a.n_depth.end());
  pqvk::llm::GpuOptions go;
  go.context = std::max(1, max_d + std::max(max_p, max_n));
  go.max_batch = static_cast<uint32_t>(a.ubatch);
  const int max_np = a.n_parallel.empty() ? 0 : *std::max_element(a.n_parallel.begin(), a.n_parallel.end());
  go.slots = static_cast<uint32_t>(max_np);
  go.batch_gemm_from = a.batch_gemm_from;
  go.kv_bits = pqvk::apps::kv_bits(a.kv_type);
  const uint64_t before = ctx.allocated_bytes();
  const auto t0 = Clock::now();
  std::unique_ptr<pqvk::llm::GpuModel> m;
  // The depth and the longest test must fit the model's context: checked before anything is
  // allocated or prefilled.
  auto check_context = [&](const std::string& what, int64_t max_seq_len) {
    if (max_seq_len < go.context)
      throw std::runtime_error(what + ": -d + max(-p, -n) = " + std::to_string(go.context) +
                               " tokens exceed the model's context of " + std::to_string(max_seq_len));
  };
  if (!spec.path.empty()) {
    auto file = pqvk::model::PqmFile::open(spec.path);
    res.model = std::filesystem::path(spec.path).filename().string();
    res.format = file_format(file);
    res.source = spec.path;
    res.params = parameter_count(file.config());
    check_context(spec.path, file.config().max_seq_len);
    m = std::make_unique<pqvk::llm::GpuModel>(ctx, file, go);
  } else {
    const auto cfg = synthetic_config(spec.shape);
    check_context("synthetic " + spec.shape, cfg.max_seq_len);
    pqvk::llm::SyntheticWeights sw;
    sw.fp16 = spec.format == "f16";
    sw.recipe = sw.fp16 ? "q4" : spec.format;
    sw.seed = a.seed;
    res.model = spec.shape;
    res.format = spec.format;
    res.source = "synthetic";
    res.params = parameter_count(cfg);
    m = std::make_unique<pqvk::llm::GpuModel>(ctx, cfg, sw, go);
  }
  if (go.kv_bits) res.format += " kv " + a.kv_type;  // the format column names a PolarQuant KV cache
  res.load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  res.weight_bytes = m->weight_bytes();
  res.device_bytes = ctx.allocated_bytes() - before;
  const auto& c = m->config();
  std::fprintf(stderr, "vk-bench: %s %s: %s of weights, %s on the device, loaded in %.1f s\n", res.model.c_str(),
               res.format.c_str(), gib(res.weight_bytes).c_str(), gib(res.device_bytes).c_str(), res.load_s);

  for (int d : a.n_depth) {
    // llama-bench's -d: the tests run after d tokens are already in the cache (prefilled once,
    // untimed; the tests rewrite only positions from d on).
    const std::string at = d > 0 ? " @ d" + std::to_string(d) : "";
    if (d > 0) m->prefill(bench_tokens(d, c, a.seed + 1), 0);
    for (int p : a.n_prompt) {
      if (p <= 0) continue;
      const auto ids = bench_tokens(p, c, a.seed);
      TestResult t;
      t.name = "pp" + std::to_string(p) + at;
      t.n_prompt = p;
      t.n_depth = d;
      t.tps = timed_runs(p, a.reps, a.warmup_ms, [&] { m->prefill(ids, d); });
      t.stat = mean_sd(t.tps);
      std::fprintf(stderr, "vk-bench: %s %s %s: %.2f +- %.2f t/s\n", res.model.c_str(), res.format.c_str(),
                   t.name.c_str(), t.stat.mean, t.stat.sd);
      res.tests.push_back(std::move(t));
    }
    for (int n : a.n_gen) {
      if (n <= 0) continue;
      const int32_t first = c.bos_id >= 0 ? static_cast<int32_t>(c.bos_id) : 0;
      TestResult t;
      t.name = "tg" + std::to_string(n) + at;
      t.n_gen = n;
      t.n_depth = d;
      // As llama-bench: n tokens after the depth, each fed back (greedy, chosen on the GPU).
      t.tps = timed_runs(n, a.reps, a.warmup_ms, [&] {
        int32_t tok = first;
        for (int i = 0; i < n; ++i) {
          const int32_t next = m->forward_argmax(tok, d + i);
          tok = next >= 0 && next < c.vocab_size ? next : first;
        }
      });
      t.stat = mean_sd(t.tps);
      std::fprintf(stderr, "vk-bench: %s %s %s: %.2f +- %.2f t/s\n", res.model.c_str(), res.format.c_str(),
                   t.name.c_str(), t.stat.mean, t.stat.sd);
      // Roofline: a step at position i reads i + 1 cached positions; d + (n + 1) / 2 on average.
      res.has_roofline = true;
      res.tg_n = n;
      res.bytes = m->decode_bytes(double(d) + double(n + 1) / 2.0);
      res.ideal_tps = copy_gbs * 1e9 / double(res.bytes.total());
      res.tg_tps = t.stat.mean;
      res.pct = 100.0 * res.tg_tps / res.ideal_tps;
      res.tests.push_back(std::move(t));
    }
    for (int n : a.n_gen) {
      if (n <= 0) continue;
      for (int np : a.n_parallel) {
        // llama.cpp's batched-bench: np sequences (each in its own cache region, after the same
        // depth) decode n tokens each, one batched step for all of them per token; the aggregate
        // tokens/s. The first token of each is the BOS (or 0), then each feeds back its arg max.
        const int32_t first = c.bos_id >= 0 ? static_cast<int32_t>(c.bos_id) : 0;
        if (d > 0) {
          const auto ids = bench_tokens(d, c, a.seed + 1);
          for (int s = 0; s < np; ++s)
            for (int done = 0; done < d;) {
              const int k = std::min<int>(d - done, static_cast<int>(m->batch_rows()));
              std::vector<pqvk::llm::BatchToken> toks;
              for (int i = 0; i < k; ++i) toks.push_back({ids[done + i], static_cast<uint32_t>(s), done + i});
              pqvk::llm::BatchResult r;
              m->step(toks, pqvk::llm::BatchKind::prefill, r);
              done += k;
            }
        }
        TestResult t;
        t.name = "tg" + std::to_string(n) + " x" + std::to_string(np) + at;
        t.n_gen = n;
        t.n_depth = d;
        t.n_parallel = np;
        std::vector<pqvk::llm::BatchToken> toks(static_cast<size_t>(np));
        pqvk::llm::BatchResult r;
        t.tps = timed_runs(n * np, a.reps, a.warmup_ms, [&] {
          for (int i = 0; i < n; ++i) {
            for (int s = 0; s < np; ++s) {
              const int32_t next = i == 0 ? first : r.ids[static_cast<size_t>(s)];
              toks[static_cast<size_t>(s)] = {next >= 0 && next < c.vocab_size ? next : first, static_cast<uint32_t>(s),
                                              d + i, pqvk::llm::BatchToken::argmax};
            }
            m->step(toks, pqvk::llm::BatchKind::decode, r);
          }
        });
        t.stat = mean_sd(t.tps);
        std::fprintf(stderr, "vk-bench: %s %s %s: %.2f +- %.2f t/s (all %d sequences)\n", res.model.c_str(),
                     res.format.c_str(), t.name.c_str(), t.stat.mean, t.stat.sd, np);
        res.tests.push_back(std::move(t));
        if (np == max_np && !a.no_breakdown) {  // a batched decode step of the most sequences, mid-run
          for (int s = 0; s < np; ++s) toks[static_cast<size_t>(s)].pos = d + std::max(0, n / 2);
          m->profile_step(toks, pqvk::llm::BatchKind::decode, 1);
          res.batch_profile = m->profile_step(toks, pqvk::llm::BatchKind::decode, a.profile_reps);
        }
      }
    }
  }
  if (!a.no_breakdown) {
    if (max_n > 0) {  // a decode step in the middle of the longest tg run
      const int32_t pos = max_d + std::max(0, max_n / 2);
      const std::vector<int32_t> one = {c.bos_id >= 0 ? static_cast<int32_t>(c.bos_id) : 0};
      m->profile(one, pos, 1);  // warm-up
      res.decode_profile = m->profile(one, pos, a.profile_reps);
    }
    if (max_p > 1) {  // one prefill pass (a full batch, or the whole prompt when shorter)
      const int mb = std::min(max_p, static_cast<int>(m->max_batch()));
      const auto ids = bench_tokens(mb, c, a.seed);
      m->profile(ids, 0, 1);
      res.prefill_profile = m->profile(ids, 0, std::max(1, std::min(a.profile_reps, 3)));
    }
  }
  return res;
}

nlohmann::json profile_json(const pqvk::llm::StepProfile& p) {
  nlohmann::json k = nlohmann::json::array();
  for (const auto& t : p.kernels) k.push_back({{"kernel", t.name}, {"calls", t.calls}, {"us", t.us}});
  return {{"tokens", p.tokens},         {"pos0", p.pos0},         {"total_us", p.total_us},
          {"dispatches", p.dispatches}, {"barriers", p.barriers}, {"kernels", k}};
}

nlohmann::json results_json(const vk::DeviceInfo& info, double bw, double api, double shader,
                            const std::vector<ModelResult>& rs, const ModelArgs& a) {
  nlohmann::json j = {{"device", info.name}, {"driver", info.driver}, {"copy_bandwidth_gbs", bw},
                      {"copy_api_gbs", api}, {"copy_shader_gbs", shader}, {"reps", a.reps},
                      {"ubatch", a.ubatch}, {"models", nlohmann::json::array()}};
  for (const auto& r : rs) {
    nlohmann::json m = {{"model", r.model}, {"format", r.format}, {"source", r.source}, {"params", r.params},
                        {"weight_bytes", r.weight_bytes}, {"device_bytes", r.device_bytes}, {"load_s", r.load_s},
                        {"tests", nlohmann::json::array()}};
    for (const auto& t : r.tests)
      m["tests"].push_back({{"test", t.name}, {"n_prompt", t.n_prompt}, {"n_gen", t.n_gen}, {"n_depth", t.n_depth},
                            {"n_parallel", t.n_parallel}, {"tps", t.tps},
                            {"tps_mean", t.stat.mean}, {"tps_sd", t.stat.sd}});
    if (r.has_roofline)
      m["roofline"] = {{"test", "tg" + std::to_string(r.tg_n)}, {"weight_bytes_per_token", r.bytes.weights},
                       {"kv_bytes_per_token", r.bytes.kv}, {"activation_bytes_per_token", r.bytes.activations},
                       {"bytes_per_token", r.bytes.total()}, {"copy_bandwidth_gbs", bw},
                       {"ideal_tps", r.ideal_tps}, {"tps", r.tg_tps}, {"pct_of_ideal", r.pct}};
    if (r.decode_profile) m["breakdown_decode"] = profile_json(*r.decode_profile);
    if (r.prefill_profile) m["breakdown_prefill"] = profile_json(*r.prefill_profile);
    if (r.batch_profile) m["breakdown_batched_decode"] = profile_json(*r.batch_profile);
    j["models"].push_back(m);
  }
  return j;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return q + "\"";
}

std::string results_csv(const vk::DeviceInfo& info, double bw, const std::vector<ModelResult>& rs) {
  std::ostringstream o;
  o << "device,model,format,source,params,weight_bytes,device_bytes,test,n_prompt,n_gen,n_parallel,reps,tps_mean,tps_sd,"
       "bytes_per_token,copy_bandwidth_gbs,ideal_tps,pct_of_ideal\n";
  for (const auto& r : rs)
    for (const auto& t : r.tests) {
      const bool tg = t.n_gen > 0 && t.n_parallel == 0 && r.has_roofline && t.n_gen == r.tg_n;
      o << csv_field(info.name) << ',' << csv_field(r.model) << ',' << csv_field(r.format) << ','
        << csv_field(r.source) << ',' << r.params << ',' << r.weight_bytes << ',' << r.device_bytes << ','
        << t.name << ',' << t.n_prompt << ',' << t.n_gen << ',' << t.n_parallel << ',' << t.tps.size() << ',' << fmt("%.4f", t.stat.mean)
        << ',' << fmt("%.4f", t.stat.sd) << ',' << (tg ? std::to_string(r.bytes.total()) : "") << ','
        << fmt("%.1f", bw) << ',' << (tg ? fmt("%.2f", r.ideal_tps) : "") << ','
        << (tg ? fmt("%.2f", r.pct) : "") << '\n';
    }
  return o.str();
}

void print_profile(const ModelResult& r, const pqvk::llm::StepProfile& p, const char* what) {
  std::printf("\n%s %s, %s (%u token%s at position %d): %.1f us between the first and last timestamps\n\n",
              r.model.c_str(), r.format.c_str(), what, p.tokens, p.tokens == 1 ? "" : "s", p.pos0, p.total_us);
  std::printf("%u dispatches and %u barriers per pass as recorded for use (the profile adds a barrier and a timestamp "
              "after every kernel group)\n\n", p.dispatches, p.barriers);
  std::printf("| kernel | calls | us | %% |\n|---|---|---|---|\n");
  std::vector<pqvk::llm::KernelTime> ks = p.kernels;
  std::stable_sort(ks.begin(), ks.end(), [](const auto& x, const auto& y) { return x.us > y.us; });
  for (const auto& k : ks)
    std::printf("| %s | %u | %.1f | %.1f%% |\n", k.name.c_str(), k.calls, k.us, 100.0 * k.us / std::max(p.total_us, 1e-9));
}

void print_markdown(const vk::DeviceInfo& info, double bw, double api, double shader,
                    const std::vector<ModelResult>& rs) {
  std::printf("device: %s (%s)\n", info.name.c_str(), info.driver.c_str());
  std::printf("device-to-device copy: %.1f GB/s (vkCmdCopyBuffer %.1f, shader copy %.1f; bytes read + written)\n\n",
              bw, api, shader);
  std::printf("| model | format | size | params | test | t/s |\n|---|---|---|---|---|---|\n");
  for (const auto& r : rs)
    for (const auto& t : r.tests)
      std::printf("| %s | %s | %s | %s | %s | %.2f ± %.2f |\n", r.model.c_str(), r.format.c_str(),
                  gib(r.weight_bytes).c_str(), r.params >= 1000000000 ? fmt("%.2f B", double(r.params) / 1e9).c_str()
                                                                      : fmt("%.2f M", double(r.params) / 1e6).c_str(),
                  t.name.c_str(), t.stat.mean, t.stat.sd);
  bool any = false;
  for (const auto& r : rs) any = any || r.has_roofline;
  if (any) {
    std::printf("\nRoofline of generation: bytes one token reads (weights the GEMVs read + KV cache at the run's "
                "average position + activations) over the copy bandwidth\n\n");
    std::printf("| model | format | test | weights MiB | KV MiB | activations MiB | ideal t/s | t/s | %% of ideal |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& r : rs)
      if (r.has_roofline)
        std::printf("| %s | %s | tg%d | %s | %s | %s | %.1f | %.1f | %.1f%% |\n", r.model.c_str(), r.format.c_str(),
                    r.tg_n, mib(r.bytes.weights).c_str(), mib(r.bytes.kv).c_str(), mib(r.bytes.activations).c_str(),
                    r.ideal_tps, r.tg_tps, r.pct);
  }
  bool batched = false;
  for (const auto& r : rs)
    for (const auto& t : r.tests) batched = batched || t.n_parallel > 0;
  if (batched) {
    std::printf("\nContinuous batching (llama.cpp's batched-bench): N sequences decode together, one batched step "
                "per token of all N; aggregate t/s of the N, and its ratio to one sequence alone on the same path "
                "(x1) and on the single-sequence decode path (tg)\n\n");
    std::printf("| model | format | test | sequences | aggregate t/s | t/s per sequence | vs x1 | vs tg |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    for (const auto& r : rs)
      for (const auto& t : r.tests) {
        if (t.n_parallel == 0) continue;
        double one = 0, tg = 0;
        for (const auto& u : r.tests)
          if (u.n_gen == t.n_gen && u.n_depth == t.n_depth) {
            if (u.n_parallel == 1) one = u.stat.mean;
            if (u.n_parallel == 0) tg = u.stat.mean;
          }
        std::printf("| %s | %s | %s | %d | %.1f | %.1f | %s | %s |\n", r.model.c_str(), r.format.c_str(), t.name.c_str(),
                    t.n_parallel, t.stat.mean, t.stat.mean / t.n_parallel, one > 0 ? fmt("%.2fx", t.stat.mean / one).c_str() : "-",
                    tg > 0 ? fmt("%.2fx", t.stat.mean / tg).c_str() : "-");
      }
  }
  std::printf("\nDevice memory: ");
  for (size_t i = 0; i < rs.size(); ++i)
    std::printf("%s%s %s %s", i ? ", " : "", rs[i].model.c_str(), rs[i].format.c_str(), gib(rs[i].device_bytes).c_str());
  std::printf("\n");
  for (const auto& r : rs) {
    if (r.decode_profile) print_profile(r, *r.decode_profile, "decode step");
    if (r.prefill_profile) print_profile(r, *r.prefill_profile, "prefill pass");
    if (r.batch_profile) print_profile(r, *r.batch_profile, "batched decode step");
  }
}

int run_models(const ModelArgs& a) {
  if (a.n_prompt.empty() || a.n_gen.empty()) throw std::runtime_error("-p and -n need at least one value each");
  if (a.output != "md" && a.output != "json" && a.output != "csv")
    throw std::runtime_error("-o/--output must be md, json or csv, not '" + a.output + "'");
  if (a.models.empty() && a.synthetic.empty())
    throw std::runtime_error("nothing to run: pass -m MODEL.pqm or --synthetic SHAPE (or the subcommand 'kernels')");
  if (a.synthetic.empty() && (!a.bits.empty() || !a.recipes.empty() || a.fp16))
    throw std::runtime_error("--bits, --recipe and --fp16 choose the formats of --synthetic models; a .pqm file has its own");
  for (int p : a.n_prompt)
    if (p < 0) throw std::runtime_error("-p: prompt lengths must be >= 0");
  for (int n : a.n_gen)
    if (n < 0) throw std::runtime_error("-n: generation lengths must be >= 0");
  for (int np : a.n_parallel)
    if (np < 1 || np > static_cast<int>(Kernels::kArgmaxRows))
      throw std::runtime_error("-np: sequence counts must be 1.." + std::to_string(Kernels::kArgmaxRows));
  for (const auto& r : a.recipes)
    if (!pqvk::model::is_valid_recipe(r)) throw std::runtime_error("--recipe: unknown recipe '" + r + "' (q2..q8 or mixed)");
  const int context = std::max(1, *std::max_element(a.n_prompt.begin(), a.n_prompt.end()) +
                                     *std::max_element(a.n_gen.begin(), a.n_gen.end()));
  for (const auto& path : a.models) {  // every file is checked before anything runs
    if (!std::filesystem::is_regular_file(path)) throw std::runtime_error("-m: no such file '" + path + "'");
    const auto file = pqvk::model::PqmFile::open(path);
    if (file.config().max_seq_len < context)
      throw std::runtime_error(path + ": -p + -n = " + std::to_string(context) + " tokens exceed the model's context of " +
                               std::to_string(file.config().max_seq_len));
  }

  std::vector<ModelSpec> specs;
  for (const auto& path : a.models) specs.push_back({path, "", ""});
  std::vector<std::string> formats;
  for (int b : a.bits) formats.push_back("q" + std::to_string(b));
  for (const auto& r : a.recipes) formats.push_back(r);
  if (a.fp16) formats.push_back("f16");
  if (formats.empty()) formats.push_back("q4");
  for (const auto& s : a.synthetic) {
    synthetic_config(s);  // checks the name before anything runs
    for (const auto& f : formats) specs.push_back({"", s, f});
  }

  vk::ContextOptions opts;
  opts.device = a.device;
  vk::Context ctx(opts);
  const auto& info = ctx.info();
  std::fprintf(stderr, "vk-bench: device %s (%s)\n", info.name.c_str(), info.driver.c_str());
  double bw = 0, api = 0, shader = 0;
  {
    Kernels k(ctx);
    const size_t bytes = std::min<size_t>({a.copy_mib << 20, info.max_allocation_size / 2, info.max_storage_buffer_range}) / 16 * 16;
    const double saved = g_warmup_ms;
    g_warmup_ms = std::min(a.warmup_ms, 1000.0);
    bw = copy_bandwidth(ctx, k, bytes, 10, &api, &shader);
    g_warmup_ms = saved;
    std::fprintf(stderr, "vk-bench: device-to-device copy %.1f GB/s (%zu MiB)\n", bw, bytes >> 20);
    std::fprintf(stderr, "vk-bench: %s\n", gemm_path_line(k, static_cast<uint32_t>(a.ubatch)).c_str());
    // Which prefill attention a 128-dimension head takes (Kernels::attention_path).
    Kernels::AttentionShape head128{32, 8, 128, 4096, 0, 1e-6f};
    const std::string att = k.attention_path(head128);
    std::fprintf(stderr, "vk-bench: prefill attention (heads of 128): %s%s\n", att.c_str(),
                 att == "coopmat" ? " (attention_coopmat: fp16 Q K^T and P V, VK_NV_cooperative_matrix, fp32 sums)"
                 : k.attention_coopmat_unsupported().empty() ? ""
                                                             : (" (no tensor-core attention here: " + k.attention_coopmat_unsupported() + ")").c_str());
  }
  std::vector<ModelResult> results;
  for (const auto& s : specs) results.push_back(bench_model(ctx, s, a, bw));

  const nlohmann::json j = results_json(info, bw, api, shader, results, a);
  const std::string csv = results_csv(info, bw, results);
  if (a.output == "md") print_markdown(info, bw, api, shader, results);
  else if (a.output == "json") std::printf("%s\n", j.dump(2).c_str());
  else std::fputs(csv.c_str(), stdout);
  if (!a.json_path.empty()) {
    std::ofstream f(a.json_path);
    if (!(f << j.dump(2) << "\n")) throw std::runtime_error("cannot write --json file '" + a.json_path + "'");
  }
  if (!a.csv_path.empty()) {
    std::ofstream f(a.csv_path);
    if (!(f << csv)) throw std::runtime_error("cannot write --csv file '" + a.csv_path + "'");
  }
  if (ctx.validation_messages()) {
    std::fprintf(stderr, "vk-bench: %u Vulkan validation messages\n", ctx.validation_messages());
    return 1;
  }
  return 0;
}

int list_devices() {
  const auto all = vk::Context::list_devices();
  if (all.empty()) throw std::runtime_error("no Vulkan device found");
  std::printf("| index | name | type | driver | device-local memory |\n|---|---|---|---|---|\n");
  for (const auto& d : all) {
    uint64_t local = 0;
    for (const auto& h : d.heaps)
      if (h.device_local) local += h.size;
    std::printf("| %u | %s | %s | %s | %s |\n", d.index, d.name.c_str(), d.type.c_str(), d.driver.c_str(),
                gib(local).c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vk-bench: pqvk throughput benchmarks (whole models, or the subcommand 'kernels')"};
  app.require_subcommand(0, 1);
  ModelArgs ma;
  bool list = false;
  app.add_flag("--list-devices", list, "List the Vulkan devices and exit");
  app.add_option("--device", ma.device, "Device index or name substring (default: $PQVK_DEVICE, else the best GPU)");
  app.add_option("-m,--model", ma.models, "A .pqm model to run (repeatable, or comma-separated)")->delimiter(',');
  app.add_option("--synthetic", ma.synthetic,
                 "Random weights made on the device in the exact shape of: llama3-8b, llama3.2-1b, qwen3-8b, "
                 "qwen2.5-7b, mistral-7b (comma-separated for several; 'tiny': a small shape for tests)")->delimiter(',');
  app.add_option("--bits", ma.bits, "Synthetic formats: uniform PolarQuant bit widths, e.g. 3,4,5,6")
      ->check(CLI::Range(2, 8))->delimiter(',');
  app.add_option("--recipe", ma.recipes, "Synthetic formats: quantization recipes (q2..q8, mixed)")->delimiter(',');
  app.add_flag("--fp16", ma.fp16, "Synthetic formats: also unquantized fp16 weights");
  app.add_option("-p,--n-prompt", ma.n_prompt, "Prompt lengths: pp<N> tests (default 512; 0: none)")->delimiter(',');
  app.add_option("-n,--n-gen", ma.n_gen, "Generation lengths: tg<N> tests (default 128; 0: none)")->delimiter(',');
  app.add_option("-d,--n-depth", ma.n_depth, "Depths: run the tests after N tokens already in the cache (default 0)")
      ->check(CLI::Range(0, 1 << 20))->delimiter(',');
  app.add_option("--n-parallel", ma.n_parallel,
                 "(also -np, as llama.cpp) Continuous batching: also decode -n tokens in N sequences together (one "
                 "batched step per token), aggregate t/s, e.g. 1,8,32")
      ->delimiter(',');
  pqvk::apps::add_kv_type_option(app, ma.kv_type);
  app.add_option("--batch-gemm-from", ma.batch_gemm_from,
                 "-np: decode steps of at least N sequences multiply through the GEMM instead of the batched GEMV; "
                 "0: never; default -1: every step through the GEMM where the device has the tensor-core GEMM, as pq-server")
      ->check(CLI::Range(-1, 1 << 16));
  app.add_option("-r,--repetitions", ma.reps, "Timed repetitions of each test (default 5)")->check(CLI::Range(1, 1000));
  app.add_option("-b,--ubatch", ma.ubatch, "Prompt tokens per prefill pass (default 512)")->check(CLI::Range(1, 8192));
  app.add_option("--warmup-ms", ma.warmup_ms, "Replay each test untimed at least this long first (default 1000; at least once)")
      ->check(CLI::Range(0.0, 600000.0));
  app.add_option("--copy-mib", ma.copy_mib, "Buffer size of the copy-bandwidth measurement (default 1024)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--profile-reps", ma.profile_reps, "Replays of the profiled passes (default 5; median)")
      ->check(CLI::Range(1, 1000));
  app.add_flag("--no-breakdown", ma.no_breakdown, "Skip the per-kernel breakdown");
  app.add_option("-o,--output", ma.output, "What goes to stdout: md (default), json or csv");
  app.add_option("--json", ma.json_path, "Also write the results as JSON to this file");
  app.add_option("--csv", ma.csv_path, "Also write the results as CSV to this file");
  app.add_option("--seed", ma.seed, "Seed of the synthetic weights and prompt tokens (default 1)");

  KernelArgs ka;
  auto* kern = app.add_subcommand("kernels", "FWHT, GEMV, GEMM and prefill attention at LLM shapes against the copy bandwidth");
  kern->add_option("-d,--device", ka.device, "Device index or name substring");
  kern->add_option("-r,--reps", ka.reps, "Timed repetitions per kernel (median reported)")->check(CLI::Range(1, 10000));
  kern->add_option("--bits", ka.bits, "Bit widths to run (default 3,4,5,6)")->check(CLI::Range(2, 8))->delimiter(',');
  kern->add_option("--shape", ka.shapes, "Matrix shapes OUTxIN (default: the LLM shapes)")->delimiter(',');
  kern->add_option("-m,--m", ka.ms, "Token counts (default 1,512)")->check(CLI::Range(1, 65536))->delimiter(',');
  kern->add_flag("--no-f16", ka.no_f16, "Skip the fp16 baseline");
  kern->add_flag("--smoke", ka.smoke, "Tiny shapes: checks that everything runs (CI), measures nothing useful");
  kern->add_option("--json", ka.json_path, "Also write the results as JSON to this file");
  kern->add_option("--warmup-ms", g_warmup_ms, "Replay each measurement at least this long before timing it (default 1000)");
  kern->add_option("--gemv-wg", ka.gemv_wg, "GEMV workgroup size (multiple of 32)");
  kern->add_option("--gemv-rows", ka.gemv_rows, "GEMV rows per workgroup");
  kern->add_flag("--batched", ka.batched,
                 "For M > 1 also what continuous batching's decode steps may run: the batched GEMV (shape from $PQVK_GEMV_BATCH=WGxROWSxTOKENS) and the GEMM with K split");
  kern->add_flag("--check", ka.check, "Also check every timed quantized GEMV / GEMM and prefill attention against its CPU twin (exit 1 on a mismatch)");
  kern->add_flag("--chain", ka.chain,
                 "Also time each GEMV (M = 1) in chains of 8 with and without barriers between them (per GEMV): what a dependent dispatch costs");
  kern->add_flag("--no-attention", ka.no_attention, "Skip the prefill attention (Llama-3-8B's heads, causal, at each M >= 16 of -m)");
  kern->add_option("--gemv-configs", ka.gemv_configs,
                   "Time the GEMV once per configuration WGxROWS + t (shared table), u (table, one copy), h (subgroup shuffle), r (shuffle, unmasked indices) or d (no lookup: its cost), e.g. 128x2t,256x8h")
      ->delimiter(',');
  // llama.cpp's spelling -np (CLI11 takes one-letter short options only).
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.push_back(std::strcmp(argv[i], "-np") == 0 ? "--n-parallel" : argv[i]);
  std::reverse(args.begin(), args.end());  // CLI11's parse(vector) takes them in reverse
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*kern) return run_kernels(ka);
    if (list) return list_devices();
    return run_models(ma);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vk-bench: error: %s\n", e.what());
    return 1;
  }
}
