// pq-chat's chat engine, shared by the window (apps/chat/chat_ui) and the terminal (--cli):
// the model, the conversation, its formatting into a prompt, context trimming and the
// generation loop with callbacks. No Vulkan here: the model runs through llm::GpuModel, or
// the CPU reference (llm::CpuModel) when the engine has no Vulkan context.
//
// The conversation is an optional system prompt and a list of turns (a user message and the
// assistant's reply). Each generation:
//   1. formats the conversation (tokenize/chat.h: the model's own Jinja chat template, else the
//      built-in ChatML, Llama 3, Llama 2 or plain format chosen from the model) with the new user
//      message and the opening of the assistant's turn, and encodes it;
//   2. drops the oldest turns while the prompt plus room for the reply (max_tokens, at most half
//      the context) exceeds the context; the system prompt is always kept. A message that cannot
//      fit even alone is an error;
//   3. reuses the KV cache: only the tokens after the longest common prefix with what the cache
//      already holds are prefilled (a follow-up message costs its own tokens, not the whole
//      conversation's);
//   4. samples up to max_tokens tokens, streaming the text through on_text, and stops at the
//      format's stop tokens (EOS, <|im_end|>, ...) or stop strings ("\nUser:" for plain), which
//      are cut from the reply, at the end of the context, or when `cancel` is set.
//
// Equivalence with pq-run, for the plain format (where the stop tokens are just EOS): a first
// turn (an empty KV cache) generates exactly what
//   pq-run -p "<prompt>" --temp T --top-k K --top-p P --min-p M --repeat-penalty R --seed S
//          -n N --stop "<each stop string>"
// prints after echoing the prompt, where <prompt> is Reply::prompt (the formatted text), which
// the plain format encodes the same way (BOS + the text, no special tokens). The same decode path is
// used: greedy with no repetition penalty chooses on the GPU (forward_argmax), everything else
// samples on the CPU from the logits with a Sampler seeded with the seed, and the streamed text
// goes through a TextStream that has seen the prompt. tests/pq_chat_check.cmake checks this, on
// the GPU and on the CPU (as pq-run --cpu).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "llm/sampler.h"
#include "tokenize/chat.h"
#include "tokenize/stop_filter.h"

namespace pqvk::vk {
class Context;
}
namespace pqvk::model {
class PqmFile;
}
namespace pqvk::llm {
class CpuModel;
class GpuModel;
}
namespace pqvk::tokenize {
class Tokenizer;
}

namespace pqvk::chat {

struct Settings {
  llm::SamplerConfig sampler;  // temperature, top-k, top-p, min-p, repetition penalty, seed
  int max_tokens = 256;        // per reply, >= 1
  // Throws std::invalid_argument naming the first setting out of range.
  void validate() const;
};

struct ModelInfo {
  std::string path, name;      // name: the file name without directories
  std::string architecture;
  std::string format = "plain";  // "jinja" (the model's chat template) or a built-in format's name
  int32_t context_size = 0;    // the KV cache's length
  int32_t vocab_size = 0;
  uint64_t device_bytes = 0;   // weights + cache + activations on the device (0 on the CPU)
  std::string device;          // the Vulkan device's name, or "CPU reference"
};

struct Turn {
  std::string user;
  std::string assistant;  // the reply as generated (stop string cut), trailing spaces included
};

// How a generation ended.
enum class StopReason { none, stop, max_tokens, context_full, cancelled };
const char* stop_reason_name(StopReason r);  // "stop", "max_tokens", "context_full", "cancelled"

struct Reply {
  std::string text;              // what on_text streamed, concatenated
  std::vector<int32_t> tokens;   // the ids sampled (a stop token excluded)
  StopReason stop = StopReason::none;
  std::string prompt;            // the formatted prompt of this generation (after trimming)
  int32_t prompt_tokens = 0;     // its length in tokens
  int32_t reused_tokens = 0;     // of which already in the KV cache
  int32_t dropped_turns = 0;     // turns dropped from the start by this generation (in total)
  double prefill_s = 0, decode_s = 0;
  uint64_t seed = 0;             // the sampler's seed for this reply
};

struct Progress {
  int32_t generated = 0;        // tokens so far
  int32_t context_used = 0;     // tokens in the KV cache
  double tokens_per_s = 0;      // decode speed so far (after the first token)
};

struct Callbacks {
  std::function<void(const std::string& text)> on_text;            // streamed reply text
  std::function<void(const Progress& p)> on_progress;              // after each token
  std::function<void(const Reply& started)> on_prompt;             // after trimming, before prefill
};

// Holds back streamed text that may be the start of a stop string (tokenize/stop_filter.h).
using tokenize::StopFilter;

class ChatEngine {
 public:
  // No model yet; the context must outlive the engine. The model runs on its device.
  explicit ChatEngine(vk::Context& ctx) : ChatEngine(&ctx) {}
  // ctx null: the model runs on the CPU reference with `cpu_threads` threads (0: all).
  // kv_bits: the PolarQuant KV cache (GpuOptions / CpuOptions::kv_bits; 0: fp16).
  explicit ChatEngine(vk::Context* ctx, int cpu_threads = 0, int kv_bits = 0);
  ~ChatEngine();
  ChatEngine(const ChatEngine&) = delete;
  ChatEngine& operator=(const ChatEngine&) = delete;

