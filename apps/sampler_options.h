// The sampling options shared by pq-run and pq-chat (runtime/llm/sampler.h), one place for
// their names, defaults and help texts.
#pragma once

#include <CLI/CLI.hpp>

#include "llm/sampler.h"

namespace pqvk::apps {

inline void add_sampler_options(CLI::App& app, llm::SamplerConfig& sc) {
  app.add_option("--temp", sc.temperature, "Temperature; 0 = greedy (default 0.8)");
  app.add_option("--top-k", sc.top_k, "Top-k; 0 = off (default 40)");
  app.add_option("--top-p", sc.top_p, "Top-p; 1 = off (default 0.95)");
  app.add_option("--min-p", sc.min_p, "Min-p; 0 = off (default 0.05)");
  app.add_option("--repeat-penalty", sc.repeat_penalty, "Repetition penalty; 1 = off (default 1: off, so --temp 0 is plain greedy)");
  app.add_option("--repeat-last-n", sc.repeat_last_n, "Tokens the penalty looks back at (default 64)");
  app.add_option("--seed", sc.seed, "Sampling seed (default 0): the same seed gives the same text");
}

}  // namespace pqvk::apps
