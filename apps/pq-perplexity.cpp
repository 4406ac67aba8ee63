// pq-perplexity: perplexity of a model on a text file, on the GPU (or the CPU reference with
// --cpu), and the KL divergence of a quantized model's token distributions from a saved run.
//
// Protocols (both over the whole file tokenized as one text, BOS first when the model uses one):
//   chunks (default, llama.cpp's perplexity): non-overlapping chunks of --ctx tokens, each run
//     from an empty cache with its first token replaced by BOS; the tokens of the second half of
//     each chunk are scored (positions ctx/2 + 1 .. ctx - 1, each predicted from the ones before).
//   --stride S (HuggingFace's sliding window): windows of --ctx tokens starting every S tokens;
//     each window scores only the tokens the previous windows did not (at most S, the last
//     ones of the window), each with the whole window before it as context. No BOS replacement.
//     As in HuggingFace's recipe, a window's first token is never predicted: with --stride equal
//     to --ctx the first token of every window after the first goes unscored.
//
// --save-logits FILE writes the log-probabilities of every scored position (float32, with the
// tokens and the protocol in a header: docs/architecture.md, "Measuring"); --kl-divergence
// FILE reads such a file (of an fp16 run, say) and compares this model's distributions with it:
// mean KL divergence, how often both pick the same top token, and the change of the correct
// token's probability (mean, percentiles).
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "device_choice.h"
#include "llm/cpu_model.h"
#include "llm/gpu_model.h"
#include "model/pqm.h"
#include "tokenize/tokenizer.h"
#include "vk/context.h"
#include "kv_type_option.h"

#ifndef PQVK_DEFAULT_MODEL
#define PQVK_DEFAULT_MODEL ""
#endif

