#include "chat/chat_worker.h"

#include <exception>
#include <utility>

namespace pqvk::chat {

ChatWorker::ChatWorker(vk::Context* ctx, bool kv_reuse, int cpu_threads, int kv_bits) : engine_(ctx, cpu_threads, kv_bits) {
  engine_.set_kv_reuse(kv_reuse);
  thread_ = std::thread([this] { run(); });
}

ChatWorker::~ChatWorker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    quit_ = true;
    jobs_.clear();
  }
  cancel_ = true;
  cv_.notify_all();
  thread_.join();
}

void ChatWorker::post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void ChatWorker::push(Event e) {
  std::lock_guard<std::mutex> lock(events_mu_);
  events_.push_back(std::move(e));
}

bool ChatWorker::busy() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_ || !jobs_.empty();
}

std::vector<Event> ChatWorker::poll() {
  std::vector<Event> out;
  std::lock_guard<std::mutex> lock(events_mu_);
  out.swap(events_);
  return out;
}

void ChatWorker::run() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      running_ = false;
      cv_.wait(lock, [this] { return quit_ || !jobs_.empty(); });
      if (quit_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
      running_ = true;
    }
    job();  // jobs catch their own errors
  }
}

void ChatWorker::load(const std::string& path, int32_t context, const std::string& format) {
  post([this, path, context, format] {
    try {
      engine_.load(path, context);
      if (!format.empty()) engine_.set_format(parse_format(format));
      Event e{Event::loaded};
      e.model = engine_.model();
      push(std::move(e));
    } catch (const std::exception& ex) {
      Event e{Event::load_failed};
      e.text = ex.what();
      if (engine_.loaded()) e.model = engine_.model();
      push(std::move(e));
    }
  });
}

namespace {
Callbacks streaming(const std::function<void(Event)>& push, bool regenerated) {
  Callbacks cb;
  cb.on_prompt = [push, regenerated](const Reply& r) {
    Event e{Event::started};
    e.reply = r;
    e.regenerated = regenerated;
    push(std::move(e));
  };
  cb.on_text = [push](const std::string& t) {
    Event e{Event::chunk};
    e.text = t;
    push(std::move(e));
  };
  cb.on_progress = [push](const Progress& p) {
    Event e{Event::tick};
    e.progress = p;
    e.context_used = p.context_used;
    push(std::move(e));
  };
  return cb;
}
}  // namespace

void ChatWorker::send(const std::string& user, const std::string& system, const Settings& settings) {
  cancel_ = false;  // a Stop pressed before this message does not apply to it
  post([this, user, system, settings] {
    auto push_fn = [this](Event e) { push(std::move(e)); };
    try {
      engine_.set_system(system);
      Event e{Event::finished};
      e.reply = engine_.send(user, settings, streaming(push_fn, false), &cancel_);
      e.context_used = engine_.context_used();
      push(std::move(e));
    } catch (const std::exception& ex) {
      Event e{Event::failed};
      e.text = ex.what();
      push(std::move(e));
    }
    cancel_ = false;
  });
}

void ChatWorker::regenerate(const std::string& system, const Settings& settings) {
  cancel_ = false;
  post([this, system, settings] {
    auto push_fn = [this](Event e) { push(std::move(e)); };
    try {
      engine_.set_system(system);
      Event e{Event::finished};
      e.regenerated = true;
      e.reply = engine_.regenerate(settings, streaming(push_fn, true), &cancel_);
      e.context_used = engine_.context_used();
      push(std::move(e));
    } catch (const std::exception& ex) {
      Event e{Event::failed};
      e.text = ex.what();
      e.regenerated = true;
      push(std::move(e));
    }
    cancel_ = false;
  });
}

void ChatWorker::reset() {
  cancel_ = true;  // a running reply ends now
  post([this] {
    engine_.reset();
    cancel_ = false;
    push(Event{Event::cleared});
  });
}

}  // namespace pqvk::chat
