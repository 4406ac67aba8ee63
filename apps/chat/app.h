// pq-chat's two front ends over the shared ChatEngine: the window (run_gui) and the terminal
// (run_cli). apps/pq-chat.cpp parses the command line into AppOptions.
#pragma once

#include <string>

#include "chat/chat_engine.h"

namespace pqvk::chat {

struct AppOptions {
  std::string model;          // .pqm path (already resolved: -m, $PQVK_MODEL, the bundled model)
  std::string device;         // Vulkan device index or name substring
  bool cpu = false;           // run the model on the CPU reference (the window still draws with Vulkan)
  int threads = 0;            // CPU threads with cpu (0: all)
  int kv_bits = 0;            // --kv-type pq8 / pq4: the PolarQuant KV cache
  std::string format;         // chat format override ("" = the model's)
  int32_t context = 0;        // KV-cache length (0: the model's, at most 8192)
  std::string system = "You are a helpful assistant.";
  Settings settings;
  std::string script;         // commands / messages to run, then exit
  std::string transcript_out; // JSON of the session
  std::string screenshot;     // GUI: PNG of the last frame of a --script run
  int width = 1280, height = 800;
  float font_px = 17.0f;
  double timeout_s = 600;     // GUI --script: give up (exit 1) after this long
  bool kv_reuse = true;       // false: --no-kv-reuse (ChatEngine::set_kv_reuse)
};

// Each returns the process's exit status: 0, or 1 when anything failed (an error was reported,
// a validation message was counted, the script timed out).
int run_cli(const AppOptions& o);
int run_gui(const AppOptions& o);

}  // namespace pqvk::chat
