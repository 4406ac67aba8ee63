// pq-chat: chat with a PolarQuant model. A desktop window (GLFW + Dear ImGui, drawn with Vulkan
// on the device that runs the model), or the same chat in a terminal with --cli.
//
//   pq-chat                                  the bundled model, in a window
//   pq-chat -m qwen.pqm --temp 0.7           another model and settings
//   pq-chat --cli                            in the terminal (/reset, /system TEXT, /quit, ...)
//   pq-chat --cli --cpu                      the model on the CPU reference (the default where the only
//                                            Vulkan device is a CPU implementation such as lavapipe)
//   pq-chat --script s.txt --screenshot s.png --transcript-out s.json    a scripted session (CI)
//
// The modules are in apps/chat/: chat_engine (conversation, formatting, context trimming,
// generation; shared by both front ends), chat_worker (the window's generation thread),
// chat_ui (the widgets), vulkan_window (swapchain + ImGui's Vulkan backend), cli, gui.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>

#include "chat/app.h"
#include "device_choice.h"
#include "sampler_options.h"
#include "kv_type_option.h"

#ifndef PQVK_DEFAULT_MODEL
#define PQVK_DEFAULT_MODEL ""
#endif

int main(int argc, char** argv) {
  CLI::App app{"pq-chat: chat with a PolarQuant model (a window, or the terminal with --cli)"};
  pqvk::chat::AppOptions o;
  bool cli = false;
  pqvk::llm::SamplerConfig& sc = o.settings.sampler;
  app.add_option("-m,--model", o.model, "The .pqm model (default: $PQVK_MODEL, else the bundled model)");
  app.add_flag("--cli", cli, "Chat in the terminal instead of a window");
  app.add_option("--system", o.system, "The system prompt (default \"You are a helpful assistant.\"; \"\" for none)");
  app.add_option("--format", o.format, "Chat format instead of the model's: plain, chatml, llama3, llama2");
  app.add_option("-n,--max-tokens", o.settings.max_tokens, "Tokens per reply at most (default 256)")
      ->check(CLI::Range(1, 1 << 24));
  pqvk::apps::add_sampler_options(app, sc);
  app.add_option("-c,--ctx", o.context, "Context length (default: the model's, at most 8192)")->check(CLI::Range(1, 1 << 24));
  app.add_option("-d,--device", o.device,
                 "Vulkan device index or name substring (default: $PQVK_DEVICE, else the best GPU; where the only "
                 "device is a CPU implementation such as lavapipe, the model runs on the CPU reference unless this is given)");
  app.add_flag("--cpu", o.cpu, "Run the model on the CPU reference (the window still draws with Vulkan)");
  app.add_option("-t,--threads", o.threads, "CPU threads with --cpu (default: all)")->check(CLI::Range(0, 4096));
  std::string kv_type = "f16";
  pqvk::apps::add_kv_type_option(app, kv_type);
  app.add_option("--script", o.script,
                 "Run the messages and commands of FILE (one per line; '\\' at the end continues a line), then exit");
  app.add_option("--transcript-out", o.transcript_out, "Write the session (prompts, replies, token ids, errors) as JSON");
  app.add_option("--screenshot", o.screenshot, "Window: save the last frame of the --script run as a PNG");
  app.add_option("--width", o.width, "Window width (default 1280)")->check(CLI::Range(320, 16384));
  app.add_option("--height", o.height, "Window height (default 800)")->check(CLI::Range(240, 16384));
  app.add_option("--font-size", o.font_px, "Font size in pixels (default 17)")->check(CLI::Range(8.0, 64.0));
  app.add_option("--timeout", o.timeout_s, "Window: fail a --script run that takes longer (seconds, default 600)");
  bool no_kv_reuse = false;
  app.add_flag("--no-kv-reuse", no_kv_reuse,
               "Prefill the whole conversation for every reply instead of reusing the KV cache (for comparisons "
               "with pq-run)");
  CLI11_PARSE(app, argc, argv);
  o.kv_reuse = !no_kv_reuse;

  try {
    o.settings.validate();
    if (!o.format.empty()) pqvk::chat::parse_format(o.format);  // fail early on a typo
    if (o.model.empty()) {
      const char* env = std::getenv("PQVK_MODEL");
      o.model = env && *env ? env : PQVK_DEFAULT_MODEL;
    }
    if (o.model.empty()) throw std::runtime_error("no model: pass -m MODEL.pqm");
    if (cli && !o.screenshot.empty()) throw std::runtime_error("--screenshot is for the window, not --cli");
    o.cpu = pqvk::apps::use_cpu(o.cpu, o.device, "pq-chat");
    o.kv_bits = pqvk::apps::kv_bits(kv_type);
    return cli ? pqvk::chat::run_cli(o) : pqvk::chat::run_gui(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pq-chat: error: %s\n", e.what());
    return 1;
  }
}
