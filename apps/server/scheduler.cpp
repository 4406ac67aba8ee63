#include "server/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <exception>

#include "tokenize/stop_filter.h"

namespace pqvk::server {

using Clock = std::chrono::steady_clock;

// ---- Job ---------------------------------------------------------------------------------------

bool Job::wait(std::chrono::milliseconds timeout, Update& u) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !pending_.empty() || (done_ && !taken_done_); });
  u.text.clear();
  u.text.swap(pending_);
  u.completion_tokens = tokens_;
  u.done = done_;
  u.finish_reason = reason_;
  u.error = error_;
  const bool news = !u.text.empty() || (done_ && !taken_done_);
  if (done_) taken_done_ = true;
  return news;
}

void Job::cancel() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
}

bool Job::cancelled() const {
  std::lock_guard lock(mu_);
  return cancelled_;
}

std::string Job::finish_reason() const {
  std::lock_guard lock(mu_);
  return reason_;
}

void Job::emit(const std::string& text, bool counted) {
  {
    std::lock_guard lock(mu_);
    pending_ += text;
    tokens_ += counted ? 1 : 0;
  }
  cv_.notify_all();
}

void Job::finish(const std::string& reason, const std::string& error) {
  {
    std::lock_guard lock(mu_);
    if (done_) return;
    done_ = true;
    reason_ = reason;
    error_ = error;
  }
  cv_.notify_all();
}

// ---- Scheduler ---------------------------------------------------------------------------------

// A job in a slot.
struct Scheduler::Active {
  std::shared_ptr<Job> job;
  uint32_t slot = 0;
  size_t fed = 0;                    // prompt tokens prefilled
  std::vector<int32_t> history;      // prompt + generated (the repetition penalty's window)
  std::vector<int32_t> generated;    // the presence / frequency penalties' counts
  int32_t next = -1;                 // the token the next decode step feeds
  bool greedy = false;               // the engine's arg max chooses
  std::string ending, ending_error;  // the finish reason once it ended (before its slot is freed)
  llm::Sampler sampler;
  tokenize::TextStream stream;
  tokenize::StopFilter filter;
  Active(std::shared_ptr<Job> j, uint32_t s, const tokenize::Tokenizer& tok)
      : job(std::move(j)), slot(s), history(job->prompt()), sampler(job->params().sampler), stream(tok),
        filter(job->params().stop) {
    greedy = sampler.is_plain_greedy();
    for (int32_t id : job->prompt()) stream.push(id);  // so that the text continues the prompt's
  }
};

Scheduler::Scheduler(Engine& engine, const tokenize::Tokenizer& tok, SchedulerOptions options)
    : engine_(engine), tok_(tok), options_(options), slot_used_(engine.slots(), false) {
  m_.slots_total = engine.slots();
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  cancel_all();
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

Scheduler::Submit Scheduler::submit(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard lock(mu_);
    if (!accepting_) return Submit::stopping;
    const size_t free_slots = engine_.slots() - busy_;
    if (queue_.size() >= options_.max_queue + free_slots) return Submit::queue_full;
    queue_.push_back(job);
  }
  cv_.notify_all();
  return Submit::accepted;
}

void Scheduler::drain() {
  std::lock_guard lock(mu_);
  accepting_ = false;
}

void Scheduler::cancel_all() {
  std::lock_guard lock(mu_);
  for (const auto& j : queue_) j->cancel();
  cancel_running_ = true;  // active_ belongs to the loop thread: it cancels them
  cv_.notify_all();
}

bool Scheduler::idle() const {
  std::lock_guard lock(mu_);
  return queue_.empty() && busy_ == 0;
}

Metrics Scheduler::metrics() const {
  std::lock_guard lock(mu_);
  Metrics m = m_;
  m.queue_depth = queue_.size();
  m.slots_busy = busy_;
  uint64_t recent = 0;
  const auto now = Clock::now();
  for (const auto& [t, n] : recent_)
    if (now - t <= std::chrono::seconds(10)) recent += n;
  m.tokens_per_second = double(recent) / 10.0;
  return m;
}

