#include "chat/chat_engine.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <istream>
#include <stdexcept>

#include "llm/cpu_model.h"
#include "llm/gpu_model.h"
#include "model/pqm.h"
#include "tokenize/tokenizer.h"
#include "vk/context.h"

namespace pqvk::chat {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

}  // namespace

void Settings::validate() const {
  sampler.validate();
  if (max_tokens < 1)
    throw std::invalid_argument("max tokens must be at least 1, got " + std::to_string(max_tokens));
}

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::none: return "none";
    case StopReason::stop: return "stop";
    case StopReason::max_tokens: return "max_tokens";
    case StopReason::context_full: return "context_full";
    case StopReason::cancelled: return "cancelled";
  }
  return "?";
}

// ---- ChatEngine ------------------------------------------------------------------------------

ChatEngine::ChatEngine(vk::Context* ctx, int cpu_threads, int kv_bits) : ctx_(ctx), cpu_threads_(cpu_threads), kv_bits_(kv_bits) {}
ChatEngine::~ChatEngine() = default;

void ChatEngine::load(const std::string& path, int32_t context) {
  if (path.empty()) throw std::runtime_error("no model path given");
  // The file, its tokenizer and its chat template first: a bad file leaves the loaded model as it was.
  auto file = std::make_unique<model::PqmFile>(model::PqmFile::open(path));
  if (file->tokenizer().kind == "none")
    throw std::runtime_error(path + ": the model has no text tokenizer, which a chat needs");
  std::unique_ptr<tokenize::Tokenizer> tok = tokenize::Tokenizer::from_pqm(*file);
  tokenize::ChatTemplate tmpl = tokenize::ChatTemplate::for_model(file->tokenizer(), file->config(), *tok);
  tmpl.check(*tok);

  // Free the old model's memory before the new one is loaded.
  gpu_.reset();
  cpu_.reset();
  cached_.clear();
  info_ = ModelInfo{};
  const model::ModelConfig& cfg = file->config();
  if (ctx_) {
    llm::GpuOptions go;
    go.context = context;
    go.kv_bits = kv_bits_;
    gpu_ = std::make_unique<llm::GpuModel>(*ctx_, *file, go);
    info_.context_size = gpu_->context_size();
    info_.device_bytes = gpu_->device_bytes();
    info_.device = ctx_->info().name;
  } else {
    llm::CpuOptions co;
    co.threads = cpu_threads_;
    co.kv_bits = kv_bits_;
    cpu_ = std::make_unique<llm::CpuModel>(*file, co);
    const int64_t limit = context > 0 ? std::min<int64_t>(context, cfg.max_seq_len) : std::min<int64_t>(cfg.max_seq_len, 8192);
    info_.context_size = static_cast<int32_t>(limit);
    info_.device = "CPU reference";
  }
  info_.path = path;
  info_.name = std::filesystem::path(path).filename().string();
  info_.architecture = cfg.architecture;
  info_.vocab_size = static_cast<int32_t>(cfg.vocab_size);
  info_.format = tmpl.name();
  file_ = std::move(file);
  tok_ = std::move(tok);
  template_ = std::move(tmpl);
  stop_strings_ = template_.stop_strings();
  stop_tokens_ = template_.stop_tokens(*tok_);
  reset();
}

void ChatEngine::set_format(tokenize::ChatFormat f) {
  if (!tok_) throw std::runtime_error("no model loaded");
  tokenize::ChatTemplate t = tokenize::ChatTemplate::builtin(f);
  t.check(*tok_);  // the format's special tokens must exist
  template_ = std::move(t);
  info_.format = template_.name();
  stop_strings_ = template_.stop_strings();
  stop_tokens_ = template_.stop_tokens(*tok_);
  cached_.clear();
}

std::span<const float> ChatEngine::prefill(std::span<const int32_t> tokens, int32_t pos0) {
  return gpu_ ? gpu_->prefill(tokens, pos0) : cpu_->prefill(tokens, pos0);
}

std::span<const float> ChatEngine::forward(int32_t token, int32_t pos) {
  return gpu_ ? gpu_->forward(token, pos) : cpu_->forward(token, pos);
}

void ChatEngine::set_system(const std::string& text) { system_ = text; }

