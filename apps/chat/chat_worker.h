// The window's generation thread: a ChatEngine driven by jobs (load a model, send a message,
// regenerate, new chat) that run one after another on a thread of their own, so the UI never
// waits for the model. What happens comes back as events through a mutex-protected queue that
// the UI drains once per frame; the lock is only held to append or to swap the queue out.
//
// The engine's GPU work and the UI's rendering share one VkQueue: vk::Context serializes the
// submissions (the UI takes the same lock through Context::with_queue).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "chat/chat_engine.h"

namespace pqvk::chat {

struct Event {
  enum Kind {
    loaded,      // model: the new model
    load_failed, // text: why (the previous model, if any, is in `model`: empty name when none)
    started,     // reply: prompt, prompt_tokens, reused_tokens, dropped_turns (no text yet)
    chunk,       // text: more of the reply
    tick,        // progress, context_used: after each token
    finished,    // reply: the whole reply; context_used
    failed,      // text: why the generation failed (the turn was not added)
    cleared,     // the chat was reset
  } kind;
  std::string text;
  ModelInfo model;
  Reply reply;
  Progress progress;
  int32_t context_used = 0;
  bool regenerated = false;  // started / finished / failed: of a regeneration
};

class ChatWorker {
 public:
  // ctx: the device the model runs on; null: the CPU reference with `cpu_threads` threads.
  // kv_reuse: see ChatEngine::set_kv_reuse.
  explicit ChatWorker(vk::Context* ctx, bool kv_reuse = true, int cpu_threads = 0, int kv_bits = 0);
  ~ChatWorker();  // cancels what runs, drops what waits, joins
  ChatWorker(const ChatWorker&) = delete;
  ChatWorker& operator=(const ChatWorker&) = delete;

  // format: a chat format name to use instead of the model's ("" keeps the model's).
  void load(const std::string& path, int32_t context, const std::string& format = "");
  void send(const std::string& user, const std::string& system, const Settings& settings);
  void regenerate(const std::string& system, const Settings& settings);
  void reset();
  // Cancels the running generation (it ends at the next token, keeping what it produced).
  void stop() { cancel_ = true; }

  // A job queued or running. When false, every event of the jobs posted so far is in poll().
  bool busy() const;
  // Takes the events so far, oldest first.
  std::vector<Event> poll();

 private:
  void post(std::function<void()> job);
  void push(Event e);
  void run();

  ChatEngine engine_;  // used only on the worker thread
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool running_ = false, quit_ = false;
  std::atomic<bool> cancel_{false};
  std::mutex events_mu_;
  std::vector<Event> events_;
  std::thread thread_;  // last: starts after everything above exists
};

}  // namespace pqvk::chat
