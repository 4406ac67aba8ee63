// Chat prompt formats: the markup the chat-tuned model families were trained with, written out
// directly (no Jinja), the choice of format for a model, and when to stop generating.
//
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

#include "model/config.h"
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

}  // namespace pqvk::tokenize
