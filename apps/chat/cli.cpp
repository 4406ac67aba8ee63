// pq-chat --cli: the chat in a terminal, for machines without a display. Reads messages and
// commands (/reset, /system TEXT, /regen, /load PATH, /quit; a line ending in '\' continues)
// from stdin or --script, streams each reply to stdout, and reports speed and context use on
// stderr. Ctrl+C stops a reply; at the prompt it quits.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include "chat/app.h"
#include "chat/transcript.h"
#include "vk/context.h"

namespace pqvk::chat {

namespace {

std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) { g_interrupted = true; }

void report(const Reply& r, int32_t used, int32_t size) {
  const int n = static_cast<int>(r.tokens.size());
  std::fprintf(stderr, "[%s | %d tokens, %.1f tokens/s | prompt %d tokens, %d reused%s | context %d / %d]\n",
               stop_reason_name(r.stop), n, r.decode_s > 0 && n > 1 ? (n - 1) / r.decode_s : 0.0, r.prompt_tokens,
               r.reused_tokens,
               r.dropped_turns ? (", " + std::to_string(r.dropped_turns) + " oldest turns dropped").c_str() : "", used,
               size);
}

}  // namespace

int run_cli(const AppOptions& o) {
  Transcript tr;
  tr.mode = "cli";
  tr.settings = o.settings;
  tr.system = o.system;
  bool failed = false;
  auto fail = [&](const std::string& what) {
    std::fprintf(stderr, "pq-chat: error: %s\n", what.c_str());
    tr.errors.push_back(what);
    failed = true;
  };

  std::unique_ptr<std::istream> script;
  if (!o.script.empty()) {
    auto f = std::make_unique<std::ifstream>(o.script);
    if (!*f) throw std::runtime_error("cannot read the script " + o.script);
    script = std::move(f);
  }
  std::istream& in = script ? *script : std::cin;
  const bool interactive = !script && isatty(STDIN_FILENO);

  std::unique_ptr<vk::Context> ctx;  // none on the CPU reference
  if (!o.cpu) {
    vk::ContextOptions vo;
    vo.device = o.device;
    ctx = std::make_unique<vk::Context>(vo);
  }
  tr.device = ctx ? ctx->info().name : "CPU reference";
  {
    ChatEngine engine(ctx.get(), o.threads, o.kv_bits);
    engine.set_kv_reuse(o.kv_reuse);
    auto load = [&](const std::string& path) {
      try {
        engine.load(path, o.context);
        if (!o.format.empty()) engine.set_format(parse_format(o.format));
        const ModelInfo& m = engine.model();
        tr.model = m;
        std::fprintf(stderr, "pq-chat: %s (%s, chat format %s, context %d) on %s\n", m.name.c_str(),
                     m.architecture.c_str(), m.format.c_str(), m.context_size, m.device.c_str());
      } catch (const std::exception& e) {
        fail(e.what());
      }
    };
    load(o.model);
    engine.set_system(o.system);
    if (interactive)
      std::fprintf(stderr, "Type a message and press Enter (end a line with \\ to continue it). Commands: /reset, "
                           "/system TEXT, /regen, /load PATH, /quit. Ctrl+C stops a reply.\n");

    // Without SA_RESTART: Ctrl+C at the prompt interrupts the read, which ends the session.
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    for (;;) {
      if (interactive) {
        std::fputs("> ", stdout);
        std::fflush(stdout);
      }
      g_interrupted = false;
      std::optional<Command> cmd = read_command(in);
      if (!cmd || cmd->kind == Command::quit || (interactive && g_interrupted)) break;
      switch (cmd->kind) {
        case Command::reset:
          engine.reset();
          std::fprintf(stderr, "(new chat)\n");
          continue;
        case Command::system:
          engine.set_system(cmd->text);
          tr.system = cmd->text;
          std::fprintf(stderr, "(system prompt %s; it applies from the next message)\n",
                       cmd->text.empty() ? "cleared" : "set");
          continue;
        case Command::load:
          load(cmd->text);
          continue;
        case Command::unknown:
          fail("unknown command " + cmd->text + " (commands: /reset, /system TEXT, /regen, /load PATH, /quit)");
          continue;
        case Command::quit:
          break;
        case Command::message:
        case Command::regenerate:
          break;
      }
      if (!engine.loaded()) {
        fail("no model is loaded (use /load PATH)");
        continue;
      }
      Callbacks cb;
      cb.on_text = [](const std::string& t) {
        std::fputs(t.c_str(), stdout);
        std::fflush(stdout);
      };
      g_interrupted = false;
      try {
        const bool regen = cmd->kind == Command::regenerate;
        std::string user = regen && !engine.turns().empty() ? engine.turns().back().user : cmd->text;
        Reply r = regen ? engine.regenerate(o.settings, cb, &g_interrupted)
                        : engine.send(cmd->text, o.settings, cb, &g_interrupted);
        std::fputs("\n", stdout);
        std::fflush(stdout);
        report(r, engine.context_used(), engine.model().context_size);
        tr.generations.push_back({user, regen, engine.system(), r});
      } catch (const std::exception& e) {
        std::fputs("\n", stdout);
        fail(e.what());
      }
    }
    std::signal(SIGINT, SIG_DFL);
  }
  return tr.finish(ctx ? ctx->validation_messages() : 0, o.transcript_out, failed);
}

}  // namespace pqvk::chat
