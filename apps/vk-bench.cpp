// vk-bench: headless throughput runs.
//   vk-bench kernels   FWHT, GEMV (M = 1) and GEMM (M = 512) at LLM shapes for Q3..Q6 and fp16,
//                      timed with GPU timestamps, against the device-to-device copy bandwidth
//                      measured in the same run.
// Weights are random codes and scales (timing does not depend on their values, but never on
// zeros); matrices smaller than 256 MiB are replicated and cycled so that repeated runs read
// device memory, not the last-level cache.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "kernels/kernels.h"
#include "quant/polarquant.h"
#include "vk/context.h"

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
};

struct KernelArgs {
  std::string device, json_path;
  bool smoke = false, no_f16 = false;
  int reps = 20;
  std::vector<int> bits = {3, 4, 5, 6};
  std::vector<std::string> shapes;  // "OUTxIN"
  std::vector<uint32_t> ms;
  uint32_t gemv_wg = 0, gemv_rows = 0;
};

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

  const size_t copy_bytes = smoke ? (8u << 20) : std::min<size_t>(size_t(1) << 30, info.max_allocation_size / 2);
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
      std::vector<pqvk::DeviceF16Matrix> fs;
      size_t weight_bytes = 0;
      for (int i = 0; i < copies; ++i) {
        if (f16) {
          std::vector<float> w(out * in);
          for (auto& v : w) v = std::uniform_real_distribution<float>(-1, 1)(rng);
          fs.push_back(pqvk::upload_f16(ctx, w.data(), out, in, shape));
          weight_bytes = fs.back().bytes();
        } else {
          qs.push_back(pqvk::upload_quant(ctx, random_quant(out, in, bits, rng), shape));
          weight_bytes = qs.back().bytes();
        }
      }
      for (uint32_t m : ms) {
        std::vector<float> x(size_t(m) * (in + 1024));
        for (auto& v : x) v = std::normal_distribution<float>()(rng);
        vk::Buffer xb = ctx.upload_new(x, "x");
        vk::Buffer yb = ctx.buffer(size_t(m) * out * 4, vk::MemoryKind::device, "y");
        double min_ns = 0;
        double ns = time_median_ns(ctx, reps, [&](vk::Commands& c, int r) {
          if (f16) {
            if (m == 1) k.gemv_f16(c, fs[r % copies], xb, yb);
            else k.gemm_f16(c, fs[r % copies], xb, yb, m);
          } else {
            if (m == 1) k.gemv(c, qs[r % copies], xb, yb);
            else k.gemm(c, qs[r % copies], xb, yb, m);
          }
        }, &min_ns);
        double bytes = double(weight_bytes) + double(m) * in * 4 + double(m) * out * 4;
        double flops = 2.0 * m * double(out) * in;
        rows.push_back({m == 1 ? "gemv" : "gemm", fmt, shape, m, ns / 1e3, bytes / ns, 100 * bytes / ns / bw,
                        flops / ns / 1e3, min_ns / 1e3});
      }
    }
  }

  std::printf("| kernel | format | out x in | M | median (us) | min (us) | GB/s | %% of copy BW | TFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows)
    std::printf("| %s | %s | %s | %u | %.1f | %.1f | %.1f | %.1f%% | %.2f |\n", r.kernel.c_str(), r.format.c_str(),
                r.shape.c_str(), r.m, r.us, r.min_us, r.gbs, r.pct, r.tflops);

  if (!json_path.empty()) {
    nlohmann::json j = {{"device", info.name}, {"driver", info.driver}, {"copy_bandwidth_gbs", bw}, {"copy_api_gbs", api_bw}, {"copy_shader_gbs", shader_bw}, {"results", nlohmann::json::array()}};
    for (const auto& r : rows)
      j["results"].push_back({{"kernel", r.kernel}, {"format", r.format}, {"shape", r.shape}, {"m", r.m},
                              {"time_us", r.us}, {"min_time_us", r.min_us}, {"gbs", r.gbs}, {"pct_copy_bw", r.pct}, {"tflops", r.tflops}});
    std::ofstream f(json_path);
    if (!f) throw std::runtime_error("cannot write --json file '" + json_path + "'");
    f << j.dump(2) << "\n";
  }
  if (ctx.validation_messages()) {
    std::fprintf(stderr, "vk-bench: %u Vulkan validation messages\n", ctx.validation_messages());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vk-bench: pqvk throughput benchmarks"};
  app.require_subcommand(1);
  KernelArgs ka;
  auto* kern = app.add_subcommand("kernels", "FWHT, GEMV and GEMM at LLM shapes against the copy bandwidth");
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
  CLI11_PARSE(app, argc, argv);
  try {
    if (*kern) return run_kernels(ka);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vk-bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
