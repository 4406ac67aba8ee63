// pq-run: the main job. Loads a .pqm model, runs the prompt through it on the GPU (or the CPU
// reference with --cpu) and streams the generated text, then reports prefill and decode speed.
//
//   pq-run                                   the bundled model, a default prompt
//   pq-run -m model.pqm -p "Once upon" -n 64 --temp 0
//   pq-run -m stories.pqm --prompt-ids 1,403,407 --ids     token ids in, token ids out
//   pq-run -m qwen.pqm --chat -p "Hello" [--system TEXT]   the prompt as a user message, in the model's
//                                            chat template; prints the assistant's reply
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "device_choice.h"
#include "llm/cpu_model.h"
#include "llm/gpu_model.h"
#include "llm/sampler.h"
#include "model/pqm.h"
#include "sampler_options.h"
#include "tokenize/chat.h"
#include "tokenize/stop_filter.h"
#include "tokenize/tokenizer.h"
#include "vk/context.h"
#include "kv_type_option.h"

#ifndef PQVK_DEFAULT_MODEL
#define PQVK_DEFAULT_MODEL ""
#endif

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The model behind one interface: the GPU decoder or the CPU reference.
struct Engine {
  std::function<std::span<const float>(std::span<const int32_t>, int32_t)> prefill;
  std::function<std::span<const float>(int32_t, int32_t)> forward;
  std::function<int32_t(int32_t, int32_t)> forward_argmax;  // empty: not available
  int32_t context = 0;
  std::string device;
};

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find_first_of(", ", i);
    if (j == std::string::npos) j = s.size();
    if (j > i) {
      const std::string tok = s.substr(i, j - i);
      char* end = nullptr;
      long v = std::strtol(tok.c_str(), &end, 10);
      if (*end != '\0' || v < 0 || v > INT32_MAX) throw std::runtime_error("--prompt-ids: '" + tok + "' is not a token id");
      ids.push_back(static_cast<int32_t>(v));
    }
    i = j + 1;
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pq-run: generate text with a PolarQuant model on the GPU"};
  std::string model_path, prompt = "The", prompt_ids, device, system;
  int n_predict = 128, ctx_len = 0, threads = 0;
  bool cpu = false, print_ids = false, no_bos = false, quiet = false, chat = false;
  std::vector<std::string> stops;
  pqvk::llm::SamplerConfig sc;
  sc.seed = 0;
  app.add_option("-m,--model", model_path, "The .pqm model (default: $PQVK_MODEL, else the bundled model)");
  auto* p_opt = app.add_option("-p,--prompt", prompt, "The prompt text (default \"The\")");
  app.add_option("--prompt-ids", prompt_ids, "The prompt as token ids, e.g. 1,403,407 (for models without a text tokenizer)")
      ->excludes(p_opt);
  auto* chat_opt = app.add_flag("--chat", chat,
                                "The prompt is a user message: format it with the model's chat template (its Jinja "
                                "template, else a built-in format), stop at the end of the assistant's turn, print the reply");
  app.add_option("--system", system, "With --chat: a system message before the prompt")->needs(chat_opt);
  chat_opt->excludes(app.get_option("--prompt-ids"));
  app.add_option("-n,--n-predict", n_predict, "Tokens to generate (default 128)")->check(CLI::Range(0, 1 << 24));
  pqvk::apps::add_sampler_options(app, sc);
  app.add_option("--stop", stops, "Stop when this text is generated (repeatable)");
  app.add_option("-c,--ctx", ctx_len, "Context length (default: the model's, at most 8192)")->check(CLI::Range(1, 1 << 24));
  app.add_option("-d,--device", device,
                 "Vulkan device index or name substring (default: $PQVK_DEVICE, else the best GPU; where the only "
                 "device is a CPU implementation such as lavapipe, the CPU reference runs unless this is given)");
  app.add_flag("--cpu", cpu, "Run the CPU reference instead of the GPU");
  std::string kv_type = "f16";
  pqvk::apps::add_kv_type_option(app, kv_type);
  app.add_option("-t,--threads", threads, "CPU threads with --cpu (default: all)");
  app.add_flag("--ids", print_ids, "Print generated token ids (one line, space-separated) instead of text");
  app.add_flag("--no-bos", no_bos, "Do not start the prompt with the BOS token");
  app.add_flag("-q,--quiet", quiet, "No speed report");
  CLI11_PARSE(app, argc, argv);

  try {
    sc.validate();
    if (model_path.empty()) {
      const char* env = std::getenv("PQVK_MODEL");
      model_path = env && *env ? env : PQVK_DEFAULT_MODEL;
    }
    if (model_path.empty()) throw std::runtime_error("no model: pass -m MODEL.pqm");
    const auto t_load = Clock::now();
    auto file = pqvk::model::PqmFile::open(model_path);
    const auto& cfg = file.config();

    // The prompt as ids.
    std::unique_ptr<pqvk::tokenize::Tokenizer> tok;
    if (file.tokenizer().kind != "none") tok = pqvk::tokenize::Tokenizer::from_pqm(file);
    std::vector<int32_t> ids;
    std::vector<int32_t> stop_ids;  // besides EOS: the chat template's end-of-turn tokens
    if (!prompt_ids.empty()) {
      ids = parse_ids(prompt_ids);
      if (ids.empty()) throw std::runtime_error("--prompt-ids: no token ids given");
    } else {
      if (prompt.empty()) throw std::runtime_error("the prompt is empty: pass -p TEXT or --prompt-ids");
      if (!tok) throw std::runtime_error(model_path + ": the model has no text tokenizer; pass --prompt-ids");
      if (chat) {
        const auto tmpl = pqvk::tokenize::ChatTemplate::for_model(file.tokenizer(), cfg, *tok);
        std::vector<pqvk::tokenize::ChatMessage> messages;
        if (!system.empty()) messages.push_back({"system", system});
        messages.push_back({"user", prompt});
        ids = tmpl.encode(*tok, messages, true);
        stop_ids = tmpl.stop_tokens(*tok);
        for (const std::string& s : tmpl.stop_strings())
          if (!tok->token_id(s)) stops.push_back(s);  // end-of-turn text that is not one token
      } else {
        ids = tok->encode(prompt, !no_bos && tok->adds_bos());
      }
    }
    for (int32_t id : ids)
      if (id < 0 || id >= cfg.vocab_size)
        throw std::runtime_error("prompt token id " + std::to_string(id) + " is outside the vocabulary (" +
                                 std::to_string(cfg.vocab_size) + ")");
    if (!print_ids && !tok) throw std::runtime_error(model_path + ": the model has no text tokenizer; pass --ids");

    // The engine.
    Engine eng;
    std::unique_ptr<pqvk::vk::Context> vkctx;
    std::unique_ptr<pqvk::llm::GpuModel> gpu;
    std::unique_ptr<pqvk::llm::CpuModel> cpu_model;
    const int kv_bits = pqvk::apps::kv_bits(kv_type);
    if (pqvk::apps::use_cpu(cpu, device, "pq-run")) {
      pqvk::llm::CpuOptions co;
      co.threads = threads;
      co.kv_fp16 = kv_bits == 0;  // f16: as the GPU's cache
      co.kv_bits = kv_bits;
      cpu_model = std::make_unique<pqvk::llm::CpuModel>(file, co);
      eng.prefill = [&](std::span<const int32_t> t, int32_t p) { return cpu_model->prefill(t, p); };
      eng.forward = [&](int32_t t, int32_t p) { return cpu_model->forward(t, p); };
      eng.context = static_cast<int32_t>(ctx_len > 0 ? std::min<int64_t>(ctx_len, cfg.max_seq_len) : cfg.max_seq_len);
      eng.device = "CPU reference";
    } else {
      pqvk::vk::ContextOptions vo;
      vo.device = device;
      vkctx = std::make_unique<pqvk::vk::Context>(vo);
      pqvk::llm::GpuOptions go;
      go.context = ctx_len;
      go.kv_bits = kv_bits;
      gpu = std::make_unique<pqvk::llm::GpuModel>(*vkctx, file, go);
      eng.prefill = [&](std::span<const int32_t> t, int32_t p) { return gpu->prefill(t, p); };
      eng.forward = [&](int32_t t, int32_t p) { return gpu->forward(t, p); };
      eng.forward_argmax = [&](int32_t t, int32_t p) { return gpu->forward_argmax(t, p); };
      eng.context = gpu->context_size();
      eng.device = vkctx->info().name;
    }
    const double load_s = seconds_since(t_load);
    if (static_cast<int64_t>(ids.size()) > eng.context)
      throw std::runtime_error("the prompt has " + std::to_string(ids.size()) + " tokens, more than the context of " +
                               std::to_string(eng.context) + " (raise --ctx up to the model's " +
                               std::to_string(cfg.max_seq_len) + ")");

    // Prefill, then decode one token at a time.
    FILE* report = print_ids ? stderr : stdout;
    pqvk::llm::Sampler sampler(sc);
    const bool gpu_greedy = eng.forward_argmax && sc.temperature == 0.0f && sc.repeat_penalty == 1.0f;
    std::vector<int32_t> history = ids;
    std::optional<pqvk::tokenize::TextStream> stream;
    if (tok && !print_ids) {
      stream.emplace(*tok);
      if (!chat) std::fputs(tok->decode(ids).c_str(), stdout);  // echo the prompt (not a chat's markup)
      for (int32_t id : ids) stream->push(id);        // so the stream knows where the text is
      std::fflush(stdout);
    }
    pqvk::tokenize::StopFilter stop_filter(stops);
    const auto t_prefill = Clock::now();
    std::span<const float> logits = eng.prefill(ids, 0);
    int32_t next = gpu_greedy ? -1 : sampler.sample(logits, history);
    if (gpu_greedy) {  // the prefill returned logits; take their argmax the same way
      pqvk::llm::SamplerConfig g = sc;
      g.temperature = 0;
      next = pqvk::llm::Sampler(g).sample(logits, history);
    }
    const double prefill_s = seconds_since(t_prefill);
    const auto t_decode = Clock::now();
    int generated = 0;
    bool stopped = false, context_full = false;
    std::vector<int32_t> out_ids;
    while (generated < n_predict) {
      if ((tok && tok->is_eos(next)) || std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end()) break;
      out_ids.push_back(next);
      history.push_back(next);
      ++generated;
      if (stream) {
        std::string text = stop_filter.push(stream->push(next), &stopped);
        std::fputs(text.c_str(), stdout);
        std::fflush(stdout);
        if (stopped) break;
      }
      if (generated == n_predict) break;
      const int32_t pos = static_cast<int32_t>(history.size()) - 1;
      if (pos + 1 > eng.context) {
        context_full = true;
        break;
      }
      if (gpu_greedy) {
        next = eng.forward_argmax(next, pos);
      } else {
        next = sampler.sample(eng.forward(next, pos), history);
      }
    }
    const double decode_s = seconds_since(t_decode);
    if (stream && !stopped) std::fputs(stop_filter.push(stream->flush(), &stopped).c_str(), stdout);
    if (stream) std::fputs(stop_filter.flush().c_str(), stdout);
    if (print_ids) {
      for (size_t i = 0; i < out_ids.size(); ++i) std::printf(i ? " %d" : "%d", out_ids[i]);
      std::printf("\n");
    } else {
      std::printf("\n");
    }
    std::fflush(stdout);
    if (context_full)
      std::fprintf(stderr, "pq-run: stopped at the context limit (%d tokens); raise --ctx (the model allows %lld)\n",
                   eng.context, static_cast<long long>(cfg.max_seq_len));
    if (!quiet) {
      const int decoded = std::max(0, generated - 1);  // the first token came from the prefill
      std::fprintf(report == stdout ? stderr : report,
                   "pq-run: %s on %s | load %.2f s | prefill %zu tokens, %.1f tok/s | decode %d tokens, %.1f tok/s\n",
                   model_path.c_str(), eng.device.c_str(), load_s, ids.size(), ids.size() / std::max(prefill_s, 1e-9),
                   decoded, decoded / std::max(decode_s, 1e-9));
    }
    if (vkctx && vkctx->validation_messages()) {
      std::fprintf(stderr, "pq-run: %u Vulkan validation messages\n", vkctx->validation_messages());
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pq-run: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
