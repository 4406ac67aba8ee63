#include "tokenize/chat.h"

#include <algorithm>

#include "tokenize/jinja_value.h"

namespace pqvk::tokenize {

namespace {

std::string strip(std::string_view s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return "";
  return std::string(s.substr(b, s.find_last_not_of(ws) - b + 1));
}

[[noreturn]] void chat_fail(ChatFormat f, const std::string& what) {
  tokenizer_fail(std::string("chat format ") + chat_format_name(f), what);
}

// The special tokens a format's markup uses.
std::vector<std::string> markup_tokens(ChatFormat f) {
  switch (f) {
    case ChatFormat::chatml: return {"<|im_start|>", "<|im_end|>"};
    case ChatFormat::llama3: return {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
    case ChatFormat::llama2: return {"<s>", "</s>"};
    case ChatFormat::plain: return {};
  }
  return {};
}

void llama2_parts(const std::vector<ChatMessage>& msgs, std::vector<ChatPart>& out) {
  const ChatFormat f = ChatFormat::llama2;
  size_t first = 0;
  std::string system;
  bool has_system = false;
  if (!msgs.empty() && msgs[0].role == "system") {
    system = msgs[0].content;
    has_system = true;
    first = 1;
  }
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    const bool user_turn = (i - first) % 2 == 0;
    const char* want = user_turn ? "user" : "assistant";
    if (m.role != want)
      chat_fail(f, "message " + std::to_string(i) + " has role '" + m.role + "' where '" + want +
                       "' is expected (roles alternate user / assistant after an optional first system message)");
    if (user_turn) {
      std::string content = m.content;
      if (i == first && has_system) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
      out.push_back({"<s>", true});
      out.push_back({"[INST] ", true});
      out.push_back({strip(content), false});
      out.push_back({" [/INST]", true});
    } else {
      out.push_back({" ", true});
      out.push_back({strip(m.content), false});
      out.push_back({" ", true});
      out.push_back({"</s>", true});
    }
  }
  if (has_system && msgs.size() == 1) {
    // A system message alone: the first [INST] block with no user text.
    out.push_back({"<s>", true});
    out.push_back({"[INST] ", true});
    out.push_back({strip("<<SYS>>\n" + system + "\n<</SYS>>\n\n"), false});
    out.push_back({" [/INST]", true});
  }
}

}  // namespace

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::plain: return "plain";
    case ChatFormat::chatml: return "chatml";
    case ChatFormat::llama3: return "llama3";
    case ChatFormat::llama2: return "llama2";
  }
  return "?";
}

std::optional<ChatFormat> parse_chat_format(std::string_view name) {
  for (ChatFormat f : {ChatFormat::plain, ChatFormat::chatml, ChatFormat::llama3, ChatFormat::llama2})
    if (name == chat_format_name(f)) return f;
  return std::nullopt;
}

std::vector<ChatPart> chat_parts(const std::vector<ChatMessage>& msgs, ChatFormat f, bool add_generation_prompt) {
  std::vector<ChatPart> out;
  switch (f) {
    case ChatFormat::chatml:
      for (const ChatMessage& m : msgs) {
        out.push_back({"<|im_start|>", true});
        out.push_back({m.role, false});
        out.push_back({"\n", true});
        out.push_back({m.content, false});
        out.push_back({"<|im_end|>\n", true});
      }
      if (add_generation_prompt) out.push_back({"<|im_start|>assistant\n", true});
      break;
    case ChatFormat::llama3:
      out.push_back({"<|begin_of_text|>", true});
      for (const ChatMessage& m : msgs) {
        out.push_back({"<|start_header_id|>", true});
        out.push_back({m.role, false});
        out.push_back({"<|end_header_id|>\n\n", true});
        out.push_back({strip(m.content), false});
        out.push_back({"<|eot_id|>", true});
      }
      if (add_generation_prompt) out.push_back({"<|start_header_id|>assistant<|end_header_id|>\n\n", true});
      break;
    case ChatFormat::llama2:
      llama2_parts(msgs, out);
      break;
    case ChatFormat::plain:
      for (size_t i = 0; i < msgs.size(); ++i) {
        const ChatMessage& m = msgs[i];
        if (m.role.empty()) chat_fail(f, "message " + std::to_string(i) + " has an empty role");
        std::string name = m.role;
        if (name[0] >= 'a' && name[0] <= 'z') name[0] = static_cast<char>(name[0] - 'a' + 'A');
        out.push_back({name + ": ", true});
        out.push_back({m.content, false});
        out.push_back({"\n", true});
      }
      if (add_generation_prompt) out.push_back({"Assistant: ", true});
      break;
  }
  return out;
}