  // Loads a .pqm model with a KV cache of `context` tokens (0: the model's, at most 8192) and
  // starts a new chat (the system prompt is kept). The file, its tokenizer and its chat template
  // are checked first: if they fail, the loaded model stays. Throws std::exception with a message
  // that names the file (bad file, no tokenizer, a chat template that does not parse, out of
  // device memory, ...); after a failure in the GPU upload no model is loaded.
  void load(const std::string& path, int32_t context = 0);
  bool loaded() const { return gpu_ != nullptr || cpu_ != nullptr; }
  const ModelInfo& model() const { return info_; }
  // A built-in chat format instead of the model's template (for tests / the --format option).
  void set_format(tokenize::ChatFormat f);

  // The conversation.
  void set_system(const std::string& text);  // takes effect at the next generation
  const std::string& system() const { return system_; }
  const std::vector<Turn>& turns() const { return turns_; }
  // Turns before this index were dropped from the prompt to fit the context.
  size_t first_in_context() const { return first_; }
  void reset();  // a new chat: no turns (system prompt kept)

  // Adds the user's message and generates the reply (on the calling thread). The turn is kept
  // with whatever was generated, also when cancelled. Throws on errors (no model, the message
  // does not fit the context, a device error); the turn is then not added.
  Reply send(const std::string& user, const Settings& settings, const Callbacks& cb = {},
             const std::atomic<bool>* cancel = nullptr);
  // Generates the last turn's reply again, with the seed advanced by one per regeneration of
  // that turn (so a sampled reply changes; a greedy one does not). Throws when there is no turn.
  Reply regenerate(const Settings& settings, const Callbacks& cb = {}, const std::atomic<bool>* cancel = nullptr);

  // Off: every generation prefills the whole prompt, as if the cache were empty (tests, and
  // --no-kv-reuse to compare each reply with pq-run). On by default.
  void set_kv_reuse(bool on) { kv_reuse_ = on; }

  // Tokens in the KV cache (the context used).
  int32_t context_used() const { return static_cast<int32_t>(cached_.size()); }
  // The prompt text for the current conversation followed by `user` (with the assistant's
  // opening), as send() would build it before trimming.
  std::string format_prompt(const std::string& user) const;

 private:
  std::vector<tokenize::ChatMessage> messages(size_t first, const std::string* user) const;
  Reply generate(const std::string& user, const Settings& settings, uint64_t seed, const Callbacks& cb,
                 const std::atomic<bool>* cancel);

  // The model behind one interface: the GPU decoder or the CPU reference.
  std::span<const float> prefill(std::span<const int32_t> tokens, int32_t pos0);
  std::span<const float> forward(int32_t token, int32_t pos);

  vk::Context* ctx_;
  int cpu_threads_;
  int kv_bits_ = 0;
  std::unique_ptr<model::PqmFile> file_;
  std::unique_ptr<tokenize::Tokenizer> tok_;
  std::unique_ptr<llm::GpuModel> gpu_;
  std::unique_ptr<llm::CpuModel> cpu_;
  tokenize::ChatTemplate template_ = tokenize::ChatTemplate::builtin(tokenize::ChatFormat::plain);
  ModelInfo info_;
  std::vector<std::string> stop_strings_;
  std::vector<int32_t> stop_tokens_;

  std::string system_;
  std::vector<Turn> turns_;
  size_t first_ = 0;               // first turn still in the prompt
  uint32_t regenerations_ = 0;     // of the last turn
  std::vector<int32_t> cached_;    // the tokens whose keys/values the cache holds, from position 0
  bool kv_reuse_ = true;
};

// A chat format by name ("plain", "chatml", "llama3", "llama2"); throws std::invalid_argument.
tokenize::ChatFormat parse_format(const std::string& name);

// ---- the command language of --cli and --script --------------------------------------------

// One input line (or lines joined by a trailing backslash): a message, or a command.
struct Command {
  enum Kind { message, reset, system, regenerate, load, quit, unknown } kind = message;
  std::string text;  // the message; /system's text; /load's path; the unknown command
};
// "/reset" (also "/new"), "/system TEXT" (no text: clears it), "/regen", "/load PATH",
// "/quit" (also "/exit"); anything else starting with '/' is unknown; other text is a message
// ("//text" sends "/text").
Command parse_command(const std::string& line);
// Reads the next command from `in` (lines ending in '\' continue on the next line, joined by
// "\n"); blank lines are skipped. nullopt at the end of input.
std::optional<Command> read_command(std::istream& in);
// All commands of a script file; throws std::runtime_error when it cannot be read.
std::vector<Command> read_script(const std::string& path);

}  // namespace pqvk::chat
