// The --kv-type option of pq-run, pq-chat, pq-perplexity, pq-server, vk-bench and pq-info --fit:
// one place for its values, help text and meaning (GpuOptions / CpuOptions::kv_bits).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace pqvk::apps {

// `prefix` starts the help text (pq-info: "With --fit: ").
inline CLI::Option* add_kv_type_option(CLI::App& app, std::string& kv_type, const std::string& prefix = "") {
  return app
      .add_option("--kv-type", kv_type,
                  prefix + "KV cache: f16 (default), or pq8 / pq4 (PolarQuant codes of each rotated key and value head, "
                           "one norm: about 1/2 and 1/4 of the memory; heads of 8..256, a power of two)")
      ->check(CLI::IsMember({"f16", "pq8", "pq4"}));
}

// The code width of a --kv-type value: 0 (f16), 8 or 4.
inline int kv_bits(const std::string& kv_type) { return kv_type == "pq8" ? 8 : kv_type == "pq4" ? 4 : 0; }

}  // namespace pqvk::apps
