// Choosing the next token from the logits, on the CPU.
//
// The steps, in this order (each one disabled by its neutral value):
//   1. repetition penalty  over the distinct tokens among the last repeat_last_n of `recent`:
//                          a positive logit is divided by repeat_penalty, a negative one
//                          multiplied (llama.cpp's semantics; 1 disables)
//   1b. presence and      OpenAI's penalties over the tokens generated so far (`generated`, not
//       frequency         the prompt): logit[t] -= presence * (count[t] > 0) + frequency * count[t]
//       penalties         (0 disables; each in [-2, 2])
//   2. temperature         logits / temperature; 0 means greedy: the arg max after step 1
//                          (lowest id on ties), no randomness used
//   3. top-k               keep the k largest (0 disables)
//   4. top-p               keep the smallest set of most likely tokens whose probability
//                          reaches top_p (1 disables)
//   5. min-p               keep the tokens whose probability is at least min_p times the
//                          largest (0 disables)
//   6. sample              from the renormalized probabilities of what is left
//
// Reproducible: the same seed, settings and inputs give the same tokens on every platform.
// Random numbers come from std::mt19937_64 (its output sequence is fixed by the C++ standard),
// each draw turned into a double in [0, 1) from its top 53 bits by hand; candidates are
// ordered by (logit descending, id ascending), a total order, so sorting is deterministic too.
// Probabilities are computed in fp64 with std::exp.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace pqvk::llm {

struct SamplerConfig {
  float temperature = 0.8f;     // >= 0; 0: greedy
  int top_k = 40;               // >= 0; 0: off
  float top_p = 0.95f;          // (0, 1]; 1: off
  float min_p = 0.05f;          // [0, 1]; 0: off
  float repeat_penalty = 1.0f;  // > 0; 1: off (the default, as llama.cpp and HuggingFace)
  int repeat_last_n = 64;       // >= 0; 0: off
  float presence_penalty = 0.0f;   // [-2, 2]; 0: off (OpenAI's presence_penalty)
  float frequency_penalty = 0.0f;  // [-2, 2]; 0: off (OpenAI's frequency_penalty)
  uint64_t seed = 0;

  // Throws std::invalid_argument naming the first setting out of range, e.g.
  // "sampler: top_p must be in (0, 1], got 1.5".
  void validate() const;
};

// Step 1 on its own: penalizes, in place, each distinct token among the last `last_n` entries of
// `recent`. Throws std::invalid_argument for a token id outside [0, logits.size()).
void apply_repeat_penalty(std::span<float> logits, std::span<const int32_t> recent, float penalty, int last_n);
// Step 1b on its own: logit[t] -= presence * (count[t] > 0) + frequency * count[t], count[t] the
// occurrences of t in `generated`. Throws std::invalid_argument for a token id outside the vocabulary.
void apply_presence_frequency_penalty(std::span<float> logits, std::span<const int32_t> generated, float presence,
                                      float frequency);

class Sampler {
 public:
  // Validates the config (std::invalid_argument) and seeds the generator.
  explicit Sampler(SamplerConfig config);

  const SamplerConfig& config() const { return config_; }

  // The next token. `logits` holds one value per vocabulary entry (-inf masks a token; NaN and
  // +inf are errors); `recent` the tokens so far, oldest first (only the last repeat_last_n
  // count); `generated` the tokens generated so far (the presence and frequency penalties'
  // counts). Throws std::invalid_argument on bad input: no logits, a NaN or +inf logit, every
  // logit -inf, a recent or generated token outside the vocabulary.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> recent,
                 std::span<const int32_t> generated = {});
  // Whether sample() is the plain arg max of the logits (greedy, no penalty): what the GPU's
  // argmax computes.
  bool is_plain_greedy() const;

 private:
  struct Candidate {
    int32_t id;
    double z;  // logit / temperature
    double p;  // probability
  };

  double next_uniform();  // [0, 1), 53 random bits

  SamplerConfig config_;
  std::mt19937_64 rng_;
  std::vector<float> logits_;  // penalized copy
  std::vector<Candidate> candidates_;
};

}  // namespace pqvk::llm
