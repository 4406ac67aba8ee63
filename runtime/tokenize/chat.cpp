#include "tokenize/chat.h"

#include <algorithm>

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

}  // namespace pqvk::tokenize
