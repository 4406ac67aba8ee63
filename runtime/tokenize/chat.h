// Chat prompts: a model's own Jinja chat template (ChatTemplate, rendered by jinja.h the way
// HuggingFace's apply_chat_template renders it), or, for models without one, the markup of four
// model families written out directly (ChatFormat); the choice for a model, and when to stop
// generating.
//
// The built-in formats:
//   chatml  (Qwen2/Qwen3)  <|im_start|>{role}\n{content}<|im_end|>\n ...  <|im_start|>assistant\n
//   llama3                 <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|> ...
//                          <|start_header_id|>assistant<|end_header_id|>\n\n     (content trimmed)
//   llama2                 <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]
//   plain                  System: {content}\nUser: {content}\nAssistant: {content}\n ...  Assistant:{space}
//
// The llama3 and llama2 strings carry the BOS token as text ("<|begin_of_text|>", "<s>"), so
// they are encoded without add_bos; encode_chat() does that, and matches special tokens only in
// the markup, never inside the messages.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <memory>

#include "model/config.h"
#include "tokenize/jinja.h"
#include "tokenize/tokenizer.h"

namespace pqvk::tokenize {

enum class ChatFormat { plain, chatml, llama3, llama2 };
const char* chat_format_name(ChatFormat f);
std::optional<ChatFormat> parse_chat_format(std::string_view name);  // "plain", "chatml", "llama3", "llama2"

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (chatml / llama3 / plain: any role)
  std::string content;
};

// One piece of a formatted prompt: the format's markup (special tokens allowed) or a message's
// text (special tokens never matched).
struct ChatPart {
  std::string text;
  bool markup;
};

// The prompt as parts; add_generation_prompt: end with the opening of the assistant's turn.
// Throws a TokenizerError for what the format cannot express (llama2: roles not alternating
// user / assistant after an optional first system message; llama2 and plain: an empty role).
std::vector<ChatPart> chat_parts(const std::vector<ChatMessage>& messages, ChatFormat f, bool add_generation_prompt);
// The prompt as one string (the parts concatenated).
std::string format_chat(const std::vector<ChatMessage>& messages, ChatFormat f, bool add_generation_prompt);
// The prompt as ids: BOS as the format writes it (plain: tok.bos() when tok.adds_bos()), special
// tokens matched in the markup only. Throws when the vocabulary lacks a special token the format
// needs (e.g. chatml without <|im_start|>).
std::vector<int32_t> encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages, ChatFormat f,
                                 bool add_generation_prompt);

// The format for a model: from its chat template ("<|im_start|>" -> chatml, "<|start_header_id|>"
// -> llama3, "[INST]" -> llama2), else from the vocabulary's markers (when `vocab` is given),
// else by family (qwen2 / qwen3 -> chatml), else plain.
ChatFormat choose_chat_format(const model::TokenizerInfo& info, const model::ModelConfig& config,
                              const Tokenizer* vocab = nullptr);

// Text that ends the assistant's turn in a format (a generator stops when its output ends with
// one and cuts it): chatml <|im_end|>, <|endoftext|>; llama3 <|eot_id|>, <|end_of_text|>,
// <|eom_id|>; llama2 </s>; plain "\nUser:".
std::vector<std::string> chat_stop_strings(ChatFormat f);
// The token ids that end the turn: the tokenizer's EOS ids and every stop string that is one
// token of the vocabulary.
std::vector<int32_t> chat_stop_tokens(const Tokenizer& tok, ChatFormat f);

// ---- Jinja chat templates ------------------------------------------------------------------------

// What a chat template is rendered with, as HuggingFace's apply_chat_template passes it: the
// variables messages, tools (none when absent), documents (none), add_generation_prompt,
// bos_token, eos_token and any others (extra: enable_thinking, date_string, documents, ...).
struct ChatTemplateInput {
  jinja::json messages = jinja::json::array();  // OpenAI's shape: role, content, tool_calls, tool_call_id, ...
  jinja::json tools;                            // null: none
  bool add_generation_prompt = false;
  std::string bos_token, eos_token;
  jinja::json extra = jinja::json::object();
};
jinja::json chat_template_variables(const ChatTemplateInput& in);

// A conversation file: {"messages": [...], "tools": [...], ...}; other keys become variables
// (extra). Throws TokenizerError naming `where` when it is not that shape.
ChatTemplateInput parse_conversation(const jinja::json& j, const std::string& where);

std::string render_chat_template(const jinja::Template& t, const ChatTemplateInput& in,
                                 const jinja::RenderOptions& options = {});

// A model's way of writing a chat: its Jinja template or a built-in format.
class ChatTemplate {
 public:
  // The model's template when it has one (a template that does not parse is a jinja::Error),
  // else the built-in format choose_chat_format() picks. bos_token / eos_token: the text of the
  // tokenizer's BOS and first EOS token.
  static ChatTemplate for_model(const model::TokenizerInfo& info, const model::ModelConfig& config, const Tokenizer& tok);
  static ChatTemplate builtin(ChatFormat f);
  // Throws jinja::Error when the template does not parse.
  static ChatTemplate jinja(std::string_view source, std::string name, std::string bos_token, std::string eos_token);

  bool is_jinja() const { return tmpl_ != nullptr; }
  // "jinja" or the built-in format's name.
  std::string name() const;
  // The built-in format; for a Jinja template, the one its markup resembles (for stop strings).
  ChatFormat format() const { return format_; }

  // The prompt for `messages`, as text and as parts (markup / message content; see below).
  // Errors: TokenizerError for what a built-in format cannot express, jinja::Error for a
  // template's (raise_exception included). A template that refuses a system message (Gemma's)
  // gets the system prompt at the start of the first user message instead.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  std::vector<ChatPart> parts(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // As ids: the template writes BOS itself (HuggingFace encodes the rendered text without adding
  // special tokens); special tokens are matched in the markup only wherever the messages'
  // content can be told apart in the output (the template copies it unchanged or trimmed),
  // else in the whole text, as HuggingFace does.
  std::vector<int32_t> encode(const Tokenizer& tok, const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // A whole request in OpenAI's shape (tools, tool calls, other variables: what a server gets).
  // The template's bos_token / eos_token fill those the input leaves empty. A built-in format
  // takes messages with a string role and content only (TokenizerError otherwise) and ignores the
  // rest. The ids: the rendered text with special tokens matched everywhere, as HuggingFace does.
  std::string render(const ChatTemplateInput& in) const;
  std::vector<int32_t> encode(const Tokenizer& tok, const ChatTemplateInput& in) const;
  // Throws when `tok` lacks a special token a built-in format needs.
  void check(const Tokenizer& tok) const;

  // Text that ends the assistant's turn: a built-in format's, or for a template the end-of-turn
  // markers it writes (<|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>, ...) and its eos_token.
  std::vector<std::string> stop_strings() const;
  // Token ids that end the turn: the tokenizer's EOS ids and every stop string that is one token.
  std::vector<int32_t> stop_tokens(const Tokenizer& tok) const;

 private:
  std::vector<ChatMessage> normalized(const std::vector<ChatMessage>& messages) const;
  std::string render_json(const jinja::json& messages, bool add_generation_prompt) const;

  ChatFormat format_ = ChatFormat::plain;
  std::shared_ptr<const jinja::Template> tmpl_;
  std::string source_, bos_, eos_;
  bool system_role_ = true;  // the template accepts a system message
};

}  // namespace pqvk::tokenize
