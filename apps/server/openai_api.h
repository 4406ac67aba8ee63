// pq-server's OpenAI-compatible API: request bodies checked and turned into generation jobs,
// responses and stream chunks in OpenAI's shapes, and errors as
// {"error": {"message", "type", "param", "code"}} with their HTTP status.
//
// Every field of a body is checked for its type and range before anything runs (a wrong type, a
// number out of range or a missing field is a 400 naming the field); unknown fields are ignored
// as OpenAI's clients send many. Supported: the sampling fields (temperature, top_p, and the
// llama.cpp extensions top_k, min_p, repeat_penalty, repeat_last_n, ignore_eos), seed, stop, max_tokens /
// max_completion_tokens, presence_penalty, frequency_penalty, n = 1, stream (with
// stream_options.include_usage), messages (text content, as a string or text parts; tools and
// tool calls go to the chat template; chat_template_kwargs become template variables), prompt
// (a string, token ids, or a list of one of either). Refused (400): n > 1, logprobs, echo, suffix,
// best_of > 1, non-text content parts.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/scheduler.h"
#include "tokenize/chat.h"
#include "tokenize/tokenizer.h"

namespace pqvk::server {

using json = nlohmann::ordered_json;

// An error answered in OpenAI's shape.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string type = "invalid_request_error", std::string param = {},
           std::string code = {})
      : std::runtime_error(message), status_(status), type_(std::move(type)), param_(std::move(param)),
        code_(std::move(code)) {}
  int status() const { return status_; }
  json body() const;

 private:
  int status_;
  std::string type_, param_, code_;
};
json error_body(const std::string& message, const std::string& type, const std::string& param = {},
                const std::string& code = {});

// What the API knows of the model.
struct ApiModel {
  std::string id;  // the name clients use ("model" in requests and responses)
  const tokenize::Tokenizer* tok = nullptr;
  const tokenize::ChatTemplate* chat = nullptr;
  int32_t context = 0;  // positions per sequence
  int32_t vocab = 0;
  // The longest token in bytes: a text longer than context * this has more tokens than the
  // context holds, and is refused before it is encoded (max_token_bytes()).
  size_t max_token_bytes = 0;
};
size_t max_token_bytes(const tokenize::Tokenizer& tok);

// A request, checked and encoded.
struct Generation {
  bool chat = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::vector<int32_t> prompt;
  GenParams params;
};

// Parses a body (nesting bounded: at most 64 levels). Throws ApiError(400) when it is not JSON or
// not an object.
json parse_body(const std::string& body);
// POST /v1/chat/completions and /v1/completions bodies. Throws ApiError (400).
Generation parse_chat_request(const json& body, const ApiModel& m);
Generation parse_completion_request(const json& body, const ApiModel& m);

// Responses. id: "chatcmpl-..." / "cmpl-...".
json completion_response(const Generation& g, const ApiModel& m, const std::string& id, int64_t created,
                         const std::string& text, const std::string& finish_reason, int completion_tokens);
// A stream chunk: the text delta (chat: the first chunk carries the role), and the finish reason on
// the last.
json stream_chunk(const Generation& g, const ApiModel& m, const std::string& id, int64_t created,
                  const std::optional<std::string>& text, bool first, const std::string& finish_reason);
json usage_chunk(const Generation& g, const ApiModel& m, const std::string& id, int64_t created, int completion_tokens);
json usage(int prompt_tokens, int completion_tokens);

// POST /tokenize {"content", "add_special" (false), "with_pieces" (false)} and
// POST /detokenize {"tokens"}: llama.cpp's shapes.
json tokenize_response(const json& body, const ApiModel& m);
json detokenize_response(const json& body, const ApiModel& m);

// A new response id: "chatcmpl-" or "cmpl-" and 16 random hex digits.
std::string new_response_id(bool chat);

// JSON as text that is always valid UTF-8 (invalid bytes replaced).
std::string dump(const json& j);

}  // namespace pqvk::server
