// pq-server's engines: the model behind continuous batching. A step runs tokens of several
// sequences, each in its own slot (KV-cache region), and returns, for the tokens that ask for it,
// the arg max of the logits and optionally the logits (llm::BatchToken, llm::BatchResult).
//   gpu  GpuModel::step(): one forward pass for every token of the step, the weights read once
//        for all of them (prefill steps: tiled GEMMs; decode steps: the batched GEMV)
//   cpu  the CPU reference (llm::CpuModel), one sequence after another, each with its own
//        cache (CpuModel::Sequence): the default where the only Vulkan device is a CPU
//        implementation (apps/device_choice.h), as for pq-run
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "llm/gpu_model.h"

namespace pqvk::vk {
class Context;
}
namespace pqvk::model {
class PqmFile;
}

namespace pqvk::server {

class Engine {
 public:
  virtual ~Engine() = default;
  virtual std::string device() const = 0;
  virtual int32_t context() const = 0;        // positions per sequence
  virtual uint32_t slots() const = 0;         // sequences at once
  virtual uint32_t step_tokens() const = 0;   // at most this many tokens per step
  // A token's (slot, pos) must follow what the slot holds: positions 0 .. pos - 1 of its sequence
  // are cached or earlier in the step. A sequence that starts over in a slot starts at 0.
  virtual void step(std::span<const llm::BatchToken> tokens, llm::BatchKind kind, llm::BatchResult& out) = 0;
};

struct EngineOptions {
  uint32_t slots = 4;
  int32_t context = 0;       // per sequence; 0: the model's, at most 4096
  uint32_t step_tokens = 256;  // prompt tokens per prefill step
  int threads = 0;           // CPU engine: threads of the products (0: all)
  int kv_bits = 0;           // the KV cache: 0 fp16, 8 / 4 PolarQuant codes (--kv-type)
};

// ctx must outlive the engine.
std::unique_ptr<Engine> make_gpu_engine(vk::Context& ctx, const model::PqmFile& file, const EngineOptions& o);
std::unique_ptr<Engine> make_cpu_engine(const model::PqmFile& file, const EngineOptions& o);

}  // namespace pqvk::server
