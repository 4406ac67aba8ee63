// pq-chat's window contents (Dear ImGui widgets; no Vulkan): the settings panel (model path,
// system prompt, sampling controls, New chat), the scrolling transcript with the reply
// streaming in, the input box (Enter sends, Shift+Enter adds a line), Send / Stop /
// Regenerate, errors, and the status bar (model, device, context used / size, tokens/s).
//
// All model work happens on the ChatWorker's thread; frame() only drains its events, so a
// frame never waits for the model.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_worker.h"
#include "chat/transcript.h"

namespace pqvk::chat {

struct UiConfig {
  std::string model_path;
  int32_t context = 0;  // KV-cache length for loaded models (0: the model's)
  std::string format;   // chat format override for loaded models ("": the model's)
  std::string system;
  Settings settings;
  std::string device_name;
};

class ChatUi {
 public:
  ChatUi(ChatWorker& worker, UiConfig config);

  // One frame: applies the worker's events, then draws the whole window.
  void frame();

  // The actions behind the buttons (and --script).
  // Sends a message; false (with an error shown) when it cannot be sent now: a reply or a model
  // load is running, no model is loaded, or the text is blank.
  bool send(const std::string& text);
  void stop();
  void regenerate();
  void new_chat();
  void load_model(const std::string& path);
  void set_system(const std::string& text);

  // No model load or generation queued or running (as of the last frame).
  bool idle() const { return !worker_busy_ && !loading_ && !generating_; }
  // The input box had keyboard focus in the last frame.
  bool input_focused() const { return input_active_; }
  const std::string& input() const { return input_; }

  // Everything generated and every error so far.
  const Transcript& transcript() const { return transcript_; }
  // What the last frame drew of the transcript: per message whose text is visible, its role,
  // its characters, the text's rectangle ("rect") and its bubble's ("bubble") in framebuffer
  // pixels [x, y, w, h], clipped to the transcript's view.
  const nlohmann::json& rendered() const { return rendered_; }

 private:
  struct Message {
    bool user = false;
    std::string text;
    std::string note;        // under a reply: how it ended, speed
    bool streaming = false;
    bool dropped = false;    // no longer in the model's context
  };

  void apply(Event& e);
  void error(const std::string& text);
  void draw_settings(float height);
  void draw_transcript(float height);
  void draw_input(float wrap_w);
  // The error over the input box, wrapped at wrap_w: its height (0 when there is none).
  float error_height(float wrap_w) const;
  void draw_status();

  ChatWorker& worker_;
  UiConfig config_;
  Transcript transcript_;
  std::vector<Message> messages_;
  std::string input_, model_field_, system_field_;
  std::string error_;
  std::string pending_user_;      // the message being answered
  std::string regen_backup_;      // the reply a regeneration replaces, restored if it fails
  bool worker_busy_ = false, loading_ = false, generating_ = false, regenerating_ = false;
  bool focus_input_ = true, input_active_ = false, scroll_to_bottom_ = false;
  int32_t context_used_ = 0;
  double tokens_per_s_ = 0;
  int32_t tokens_now_ = 0;
  nlohmann::json rendered_ = nlohmann::json::array();
};

}  // namespace pqvk::chat
