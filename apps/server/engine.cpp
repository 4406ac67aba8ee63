#include "server/engine.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "llm/cpu_model.h"
#include "model/pqm.h"
#include "vk/context.h"

namespace pqvk::server {

namespace {

int32_t context_for(const model::ModelConfig& c, int32_t requested) {
  const int64_t max = c.max_seq_len;
  return static_cast<int32_t>(requested > 0 ? std::min<int64_t>(requested, max) : std::min<int64_t>(max, 4096));
}

class GpuEngine final : public Engine {
 public:
  GpuEngine(vk::Context& ctx, const model::PqmFile& file, const EngineOptions& o) : device_(ctx.info().name) {
    llm::GpuOptions g;
    g.context = context_for(file.config(), o.context);
    g.max_batch = std::max(o.step_tokens, o.slots);
    g.slots = o.slots;
    g.kv_bits = o.kv_bits;
    model_ = std::make_unique<llm::GpuModel>(ctx, file, g);
  }
  std::string device() const override { return device_; }
  int32_t context() const override { return model_->context_size(); }
  uint32_t slots() const override { return model_->slots(); }
  uint32_t step_tokens() const override { return model_->batch_rows(); }
  void step(std::span<const llm::BatchToken> tokens, llm::BatchKind kind, llm::BatchResult& out) override {
    model_->step(tokens, kind, out);
  }

 private:
  std::string device_;
  std::unique_ptr<llm::GpuModel> model_;
};

// The CPU reference, token by token: each slot a CpuModel::Sequence over the shared weights.
class CpuEngine final : public Engine {
 public:
  CpuEngine(const model::PqmFile& file, const EngineOptions& o) {
    if (o.slots == 0) throw std::invalid_argument("the CPU engine needs at least one slot");
    llm::CpuOptions co;
    co.threads = o.threads;
    co.kv_fp16 = false;  // as pq-run --cpu
    co.kv_bits = o.kv_bits;
    model_ = std::make_unique<llm::CpuModel>(file, co);
    context_ = context_for(file.config(), o.context);
    step_tokens_ = std::max(o.step_tokens, o.slots);
    for (uint32_t s = 0; s < o.slots; ++s) seqs_.push_back(model_->new_sequence());
  }
  std::string device() const override { return "CPU reference"; }
  int32_t context() const override { return context_; }
  uint32_t slots() const override { return static_cast<uint32_t>(seqs_.size()); }
  uint32_t step_tokens() const override { return step_tokens_; }

  void step(std::span<const llm::BatchToken> tokens, llm::BatchKind, llm::BatchResult& out) override {
    if (tokens.empty() || tokens.size() > step_tokens_)
      throw std::invalid_argument("step: " + std::to_string(tokens.size()) + " tokens; 1 to " +
                                  std::to_string(step_tokens_) + " per step");
    // Each sequence's tokens in position order; outputs copied (the next call overwrites them).
    std::vector<size_t> order(tokens.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return tokens[a].slot != tokens[b].slot ? tokens[a].slot < tokens[b].slot : tokens[a].pos < tokens[b].pos;
    });
    const size_t vocab = static_cast<size_t>(model_->config().vocab_size);
    size_t outs = 0;
    for (const auto& t : tokens) outs += t.out == llm::BatchToken::logits;
    logits_.resize(outs * vocab);
    out.ids.assign(tokens.size(), -1);
    out.logits.assign(tokens.size(), {});
    size_t next_out = 0;
    for (size_t i : order) {
      const llm::BatchToken& t = tokens[i];
      if (t.slot >= seqs_.size()) throw std::invalid_argument("step: slot " + std::to_string(t.slot));
      if (t.pos >= context_) throw std::out_of_range("step: position " + std::to_string(t.pos) + " exceeds the context");
      std::span<const float> l = model_->forward(seqs_[t.slot], t.token, t.pos);
      if (t.out == llm::BatchToken::none) continue;
      // The arg max as the GPU's argmax.comp: the lowest index among equal maxima.
      out.ids[i] = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
      if (t.out == llm::BatchToken::logits) {
        float* dst = logits_.data() + next_out++ * vocab;
        std::copy(l.begin(), l.end(), dst);
        out.logits[i] = {dst, vocab};
      }
    }
  }

 private:
  std::unique_ptr<llm::CpuModel> model_;
  std::vector<llm::CpuModel::Sequence> seqs_;
  std::vector<float> logits_;
  int32_t context_ = 0;
  uint32_t step_tokens_ = 0;
};

}  // namespace

std::unique_ptr<Engine> make_gpu_engine(vk::Context& ctx, const model::PqmFile& file, const EngineOptions& o) {
  if (o.slots == 0) throw std::invalid_argument("--parallel must be at least 1");
  return std::make_unique<GpuEngine>(ctx, file, o);
}

std::unique_ptr<Engine> make_cpu_engine(const model::PqmFile& file, const EngineOptions& o) {
  return std::make_unique<CpuEngine>(file, o);
}

}  // namespace pqvk::server