void ChatEngine::reset() {
  turns_.clear();
  first_ = 0;
  regenerations_ = 0;
}

std::vector<tokenize::ChatMessage> ChatEngine::messages(size_t first, const std::string* user) const {
  std::vector<tokenize::ChatMessage> m;
  if (!trim(system_).empty()) m.push_back({"system", system_});
  for (size_t i = first; i < turns_.size(); ++i) {
    m.push_back({"user", turns_[i].user});
    m.push_back({"assistant", trim(turns_[i].assistant)});
  }
  if (user) m.push_back({"user", *user});
  return m;
}

std::string ChatEngine::format_prompt(const std::string& user) const {
  return template_.render(messages(first_, &user), true);
}

Reply ChatEngine::send(const std::string& user, const Settings& settings, const Callbacks& cb,
                       const std::atomic<bool>* cancel) {
  Reply r = generate(user, settings, settings.sampler.seed, cb, cancel);
  turns_.push_back({user, r.text});
  regenerations_ = 0;
  return r;
}

Reply ChatEngine::regenerate(const Settings& settings, const Callbacks& cb, const std::atomic<bool>* cancel) {
  if (turns_.empty()) throw std::runtime_error("nothing to regenerate: the chat has no messages");
  Turn last = turns_.back();
  turns_.pop_back();
  const size_t first_before = first_;
  Reply r;
  try {
    r = generate(last.user, settings, settings.sampler.seed + regenerations_ + 1, cb, cancel);
  } catch (...) {
    turns_.push_back(last);  // keep the conversation as it was
    first_ = first_before;
    throw;
  }
  turns_.push_back({last.user, r.text});
  ++regenerations_;
  return r;
}

Reply ChatEngine::generate(const std::string& user, const Settings& settings, uint64_t seed, const Callbacks& cb,
                           const std::atomic<bool>* cancel) {
  if (!loaded()) throw std::runtime_error("no model is loaded");
  settings.validate();
  const int32_t ctx = info_.context_size;
  const size_t room = static_cast<size_t>(std::clamp(settings.max_tokens, 1, std::max(1, ctx / 2)));

  // 1-2. The prompt, without the oldest turns while it does not leave room for the reply.
  size_t first = first_;
  std::vector<int32_t> ids;
  for (;;) {
    ids = template_.encode(*tok_, messages(first, &user), true);
    if (ids.size() + room <= static_cast<size_t>(ctx) || first >= turns_.size()) break;
    ++first;
  }
  if (ids.size() >= static_cast<size_t>(ctx)) {
    size_t sys = 0;
    try {
      if (!trim(system_).empty()) sys = template_.encode(*tok_, messages(turns_.size(), nullptr), false).size();
    } catch (const std::exception&) {  // a template that wants a user message: the count is only for the error
    }
    throw std::runtime_error("the message does not fit the context: the prompt is " + std::to_string(ids.size()) +
                             " tokens (system prompt " + std::to_string(sys) + ") and the context holds " +
                             std::to_string(ctx) + " (shorten the message or the system prompt, or raise --ctx)");
  }
  first_ = first;

  Reply r;
  r.prompt = template_.render(messages(first, &user), true);
  r.prompt_tokens = static_cast<int32_t>(ids.size());
  r.dropped_turns = static_cast<int32_t>(first);
  r.seed = seed;

  // 3. Reuse the cache up to the longest common prefix; the last prompt token always runs.
  size_t common = 0;
  if (!kv_reuse_) cached_.clear();
  while (common < cached_.size() && common < ids.size() && cached_[common] == ids[common]) ++common;
  if (common == ids.size()) --common;
  r.reused_tokens = static_cast<int32_t>(common);
  if (cb.on_prompt) cb.on_prompt(r);

  llm::SamplerConfig sc = settings.sampler;
  sc.seed = seed;
  llm::Sampler sampler(sc);
  const bool gpu_greedy = gpu_ && sc.temperature == 0.0f && sc.repeat_penalty == 1.0f;

  cached_.resize(common);  // what stays valid if the prefill fails
  const auto t_prefill = Clock::now();
  std::span<const float> logits = prefill(std::span<const int32_t>(ids).subspan(common), static_cast<int32_t>(common));
  cached_ = ids;
  std::vector<int32_t> history = ids;
  int32_t next;
  if (gpu_greedy) {  // the prefill's logits: the arg max the same way the GPU takes it
    llm::SamplerConfig g = sc;
    g.temperature = 0;
    next = llm::Sampler(g).sample(logits, history);
  } else {
    next = sampler.sample(logits, history);
  }
  r.prefill_s = seconds_since(t_prefill);

  // 4. Decode.
  tokenize::TextStream stream(*tok_);
  for (int32_t id : ids) stream.push(id);  // so the stream knows where the text is
  StopFilter filter(stop_strings_);
  auto emit = [&](const std::string& text) {
    if (text.empty()) return;
    r.text += text;
    if (cb.on_text) cb.on_text(text);
  };
  const auto t_decode = Clock::now();
  bool stopped = false;
  int32_t generated = 0;
  while (true) {
    if (cancel && cancel->load()) {
      r.stop = StopReason::cancelled;
      break;
    }
    if (std::find(stop_tokens_.begin(), stop_tokens_.end(), next) != stop_tokens_.end()) {
      r.stop = StopReason::stop;
      break;
    }
    r.tokens.push_back(next);
    history.push_back(next);
    ++generated;
    emit(filter.push(stream.push(next), &stopped));
    if (stopped) {
      r.stop = StopReason::stop;
      break;
    }
    if (generated >= settings.max_tokens) {
      r.stop = StopReason::max_tokens;
      break;
    }
    const int32_t pos = static_cast<int32_t>(history.size()) - 1;
    if (pos + 1 > ctx) {
      r.stop = StopReason::context_full;
      break;
    }
    next = gpu_greedy ? gpu_->forward_argmax(next, pos) : sampler.sample(forward(next, pos), history);
    cached_.push_back(history[static_cast<size_t>(pos)]);
    if (cb.on_progress) {
      Progress p;
      p.generated = generated;
      p.context_used = static_cast<int32_t>(cached_.size());
      const double s = seconds_since(t_decode);
      p.tokens_per_s = s > 0 ? generated / s : 0;
      cb.on_progress(p);
    }
  }
  r.decode_s = seconds_since(t_decode);
  if (!stopped) emit(filter.push(stream.flush(), &stopped));
  emit(filter.flush());
  if (stopped) r.stop = StopReason::stop;
  return r;
}

