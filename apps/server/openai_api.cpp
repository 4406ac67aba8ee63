#include "server/openai_api.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "tokenize/jinja.h"

namespace pqvk::server {

namespace {

constexpr int kMaxDepth = 64;
constexpr size_t kMaxStopBytes = 256;  // per stop string (the stop filter's work per token grows with it)

[[noreturn]] void bad(const std::string& message, const std::string& param = {}, const std::string& code = {}) {
  throw ApiError(400, message, "invalid_request_error", param, code);
}

// A field, or null when absent or JSON null (OpenAI treats null as "not given").
const json* field(const json& b, const char* name) {
  const auto it = b.find(name);
  return it == b.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& b, const char* name, double lo, double hi, double def) {
  const json* v = field(b, name);
  if (!v) return def;
  if (!v->is_number()) bad(std::string("'") + name + "' must be a number", name);
  const double d = v->get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    bad(std::string("'") + name + "' must be between " + json(lo).dump() + " and " + json(hi).dump(), name);
  return d;
}

int64_t integer(const json& b, const char* name, int64_t lo, int64_t hi, int64_t def) {
  const json* v = field(b, name);
  if (!v) return def;
  if (!v->is_number_integer()) bad(std::string("'") + name + "' must be an integer", name);
  // Non-negative integers are unsigned in nlohmann::json (and may exceed int64_t).
  const bool out = v->is_number_unsigned()
                       ? v->get<uint64_t>() > static_cast<uint64_t>(hi) || (lo > 0 && v->get<uint64_t>() < static_cast<uint64_t>(lo))
                       : v->get<int64_t>() < lo || v->get<int64_t>() > hi;
  if (out)
    bad(std::string("'") + name + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi), name);
  return v->get<int64_t>();
}

bool boolean(const json& b, const char* name, bool def) {
  const json* v = field(b, name);
  if (!v) return def;
  if (!v->is_boolean()) bad(std::string("'") + name + "' must be a boolean", name);
  return v->get<bool>();
}

// The fields every generation request shares: sampling, stop, lengths, stream, unsupported ones.
void common_fields(const json& b, Generation& g, const ApiModel& m) {
  if (const json* n = field(b, "n")) {
    if (!n->is_number_integer()) bad("'n' must be an integer", "n");
    if (*n != 1) bad("only n = 1 is supported", "n");
  }
  if (const json* v = field(b, "best_of"); v && !(v->is_number_integer() && *v == 1)) bad("best_of is not supported", "best_of");
  if (const json* v = field(b, "logprobs"); v && !(v->is_boolean() && !v->get<bool>())) bad("logprobs are not supported", "logprobs");
  if (const json* v = field(b, "top_logprobs"); v && !(v->is_number_integer() && *v == 0))
    bad("logprobs are not supported", "top_logprobs");
  if (boolean(b, "echo", false)) bad("echo is not supported", "echo");
  if (const json* v = field(b, "suffix"); v && !(v->is_string() && v->get<std::string>().empty()))
    bad("suffix is not supported", "suffix");
  if (const json* rf = field(b, "response_format")) {
    if (!rf->is_object()) bad("'response_format' must be an object", "response_format");
    const json* t = field(*rf, "type");
    if (!t || !t->is_string() || *t != "text") bad("only response_format {\"type\": \"text\"} is supported", "response_format");
  }

  llm::SamplerConfig& sc = g.params.sampler;
  sc.temperature = static_cast<float>(number(b, "temperature", 0.0, 2.0, sc.temperature));
  sc.top_p = static_cast<float>(number(b, "top_p", 0.0, 1.0, sc.top_p));
  if (sc.top_p <= 0.0f) bad("'top_p' must be above 0", "top_p");
  sc.top_k = static_cast<int>(integer(b, "top_k", 0, std::numeric_limits<int32_t>::max(), sc.top_k));
  sc.min_p = static_cast<float>(number(b, "min_p", 0.0, 1.0, sc.min_p));
  sc.repeat_penalty = static_cast<float>(number(b, "repeat_penalty", 0.0, 100.0, sc.repeat_penalty));
  if (sc.repeat_penalty <= 0.0f) bad("'repeat_penalty' must be above 0", "repeat_penalty");
  sc.repeat_last_n = static_cast<int>(integer(b, "repeat_last_n", 0, 1 << 20, sc.repeat_last_n));
  sc.presence_penalty = static_cast<float>(number(b, "presence_penalty", -2.0, 2.0, 0.0));
  sc.frequency_penalty = static_cast<float>(number(b, "frequency_penalty", -2.0, 2.0, 0.0));
  if (field(b, "seed")) {
    sc.seed = static_cast<uint64_t>(integer(b, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), 0));
  } else {
    std::random_device rd;
    sc.seed = (uint64_t{rd()} << 32) ^ rd();
  }

