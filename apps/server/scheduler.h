// pq-server's continuous batching: requests wait in a bounded queue, take a free slot (a KV-cache
// region of the engine), have their prompts prefilled in chunks between decode steps, and every
// decode step runs one token of every sequence past its prompt together. A finished, cancelled or
// failed request frees its slot before the next step; a new one takes it at once.
//
// One thread (the loop) owns the engine; HTTP threads submit Jobs and read their output through
// Job::wait(). Per loop iteration:
//   1. admit queued jobs into free slots (first come, first served); drop cancelled ones
//   2. a prefill step: the next prompt chunk of every sequence still in its prompt, in admission
//      order, up to the engine's tokens per step; a sequence whose prompt completes gets its first
//      token from that step's logits
//   3. a decode step: the last token of every sequence past its prompt, each at its own position
// A token is chosen by the engine's arg max when the request is plain greedy (temperature 0, no
// penalty), else by an llm::Sampler seeded with the request's seed from the logits. Text goes
// through a TextStream that has seen the prompt (as pq-run prints it) and a StopFilter.
// Generation ends at an end-of-sequence or stop token ("stop", not part of the text), a stop string
// ("stop", cut), max_tokens ("length") or the end of the slot's context ("length").
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "llm/sampler.h"
#include "server/engine.h"
#include "tokenize/tokenizer.h"

namespace pqvk::server {

struct GenParams {
  llm::SamplerConfig sampler;
  int max_tokens = 16;            // >= 1
  std::vector<std::string> stop;  // stop strings
  std::vector<int32_t> stop_ids;  // tokens that end the reply besides the tokenizer's EOS
  bool ignore_eos = false;        // EOS and stop_ids are generated like any token (benchmarks)
};

// One request's generation, shared by the HTTP thread that waits for it and the scheduler.
class Job {
 public:
  Job(std::vector<int32_t> prompt, GenParams params) : prompt_(std::move(prompt)), params_(std::move(params)) {}
  const std::vector<int32_t>& prompt() const { return prompt_; }
  const GenParams& params() const { return params_; }

  // What is new since the last take: text, and the end when it came.
  struct Update {
    std::string text;
    bool done = false;
    std::string finish_reason;  // "stop", "length", "cancelled", "error"
    std::string error;          // with "error"
    int completion_tokens = 0;  // so far
  };
  // Waits up to `timeout` for output or the end; false when there is nothing new.
  bool wait(std::chrono::milliseconds timeout, Update& u);
  // The client is gone or the server stops: the scheduler drops the job before its next step.
  void cancel();
  bool cancelled() const;
  std::string finish_reason() const;  // empty while it runs

  // The scheduler's side.
  void emit(const std::string& text, bool counted);
  void finish(const std::string& reason, const std::string& error = {});

 private:
  const std::vector<int32_t> prompt_;
  const GenParams params_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;
  bool done_ = false, taken_done_ = false, cancelled_ = false;
  std::string reason_, error_;
  int tokens_ = 0;
};

struct SchedulerOptions {
  size_t max_queue = 64;  // jobs waiting for a slot (beyond the free slots)
};

struct Metrics {
  uint64_t jobs_finished = 0, jobs_cancelled = 0, jobs_failed = 0;
  uint64_t prompt_tokens = 0, generated_tokens = 0;
  uint64_t prefill_steps = 0, decode_steps = 0, decode_rows = 0;
  double step_seconds = 0;         // time in engine steps
  double tokens_per_second = 0;    // generated tokens over the last 10 s
  size_t queue_depth = 0;
  uint32_t slots_busy = 0, slots_total = 0;
};

class Scheduler {
 public:
  // The engine and tokenizer must outlive the scheduler. Starts the loop thread.
  Scheduler(Engine& engine, const tokenize::Tokenizer& tok, SchedulerOptions options = {});
  ~Scheduler();  // cancels what runs and waits for the loop
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  enum class Submit { accepted, queue_full, stopping };
  Submit submit(const std::shared_ptr<Job>& job);
  // Stop accepting; what is queued and running still finishes.
  void drain();
  // Cancel everything queued and running.
  void cancel_all();
  // No job queued or running.
  bool idle() const;
  Metrics metrics() const;
  const Engine& engine() const { return engine_; }

 private:
  struct Active;
  void loop();
  void admit();
  void run_step(llm::BatchKind kind);
  // The token chosen for a sequence: emits it, or ends the sequence (Active::ending). False: it ended.
  bool take(Active& a, int32_t token);
  void end(Active& a, const std::string& reason, bool flush);
  // Frees active_[i]'s slot, counts it, then finishes its job (so that a client that sees its
  // answer finds the slot free).
  void release(size_t i, std::string reason, std::string error = {});
  void drop_cancelled();

  Engine& engine_;
  const tokenize::Tokenizer& tok_;
  SchedulerOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool accepting_ = true, stop_ = false;
  bool cancel_running_ = false;                  // cancel_all(): the loop cancels what runs
  std::vector<std::unique_ptr<Active>> active_;  // the loop thread's only (its count mirrored in busy_)
  std::vector<bool> slot_used_;
  uint32_t busy_ = 0;
  Metrics m_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, uint32_t>> recent_;  // generated tokens per step
  llm::BatchResult result_;
  std::thread thread_;
};

}  // namespace pqvk::server