tokenize::ChatFormat parse_format(const std::string& name) {
  if (auto f = tokenize::parse_chat_format(name)) return *f;
  throw std::invalid_argument("unknown chat format '" + name + "' (plain, chatml, llama3, llama2)");
}

// ---- commands ---------------------------------------------------------------------------------

Command parse_command(const std::string& line) {
  Command c;
  if (line.empty() || line[0] != '/') {
    c.text = line;
    return c;
  }
  if (line.size() > 1 && line[1] == '/') {  // "//text": a message starting with '/'
    c.text = line.substr(1);
    return c;
  }
  const size_t sp = line.find_first_of(" \t\n");
  const std::string word = line.substr(0, sp);
  const std::string rest = sp == std::string::npos ? "" : trim(line.substr(sp + 1));
  if (word == "/reset" || word == "/new") c.kind = Command::reset;
  else if (word == "/system") c.kind = Command::system, c.text = rest;
  else if (word == "/regen" || word == "/regenerate") c.kind = Command::regenerate;
  else if (word == "/quit" || word == "/exit") c.kind = Command::quit;
  else if (word == "/load") c.kind = Command::load, c.text = rest;
  else c.kind = Command::unknown, c.text = word;
  return c;
}

std::optional<Command> read_command(std::istream& in) {
  std::string line, joined;
  bool continued = false;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const bool more = !line.empty() && line.back() == '\\';
    if (more) line.pop_back();
    joined += (continued ? "\n" : "") + line;
    continued = more;
    if (more) continue;
    if (trim(joined).empty()) {
      joined.clear();
      continue;
    }
    return parse_command(joined);
  }
  if (!trim(joined).empty()) return parse_command(joined);
  return std::nullopt;
}

std::vector<Command> read_script(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read the script " + path);
  std::vector<Command> out;
  while (auto c = read_command(f)) out.push_back(*c);
  return out;
}

}  // namespace pqvk::chat