  if (const json* s = field(b, "stop")) {
    if (s->is_string()) {
      g.params.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > 16) bad("at most 16 stop strings", "stop");
      for (const json& e : *s) {
        if (!e.is_string()) bad("'stop' must be a string or an array of strings", "stop");
        g.params.stop.push_back(e.get<std::string>());
      }
    } else {
      bad("'stop' must be a string or an array of strings", "stop");
    }
    for (const std::string& st : g.params.stop)
      if (st.size() > kMaxStopBytes) bad("stop strings are at most " + std::to_string(kMaxStopBytes) + " bytes", "stop");
  }

  g.params.ignore_eos = boolean(b, "ignore_eos", false);
  g.stream = boolean(b, "stream", false);
  if (const json* so = field(b, "stream_options")) {
    if (!so->is_object()) bad("'stream_options' must be an object", "stream_options");
    g.include_usage = boolean(*so, "include_usage", false);
  }

  // Lengths: max_tokens or max_completion_tokens; by default until the context is full.
  const int64_t room = m.context - static_cast<int64_t>(g.prompt.size()) + 1;  // the prefill's token, then one per position left
  int64_t max_tokens = integer(b, "max_completion_tokens", 1, std::numeric_limits<int32_t>::max(), 0);
  max_tokens = integer(b, "max_tokens", 1, std::numeric_limits<int32_t>::max(), max_tokens);
  g.params.max_tokens = static_cast<int>(max_tokens > 0 ? max_tokens : std::max<int64_t>(1, room));
}

// Text too long to fit the context whatever its tokens: refused before the tokenizer's work.
void check_text_length(size_t bytes, const ApiModel& m, const char* param) {
  if (m.max_token_bytes > 0 && bytes > size_t(m.context) * m.max_token_bytes)
    bad("the prompt has more tokens than the context of " + std::to_string(m.context) + " tokens", param,
        "context_length_exceeded");
}

void check_prompt(const Generation& g, const ApiModel& m, const char* param) {
  if (g.prompt.empty()) bad("the prompt is empty", param);
  if (static_cast<int64_t>(g.prompt.size()) > m.context)
    bad("the prompt has " + std::to_string(g.prompt.size()) + " tokens, more than the context of " +
            std::to_string(m.context) + " tokens",
        param, "context_length_exceeded");
}

// A message's content as text: a string, null (an assistant's tool calls), or text parts.
std::string content_text(const json& msg, size_t i) {
  const std::string where = "messages[" + std::to_string(i) + "].content";
  const json* c = field(msg, "content");
  if (!c) return {};
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) bad("'" + where + "' must be a string, null or an array of text parts", where);
  std::string text;
  for (const json& part : *c) {
    if (!part.is_object()) bad("'" + where + "' parts must be objects", where);
    const json* type = field(part, "type");
    if (!type || !type->is_string()) bad("'" + where + "' parts need a string 'type'", where);
    if (*type != "text") bad("only text content is supported ('" + type->get<std::string>() + "' part in " + where + ")", where);
    const json* t = field(part, "text");
    if (!t || !t->is_string()) bad("'" + where + "' text parts need a string 'text'", where);
    text += t->get<std::string>();
  }
  return text;
}

std::string response_id(const char* prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  char b[40];
  std::snprintf(b, sizeof b, "%s%016llx", prefix, static_cast<unsigned long long>(rng()));
  return b;
}

}  // namespace

json error_body(const std::string& message, const std::string& type, const std::string& param, const std::string& code) {
  return {{"error",
           {{"message", message}, {"type", type}, {"param", param.empty() ? json() : json(param)},
            {"code", code.empty() ? json() : json(code)}}}};
}

