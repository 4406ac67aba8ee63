#include "llm/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

namespace pqvk::llm {

namespace {

[[noreturn]] void bad_setting(const std::string& what, double got) {
  char v[32];
  std::snprintf(v, sizeof v, "%g", got);
  throw std::invalid_argument("sampler: " + what + ", got " + v);
}

// The order of candidates: most likely first, lower id first among equals.
bool before(double z_a, int32_t id_a, double z_b, int32_t id_b) { return z_a > z_b || (z_a == z_b && id_a < id_b); }

}  // namespace

void SamplerConfig::validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f) bad_setting("temperature must be >= 0 (0: greedy)", temperature);
  if (top_k < 0) bad_setting("top_k must be >= 0 (0: off)", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) bad_setting("top_p must be in (0, 1] (1: off)", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) bad_setting("min_p must be in [0, 1] (0: off)", min_p);
  if (!std::isfinite(repeat_penalty) || repeat_penalty <= 0.0f)
    bad_setting("repeat_penalty must be > 0 (1: off)", repeat_penalty);
  if (repeat_last_n < 0) bad_setting("repeat_last_n must be >= 0 (0: off)", repeat_last_n);
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    bad_setting("presence_penalty must be in [-2, 2] (0: off)", presence_penalty);
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    bad_setting("frequency_penalty must be in [-2, 2] (0: off)", frequency_penalty);
}

void apply_repeat_penalty(std::span<float> logits, std::span<const int32_t> recent, float penalty, int last_n) {
  if (penalty == 1.0f || last_n <= 0) return;
  const size_t n = std::min(recent.size(), static_cast<size_t>(last_n));
  std::span<const int32_t> window = recent.subspan(recent.size() - n);
  // Each distinct token once: sort a copy of the window and skip repeats.
  std::vector<int32_t> ids(window.begin(), window.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= logits.size())
      throw std::invalid_argument("sampler: recent token " + std::to_string(id) + " is outside the vocabulary [0, " +
                                  std::to_string(logits.size()) + ")");
    float& l = logits[static_cast<size_t>(id)];
    l = l > 0.0f ? l / penalty : l * penalty;
  }
}

void apply_presence_frequency_penalty(std::span<float> logits, std::span<const int32_t> generated, float presence,
                                      float frequency) {
  if (presence == 0.0f && frequency == 0.0f) return;
  std::vector<int32_t> ids(generated.begin(), generated.end());
  std::sort(ids.begin(), ids.end());
  for (size_t i = 0; i < ids.size();) {
    const int32_t id = ids[i];
    size_t j = i;
    while (j < ids.size() && ids[j] == id) ++j;
    if (id < 0 || static_cast<size_t>(id) >= logits.size())
      throw std::invalid_argument("sampler: generated token " + std::to_string(id) + " is outside the vocabulary [0, " +
                                  std::to_string(logits.size()) + ")");
    logits[static_cast<size_t>(id)] -= presence + frequency * static_cast<float>(j - i);
    i = j;
  }
}

Sampler::Sampler(SamplerConfig config) : config_(config) {
  config_.validate();
  rng_.seed(config_.seed);
}

double Sampler::next_uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

bool Sampler::is_plain_greedy() const {
  return config_.temperature == 0.0f && (config_.repeat_penalty == 1.0f || config_.repeat_last_n == 0) &&
         config_.presence_penalty == 0.0f && config_.frequency_penalty == 0.0f;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> recent,
                        std::span<const int32_t> generated) {
  if (logits.empty()) throw std::invalid_argument("sampler: no logits");
  if (logits.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    throw std::invalid_argument("sampler: more logits than token ids");
  for (size_t i = 0; i < logits.size(); ++i)
    if (std::isnan(logits[i]) || logits[i] == std::numeric_limits<float>::infinity())
      throw std::invalid_argument("sampler: logit " + std::to_string(i) + " is " + (std::isnan(logits[i]) ? "NaN" : "+inf"));

  // 1. Repetition penalty.
  logits_.assign(logits.begin(), logits.end());
  apply_repeat_penalty(logits_, recent, config_.repeat_penalty, config_.repeat_last_n);
  apply_presence_frequency_penalty(logits_, generated, config_.presence_penalty, config_.frequency_penalty);

  // 2. Temperature (0: greedy).
  int32_t best = 0;
  for (size_t i = 1; i < logits_.size(); ++i)
    if (logits_[i] > logits_[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  if (logits_[static_cast<size_t>(best)] == -std::numeric_limits<float>::infinity())
    throw std::invalid_argument("sampler: every logit is -inf");
  if (config_.temperature == 0.0f) return best;

  candidates_.clear();
  const double temperature = config_.temperature;
  for (size_t i = 0; i < logits_.size(); ++i)
    if (logits_[i] != -std::numeric_limits<float>::infinity())
      candidates_.push_back({static_cast<int32_t>(i), static_cast<double>(logits_[i]) / temperature, 0.0});
  auto order = [](const Candidate& a, const Candidate& b) { return before(a.z, a.id, b.z, b.id); };

  // 3. Top-k (the candidates end up sorted either way).
  if (config_.top_k > 0 && static_cast<size_t>(config_.top_k) < candidates_.size()) {
    const auto k = static_cast<ptrdiff_t>(config_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + k, candidates_.end(), order);
    candidates_.resize(static_cast<size_t>(k));
  } else {
    std::sort(candidates_.begin(), candidates_.end(), order);
  }

  // Probabilities of what is left (softmax, largest first).
  double sum = 0.0;
  for (Candidate& c : candidates_) {
    c.p = std::exp(c.z - candidates_.front().z);
    sum += c.p;
  }
  for (Candidate& c : candidates_) c.p /= sum;

  // 4. Top-p: the shortest prefix whose probability reaches top_p.
  if (config_.top_p < 1.0f) {
    double cumulative = 0.0;
    size_t keep = 0;
    while (keep < candidates_.size() && cumulative < config_.top_p) cumulative += candidates_[keep++].p;
    candidates_.resize(std::max<size_t>(keep, 1));
  }

  // 5. Min-p: at least min_p times the most likely token's probability.
  if (config_.min_p > 0.0f) {
    const double threshold = config_.min_p * candidates_.front().p;
    size_t keep = 1;
    while (keep < candidates_.size() && candidates_[keep].p >= threshold) ++keep;
    candidates_.resize(keep);
  }

  // 6. Sample from the renormalized probabilities.
  double total = 0.0;
  for (const Candidate& c : candidates_) total += c.p;
  const double target = next_uniform() * total;
  double cumulative = 0.0;
  for (const Candidate& c : candidates_) {
    cumulative += c.p;
    if (target < cumulative) return c.id;
  }
  return candidates_.back().id;
}

}  // namespace pqvk::llm