std::string format_chat(const std::vector<ChatMessage>& messages, ChatFormat f, bool add_generation_prompt) {
  std::string s;
  for (const ChatPart& p : chat_parts(messages, f, add_generation_prompt)) s += p.text;
  return s;
}

std::vector<int32_t> encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages, ChatFormat f,
                                 bool add_generation_prompt) {
  for (const std::string& t : markup_tokens(f)) {
    const auto id = tok.token_id(t);
    if (!id || !tok.is_special(*id))
      tokenizer_fail(tok.where(), std::string("chat format ") + chat_format_name(f) + " needs the special token " + t +
                                      ", which the vocabulary lacks");
  }
  const std::vector<ChatPart> parts = chat_parts(messages, f, add_generation_prompt);
  std::vector<Tokenizer::TextPart> text;
  text.reserve(parts.size());
  for (const ChatPart& p : parts) text.push_back({p.text, p.markup});
  return tok.encode(text, f == ChatFormat::plain && tok.adds_bos());
}

ChatFormat choose_chat_format(const model::TokenizerInfo& info, const model::ModelConfig& config, const Tokenizer* vocab) {
  std::vector<std::string> templates;
  if (!info.chat_template.empty()) templates.push_back(info.chat_template);
  if (info.chat_templates.is_object())
    for (const auto& [name, t] : info.chat_templates.items())
      if (t.is_string()) templates.push_back(t.get<std::string>());
  for (const std::string& t : templates) {
    if (t.find("<|im_start|>") != std::string::npos) return ChatFormat::chatml;
    if (t.find("<|start_header_id|>") != std::string::npos) return ChatFormat::llama3;
    if (t.find("[INST]") != std::string::npos) return ChatFormat::llama2;
  }
  auto has = [&](const char* piece) { return vocab && vocab->token_id(piece).has_value(); };
  if (has("<|start_header_id|>") && has("<|end_header_id|>") && has("<|eot_id|>")) return ChatFormat::llama3;
  if (has("<|im_start|>") && has("<|im_end|>")) return ChatFormat::chatml;
  if ((config.architecture == "qwen2" || config.architecture == "qwen3") && !vocab) return ChatFormat::chatml;
  return ChatFormat::plain;
}

std::vector<std::string> chat_stop_strings(ChatFormat f) {
  switch (f) {
    case ChatFormat::chatml: return {"<|im_end|>", "<|endoftext|>"};
    case ChatFormat::llama3: return {"<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"};
    case ChatFormat::llama2: return {"</s>"};
    case ChatFormat::plain: return {"\nUser:"};
  }
  return {};
}

std::vector<int32_t> chat_stop_tokens(const Tokenizer& tok, ChatFormat f) {
  std::vector<int32_t> ids = tok.eos_ids();
  for (const std::string& s : chat_stop_strings(f))
    if (auto id = tok.token_id(s); id && std::find(ids.begin(), ids.end(), *id) == ids.end()) ids.push_back(*id);
  return ids;
}

// ---- Jinja chat templates ------------------------------------------------------------------------

jinja::json chat_template_variables(const ChatTemplateInput& in) {
  jinja::json v = jinja::json::object();
  v["messages"] = in.messages;
  v["tools"] = in.tools;  // HuggingFace passes tools=None and documents=None when there are none
  v["documents"] = nullptr;
  v["add_generation_prompt"] = in.add_generation_prompt;
  v["bos_token"] = in.bos_token;
  v["eos_token"] = in.eos_token;
  for (const auto& [k, x] : in.extra.items()) v[k] = x;
  return v;
}

ChatTemplateInput parse_conversation(const jinja::json& j, const std::string& where) {
  if (!j.is_object()) tokenizer_fail(where, "a conversation is a JSON object {\"messages\": [...], \"tools\": [...]}");
  if (!j.contains("messages") || !j["messages"].is_array()) tokenizer_fail(where, "\"messages\" must be an array");
  ChatTemplateInput in;
  for (const auto& [k, v] : j.items()) {
    if (k == "messages") {
      in.messages = v;
    } else if (k == "tools") {
      if (!v.is_array() && !v.is_null()) tokenizer_fail(where, "\"tools\" must be an array or null");
      in.tools = v;
    } else {
      in.extra[k] = v;
    }
  }
  return in;
}