json ApiError::body() const { return error_body(what(), type_, param_, code_); }

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json parse_body(const std::string& body) {
  struct TooDeep {};
  try {
    json j = json::parse(body, [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxDepth) throw TooDeep{};
      return true;
    });
    if (!j.is_object()) bad("the body must be a JSON object");
    return j;
  } catch (const TooDeep&) {
    bad("the body is nested more than " + std::to_string(kMaxDepth) + " levels deep");
  } catch (const json::exception& e) {
    bad(std::string("the body is not valid JSON: ") + e.what());
  }
}

Generation parse_chat_request(const json& b, const ApiModel& m) {
  Generation g;
  g.chat = true;
  const json* msgs = field(b, "messages");
  if (!msgs) bad("'messages' is required", "messages");
  if (!msgs->is_array()) bad("'messages' must be an array", "messages");
  if (msgs->empty()) bad("'messages' must not be empty", "messages");
  // Normalized for the template: text content; other keys (tool_calls, tool_call_id, name) kept.
  json messages = json::array();
  bool plain = true;  // only role and string content: encoded with special tokens matched in the markup only
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& msg = (*msgs)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!msg.is_object()) bad("'" + where + "' must be an object", where);
    const json* role = field(msg, "role");
    if (!role || !role->is_string()) bad("'" + where + ".role' must be a string", where + ".role");
    json out = msg;
    out["content"] = content_text(msg, i);
    for (const auto& [k, v] : msg.items())
      if (k != "role" && k != "content" && k != "name") plain = false;
    messages.push_back(std::move(out));
  }
  size_t text_bytes = 0;
  for (const json& msg : messages) text_bytes += msg["content"].get_ref<const std::string&>().size();
  check_text_length(text_bytes, m, "messages");
  const json* tools = field(b, "tools");
  if (tools && !tools->is_array()) bad("'tools' must be an array", "tools");
  const json* kwargs = field(b, "chat_template_kwargs");
  if (kwargs && !kwargs->is_object()) bad("'chat_template_kwargs' must be an object", "chat_template_kwargs");
  try {
    if (plain && !tools && !kwargs) {
      std::vector<tokenize::ChatMessage> cm;
      for (const json& msg : messages) cm.push_back({msg["role"].get<std::string>(), msg["content"].get<std::string>()});
      g.prompt = m.chat->encode(*m.tok, cm, true);
    } else {
      tokenize::ChatTemplateInput in;
      in.messages = messages;
      if (tools) in.tools = *tools;
      in.add_generation_prompt = true;
      if (kwargs) in.extra = *kwargs;
      g.prompt = m.chat->encode(*m.tok, in);
    }
  } catch (const tokenize::TokenizerError& e) {
    bad(std::string("the messages cannot be formatted: ") + e.what(), "messages");
  } catch (const jinja::Error& e) {
    bad(std::string("the chat template failed: ") + e.what(), "messages");
  }
  check_prompt(g, m, "messages");
  common_fields(b, g, m);
  // The end of the assistant's turn: the template's stop tokens, and its stop strings that are not one token.
  g.params.stop_ids = m.chat->stop_tokens(*m.tok);
  for (const std::string& s : m.chat->stop_strings())
    if (!m.tok->token_id(s)) g.params.stop.push_back(s);
  return g;
}

Generation parse_completion_request(const json& b, const ApiModel& m) {
  Generation g;
  const json* p = field(b, "prompt");
  if (!p) bad("'prompt' is required", "prompt");
  const json* one = p;
  if (p->is_array() && !p->empty() && (p->front().is_string() || p->front().is_array())) {
    if (p->size() != 1) bad("only one prompt per request is supported", "prompt");
    one = &p->front();
  }
  if (one->is_string()) {
    const std::string& text = one->get_ref<const std::string&>();
    if (text.empty()) bad("the prompt is empty", "prompt");
    check_text_length(text.size(), m, "prompt");
    try {
      g.prompt = m.tok->encode(text, m.tok->adds_bos());  // as pq-run -p
    } catch (const tokenize::TokenizerError& e) {
      bad(std::string("the prompt cannot be encoded: ") + e.what(), "prompt");
    }
  } else if (one->is_array()) {
    if (one->size() > size_t(m.context)) bad("the prompt has " + std::to_string(one->size()) +
                                             " tokens, more than the context of " + std::to_string(m.context) + " tokens",
                                             "prompt", "context_length_exceeded");
    for (const json& id : *one) {
      if (!id.is_number_integer() || (id.is_number_unsigned() ? id.get<uint64_t>() >= uint64_t(m.vocab)
                                                              : id.get<int64_t>() < 0 || id.get<int64_t>() >= m.vocab))
        bad("'prompt' token ids must be integers in [0, " + std::to_string(m.vocab) + ")", "prompt");
      g.prompt.push_back(id.get<int32_t>());
    }
  } else {
    bad("'prompt' must be a string, an array of token ids, or an array of one of either", "prompt");
  }
  check_prompt(g, m, "prompt");
  common_fields(b, g, m);
  return g;
}