// Queued jobs into free slots; cancelled ones end here.
void Scheduler::admit() {
  std::lock_guard lock(mu_);
  for (auto it = queue_.begin(); it != queue_.end();) {
    if ((*it)->cancelled()) {
      (*it)->finish("cancelled");
      ++m_.jobs_cancelled;
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  while (!queue_.empty()) {
    std::shared_ptr<Job> job = queue_.front();
    const auto free_it = std::find(slot_used_.begin(), slot_used_.end(), false);
    if (free_it == slot_used_.end()) break;
    queue_.pop_front();
    const auto slot = static_cast<uint32_t>(free_it - slot_used_.begin());
    *free_it = true;
    ++busy_;
    m_.prompt_tokens += job->prompt().size();
    active_.push_back(std::make_unique<Active>(std::move(job), slot, tok_));
  }
}

void Scheduler::release(size_t i, std::string reason, std::string error) {
  std::unique_ptr<Active> a = std::move(active_[i]);
  active_.erase(active_.begin() + static_cast<ptrdiff_t>(i));
  {
    std::lock_guard lock(mu_);
    slot_used_[a->slot] = false;
    --busy_;
    if (reason == "cancelled") ++m_.jobs_cancelled;
    else if (reason == "error") ++m_.jobs_failed;
    else ++m_.jobs_finished;
  }
  cv_.notify_all();
  a->job->finish(reason, error);
}

// The end of a reply: with `flush`, what the detokenizer and the stop filter hold back goes out
// first (no stop string completed).
void Scheduler::end(Active& a, const std::string& reason, bool flush) {
  std::string text;
  std::string final_reason = reason;
  if (flush) {
    bool stopped = false;
    text = a.filter.push(a.stream.flush(), &stopped);
    if (stopped) final_reason = "stop";
    else text += a.filter.flush();
  }
  if (!text.empty()) a.job->emit(text, false);
  a.ending = final_reason;
}

bool Scheduler::take(Active& a, int32_t token) {
  const GenParams& p = a.job->params();
  if (!p.ignore_eos && (tok_.is_eos(token) || std::find(p.stop_ids.begin(), p.stop_ids.end(), token) != p.stop_ids.end())) {
    end(a, "stop", true);
    return false;
  }
  a.generated.push_back(token);
  a.history.push_back(token);
  bool stopped = false;
  const std::string text = a.filter.push(a.stream.push(token), &stopped);
  a.job->emit(text, true);
  if (stopped) {
    end(a, "stop", false);
    return false;
  }
  // The next decode step would feed this token at position prompt + generated - 1.
  const size_t next_pos = a.job->prompt().size() + a.generated.size() - 1;
  if (a.generated.size() >= static_cast<size_t>(p.max_tokens) || next_pos >= static_cast<size_t>(engine_.context())) {
    end(a, "length", true);
    return false;
  }
  a.next = token;
  return true;
}

void Scheduler::run_step(llm::BatchKind kind) {
  const bool prefill = kind == llm::BatchKind::prefill;
  std::vector<llm::BatchToken> tokens;
  std::vector<Active*> owner;  // per token: the sequence whose output it is (null: none)
  uint32_t budget = engine_.step_tokens();
  for (const auto& ap : active_) {
    Active& a = *ap;
    const auto& prompt = a.job->prompt();
    const llm::BatchToken::Out out = a.greedy ? llm::BatchToken::argmax : llm::BatchToken::logits;
    if (prefill && a.fed < prompt.size() && budget > 0) {
      const size_t n = std::min<size_t>(budget, prompt.size() - a.fed);
      for (size_t j = 0; j < n; ++j) {
        const size_t at = a.fed + j;
        const bool last = at + 1 == prompt.size();
        tokens.push_back({prompt[at], a.slot, static_cast<int32_t>(at), last ? out : llm::BatchToken::none});
        owner.push_back(last ? &a : nullptr);
      }
      a.fed += n;
      budget -= static_cast<uint32_t>(n);
    } else if (!prefill && a.fed == prompt.size() && a.next >= 0) {
      tokens.push_back({a.next, a.slot, static_cast<int32_t>(prompt.size() + a.generated.size() - 1), out});
      owner.push_back(&a);
      a.next = -1;
    }
  }
  if (tokens.empty()) return;
  const auto t0 = Clock::now();
  try {
    engine_.step(tokens, kind, result_);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pq-server: error in a %s step: %s\n", prefill ? "prefill" : "decode", e.what());
    std::vector<Active*> failed;
    for (Active* a : owner)
      if (a) failed.push_back(a);
    for (const auto& t : tokens)  // every sequence in the step, with or without an output
      for (const auto& ap : active_)
        if (ap->slot == t.slot && std::find(failed.begin(), failed.end(), ap.get()) == failed.end()) failed.push_back(ap.get());
    for (size_t i = active_.size(); i-- > 0;)
      if (std::find(failed.begin(), failed.end(), active_[i].get()) != failed.end()) release(i, "error", e.what());
    return;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  uint32_t generated = 0;
  std::vector<Active*> ended;
  for (size_t i = 0; i < tokens.size(); ++i) {
    Active* a = owner[i];
    if (!a) continue;
    int32_t token = result_.ids[i];
    if (!a->greedy) {
      try {
        token = a->sampler.sample(result_.logits[i], a->history, a->generated);
      } catch (const std::exception& e) {
        a->ending = "error";
        a->ending_error = e.what();
        ended.push_back(a);
        continue;
      }
    }
    ++generated;
    if (!take(*a, token)) ended.push_back(a);
  }
  {
    std::lock_guard lock(mu_);
    (prefill ? m_.prefill_steps : m_.decode_steps) += 1;
    if (!prefill) m_.decode_rows += tokens.size();
    m_.step_seconds += seconds;
    m_.generated_tokens += generated;
    recent_.emplace_back(Clock::now(), generated);
    while (!recent_.empty() && Clock::now() - recent_.front().first > std::chrono::seconds(10)) recent_.pop_front();
  }
  for (size_t i = active_.size(); i-- > 0;) {
    const Active* a = active_[i].get();
    if (std::find(ended.begin(), ended.end(), a) != ended.end()) release(i, a->ending, a->ending_error);
  }
}

// Cancelled jobs leave their slots (all of them after cancel_all()).
void Scheduler::drop_cancelled() {
  bool all = false;
  {
    std::lock_guard lock(mu_);
    std::swap(all, cancel_running_);
  }
  if (all)
    for (const auto& a : active_) a->job->cancel();
  for (size_t i = active_.size(); i-- > 0;)
    if (active_[i]->job->cancelled()) release(i, "cancelled");
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty() || busy_ > 0; });
      if (stop_) break;
    }
    admit();
    drop_cancelled();
    run_step(llm::BatchKind::prefill);
    drop_cancelled();
    run_step(llm::BatchKind::decode);
  }
  for (size_t i = active_.size(); i-- > 0;) release(i, "cancelled");
  std::lock_guard lock(mu_);
  for (const auto& j : queue_) j->finish("cancelled");
  queue_.clear();
}

}  // namespace pqvk::server