std::string render_chat_template(const jinja::Template& t, const ChatTemplateInput& in, const jinja::RenderOptions& options) {
  return t.render(chat_template_variables(in), options);
}

namespace {

jinja::json messages_json(const std::vector<ChatMessage>& messages) {
  jinja::json a = jinja::json::array();
  for (const ChatMessage& m : messages) a.push_back({{"role", m.role}, {"content", m.content}});
  return a;
}

ChatFormat guess_format(std::string_view t) {
  if (t.find("<|im_start|>") != std::string_view::npos) return ChatFormat::chatml;
  if (t.find("<|start_header_id|>") != std::string_view::npos) return ChatFormat::llama3;
  if (t.find("[INST]") != std::string_view::npos) return ChatFormat::llama2;
  return ChatFormat::plain;
}

// Marks message i's content in a rendering: private-use characters no template writes.
std::string sentinel(size_t i) { return "\xEE\x80\x80pqvk" + std::to_string(i) + "\xEE\x80\x81"; }

}  // namespace

ChatTemplate ChatTemplate::builtin(ChatFormat f) {
  ChatTemplate c;
  c.format_ = f;
  return c;
}

ChatTemplate ChatTemplate::jinja(std::string_view source, std::string name, std::string bos_token, std::string eos_token) {
  ChatTemplate c;
  c.tmpl_ = std::make_shared<const jinja::Template>(source, std::move(name));
  c.source_ = std::string(source);
  c.bos_ = std::move(bos_token);
  c.eos_ = std::move(eos_token);
  c.format_ = guess_format(source);
  // A template that raises on a system message but renders a user message alone does not take one.
  try {
    c.render_json(messages_json({{"system", "s"}, {"user", "u"}}), true);
  } catch (const jinja::Error&) {
    try {
      c.render_json(messages_json({{"user", "u"}}), true);
      c.system_role_ = false;
    } catch (const jinja::Error&) {
    }
  }
  return c;
}

ChatTemplate ChatTemplate::for_model(const model::TokenizerInfo& info, const model::ModelConfig& config, const Tokenizer& tok) {
  if (info.chat_template.empty()) return builtin(choose_chat_format(info, config, &tok));
  const std::string bos = tok.bos() >= 0 ? tok.token_bytes(tok.bos()) : "";
  const std::string eos = tok.eos_ids().empty() ? "" : tok.token_bytes(tok.eos_ids()[0]);
  return jinja(info.chat_template, tok.where() + ": chat template", bos, eos);
}

std::string ChatTemplate::name() const { return is_jinja() ? "jinja" : chat_format_name(format_); }

std::string ChatTemplate::render_json(const jinja::json& messages, bool add_generation_prompt) const {
  ChatTemplateInput in;
  in.messages = messages;
  in.add_generation_prompt = add_generation_prompt;
  in.bos_token = bos_;
  in.eos_token = eos_;
  return render_chat_template(*tmpl_, in);
}

std::vector<ChatMessage> ChatTemplate::normalized(const std::vector<ChatMessage>& messages) const {
  if (system_role_ || messages.empty() || messages[0].role != "system") return messages;
  std::vector<ChatMessage> m(messages.begin() + 1, messages.end());
  if (!m.empty() && m[0].role == "user") m[0].content = messages[0].content + "\n\n" + m[0].content;
  else m.insert(m.begin(), ChatMessage{"user", messages[0].content});
  return m;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  if (!is_jinja()) return format_chat(messages, format_, add_generation_prompt);
  return render_json(messages_json(normalized(messages)), add_generation_prompt);
}