json usage(int prompt_tokens, int completion_tokens) {
  return {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json completion_response(const Generation& g, const ApiModel& m, const std::string& id, int64_t created,
                         const std::string& text, const std::string& finish_reason, int completion_tokens) {
  json choice = {{"index", 0}};
  if (g.chat) choice["message"] = {{"role", "assistant"}, {"content", text}};
  else choice["text"] = text;
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason;
  return {{"id", id}, {"object", g.chat ? "chat.completion" : "text_completion"}, {"created", created},
          {"model", m.id}, {"choices", json::array({choice})},
          {"usage", usage(static_cast<int>(g.prompt.size()), completion_tokens)}};
}

json stream_chunk(const Generation& g, const ApiModel& m, const std::string& id, int64_t created,
                  const std::optional<std::string>& text, bool first, const std::string& finish_reason) {
  json choice = {{"index", 0}};
  if (g.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (text) delta["content"] = *text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text ? *text : "";
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason.empty() ? json() : json(finish_reason);
  return {{"id", id}, {"object", g.chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
          {"model", m.id}, {"choices", json::array({choice})}};
}

json usage_chunk(const Generation& g, const ApiModel& m, const std::string& id, int64_t created, int completion_tokens) {
  return {{"id", id}, {"object", g.chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
          {"model", m.id}, {"choices", json::array()},
          {"usage", usage(static_cast<int>(g.prompt.size()), completion_tokens)}};
}

json tokenize_response(const json& b, const ApiModel& m) {
  const json* c = field(b, "content");
  if (!c) bad("'content' is required", "content");
  if (!c->is_string()) bad("'content' must be a string", "content");
  const bool add_special = boolean(b, "add_special", false), with_pieces = boolean(b, "with_pieces", false);
  std::vector<int32_t> ids;
  try {
    ids = m.tok->encode(c->get<std::string>(), add_special && m.tok->adds_bos());
  } catch (const tokenize::TokenizerError& e) {
    bad(std::string("the content cannot be encoded: ") + e.what(), "content");
  }
  json tokens = json::array();
  for (int32_t id : ids) {
    if (with_pieces) tokens.push_back({{"id", id}, {"piece", m.tok->token_bytes(id)}});
    else tokens.push_back(id);
  }
  return {{"tokens", tokens}};
}

json detokenize_response(const json& b, const ApiModel& m) {
  const json* t = field(b, "tokens");
  if (!t) bad("'tokens' is required", "tokens");
  if (!t->is_array()) bad("'tokens' must be an array of token ids", "tokens");
  std::vector<int32_t> ids;
  for (const json& id : *t) {
    if (!id.is_number_integer() || (id.is_number_unsigned() ? id.get<uint64_t>() >= uint64_t(m.vocab)
                                                            : id.get<int64_t>() < 0 || id.get<int64_t>() >= m.vocab))
      bad("'tokens' must be integers in [0, " + std::to_string(m.vocab) + ")", "tokens");
    ids.push_back(id.get<int32_t>());
  }
  return {{"content", m.tok->decode(ids)}};
}

std::string new_response_id(bool chat) { return response_id(chat ? "chatcmpl-" : "cmpl-"); }

size_t max_token_bytes(const tokenize::Tokenizer& tok) {
  size_t n = 1;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) n = std::max(n, tok.token_bytes(id).size());
  return n;
}

}  // namespace pqvk::server
