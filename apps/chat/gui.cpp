// pq-chat's window: the frame loop, and the --script driver that plays a session into the
// window as a user would.
#define GLFW_INCLUDE_NONE
#include <GLFW/glfw3.h>
#include <imgui.h>
#include <backends/imgui_impl_glfw.h>

#include <chrono>
#include <cstdio>
#include <deque>
#include <functional>
#include <optional>
#include <thread>

#include "chat/app.h"
#include "chat/chat_ui.h"
#include "chat/vulkan_window.h"
#include "vk/context.h"

namespace pqvk::chat {

namespace {

using Clock = std::chrono::steady_clock;

// UTF-8 to code points (invalid bytes become U+FFFD).
std::vector<unsigned> code_points(const std::string& s) {
  std::vector<unsigned> out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    unsigned cp = n == 1 ? c : c & (0x7F >> n);
    for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += n;
  }
  return out;
}

// Plays a script into the window. Messages are typed through GLFW's character and key
// callbacks, as keyboard input would arrive: the text, Shift+Enter for each line break, then
// Enter, one input event per frame. Commands call the actions the buttons call. Each command
// starts when the window is idle (no model load or reply running).
class ScriptDriver {
 public:
  ScriptDriver(std::vector<Command> commands, GLFWwindow* window) : commands_(std::move(commands)), window_(window) {}

  bool done() const { return finished_ && steps_.empty(); }

  void tick(ChatUi& ui) {
    if (!steps_.empty()) {
      if (steps_.front()(ui)) steps_.pop_front();
      return;
    }
    if (finished_ || !ui.idle()) return;
    if (next_ >= commands_.size()) {
      finished_ = true;
      return;
    }
    const Command& c = commands_[next_++];
    switch (c.kind) {
      case Command::message: type(c.text); break;
      case Command::reset: steps_.push_back([](ChatUi& u) { u.new_chat(); return true; }); break;
      case Command::system: {
        const std::string text = c.text;
        steps_.push_back([text](ChatUi& u) { u.set_system(text); return true; });
        break;
      }
      case Command::regenerate: steps_.push_back([](ChatUi& u) { u.regenerate(); return true; }); break;
      case Command::load: {
        const std::string path = c.text;
        steps_.push_back([path](ChatUi& u) { u.load_model(path); return true; });
        break;
      }
      case Command::quit: finished_ = true; break;
      case Command::unknown: unknown_.push_back(c.text); break;
    }
  }
  const std::vector<std::string>& unknown_commands() const { return unknown_; }

 private:
  void key(int k, int action, int mods) {
    steps_.push_back([this, k, action, mods](ChatUi&) {
      ImGui_ImplGlfw_KeyCallback(window_, k, 0, action, mods);
      return true;
    });
  }
  void type(const std::string& text) {
    steps_.push_back([](ChatUi& u) { return u.input_focused(); });  // wait for the box to have focus
    size_t start = 0;
    for (;;) {
      const size_t nl = text.find('\n', start);
      const std::string line = text.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
      steps_.push_back([this, line](ChatUi&) {
        for (unsigned cp : code_points(line)) ImGui_ImplGlfw_CharCallback(window_, cp);
        return true;
      });
      if (nl == std::string::npos) break;
      key(GLFW_KEY_LEFT_SHIFT, GLFW_PRESS, GLFW_MOD_SHIFT);
      key(GLFW_KEY_ENTER, GLFW_PRESS, GLFW_MOD_SHIFT);
      key(GLFW_KEY_ENTER, GLFW_RELEASE, GLFW_MOD_SHIFT);
      key(GLFW_KEY_LEFT_SHIFT, GLFW_RELEASE, 0);
      start = nl + 1;
    }
    const std::string expect = text;
    steps_.push_back([expect](ChatUi& u) { return u.input() == expect; });  // typed in full
    key(GLFW_KEY_ENTER, GLFW_PRESS, 0);
    key(GLFW_KEY_ENTER, GLFW_RELEASE, 0);
  }

  std::vector<Command> commands_;
  GLFWwindow* window_;
  size_t next_ = 0;
  bool finished_ = false;
  std::deque<std::function<bool(ChatUi&)>> steps_;
  std::vector<std::string> unknown_;
};

}  // namespace

int run_gui(const AppOptions& o) {
  std::optional<std::vector<Command>> script;
  if (!o.script.empty()) script = read_script(o.script);
  if (!o.screenshot.empty() && !script) throw std::runtime_error("--screenshot needs --script");

  Glfw glfw;
  vk::ContextOptions vo;
  vo.device = o.device;
  vo.presentation = Glfw::presentation();
  vk::Context ctx(vo);
  bool failed = false;
  Transcript tr;
  {
    VulkanWindow window(ctx, "pq-chat", o.width, o.height, o.font_px);
    ChatWorker worker(o.cpu ? nullptr : &ctx, o.kv_reuse, o.threads, o.kv_bits);  // after the window: destroyed (joined) before it
    UiConfig uc;
    uc.model_path = o.model;
    uc.context = o.context;
    uc.format = o.format;
    uc.system = o.system;
    uc.settings = o.settings;
    uc.device_name = o.cpu ? "CPU reference" : ctx.info().name;
    ChatUi ui(worker, uc);
    ui.load_model(o.model);

    std::optional<ScriptDriver> driver;
    if (script) driver.emplace(*script, window.glfw());
    const auto t0 = Clock::now();
    int settle = 3;  // frames drawn after the script ends, before the screenshot
    auto last_frame = Clock::now();
    while (!window.should_close()) {
      // Idle: wake on input or every 100 ms (replies stream in between); busy: ~60 frames/s.
      if (driver || !ui.idle()) glfwPollEvents();
      else glfwWaitEventsTimeout(0.1);
      if (driver) driver->tick(ui);  // input goes in where GLFW's events do: before the frame starts
      window.begin_frame();
      ui.frame();
      const bool capture = driver && driver->done() && settle == 0 && !o.screenshot.empty();
      Image image;
      const bool drawn = window.end_frame(capture ? &image : nullptr);
      if (driver && driver->done() && drawn) {
        if (capture) write_png(o.screenshot, image);
        if (settle-- == 0 || o.screenshot.empty()) break;
      }
      if (driver && std::chrono::duration<double>(Clock::now() - t0).count() > o.timeout_s) {
        std::fprintf(stderr, "pq-chat: error: the script did not finish within %.0f s\n", o.timeout_s);
        tr.errors.push_back("timeout");
        failed = true;
        break;
      }
      // Pace frames to ~60/s also where presentation does not wait for the display.
      const auto next = last_frame + std::chrono::milliseconds(16);
      if (Clock::now() < next) std::this_thread::sleep_until(next);
      last_frame = Clock::now();
    }
    const Transcript& t = ui.transcript();
    tr.mode = t.mode;
    tr.device = t.device;
    tr.model = t.model;
    tr.settings = t.settings;
    tr.system = t.system;
    tr.generations = t.generations;
    for (const std::string& e : t.errors) {
      std::fprintf(stderr, "pq-chat: error: %s\n", e.c_str());
      tr.errors.push_back(e);
      failed = true;
    }
    if (driver)
      for (const std::string& u : driver->unknown_commands()) {
        std::fprintf(stderr, "pq-chat: error: unknown command %s in the script\n", u.c_str());
        tr.errors.push_back("unknown command " + u);
        failed = true;
      }
    tr.rendered = ui.rendered();
  }
  return tr.finish(ctx.validation_messages(), o.transcript_out, failed);
}

}  // namespace pqvk::chat