namespace {

using Clock = std::chrono::steady_clock;

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One window of the text: the tokens it runs and which of its positions are scored (the logits
// at position i predict token i + 1 of the window).
struct Window {
  size_t begin = 0;           // first token in the text
  std::vector<int32_t> ids;   // what runs (the first may be BOS instead of the text's token)
  size_t first_scored = 0;    // logits positions first_scored .. ids.size() - 2 are scored
};

// llama.cpp's protocol: floor(n / ctx) chunks (at most max_chunks), second halves scored.
std::vector<Window> chunk_windows(const std::vector<int32_t>& t, size_t ctx, size_t max_chunks, int32_t bos) {
  std::vector<Window> w;
  const size_t n = std::min(t.size() / ctx, max_chunks ? max_chunks : SIZE_MAX);
  for (size_t c = 0; c < n; ++c) {
    Window x;
    x.begin = c * ctx;
    x.ids.assign(t.begin() + static_cast<ptrdiff_t>(c * ctx), t.begin() + static_cast<ptrdiff_t>((c + 1) * ctx));
    if (bos >= 0) x.ids[0] = bos;
    x.first_scored = ctx / 2;
    w.push_back(std::move(x));
  }
  return w;
}

// HuggingFace's sliding window: windows [begin, begin + ctx) every `stride` tokens, each scoring
// the tokens after the previous window's end.
std::vector<Window> stride_windows(const std::vector<int32_t>& t, size_t ctx, size_t stride, size_t max_chunks) {
  std::vector<Window> w;
  size_t prev_end = 0;
  for (size_t begin = 0; begin < t.size(); begin += stride) {
    if (max_chunks && w.size() == max_chunks) break;
    const size_t end = std::min(begin + ctx, t.size());
    const size_t target_from = std::max(prev_end, begin + 1);  // first scored token (text index)
    if (end <= target_from) break;
    Window x;
    x.begin = begin;
    x.ids.assign(t.begin() + static_cast<ptrdiff_t>(begin), t.begin() + static_cast<ptrdiff_t>(end));
    x.first_scored = target_from - begin - 1;
    w.push_back(std::move(x));
    prev_end = end;
    if (end == t.size()) break;
  }
  return w;
}

size_t scored_count(const std::vector<Window>& ws) {
  size_t n = 0;
  for (const auto& w : ws) n += w.ids.size() - 1 - w.first_scored;
  return n;
}

// log-softmax of one row, in double.
void log_softmax(const float* logits, size_t vocab, std::vector<float>& out) {
  double mx = -INFINITY;
  for (size_t v = 0; v < vocab; ++v) mx = std::max(mx, double(logits[v]));
  double s = 0;
  for (size_t v = 0; v < vocab; ++v) s += std::exp(double(logits[v]) - mx);
  const double lse = mx + std::log(s);
  out.resize(vocab);
  for (size_t v = 0; v < vocab; ++v) out[v] = static_cast<float>(double(logits[v]) - lse);
}

// ---- the saved log-probabilities (--save-logits / --kl-divergence) ----------------------------
//
// Little-endian: "PQVKLOGP" | u32 version (1) | u32 vocab | u32 ctx | u32 stride (0: chunks) |
// u32 windows | u64 tokens | i32 token ids [tokens] | float32 log-probabilities [scored][vocab],
// the scored positions in the order the protocol visits them.
constexpr char kMagic[8] = {'P', 'Q', 'V', 'K', 'L', 'O', 'G', 'P'};

struct LogitsHeader {
  uint32_t version = 1, vocab = 0, ctx = 0, stride = 0, windows = 0;
  std::vector<int32_t> tokens;
};

void write_header(std::ofstream& f, const LogitsHeader& h) {
  f.write(kMagic, 8);
  const uint32_t u[5] = {h.version, h.vocab, h.ctx, h.stride, h.windows};
  f.write(reinterpret_cast<const char*>(u), sizeof u);
  const uint64_t n = h.tokens.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(reinterpret_cast<const char*>(h.tokens.data()), static_cast<std::streamsize>(n * 4));
}

LogitsHeader read_header(std::ifstream& f, const std::string& path, uint64_t file_size) {
  char magic[8] = {};
  uint32_t u[5] = {};
  uint64_t n = 0;
  f.read(magic, 8);
  f.read(reinterpret_cast<char*>(u), sizeof u);
  f.read(reinterpret_cast<char*>(&n), 8);
  if (!f || std::memcmp(magic, kMagic, 8) != 0)
    throw Fail(path + ": not a pq-perplexity --save-logits file (bad magic or too short)");
  if (u[0] != 1) throw Fail(path + ": unsupported version " + std::to_string(u[0]) + " (this program writes 1)");
  if (n > file_size / 4) throw Fail(path + ": token count " + std::to_string(n) + " exceeds the file");
  LogitsHeader h;
  h.version = u[0], h.vocab = u[1], h.ctx = u[2], h.stride = u[3], h.windows = u[4];
  h.tokens.resize(n);
  f.read(reinterpret_cast<char*>(h.tokens.data()), static_cast<std::streamsize>(n * 4));
  if (!f) throw Fail(path + ": truncated in the token list");
  return h;
}

// ---- statistics ----------------------------------------------------------------------------

struct Running {
  double sum = 0, sum2 = 0;
  size_t n = 0;
  void add(double x) {
    sum += x;
    sum2 += x * x;
    ++n;
  }
  double mean() const { return n ? sum / double(n) : 0.0; }
  double stderr_mean() const {  // standard error of the mean
    if (n < 2) return 0.0;
    const double var = std::max(0.0, sum2 / double(n) - mean() * mean());
    return std::sqrt(var / double(n - 1));
  }
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double at = p / 100.0 * double(v.size() - 1);
  const size_t i = static_cast<size_t>(at);
  const double f = at - double(i);
  return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

class Progress {
 public:
  Progress(size_t total, bool quiet) : total_(total), quiet_(quiet), tty_(isatty(STDERR_FILENO) != 0), t0_(Clock::now()) {}
  void update(size_t done, double ppl, double err) {
    if (quiet_) return;
    const double s = std::chrono::duration<double>(Clock::now() - t0_).count();
    const double eta = done ? s / double(done) * double(total_ - done) : 0.0;
    if (tty_) {
      const int width = 30, fill = static_cast<int>(width * double(done) / double(std::max<size_t>(total_, 1)));
      std::fprintf(stderr, "\r[%s%s] %zu/%zu  PPL %.4f +/- %.4f  %.0f s, ETA %.0f s ", std::string(fill, '=').c_str(),
                   std::string(width - fill, ' ').c_str(), done, total_, ppl, err, s, eta);
      if (done == total_) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "[%zu/%zu] PPL %.4f +/- %.4f (%.1f s, ETA %.0f s)\n", done, total_, ppl, err, s, eta);
    }
    std::fflush(stderr);
  }

 private:
  size_t total_;
  bool quiet_, tty_;
  Clock::time_point t0_;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pq-perplexity: perplexity and KL divergence of a PolarQuant model on a text file"};
  std::string model_path, text_path, device, json_path, save_path, kld_path, kv_type = "f16";
  int ctx = 512, stride = 0, chunks = 0, batch = 512, threads = 0;
  bool cpu = false, quiet = false, no_bos = false;
  app.add_option("-m,--model", model_path, "The .pqm model (default: $PQVK_MODEL, else the bundled model)");
  app.add_option("-f,--file", text_path, "The text file (UTF-8)")->required();
  app.add_option("-c,--ctx", ctx, "Tokens per chunk / window (default 512)")->check(CLI::Range(8, 1 << 20));
  app.add_option("--stride", stride, "Sliding windows every N tokens (HuggingFace's protocol); default: llama.cpp's chunks")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--chunks", chunks, "Run at most N chunks / windows (default: all)")->check(CLI::Range(1, 1 << 30));
  app.add_option("-b,--batch", batch, "Tokens per GPU prefill pass (default 512)")->check(CLI::Range(1, 8192));
  app.add_flag("--cpu", cpu, "Run the CPU reference instead of the GPU");
  app.add_option("-t,--threads", threads, "CPU threads with --cpu (default: all)")->check(CLI::Range(0, 4096));
  app.add_option("-d,--device", device,
                 "Vulkan device index or name substring (default: $PQVK_DEVICE, else the best GPU; where the only "
                 "device is a CPU implementation such as lavapipe, the CPU reference runs unless this is given)");
  app.add_option("--json", json_path, "Also write the results as JSON to this file");
  auto* save_opt = app.add_option("--save-logits", save_path, "Write the log-probabilities of every scored token to FILE");
  app.add_option("--kl-divergence", kld_path, "Compare with the log-probabilities a --save-logits run wrote to FILE")
      ->excludes(save_opt);
  app.add_flag("--no-bos", no_bos, "Do not start the text / chunks with BOS");
  pqvk::apps::add_kv_type_option(app, kv_type);
  app.add_flag("-q,--quiet", quiet, "No progress");
  CLI11_PARSE(app, argc, argv);

  try {
    if (model_path.empty()) {
      const char* env = std::getenv("PQVK_MODEL");
      model_path = env && *env ? env : PQVK_DEFAULT_MODEL;
    }
    if (model_path.empty()) throw Fail("no model: pass -m MODEL.pqm");
    if (stride > ctx) throw Fail("--stride " + std::to_string(stride) + " exceeds --ctx " + std::to_string(ctx) +
                                 " (tokens between windows would never be scored)");

    // The text, as tokens.
    std::ifstream in(text_path, std::ios::binary);
    if (!in) throw Fail(text_path + ": cannot open the text file");
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    if (text.empty()) throw Fail(text_path + ": the text file is empty");

    auto file = pqvk::model::PqmFile::open(model_path);
    const auto& cfg = file.config();
    if (file.tokenizer().kind == "none") throw Fail(model_path + ": the model has no tokenizer; it cannot read text");
    auto tok = pqvk::tokenize::Tokenizer::from_pqm(file);
    const bool add_bos = !no_bos && tok->adds_bos() && tok->bos() >= 0;
    const std::vector<int32_t> tokens = tok->encode(text, add_bos, false);
    if (ctx > cfg.max_seq_len)
      throw Fail("--ctx " + std::to_string(ctx) + " exceeds the model's context of " + std::to_string(cfg.max_seq_len));
    std::vector<Window> windows =
        stride ? stride_windows(tokens, size_t(ctx), size_t(stride), size_t(chunks))
               : chunk_windows(tokens, size_t(ctx), size_t(chunks), add_bos ? tok->bos() : -1);
    if (windows.empty() || scored_count(windows) == 0) {
      if (stride)
        throw Fail(text_path + ": " + std::to_string(tokens.size()) + " tokens; at least 2 are needed to score one");
      throw Fail(text_path + ": " + std::to_string(tokens.size()) + " tokens, fewer than the " + std::to_string(ctx) +
                 " of one chunk (--ctx); give a longer text or a smaller --ctx");
    }
    const size_t vocab = static_cast<size_t>(cfg.vocab_size);
    const size_t n_scored = scored_count(windows);

    // The engine: logits of every position of a window, from an empty cache.
    std::unique_ptr<pqvk::vk::Context> vkctx;
    std::unique_ptr<pqvk::llm::GpuModel> gpu;
    std::unique_ptr<pqvk::llm::CpuModel> cpu_model;
    std::function<std::vector<float>(const std::vector<int32_t>&)> eval;
    std::string device_name;
    const int kv_bits = pqvk::apps::kv_bits(kv_type);
    const bool on_cpu = pqvk::apps::use_cpu(cpu, device, "pq-perplexity");
    if (on_cpu) {
      pqvk::llm::CpuOptions co;
      co.kv_fp16 = true;  // as the GPU's fp16 KV cache
      co.kv_bits = kv_bits;
      co.threads = threads;
      cpu_model = std::make_unique<pqvk::llm::CpuModel>(file, co);
      eval = [&](const std::vector<int32_t>& ids) {
        std::vector<float> out(ids.size() * vocab);
        cpu_model->reset();
        for (size_t i = 0; i < ids.size(); ++i) {
          auto l = cpu_model->forward(ids[i], static_cast<int32_t>(i));
          std::copy(l.begin(), l.end(), out.begin() + static_cast<ptrdiff_t>(i * vocab));
        }
        return out;
      };
      device_name = "CPU reference";
    } else {
      pqvk::vk::ContextOptions vo;
      vo.device = device;
      vkctx = std::make_unique<pqvk::vk::Context>(vo);
      pqvk::llm::GpuOptions go;
      go.context = ctx;
      go.kv_bits = kv_bits;
      go.max_batch = static_cast<uint32_t>(std::min(batch, ctx));
      gpu = std::make_unique<pqvk::llm::GpuModel>(*vkctx, file, go);
      eval = [&](const std::vector<int32_t>& ids) { return gpu->prefill_all(ids, 0); };
      device_name = vkctx->info().name;
    }

    // The saved run to compare with, or the file to save to.
    std::ifstream base;
    std::ofstream save;
    LogitsHeader here;
    here.vocab = static_cast<uint32_t>(vocab);
    here.ctx = static_cast<uint32_t>(ctx);
    here.stride = static_cast<uint32_t>(stride);
    here.windows = static_cast<uint32_t>(windows.size());
    here.tokens = tokens;
    if (!kld_path.empty()) {
      std::error_code ec;
      const uint64_t size = std::filesystem::file_size(kld_path, ec);
      if (ec) throw Fail(kld_path + ": cannot read the --kl-divergence file (" + ec.message() + ")");
      base.open(kld_path, std::ios::binary);
      if (!base) throw Fail(kld_path + ": cannot open the --kl-divergence file");
      const LogitsHeader h = read_header(base, kld_path, size);
      if (h.vocab != here.vocab)
        throw Fail(kld_path + ": saved with a vocabulary of " + std::to_string(h.vocab) + ", this model has " +
                   std::to_string(vocab));
      if (h.ctx != here.ctx || h.stride != here.stride || h.windows != here.windows)
        throw Fail(kld_path + ": saved with --ctx " + std::to_string(h.ctx) + " --stride " + std::to_string(h.stride) +
                   " and " + std::to_string(h.windows) + " windows; this run has --ctx " + std::to_string(ctx) +
                   " --stride " + std::to_string(stride) + " and " + std::to_string(windows.size()));
      if (h.tokens != here.tokens)
        throw Fail(kld_path + ": saved from other tokens (another text or tokenizer) than " + text_path);
      const uint64_t expect = 8 + 20 + 8 + 4 * uint64_t(h.tokens.size()) + 4 * uint64_t(n_scored) * vocab;
      if (size != expect)
        throw Fail(kld_path + ": " + std::to_string(size) + " bytes, expected " + std::to_string(expect));
    }
    if (!save_path.empty()) {
      save.open(save_path, std::ios::binary | std::ios::trunc);
      if (!save) throw Fail(save_path + ": cannot write the --save-logits file");
      write_header(save, here);
    }

    if (!quiet)
      std::fprintf(stderr, "pq-perplexity: %s on %s: %zu tokens, %zu %s of %d, %zu scored\n", model_path.c_str(),
                   device_name.c_str(), tokens.size(), windows.size(), stride ? "windows" : "chunks", ctx, n_scored);

    Running nll, kld, dp;
    std::vector<double> klds, dps, running_ppl;
    size_t same_top = 0, top1_correct = 0;
    double base_nll = 0;
    std::vector<float> lp, blp(vocab);
    Progress progress(windows.size(), quiet);
    const auto t0 = Clock::now();
    for (size_t wi = 0; wi < windows.size(); ++wi) {
      const Window& w = windows[wi];
      const std::vector<float> logits = eval(w.ids);
      for (size_t i = w.first_scored; i + 1 < w.ids.size(); ++i) {
        const int32_t target = tokens[w.begin + i + 1];
        log_softmax(logits.data() + i * vocab, vocab, lp);
        if (!std::isfinite(lp[size_t(target)]))
          throw Fail(model_path + ": non-finite log-probability at token " + std::to_string(w.begin + i + 1));
        nll.add(-double(lp[size_t(target)]));
        const size_t top = static_cast<size_t>(std::max_element(lp.begin(), lp.end()) - lp.begin());
        top1_correct += top == size_t(target);
        if (save.is_open()) save.write(reinterpret_cast<const char*>(lp.data()), static_cast<std::streamsize>(vocab * 4));
        if (base.is_open()) {
          base.read(reinterpret_cast<char*>(blp.data()), static_cast<std::streamsize>(vocab * 4));
          if (!base) throw Fail(kld_path + ": truncated");
          double k = 0;
          for (size_t v = 0; v < vocab; ++v) {
            const double pb = std::exp(double(blp[v]));
            if (pb > 0) k += pb * (double(blp[v]) - double(lp[v]));
          }
          k = std::max(0.0, k);  // rounding can give -1e-17
          kld.add(k);
          klds.push_back(k);
          const size_t btop = static_cast<size_t>(std::max_element(blp.begin(), blp.end()) - blp.begin());
          same_top += btop == top;
          const double d = std::exp(double(lp[size_t(target)])) - std::exp(double(blp[size_t(target)]));
          dp.add(d);
          dps.push_back(d);
          base_nll -= double(blp[size_t(target)]);
        }
      }
      running_ppl.push_back(std::exp(nll.mean()));
      progress.update(wi + 1, std::exp(nll.mean()), std::exp(nll.mean()) * nll.stderr_mean());
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    size_t run_tokens = 0;  // tokens the model ran (scored or context)
    for (const auto& w : windows) run_tokens += w.ids.size();
    if (save.is_open() && !save.flush()) throw Fail(save_path + ": write failed (disk full?)");

    const double ppl = std::exp(nll.mean()), ppl_err = ppl * nll.stderr_mean();
    std::printf("model: %s\ntext: %s (%zu tokens)\ndevice: %s\nKV cache: %s\n", model_path.c_str(), text_path.c_str(),
                tokens.size(), device_name.c_str(), kv_type.c_str());
    std::printf("protocol: %s, ctx %d%s, %zu %s, %zu tokens scored\n",
                stride ? "sliding window (HuggingFace)" : "chunks, second half scored (llama.cpp)", ctx,
                stride ? (", stride " + std::to_string(stride)).c_str() : "", windows.size(),
                stride ? "windows" : "chunks", nll.n);
    std::printf("PPL = %.4f +/- %.4f   (mean NLL %.6f nats/token; top-1 accuracy %.2f%%; %.1f s, %.0f tokens/s)\n", ppl,
                ppl_err, nll.mean(), 100.0 * double(top1_correct) / double(nll.n), seconds,
                double(run_tokens) / std::max(seconds, 1e-9));
    nlohmann::json j = {{"model", model_path}, {"text", text_path}, {"device", device_name}, {"kv_type", kv_type},
                        {"protocol", stride ? "stride" : "chunks"}, {"ctx", ctx}, {"stride", stride},
                        {"windows", windows.size()}, {"tokens", tokens.size()}, {"tokens_scored", nll.n},
                        {"nll_mean", nll.mean()}, {"ppl", ppl}, {"ppl_stderr", ppl_err},
                        {"top1_accuracy", double(top1_correct) / double(nll.n)}, {"running_ppl", running_ppl},
                        {"seconds", seconds}};
    if (base.is_open()) {
      const double base_ppl = std::exp(base_nll / double(nll.n));
      std::printf("KL divergence from %s (base PPL %.4f):\n", kld_path.c_str(), base_ppl);
      std::printf("  mean KLD        %.6f +/- %.6f\n", kld.mean(), kld.stderr_mean());
      std::printf("  median / 99%% / max KLD  %.6f / %.6f / %.6f\n", percentile(klds, 50), percentile(klds, 99),
                  klds.empty() ? 0.0 : *std::max_element(klds.begin(), klds.end()));
      std::printf("  same top-1      %.3f%%\n", 100.0 * double(same_top) / double(nll.n));
      std::printf("  correct token's probability change: mean %.4f%% +/- %.4f%%, 99%% %.4f%%, 1%% %.4f%%\n",
                  100.0 * dp.mean(), 100.0 * dp.stderr_mean(), 100.0 * percentile(dps, 99), 100.0 * percentile(dps, 1));
      j["kld"] = {{"base", kld_path},
                  {"base_ppl", base_ppl},
                  {"ppl_ratio", ppl / base_ppl},
                  {"kld_mean", kld.mean()},
                  {"kld_stderr", kld.stderr_mean()},
                  {"kld_median", percentile(klds, 50)},
                  {"kld_p99", percentile(klds, 99)},
                  {"kld_max", klds.empty() ? 0.0 : *std::max_element(klds.begin(), klds.end())},
                  {"same_top1", double(same_top) / double(nll.n)},
                  {"delta_p_mean", dp.mean()},
                  {"delta_p_stderr", dp.stderr_mean()},
                  {"delta_p_p99", percentile(dps, 99)},
                  {"delta_p_p1", percentile(dps, 1)}};
    }
    if (!json_path.empty()) {
      std::ofstream f(json_path);
      if (!(f << j.dump(2) << "\n")) throw Fail("cannot write --json file '" + json_path + "'");
    }
    if (vkctx && vkctx->validation_messages()) {
      std::fprintf(stderr, "pq-perplexity: %u Vulkan validation messages\n", vkctx->validation_messages());
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pq-perplexity: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