std::vector<ChatPart> ChatTemplate::parts(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  if (!is_jinja()) return chat_parts(messages, format_, add_generation_prompt);
  const std::vector<ChatMessage> msgs = normalized(messages);
  const std::string text = render_json(messages_json(msgs), add_generation_prompt);
  // Render again with each content replaced by a sentinel; where the sentinels come out once
  // each and putting the contents back (as they are, or trimmed) gives the same text, the
  // contents are known: they become non-markup parts.
  std::vector<ChatMessage> marked_msgs = msgs;
  for (size_t i = 0; i < marked_msgs.size(); ++i)
    if (!marked_msgs[i].content.empty()) marked_msgs[i].content = sentinel(i);
  std::string marked;
  try {
    marked = render_json(messages_json(marked_msgs), add_generation_prompt);
  } catch (const jinja::Error&) {
    return {{text, true}};
  }
  for (const bool trimmed : {false, true}) {
    std::vector<ChatPart> out;
    std::vector<int> seen(msgs.size(), 0);
    std::string joined;
    size_t pos = 0;
    for (size_t at = marked.find("\xEE\x80\x80pqvk"); at != std::string::npos; at = marked.find("\xEE\x80\x80pqvk", pos)) {
      const size_t end = marked.find("\xEE\x80\x81", at);
      if (end == std::string::npos) break;
      const std::string digits = marked.substr(at + 7, end - at - 7);
      if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) break;
      const size_t i = std::stoul(digits);
      if (i >= msgs.size() || marked_msgs[i].content != sentinel(i)) break;
      ++seen[i];
      if (at > pos) out.push_back({marked.substr(pos, at - pos), true});
      const std::string& c = msgs[i].content;
      out.push_back({trimmed ? jinja::detail::py_strip(c, std::nullopt, true, true) : c, false});
      pos = end + 3;
    }
    if (pos < marked.size()) out.push_back({marked.substr(pos), true});
    bool once = true;
    for (size_t i = 0; i < msgs.size(); ++i) once &= marked_msgs[i].content != sentinel(i) || seen[i] == 1;
    for (const ChatPart& p : out) joined += p.text;
    if (once && joined == text) return out;
  }
  return {{text, true}};
}

std::string ChatTemplate::render(const ChatTemplateInput& in) const {
  if (is_jinja()) {
    ChatTemplateInput with_tokens = in;
    if (with_tokens.bos_token.empty()) with_tokens.bos_token = bos_;
    if (with_tokens.eos_token.empty()) with_tokens.eos_token = eos_;
    return render_chat_template(*tmpl_, with_tokens);
  }
  std::vector<ChatMessage> msgs;
  for (size_t i = 0; i < in.messages.size(); ++i) {
    const jinja::json& m = in.messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") || !m["content"].is_string())
      tokenizer_fail(std::string("chat format ") + chat_format_name(format_),
                     "message " + std::to_string(i) + ": a built-in format takes a string role and content only");
    msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return format_chat(msgs, format_, in.add_generation_prompt);
}

std::vector<int32_t> ChatTemplate::encode(const Tokenizer& tok, const ChatTemplateInput& in) const {
  const std::string text = render(in);
  return tok.encode(text, !is_jinja() && format_ == ChatFormat::plain && tok.adds_bos(), true);
}

std::vector<int32_t> ChatTemplate::encode(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt) const {
  if (!is_jinja()) return encode_chat(tok, messages, format_, add_generation_prompt);
  const std::vector<ChatPart> ps = parts(messages, add_generation_prompt);
  std::vector<Tokenizer::TextPart> text;
  text.reserve(ps.size());
  for (const ChatPart& p : ps) text.push_back({p.text, p.markup});
  return tok.encode(text, false);
}

void ChatTemplate::check(const Tokenizer& tok) const {
  if (!is_jinja()) encode_chat(tok, {}, format_, true);
}

std::vector<std::string> ChatTemplate::stop_strings() const {
  if (!is_jinja()) return chat_stop_strings(format_);
  std::vector<std::string> out;
  auto add = [&](const std::string& s) {
    if (!s.empty() && std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  };
  for (const char* s : {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>",
                        "<|endoftext|>", "<|end_of_text|>", "</s>"})
    if (source_.find(s) != std::string::npos) add(s);
  add(eos_);
  if (format_ != ChatFormat::plain)
    for (const std::string& s : chat_stop_strings(format_)) add(s);
  return out;
}

std::vector<int32_t> ChatTemplate::stop_tokens(const Tokenizer& tok) const {
  std::vector<int32_t> ids = tok.eos_ids();
  for (const std::string& s : stop_strings())
    if (auto id = tok.token_id(s); id && std::find(ids.begin(), ids.end(), *id) == ids.end()) ids.push_back(*id);
  return ids;
}

}  // namespace pqvk::tokenize
