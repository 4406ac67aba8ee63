// pq-quantize: converts a model (HuggingFace directory or .safetensors, GGUF file, llama2.c .bin,
// or a PolarQuant reference checkpoint) into one .pqm file (docs/pqm-format.md).
//   pq-quantize INPUT OUTPUT [--bits N | --recipe q2..q8|mixed] [--method pq|absmax|rot-uniform|lloyd|fp16]
//               [--block-size 64|128|256] [--threads N] [--tokenizer PATH] [--dequant-out FILE.safetensors]
// Progress goes to stderr (a bar with ETA on a terminal, plain lines otherwise); the summary
// table (per tensor: storage, bits, bits per weight as stored (codes, scales, codebook and the
// padding of the last block: bits + 16/B for wide matrices), SQNR, relative RMSE, kurtosis of the
// block coordinates before/after the Hadamard rotation, seconds) goes to stdout.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "model/checked_math.h"
#include "model/convert.h"
#include "model/error.h"
#include "model/pqm.h"
#include "model/source.h"

namespace {

using pqvk::model::QuantizeResult;
using pqvk::model::TensorReport;

std::string fmt_seconds(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return buf;
}

// Progress on stderr: a redrawn bar on a terminal (at most 10 times a second), else one line
// per tensor.
class ProgressPrinter {
 public:
  explicit ProgressPrinter(bool quiet) : tty_(isatty(STDERR_FILENO) != 0), quiet_(quiet) {}

  void update(uint64_t done, uint64_t total, const std::string& tensor) {
    if (quiet_ || total == 0) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double frac = static_cast<double>(done) / static_cast<double>(total);
    const double eta = frac > 0 ? elapsed * (1.0 - frac) / frac : 0.0;
    if (tty_) {
      if (elapsed - last_draw_ < 0.1 && done != total) return;
      last_draw_ = elapsed;
      const int width = 30, filled = static_cast<int>(frac * width);
      std::fprintf(stderr, "\r[%s%s] %5.1f%%  eta %-6s %-40.40s", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), 100.0 * frac, fmt_seconds(eta).c_str(), tensor.c_str());
      if (done == total) std::fprintf(stderr, "\n");
    } else if (tensor != last_tensor_) {
      std::fprintf(stderr, "[%5.1f%%] %s (eta %s)\n", 100.0 * frac, tensor.c_str(), fmt_seconds(eta).c_str());
    }
    last_tensor_ = tensor;
  }

 private:
  bool tty_, quiet_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
  double last_draw_ = -1.0;
  std::string last_tensor_;
};

std::string num(double v, const char* f) {
  if (std::isnan(v)) return "-";
  if (std::isinf(v)) return "exact";
  char buf[32];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

void print_summary(const QuantizeResult& r, const std::string& out) {
  std::printf("%-26s %-14s %-14s %4s %6s %8s %9s %8s %8s %7s\n", "tensor", "shape", "storage", "bits", "bpw", "SQNR dB",
              "rel RMSE", "kurt in", "kurt rot", "seconds");
  uint64_t params = 0, bytes = 0;
  int padded = 0;  // quantized tensors whose rows are padded by more than 25% to whole blocks
  for (const TensorReport& t : r.tensors) {
    const uint64_t n = t.shape[0] * (t.shape.size() > 1 ? t.shape[1] : 1);
    params += n;
    bytes += t.bytes;
    const double bpw = 8.0 * static_cast<double>(t.bytes) / static_cast<double>(n);  // as stored: padding, codebook included
    padded += t.bits > 0 && bpw > 1.25 * t.bpw;
    std::printf("%-26s %-14s %-14s %4s %6.3f %8s %9s %8s %8s %7.3f\n", t.name.c_str(), pqvk::model::shape_string(t.shape).c_str(),
                t.storage.c_str(), t.bits ? std::to_string(t.bits).c_str() : "-", bpw, num(t.sqnr_db, "%.2f").c_str(),
                num(t.rel_rmse, "%.5f").c_str(), num(t.kurtosis_before, "%.3f").c_str(), num(t.kurtosis_after, "%.3f").c_str(),
                t.seconds);
  }
  std::printf("%s: %zu tensors, %llu parameters in %llu bytes of tensors (%.3f bits per parameter), file %llu bytes, %.2f s\n",
              out.c_str(), r.tensors.size(), static_cast<unsigned long long>(params), static_cast<unsigned long long>(bytes),
              params ? 8.0 * static_cast<double>(bytes) / static_cast<double>(params) : 0.0,
              static_cast<unsigned long long>(r.file_bytes), r.seconds);
  if (padded > 0)
    std::fprintf(stderr, "pq-quantize: note: %d matrices have rows much shorter than a multiple of the block size and are "
                         "stored padded; a smaller --block-size stores them more compactly\n", padded);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pq-quantize: convert a model to a .pqm file (PolarQuant and ablation quantizers)"};
  std::string input, output, tokenizer;
  int bits = 0;
  bool quiet = false;
  pqvk::model::QuantizeOptions opt;
  app.add_option("INPUT", input, "HuggingFace directory or .safetensors file, GGUF file, llama2.c .bin, or PolarQuant reference directory")
      ->required();
  app.add_option("OUTPUT", output, "The .pqm file to write")->required();
  auto* bits_opt = app.add_option("--bits", bits, "Bits for every matrix (2..8): the same as --recipe qN");
  app.add_option("--recipe", opt.recipe, "q2..q8 or mixed (q/k/v 5, attn out 6, gate/up 3, down 4, embed 5, lm_head 6); default q5")
      ->excludes(bits_opt);
  app.add_option("--method", opt.method, "pq (default), absmax, rot-uniform, lloyd, or fp16 (no quantization)");
  app.add_option("--block-size", opt.block, "Quantization block size: 64, 128 (default) or 256");
  app.add_option("--threads", opt.threads, "Worker threads (default: all hardware threads)");
  app.add_option("--tokenizer", tokenizer, "llama2.c input only: a tokenizer .bin or SentencePiece .model to attach");
  app.add_option("--dequant-out", opt.dequant_out, "Also write the dequantized weights as an fp16 HuggingFace .safetensors");
  app.add_flag("-q,--quiet", quiet, "No progress output");
  CLI11_PARSE(app, argc, argv);

  try {
    if (*bits_opt) {
      if (bits < 2 || bits > 8) throw pqvk::ModelError("--bits: must be 2..8, got " + std::to_string(bits));
      opt.recipe = "q" + std::to_string(bits);
    }
    pqvk::model::validate_options(opt);
    const pqvk::model::SourceModel src = pqvk::model::open_source(input, {.tokenizer_path = tokenizer});
    ProgressPrinter progress(quiet);
    opt.progress = [&](uint64_t done, uint64_t total, const std::string& t) { progress.update(done, total, t); };
    const QuantizeResult r = pqvk::model::quantize_model(src, output, opt);
    print_summary(r, output);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pq-quantize: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
