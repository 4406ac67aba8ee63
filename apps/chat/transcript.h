// What a pq-chat session did, for --transcript-out: the model, the settings, every generation
// (user message, formatted prompt, reply text and token ids, how it stopped) and every error.
// The GUI adds what its last frame drew (`rendered`), which tests check against the screenshot.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_engine.h"

namespace pqvk::chat {

struct Generation {
  std::string user;
  bool regenerated = false;
  std::string system;  // the system prompt it was generated with
  Reply reply;
};

struct Transcript {
  std::string mode;  // "gui" or "cli"
  std::string device;
  ModelInfo model;
  Settings settings;
  std::string system;
  std::vector<Generation> generations;
  std::vector<std::string> errors;
  uint32_t validation_messages = 0;
  nlohmann::json rendered;  // GUI only: see ChatUi::rendered()

  nlohmann::json to_json() const;
  // Writes to_json() to path; throws std::runtime_error when it cannot.
  void write(const std::string& path) const;
  // The end of a session (window or terminal): records the Vulkan validation messages (any
  // fails the session), writes the transcript when `path` is set, and returns the exit
  // status: 1 when the session or the validation failed, else 0.
  int finish(uint32_t validation_count, const std::string& path, bool failed);
};

}  // namespace pqvk::chat
