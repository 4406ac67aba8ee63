#include "chat/transcript.h"

#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace pqvk::chat {

nlohmann::json Transcript::to_json() const {
  using nlohmann::json;
  json j;
  j["mode"] = mode;
  j["device"] = device;
  j["model"] = {{"path", model.path},
                {"name", model.name},
                {"architecture", model.architecture},
                {"format", model.format},
                {"context_size", model.context_size}};
  const llm::SamplerConfig& s = settings.sampler;
  j["settings"] = {{"temperature", s.temperature}, {"top_k", s.top_k},
                   {"top_p", s.top_p},             {"min_p", s.min_p},
                   {"repeat_penalty", s.repeat_penalty}, {"repeat_last_n", s.repeat_last_n},
                   {"seed", s.seed},               {"max_tokens", settings.max_tokens}};
  j["system"] = system;
  json gens = json::array();
  for (const Generation& g : generations) {
    const Reply& r = g.reply;
    gens.push_back({{"user", g.user},
                    {"regenerated", g.regenerated},
                    {"system", g.system},
                    {"prompt", r.prompt},
                    {"prompt_tokens", r.prompt_tokens},
                    {"reused_tokens", r.reused_tokens},
                    {"dropped_turns", r.dropped_turns},
                    {"reply", r.text},
                    {"tokens", r.tokens},
                    {"stop", stop_reason_name(r.stop)},
                    {"seed", r.seed},
                    {"prefill_s", r.prefill_s},
                    {"decode_s", r.decode_s}});
  }
  j["generations"] = gens;
  j["errors"] = errors;
  j["validation_messages"] = validation_messages;
  if (!rendered.is_null()) j["rendered"] = rendered;
  return j;
}

void Transcript::write(const std::string& path) const {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write the transcript " + path);
  f << to_json().dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  if (!f) throw std::runtime_error("cannot write the transcript " + path);
}

int Transcript::finish(uint32_t validation_count, const std::string& path, bool failed) {
  validation_messages = validation_count;
  if (validation_messages) {
    std::fprintf(stderr, "pq-chat: %u Vulkan validation messages\n", validation_messages);
    failed = true;
  }
  if (!path.empty()) write(path);
  return failed ? 1 : 0;
}

}  // namespace pqvk::chat
