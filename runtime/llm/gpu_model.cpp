// The decoder on the GPU (gpu_model.h). Read top to bottom: loading, then one function per
// step of the forward pass, then the entry points that record, replay and read back.
#include "llm/gpu_model.h"

#include <algorithm>
#include <cmath>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <utility>

#include "llm/cpu_model.h"
#include "model/convert.h"

#include "model/error.h"

namespace pqvk::llm {

using pqvk::ModelError;

namespace {

size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

// Decode attention's context splits: at least 256 keys each at full length, 4 to 32 of them (at
// short contexts many are empty and return at once). Up to 128 measured slower on the H200 at
// 16k-32k tokens: every split repeats the query's preparation and its own reduction, and the
// merge reads them all (bench/RESULTS.md).
uint32_t decode_splits(int64_t context) { return static_cast<uint32_t>(std::clamp<int64_t>(context / 256, 4, 32)); }

// The head geometry that decides a KV cache's record size (Kernels::kv_words).
Kernels::AttentionShape kv_shape(const model::ModelConfig& c, const GpuOptions& opt) {
  Kernels::AttentionShape a;
  a.head_dim = static_cast<uint32_t>(c.head_dim);
  a.kv_bits = static_cast<uint32_t>(opt.kv_bits);
  return a;
}

vk::Buffer upload_vector(vk::Context& ctx, const model::PqmFile& f, const std::string& name) {
  return ctx.upload_new(f.read_floats(f.tensor(name)), name);
}

Linear load_linear(vk::Context& ctx, const model::PqmFile& f, const std::string& name) {
  const model::TensorInfo& t = f.tensor(name);
  Linear l;
  l.rows = t.rows();
  l.cols = t.cols();
  if (t.kind == model::TensorKind::pq) {
    l.q = upload_quant(ctx, f.read_quant(t), name);
  } else {
    std::vector<float> w = f.read_floats(t);
    l.f = upload_f16(ctx, w.data(), l.rows, l.cols, name);
  }
  return l;
}

// The kind of a matrix for the profile: "attn.q", "mlp.down", "lm_head" (the tied embedding too).
std::string matrix_kind(const Linear& l) {
  std::string n = l.q ? l.q->name : l.f ? l.f->name : "";
  if (n.rfind("layers.", 0) == 0) {
    const size_t dot = n.find('.', 7);
    if (dot != std::string::npos) n = n.substr(dot + 1);
  }
  return n == "embed" ? "lm_head" : n;
}

std::string prologue_name(const Prologue& p, bool rotated) {
  std::string s = p.kind == Prologue::rmsnorm ? "rmsnorm"
                  : p.kind == Prologue::none  ? ""
                  : p.kind == Prologue::merge ? "attention merge"
                                              : "swiglu";
  if (rotated) s += s.empty() ? "fwht" : "+fwht";
  return s.empty() ? "layout" : s;
}

// Output rows of the matrices that are joined (q, k, v, gate, up).
size_t role_rows(const model::ModelConfig& c, model::Role r) {
  switch (r) {
    case model::Role::attn_q: return size_t(c.n_heads * c.head_dim);
    case model::Role::attn_k:
    case model::Role::attn_v: return size_t(c.n_kv_heads * c.head_dim);
    default: return size_t(c.hidden_dim);  // gate, up
  }
}

// Matrices that read one input must agree on how it is prepared.
void check_group(const std::string& what, std::initializer_list<const Linear*> ws) {
  const Linear* a = *ws.begin();
  for (const Linear* b : ws)
    if (b->fp16() != a->fp16() || b->rotated() != a->rotated() || b->block() != a->block())
      throw ModelError(what + ": matrices reading the same input mix formats (fp16 / rotated / block size); "
                       "quantize them alike");
}

}  // namespace

// A layer's matrices: q/k/v as one matrix (rows stacked) and gate/up as one (rows
// interleaved) where their formats allow (pq::join_rows), else one by one.
struct GpuModel::Layer {
  vk::Buffer attn_norm, mlp_norm, qkv_bias, qk_norm;
  std::optional<Linear> qkv, gate_up;
  Linear wq, wk, wv, wo, gate, up, down;  // wq, wk, wv / gate, up: when not joined
  vk::Buffer kcache, vcache;
  std::vector<const Linear*> matrices() const {
    std::vector<const Linear*> v;
    for (const Linear* w : {qkv ? &*qkv : &wq, qkv ? nullptr : &wk, qkv ? nullptr : &wv, &wo,
                            gate_up ? &*gate_up : &gate, gate_up ? nullptr : &up, &down})
      if (w) v.push_back(w);
    return v;
  }
};

// ---- loading ---------------------------------------------------------------------------------

GpuModel::GpuModel(vk::Context& ctx, const model::PqmFile& f, GpuOptions opt)
    : ctx_(ctx), kernels_(ctx, opt.kernels), config_(f.config()) {
  WeightSource src;
  src.matrix = [&](const std::string& name, model::Role, size_t, size_t) { return load_linear(ctx, f, name); };
  src.vector = [&](const std::string& name, size_t) { return upload_vector(ctx, f, name); };
  src.joined = [&](const std::string& name, const std::vector<std::string>& parts, const std::vector<model::Role>&,
                   bool interleave) -> std::optional<Linear> {
    std::vector<pq::QuantMatrix> qs;
    for (const std::string& n : parts) {
      const model::TensorInfo& t = f.tensor(n);
      if (t.kind != model::TensorKind::pq) return std::nullopt;
      qs.push_back(f.read_quant(t));
    }
    std::vector<const pq::QuantMatrix*> ptrs;
    for (const auto& q : qs) ptrs.push_back(&q);
    pq::QuantMatrix joined;
    try {
      joined = pq::join_rows(ptrs, interleave);
    } catch (const std::invalid_argument&) {
      return std::nullopt;  // formats differ: the matrices stay apart
    }
    Linear l;
    l.rows = joined.rows;
    l.cols = joined.cols;
    l.q = upload_quant(ctx, joined, name, 0, interleave ? 2 : 1);
    return l;
  };
  src.bytes = planned_weight_bytes(f);
  build(src, opt, f.path());
}

GpuModel::GpuModel(vk::Context& ctx, const model::ModelConfig& c, const SyntheticWeights& sw, GpuOptions opt)
    : ctx_(ctx), kernels_(ctx, opt.kernels), config_(c) {
  config_.validate("synthetic model");
  uint32_t seed = sw.seed;
  WeightSource src;
  src.matrix = [&](const std::string& name, model::Role role, size_t rows, size_t cols) {
    Linear l;
    l.rows = rows;
    l.cols = cols;
    auto cmd = ctx.commands();
    if (sw.fp16) {
      DeviceF16Matrix d;
      d.name = name;
      d.rows = rows;
      d.cols = cols;
      d.cols_padded = round_up(cols, 8);
      DeviceF16Matrix::Slice s;  // one slice: synthetic models are for devices with large bindings
      s.rows = rows;
      s.data = ctx.buffer(rows * d.cols_padded * 2, vk::MemoryKind::device, name);
      kernels_.random_fill(cmd, s.data, s.data.size() / 4, ++seed, true, -0.05f, 0.05f);
      d.slices.push_back(std::move(s));
      l.f = std::move(d);
    } else {
      const int bits = model::recipe_bits(sw.recipe, role);
      pq::QuantMatrix shape;  // only the metadata and the codebook; codes and scales are random
      shape.method = pq::Method::pq;
      shape.bits = bits;
      shape.block = sw.block;
      shape.rotated = true;
      shape.rows = rows;
      shape.cols = cols;
      shape.cols_padded = round_up(cols, static_cast<size_t>(sw.block));
      for (double v : pq::lloyd_max_centroids(bits)) shape.codebook.push_back(static_cast<float>(v / std::sqrt(double(sw.block))));
      DeviceQuantMatrix d;
      d.name = name;
      d.method = shape.method;
      d.bits = bits;
      d.block = sw.block;
      d.rotated = true;
      d.rows = rows;
      d.cols = cols;
      d.cols_padded = shape.cols_padded;
      d.codebook = ctx.upload_new(shape.codebook, name + " codebook");
      DeviceQuantMatrix::Slice s;
      s.rows = rows;
      const size_t words = pq::packed_words(rows, shape.cols_padded, bits);
      const size_t scale_words = (rows * shape.blocks_per_row() + 1) / 2;
      s.codes = ctx.buffer(words * 4, vk::MemoryKind::device, name + " codes");
      s.scales = ctx.buffer(scale_words * 4, vk::MemoryKind::device, name + " scales");
      kernels_.random_fill(cmd, s.codes, words, ++seed);
      kernels_.random_fill(cmd, s.scales, scale_words, ++seed, true, 0.5f, 1.5f);
      d.slices.push_back(std::move(s));
      l.q = std::move(d);
    }
    cmd.run();
    return l;
  };
  src.vector = [&](const std::string& name, size_t n) {
    return ctx.upload_new(std::vector<float>(n, 1.0f), name);  // norm weights of 1, biases of 1
  };
  src.joined = [&](const std::string& name, const std::vector<std::string>&, const std::vector<model::Role>& roles,
                   bool) -> std::optional<Linear> {
    if (sw.fp16) return std::nullopt;
    const int bits = model::recipe_bits(sw.recipe, roles[0]);
    for (model::Role r : roles)
      if (model::recipe_bits(sw.recipe, r) != bits) return std::nullopt;
    // Random codes: stacking or interleaving random rows is another random matrix.
    size_t rows = 0;
    for (model::Role r : roles) rows += role_rows(c, r);
    return src.matrix(name, roles[0], rows, static_cast<size_t>(c.dim));
  };
  src.bytes = planned_weight_bytes(c, sw);
  build(src, opt, "synthetic model");
}

void GpuModel::build(const WeightSource& src, const GpuOptions& opt, const std::string& where) {
  vk::Context& ctx = ctx_;
  const model::ModelConfig& c = config_;
  if (c.o_bias) throw ModelError(where + ": an attention output bias is not supported by the GPU decoder yet");
  if (c.head_dim % 2 || c.head_dim > 256)
    throw ModelError(where + ": head size " + std::to_string(c.head_dim) + " is not supported (even, at most 256)");
  context_ = static_cast<int32_t>(opt.context > 0 ? std::min<int64_t>(opt.context, c.max_seq_len)
                                                  : std::min<int64_t>(c.max_seq_len, 8192));
  shape_.kv_bits = static_cast<uint32_t>(opt.kv_bits);
  if (const std::string why = Kernels::kv_cache_unsupported(kv_shape(c, opt)); !why.empty()) throw ModelError(where + ": " + why);
  // Refuse a context that cannot fit before allocating anything.
  const uint64_t available = device_memory_available(ctx.info());
  const MemoryPlan plan = memory_plan(c, src.bytes, opt, context_);
  if (plan.total() > available) {
    auto gib = [](uint64_t b) { return std::to_string(b / double(1ull << 30)).substr(0, 5) + " GiB"; };
    const int64_t fits = max_context(c, src.bytes, opt, available);
    throw ModelError(where + ": a context of " + std::to_string(context_) + " tokens" +
                     (opt.slots > 1 ? " for each of " + std::to_string(opt.slots) + " sequences" : "") + " needs " +
                     gib(plan.total()) + " of device memory (weights " + gib(plan.weights) + ", KV cache " + gib(plan.kv_cache) +
                     ", activations " + gib(plan.activations) + "), more than the " + gib(available) + " available on '" +
                     ctx.info().name + "'" +
                     (fits > 0 ? ": at most " + std::to_string(fits) + " tokens fit (--ctx)" : ": not even the weights fit"));
  }
  slots_ = opt.slots;
  if (opt.batch_gemm_from < -1) throw ModelError("batch_gemm_from: " + std::to_string(opt.batch_gemm_from) + " (-1, 0 or a token count)");
  batch_gemm_from_ = opt.batch_gemm_from >= 0 ? static_cast<uint32_t>(opt.batch_gemm_from)
                     : kernels_.gemm_path(1, true) == Kernels::GemmPath::coopmat ? 1u : 0u;
  max_batch_ = std::max<uint32_t>({1, std::min<uint32_t>(opt.max_batch, static_cast<uint32_t>(context_)), slots_});
  fused_gemv_ = opt.fused_gemv > 0;
  shape_.n_heads = static_cast<uint32_t>(c.n_heads);
  shape_.n_kv = static_cast<uint32_t>(c.n_kv_heads);
  shape_.head_dim = static_cast<uint32_t>(c.head_dim);
  shape_.max_ctx = static_cast<uint32_t>(context_);
  shape_.window = static_cast<uint32_t>(c.sliding_window);
  shape_.eps = static_cast<float>(c.rms_norm_eps);

  // Weights, in the order of model::model_tensors().
  std::map<std::string, Linear> mats;
  std::map<std::string, vk::Buffer> vecs;
  std::map<std::string, model::TensorSpec> specs;
  auto joinable = [](model::Role r) {
    return r == model::Role::attn_q || r == model::Role::attn_k || r == model::Role::attn_v ||
           r == model::Role::mlp_gate || r == model::Role::mlp_up;
  };
  for (const model::TensorSpec& t : model::model_tensors(c)) {
    specs[t.name] = t;
    if (!model::is_matrix(t.role)) vecs[t.name] = src.vector(t.name, t.shape[0]);
    else if (!joinable(t.role)) mats[t.name] = src.matrix(t.name, t.role, t.shape[0], t.shape[1]);
  }
  auto take_mat = [&](const std::string& n) {
    if (!mats.count(n)) {
      const model::TensorSpec& t = specs.at(n);
      return src.matrix(t.name, t.role, t.shape[0], t.shape[1]);
    }
    return std::move(mats.at(n));
  };
  auto take_vec = [&](const std::string& n) { return std::move(vecs.at(n)); };
  embed_ = take_mat("embed");
  // One region of context_ positions per sequence (continuous batching), region 0 for the
  // single-sequence entry points.
  const size_t kv_bytes = size_t(std::max<uint32_t>(1, slots_)) * size_t(context_) * size_t(c.n_kv_heads) * Kernels::kv_words(shape_) * 4;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    auto L = std::make_unique<Layer>();
    L->attn_norm = take_vec(p + "attn_norm");
    L->mlp_norm = take_vec(p + "mlp_norm");
    using R = model::Role;
    L->qkv = src.joined(p + "attn.qkv", {p + "attn.q", p + "attn.k", p + "attn.v"}, {R::attn_q, R::attn_k, R::attn_v}, false);
    if (!L->qkv) {
      L->wq = take_mat(p + "attn.q");
      L->wk = take_mat(p + "attn.k");
      L->wv = take_mat(p + "attn.v");
      check_group(where + ": " + p + "attn.q/k/v", {&L->wq, &L->wk, &L->wv});
    }
    L->wo = take_mat(p + "attn.o");
    L->gate_up = src.joined(p + "mlp.gate_up", {p + "mlp.gate", p + "mlp.up"}, {R::mlp_gate, R::mlp_up}, true);
    if (!L->gate_up) {
      L->gate = take_mat(p + "mlp.gate");
      L->up = take_mat(p + "mlp.up");
      check_group(where + ": " + p + "mlp.gate/up", {&L->gate, &L->up});
    }
    L->down = take_mat(p + "mlp.down");
    if (c.qkv_bias) {  // one buffer: q | k | v
      vk::Buffer parts[3] = {take_vec(p + "attn.q_bias"), take_vec(p + "attn.k_bias"), take_vec(p + "attn.v_bias")};
      L->qkv_bias = ctx.buffer(parts[0].size() + parts[1].size() + parts[2].size(), vk::MemoryKind::device, p + "q/k/v biases");
      auto cmd = ctx.commands();
      size_t off = 0;
      for (const vk::Buffer& b : parts) {
        cmd.copy(b, L->qkv_bias, b.size(), 0, off);
        off += b.size();
      }
      cmd.run();
    }
    if (c.qk_norm) {  // one buffer: q_norm | k_norm
      vk::Buffer qn = take_vec(p + "attn.q_norm"), kn = take_vec(p + "attn.k_norm");
      L->qk_norm = ctx.buffer(qn.size() + kn.size(), vk::MemoryKind::device, p + "q/k norms");
      auto cmd = ctx.commands();
      cmd.copy(qn, L->qk_norm, qn.size(), 0, 0);
      cmd.copy(kn, L->qk_norm, kn.size(), 0, qn.size());
      cmd.run();
    }
    L->kcache = ctx.buffer(kv_bytes, vk::MemoryKind::device, p + "k cache");
    L->vcache = ctx.buffer(kv_bytes, vk::MemoryKind::device, p + "v cache");
    layers_.push_back(std::move(L));
  }
  final_norm_ = take_vec("final_norm");
  if (!c.tie_word_embeddings) lm_head_ = take_mat("lm_head");
  // The CPU reference's frequencies, so both sides rotate by the same angles.
  const std::vector<double> freq = rope_inverse_frequencies(c);
  inv_freq_ = ctx.upload_new(std::vector<float>(freq.begin(), freq.end()), "rope frequencies");

  // Activations.
  const size_t M = max_batch_;
  const size_t q_dim = size_t(c.n_heads * c.head_dim), kv_dim = size_t(c.n_kv_heads * c.head_dim);
  const size_t widest = round_up(std::max({size_t(c.dim), size_t(c.hidden_dim), q_dim}), 1024);
  x_ = ctx.buffer(M * c.dim * 4, vk::MemoryKind::device, "residual stream");
  qkv_ = ctx.buffer(M * (q_dim + 2 * kv_dim) * 4, vk::MemoryKind::device, "q|k|v");
  q_ = ctx.buffer(M * q_dim * 4, vk::MemoryKind::device, "q after RoPE");
  att_ = ctx.buffer(M * q_dim * 4, vk::MemoryKind::device, "attention output");
  gate_ = ctx.buffer(M * c.hidden_dim * 4 * 2, vk::MemoryKind::device, "mlp gate (or gate|up pairs)");
  up_ = ctx.buffer(M * c.hidden_dim * 4, vk::MemoryKind::device, "mlp up");
  hidden_ = ctx.buffer(size_t(c.hidden_dim) * 4, vk::MemoryKind::device, "mlp hidden (decode)");
  prep_rot_ = ctx.buffer(M * widest * 4, vk::MemoryKind::device, "rotated input");
  prep_plain_ = ctx.buffer(M * widest * 4, vk::MemoryKind::device, "prepared input");
  for (auto& b : fold_in_) b = ctx.buffer(widest * 4, vk::MemoryKind::device, "folded input");
  fold_sums_ = ctx.buffer(widest / 64 * 4, vk::MemoryKind::device, "folded input's sums of squares");
  fold_counters_ = ctx.upload_new(std::vector<uint32_t>(widest / 64, 0u), "fold counters");
  // Decode attention: the context in splits (decode_splits).
  if (kernels_.decode_attention_supported(shape_)) {
    splits_ = decode_splits(context_);
    att_parts_ = ctx.buffer(size_t(splits_) * q_dim * 4, vk::MemoryKind::device, "attention partial outputs");
    att_ml_ = ctx.buffer(size_t(splits_) * c.n_heads * 2 * 4, vk::MemoryKind::device, "attention (max, sum) pairs");
    // Short contexts: one split, written straight into the output projection's input.
    int32_t direct_max = opt.decode_direct_max;
    if (const char* e = std::getenv("PQVK_DECODE_DIRECT_MAX"); e && *e) {  // benchmarks
      char* end = nullptr;
      const long v = std::strtol(e, &end, 10);
      if (*end || v < 0 || v > INT32_MAX) throw ModelError(std::string("PQVK_DECODE_DIRECT_MAX='") + e + "' is not a position count (0: off)");
      direct_max = static_cast<int32_t>(v);
    }
    bool any = false;
    for (const auto& L : layers_) any = any || direct_supported(*L);
    direct_max_ = any ? std::max(0, direct_max) : 0;
  }
  logits_ = ctx.buffer(size_t(c.vocab_size) * 4, vk::MemoryKind::download, "logits");
  tokens_ = ctx.buffer(M * 4, vk::MemoryKind::upload, "token ids");
  step_ = ctx.buffer(16, vk::MemoryKind::upload, "step");
  next_ = ctx.buffer(16, vk::MemoryKind::download, "argmax");
  if (slots_ > 0) {
    if (slots_ > Kernels::kArgmaxRows) throw ModelError(where + ": at most " + std::to_string(Kernels::kArgmaxRows) + " sequences");
    const size_t vocab = static_cast<size_t>(c.vocab_size);
    rows_ = ctx.buffer(M * 8, vk::MemoryKind::upload, "batch positions and slots");
    batch_logits_ = ctx.buffer(size_t(slots_) * vocab * 4, vk::MemoryKind::device, "batch logits");
    batch_logits_host_ = ctx.buffer(size_t(slots_) * vocab * 4, vk::MemoryKind::download, "batch logits (host)");
    batch_ids_ = ctx.buffer(size_t(slots_) * 4, vk::MemoryKind::download, "batch argmax");
    batch_next_ = ctx.buffer(size_t(slots_) * 4, vk::MemoryKind::device, "batch argmax tokens");
  }
}

GpuModel::~GpuModel() = default;

uint64_t GpuModel::weight_bytes() const {
  uint64_t n = embed_.bytes();
  for (const auto& L : layers_)
    for (const Linear* w : L->matrices()) n += w->bytes();
  if (lm_head_.q || lm_head_.f) n += lm_head_.bytes();
  return n;
}

uint64_t GpuModel::device_bytes() const { return ctx_.allocated_bytes(); }

uint64_t device_memory_available(const vk::DeviceInfo& info) {
  uint64_t best = 0;
  for (const auto& h : info.heaps) {
    if (!h.device_local) continue;
    const uint64_t free = info.memory_budget && h.budget > 0 ? (h.budget > h.usage ? h.budget - h.usage : 0) : h.size;
    best = std::max(best, free);
  }
  return best;
}

MemoryPlan GpuModel::memory_plan(const model::ModelConfig& c, uint64_t weight_bytes, const GpuOptions& opt, int64_t context) {
  MemoryPlan p;
  p.weights = weight_bytes;
  const uint64_t slots = std::max<uint32_t>(1, opt.slots);
  const uint64_t kv_dim = uint64_t(c.n_kv_heads) * c.head_dim, q_dim = uint64_t(c.n_heads) * c.head_dim;
  p.kv_cache = 2 * uint64_t(c.n_layers) * slots * uint64_t(context) * uint64_t(c.n_kv_heads) * Kernels::kv_words(kv_shape(c, opt)) * 4;
  // The activation buffers of build(), for max_batch tokens per pass.
  const uint64_t M = std::max<uint64_t>({1, std::min<uint64_t>(opt.max_batch, uint64_t(context)), opt.slots});
  const uint64_t widest = round_up(std::max<uint64_t>({uint64_t(c.dim), uint64_t(c.hidden_dim), q_dim}), 1024);
  const uint64_t splits = decode_splits(context), vocab = uint64_t(c.vocab_size);
  p.activations = 4 * (M * c.dim + M * (q_dim + 2 * kv_dim) + 2 * M * q_dim + 3 * M * c.hidden_dim + c.hidden_dim +
                       2 * M * widest + splits * (q_dim + 2 * c.n_heads) + vocab + 2 * widest + 2 * (widest / 64));
  // Continuous batching: its logits and ids, and the split-K GEMM's scratch (decode steps).
  if (opt.slots > 0) p.activations += 4 * (2 * slots * vocab + 2 * slots) + 8 * M + Kernels::kSplitScratchBytes;
  return p;
}

int64_t GpuModel::max_context(const model::ModelConfig& c, uint64_t weight_bytes, const GpuOptions& opt, uint64_t available) {
  // The plan grows with the context: the largest that fits, by bisection.
  int64_t lo = 0, hi = c.max_seq_len;
  if (memory_plan(c, weight_bytes, opt, hi).total() <= available) return hi;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (memory_plan(c, weight_bytes, opt, mid).total() <= available ? lo : hi) = mid;
  }
  return lo > 0 && memory_plan(c, weight_bytes, opt, lo).total() <= available ? lo : 0;
}

uint64_t GpuModel::planned_weight_bytes(const model::PqmFile& f) {
  uint64_t b = 0;
  for (const model::TensorInfo& t : f.tensors())
    if (t.name.rfind("tokenizer.", 0) != 0) b += t.size;
  return b;
}

uint64_t GpuModel::planned_weight_bytes(const model::ModelConfig& c, const SyntheticWeights& sw) {
  uint64_t b = 0;
  for (const model::TensorSpec& t : model::model_tensors(c)) {
    if (!model::is_matrix(t.role)) {
      b += t.shape[0] * 4;
      continue;
    }
    const uint64_t rows = t.shape[0], cols = t.shape[1];
    if (sw.fp16) {
      b += rows * round_up(cols, 8) * 2;
    } else {
      const uint64_t padded = round_up(cols, uint64_t(sw.block));
      b += rows * padded * model::recipe_bits(sw.recipe, t.role) / 8 + rows * (padded / sw.block) * 2 + 4 * 256;
    }
  }
  return b;
}

StepBytes GpuModel::decode_bytes(double positions) const {
  StepBytes b;
  const model::ModelConfig& c = config_;
  auto act = [](const Linear& w) { return uint64_t(w.cols + w.rows) * 4; };  // input read, output written
  for (const auto& L : layers_)
    for (const Linear* w : L->matrices()) {
      b.weights += w->bytes();
      b.activations += act(*w);
    }
  b.weights += head().bytes();  // the LM head (the whole embedding table when tied)
  b.activations += act(head());
  if (!config_.tie_word_embeddings) b.weights += embed_.bytes() / std::max<size_t>(1, embed_.rows);  // one row
  b.activations += uint64_t(c.dim) * 4 * uint64_t(c.n_layers) * 4;  // norms' and residual reads/writes
  const double kv_row = double(c.n_kv_heads) * double(Kernels::kv_words(shape_)) * 4.0 * 2.0;  // k and v
  b.kv = static_cast<uint64_t>(double(c.n_layers) * kv_row * std::max(0.0, positions));
  return b;
}

// ---- the forward pass, one function per step ---------------------------------------------------

// x[i] = embedding row of tokens[i].
void GpuModel::embed(vk::Commands& cmd, uint32_t m) {
  if (embed_.q) kernels_.embed(cmd, *embed_.q, tokens_, x_, m);
  else kernels_.embed_f16(cmd, *embed_.f, tokens_, x_, m);
  cmd.barrier();
  mark(cmd, "embed");
}

bool GpuModel::fused_gemv(const Linear& w, uint32_t m, const Prologue& pro) const {
  // One token, a PolarQuant matrix, a prologue the GEMV has (rotation, RMSNorm) and rotation
  // blocks a subgroup holds (Kernels::gemv).
  const uint32_t sg = ctx_.info().subgroup_size;
  return fused_gemv_ && mat_mode_ == MatMode::automatic && m == 1 && w.q && (pro.kind == Prologue::none || pro.kind == Prologue::rmsnorm) &&
         (!w.q->rotated || static_cast<uint32_t>(w.q->block) / 32 <= sg);
}

const vk::Buffer& GpuModel::prepare_input(vk::Commands& cmd, vk::BufferView x, uint32_t m, uint32_t cols,
                                          const Linear& first, Layout layout, const Prologue& pro, uint32_t in_row0) {
  const vk::Buffer& in = first.rotated() ? prep_rot_ : prep_plain_;
  kernels_.prepare(cmd, x, in, m, cols, static_cast<uint32_t>(first.block()), layout, first.rotated(), pro, in_row0);
  cmd.barrier();
  mark(cmd, prologue_name(pro, first.rotated()));
  return in;
}

bool GpuModel::can_fold(const Linear& w, uint32_t m, bool swiglu, const Linear* next) const {
  // One token's GEMV of a PolarQuant matrix into a PolarQuant matrix that a block of the
  // GEMV's outputs can be prepared for (Kernels::fold_supported); not with fused_gemv, whose
  // GEMVs prepare their own input.
  return !fused_gemv_ && mat_mode_ == MatMode::automatic && m == 1 && w.q && next && next->q &&
         kernels_.fold_supported(*w.q, swiglu ? Kernels::GemvOp::swiglu : Kernels::GemvOp::accumulate,
                                 static_cast<uint32_t>(next->q->block));
}

void GpuModel::linear(vk::Commands& cmd, std::initializer_list<Out> outs, vk::BufferView x, uint32_t cols, uint32_t m,
                      const Prologue& pro, bool accumulate, uint32_t in_row0, const Next& next) {
  const Out& o0 = *outs.begin();
  const std::optional<Folded> folded = std::exchange(folded_, std::nullopt);  // prepared by the previous GEMV
  const bool fold = outs.size() == 1 && can_fold(*o0.w, m, o0.swiglu, next.w);
  if (folded || fold || o0.swiglu) {
    // One token's GEMV reading an input a fold prepared, or prepared here, and preparing the
    // next matrix's input when it can.
    if (outs.size() != 1 || !o0.w->q || m != 1 || o0.col != 0 || in_row0 != 0 || (folded && folded->rms != (pro.kind == Prologue::rmsnorm)))
      throw std::logic_error("GpuModel::linear: a folded input or SwiGLU epilogue outside one token's GEMV");
    const Linear& w = *o0.w;
    Kernels::GemvOp op;
    op.epilogue = o0.swiglu ? Kernels::GemvOp::swiglu : accumulate ? Kernels::GemvOp::accumulate : Kernels::GemvOp::store;
    vk::BufferView xin;
    if (folded) {
      xin = fold_in_[folded->pair];
      op.prologue = folded->rms ? Kernels::GemvOp::prepared_rms : Kernels::GemvOp::prepared;
      op.partials = fold_sums_;
      op.eps = pro.eps;
    } else {
      xin = prepare_input(cmd, x, 1, cols, w, Layout::gemv_interleaved, pro, 0);
    }
    if (fold) {
      const int pair = folded ? 1 - folded->pair : 0;  // never the buffer this GEMV reads
      op.fold.kind = next.norm.buffer ? Kernels::GemvOp::Fold::rms_norm : Kernels::GemvOp::Fold::plain;
      op.fold.next = fold_in_[pair];
      op.fold.counters = fold_counters_;
      op.fold.partials = fold_sums_;
      op.fold.norm = next.norm;
      op.fold.block = static_cast<uint32_t>(next.w->q->block);
      op.fold.rotate = next.w->rotated();
      folded_ = Folded{pair, op.fold.kind == Kernels::GemvOp::Fold::rms_norm};
    }
    kernels_.gemv(cmd, *w.q, xin, o0.y, op);
    cmd.barrier();
    if (marks_) mark(cmd, std::string("gemv ") + matrix_kind(w) + (o0.swiglu ? " (swiglu)" : "") + (fold ? " (+next input)" : ""));
    return;
  }
  bool all_fused = (size_t(in_row0) * cols) % 4 == 0;  // the GEMV reads rows from 16-byte boundaries
  for (const Out& o : outs) all_fused = all_fused && fused_gemv(*o.w, m, pro);
  if (all_fused) {  // each GEMV prepares its input itself: no kernel in between
    for (const Out& o : outs) {
      Kernels::GemvOp op;
      op.prologue = pro.kind == Prologue::rmsnorm ? Kernels::GemvOp::rmsnorm : Kernels::GemvOp::raw;
      op.norm = pro.aux;
      op.eps = pro.eps;
      op.epilogue = accumulate ? Kernels::GemvOp::accumulate : Kernels::GemvOp::store;
      op.y_offset = o.col;
      op.x_offset = in_row0 * cols;
      kernels_.gemv(cmd, *o.w->q, x, o.y, op);
      if (marks_) mark(cmd, std::string("gemv ") + matrix_kind(*o.w) + (pro.kind == Prologue::rmsnorm ? " (+rmsnorm+fwht)" : " (+fwht)"));
    }
    cmd.barrier();
    return;
  }
  const Linear& first = *outs.begin()->w;
  const bool gemv = mat_mode_ == MatMode::automatic && m == 1, batch = mat_mode_ == MatMode::batch_gemv;
  // Continuous batching's prefill steps: one GEMM shader whatever the step's size (GemmOut::any_m).
  const bool any_m = mat_mode_ == MatMode::gemm;
  // The tensor-core GEMM reads fp16 activations: half the bytes, no conversion in each tile.
  bool f16_in = !gemv && !batch && kernels_.gemm_takes_f16(m, any_m);
  for (const Out& o : outs) f16_in = f16_in && o.w->q;
  const Layout layout = gemv && !first.fp16() ? Layout::gemv_interleaved : f16_in ? Layout::row_major_f16 : Layout::row_major;
  const vk::Buffer& in = prepare_input(cmd, x, m, cols, first, layout, pro, in_row0);
  for (const Out& o : outs) {
    const Linear& w = *o.w;
    if (w.q) {
      if (gemv) kernels_.gemv(cmd, *w.q, in, o.y, Kernels::GemvOp{Kernels::GemvOp::prepared, {}, 0.0f,
                                                                   accumulate ? Kernels::GemvOp::accumulate : Kernels::GemvOp::store, o.col});
      else if (batch) kernels_.gemv_batch(cmd, *w.q, in, o.y, m, accumulate, Kernels::GemmOut{o.ld, o.col});
      else kernels_.gemm(cmd, *w.q, in, o.y, m, accumulate, Kernels::GemmOut{o.ld, o.col, f16_in, any_m, split_k_, split_k_ ? slots_ : 0u});
    } else {
      if (gemv) kernels_.gemv_f16(cmd, *w.f, in, o.y, accumulate, o.col);
      else kernels_.gemm_f16(cmd, *w.f, in, o.y, m, accumulate, static_cast<uint32_t>(round_up(cols, 64)), Kernels::GemmOut{o.ld, o.col});
    }
    if (marks_) mark(cmd, std::string(gemv ? "gemv " : batch && w.q ? "batched gemv " : "gemm ") + matrix_kind(w));
  }
  cmd.barrier();
}

bool GpuModel::direct_supported(const Layer& L) const {
  // The output projection's GEMV reads the prepared input (GpuModel::linear's folded path).
  return splits_ > 0 && L.wo.q && kernels_.decode_direct_supported(shape_, static_cast<uint32_t>(L.wo.q->block));
}

// x += Wo attention(rope(Wq h), rope(Wk h), Wv h),  h = rmsnorm(x)
// q, k and v land in one buffer, [m][q | k | v]. Decode (m = 1) fuses the RoPE and cache store
// into attention split over the context, the splits merged in the output projection's
// preparation (direct: one split, written prepared for the output projection, no merge);
// prefill runs them one after another.
void GpuModel::attention_block(vk::Commands& cmd, const Layer& L, uint32_t m, bool direct) {
  const auto dim = static_cast<uint32_t>(config_.dim);
  const uint32_t q_dim = shape_.n_heads * shape_.head_dim, kv_dim = shape_.n_kv * shape_.head_dim;
  const uint32_t ld = q_dim + 2 * kv_dim;
  const Prologue norm{Prologue::rmsnorm, L.attn_norm, shape_.eps};
  if (L.qkv) linear(cmd, {{&*L.qkv, qkv_, 0, ld}}, x_, dim, m, norm, false);
  else linear(cmd, {{&L.wq, qkv_, 0, ld}, {&L.wk, qkv_, q_dim, ld}, {&L.wv, qkv_, q_dim + kv_dim, ld}}, x_, dim, m, norm, false);
  const vk::BufferView bias = config_.qkv_bias ? vk::BufferView(L.qkv_bias) : vk::BufferView();
  const vk::BufferView qk_norm = config_.qk_norm ? vk::BufferView(L.qk_norm) : vk::BufferView();
  // Continuous-batching steps (mat_mode_ set by record_batch): each token at its own (slot,
  // position), through the prefill kernels with per-row positions.
  const bool batched = mat_mode_ != MatMode::automatic;
  if (!batched && m == 1 && splits_ > 0) {
    // The output projection prepares the MLP's input (RMSNorm, rotation) where it can.
    const Next mlp = L.gate_up ? Next{&*L.gate_up, L.mlp_norm} : Next{};
    if (direct && direct_supported(L)) {
      // Short contexts: one split, its output written rotated and gemv-interleaved into
      // fold_in_[0] (free: the q|k|v GEMV has read its input, and folds nothing), which the
      // output projection reads as a prepared input.
      const DecodeDirect out{fold_in_[0], static_cast<uint32_t>(L.wo.q->block), L.wo.rotated()};
      kernels_.attention_decode(cmd, shape_, qkv_, L.kcache, L.vcache, inv_freq_, bias, qk_norm, step_, {}, {}, 1, out);
      cmd.barrier();
      mark(cmd, std::string("attention (rope, kv store, one split") + (out.rotate ? ", +fwht)" : ")"));
      folded_ = Folded{0, false};
      linear(cmd, {{&L.wo, x_}}, fold_in_[0], q_dim, m, Prologue{}, true, 0, mlp);
      return;
    }
    kernels_.attention_decode(cmd, shape_, qkv_, L.kcache, L.vcache, inv_freq_, bias, qk_norm, step_, att_parts_,
                              att_ml_, splits_);
    cmd.barrier();
    mark(cmd, "attention (rope, kv store, split context)");
    linear(cmd, {{&L.wo, x_}}, att_parts_, q_dim, m, Prologue{Prologue::merge, att_ml_, 0.0f, splits_, shape_.head_dim},
           true, 0, mlp);
    return;
  }
  const vk::Buffer& where = batched ? rows_ : step_;
  const auto positions = batched ? Kernels::Positions::per_row : Kernels::Positions::consecutive;
  kernels_.qkv_rope(cmd, shape_, qkv_, q_, L.kcache, L.vcache, inv_freq_, bias, qk_norm, where, m, positions);
  cmd.barrier();
  mark(cmd, "qkv bias/norm+rope+kv store");
  kernels_.attention(cmd, shape_, q_, L.kcache, L.vcache, att_, where, m, positions);
  cmd.barrier();
  mark(cmd, "attention");
  linear(cmd, {{&L.wo, x_}}, att_, q_dim, m, Prologue{}, true);
}

// x += W_down (silu(W_gate h) * W_up h),  h = rmsnorm(x)
// Gate and up joined with rows interleaved: one token's GEMV applies the SwiGLU itself; a GEMM
// writes gate/up pairs that the down projection's preparation combines.
void GpuModel::mlp_block(vk::Commands& cmd, const Layer& L, uint32_t m, const Next& next) {
  const auto dim = static_cast<uint32_t>(config_.dim), hid = static_cast<uint32_t>(config_.hidden_dim);
  const Prologue norm{Prologue::rmsnorm, L.mlp_norm, shape_.eps};
  if (L.gate_up && can_fold(*L.gate_up, m, true, &L.down)) {
    // One token: gate|up applies the SwiGLU and prepares the down projection's input, which
    // prepares the next step's (the next layer's attention, or the logits).
    linear(cmd, {{&*L.gate_up, hidden_, 0, 0, true}}, x_, dim, m, norm, false, 0, Next{&L.down, {}});
    linear(cmd, {{&L.down, x_}}, hidden_, hid, m, Prologue{}, true, 0, next);
    return;
  }
  if (L.gate_up && fused_gemv(*L.gate_up, m, norm) && fused_gemv(L.down, m, Prologue{})) {
    Kernels::GemvOp op;
    op.prologue = Kernels::GemvOp::rmsnorm;
    op.norm = L.mlp_norm;
    op.eps = shape_.eps;
    op.epilogue = Kernels::GemvOp::swiglu;
    kernels_.gemv(cmd, *L.gate_up->q, x_, hidden_, op);
    cmd.barrier();
    mark(cmd, "gemv mlp.gate_up (+rmsnorm+fwht, swiglu)");
    linear(cmd, {{&L.down, x_}}, hidden_, hid, m, Prologue{}, true);
    return;
  }
  if (L.gate_up) {
    linear(cmd, {{&*L.gate_up, gate_}}, x_, dim, m, norm, false);
    linear(cmd, {{&L.down, x_}}, gate_, hid, m, Prologue{Prologue::swiglu_pairs, {}, 0.0f}, true);
    return;
  }
  linear(cmd, {{&L.gate, gate_}, {&L.up, up_}}, x_, dim, m, norm, false);
  linear(cmd, {{&L.down, x_}}, gate_, hid, m, Prologue{Prologue::swiglu, up_, 0.0f}, true);
}

// logits = W_lm rmsnorm(x[m - 1]); optionally the argmax on the GPU.
void GpuModel::logits(vk::Commands& cmd, uint32_t m, bool argmax) {
  linear(cmd, {{&head(), logits_}}, x_, static_cast<uint32_t>(config_.dim), 1,
         Prologue{Prologue::rmsnorm, final_norm_, shape_.eps}, false, m - 1);
  if (argmax) {
    kernels_.argmax(cmd, logits_, static_cast<uint32_t>(config_.vocab_size), next_, tokens_);
    cmd.barrier();
    mark(cmd, "argmax");
  }
}

// logits [i][vocab] = W_lm rmsnorm(x[i]) for every row (perplexity).
void GpuModel::logits_all(vk::Commands& cmd, uint32_t m) {
  linear(cmd, {{&head(), logits_all_}}, x_, static_cast<uint32_t>(config_.dim), m,
         Prologue{Prologue::rmsnorm, final_norm_, shape_.eps}, false);
}

// The whole forward pass of m tokens (ids in tokens_, first position in step_).
void GpuModel::record_step(vk::Commands& cmd, uint32_t m, bool argmax, bool direct) {
  folded_.reset();
  embed(cmd, m);
  for (size_t i = 0; i < layers_.size(); ++i) {
    attention_block(cmd, *layers_[i], m, direct && m == 1);
    mlp_block(cmd, *layers_[i], m, i + 1 < layers_.size() ? next_of(*layers_[i + 1]) : Next{&head(), final_norm_});
  }
  logits(cmd, m, argmax);
}

GpuModel::Next GpuModel::next_of(const Layer& L) const { return L.qkv ? Next{&*L.qkv, L.attn_norm} : Next{}; }

// A continuous-batching step of m tokens (ids in tokens_, (pos, slot) pairs in rows_): the last
// `outs` of them have logits (the batched GEMV's LM head) and an arg max; the last `logits_rows`
// of those are copied to the host.
// Prefill steps multiply through Kernels::gemm with GemmOut::any_m: the tensor-core GEMM (fp16
// operands) wherever the device has it, at every step size, else the portable one; never one or
// the other by the step's token count, which depends on how the scheduler chunked a prompt beside
// others.
void GpuModel::record_batch(vk::Commands& cmd, BatchKind kind, uint32_t m, uint32_t outs, uint32_t logits_rows) {
  struct Restore {
    MatMode& mode;
    bool& split;
    ~Restore() {
      mode = MatMode::automatic;
      split = false;
    }
  } restore{mat_mode_, split_k_};
  embed(cmd, m);
  const bool decode_gemm = kind == BatchKind::decode && batch_gemm_from_ > 0 && m >= batch_gemm_from_;
  mat_mode_ = kind == BatchKind::prefill || decode_gemm ? MatMode::gemm : MatMode::batch_gemv;
  // Decode steps through the GEMM split K where few row tiles would idle the device: at every
  // step size, as long as every step fits one token tile (a token's sums then never depend on M).
  split_k_ = decode_gemm && slots_ <= kernels_.gemm_coopmat_tile(slots_);
  for (const auto& L : layers_) {
    attention_block(cmd, *L, m);
    mlp_block(cmd, *L, m, Next{});
  }
  if (outs == 0) return;
  // The LM head: through the GEMM in decode steps that take it, else the batched GEMV.
  mat_mode_ = decode_gemm ? MatMode::gemm : MatMode::batch_gemv;
  const auto vocab = static_cast<uint32_t>(config_.vocab_size);
  linear(cmd, {{&head(), batch_logits_}}, x_, static_cast<uint32_t>(config_.dim), outs,
         Prologue{Prologue::rmsnorm, final_norm_, shape_.eps}, false, m - outs);
  kernels_.argmax(cmd, batch_logits_, vocab, batch_ids_, batch_next_, outs, vocab);
  mark(cmd, "argmax");
  if (logits_rows > 0)
    cmd.copy(batch_logits_, batch_logits_host_, size_t(logits_rows) * vocab * 4, size_t(outs - logits_rows) * vocab * 4, 0);
}

std::pair<uint32_t, uint32_t> GpuModel::stage_batch(std::span<const BatchToken> tokens) {
  if (slots_ == 0) throw ModelError("step: the model was loaded without sequence slots (GpuOptions::slots)");
  if (tokens.empty() || tokens.size() > max_batch_)
    throw ModelError("step: " + std::to_string(tokens.size()) + " tokens; 1 to " + std::to_string(max_batch_) + " per step");
  std::vector<uint64_t> seen;
  uint32_t outs = 0, logits_rows = 0;
  for (const BatchToken& t : tokens) {
    if (t.token < 0 || t.token >= config_.vocab_size) throw ModelError("token id " + std::to_string(t.token) + " out of range");
    if (t.slot >= slots_) throw ModelError("step: slot " + std::to_string(t.slot) + " of " + std::to_string(slots_));
    if (t.pos < 0 || t.pos >= context_)
      throw ModelError("step: position " + std::to_string(t.pos) + " exceeds the context of " + std::to_string(context_) + " tokens");
    seen.push_back(uint64_t(t.slot) << 32 | uint32_t(t.pos));
    outs += t.out != BatchToken::none;
    logits_rows += t.out == BatchToken::logits;
  }
  std::sort(seen.begin(), seen.end());
  if (std::adjacent_find(seen.begin(), seen.end()) != seen.end()) throw ModelError("step: a (slot, position) appears twice");
  if (outs > slots_) throw ModelError("step: " + std::to_string(outs) + " tokens with outputs; at most " + std::to_string(slots_));
  // Recorded order: tokens without output, then arg max only, then with logits.
  batch_order_.clear();
  for (uint8_t o : {BatchToken::none, BatchToken::argmax, BatchToken::logits})
    for (uint32_t i = 0; i < tokens.size(); ++i)
      if (tokens[i].out == o) batch_order_.push_back(i);
  auto* ids = static_cast<int32_t*>(tokens_.mapped());
  auto* rows = static_cast<uint32_t*>(rows_.mapped());
  for (size_t r = 0; r < batch_order_.size(); ++r) {
    const BatchToken& t = tokens[batch_order_[r]];
    ids[r] = t.token;
    rows[2 * r] = static_cast<uint32_t>(t.pos);
    rows[2 * r + 1] = t.slot;
  }
  return {outs, logits_rows};
}

void GpuModel::step(std::span<const BatchToken> tokens, BatchKind kind, BatchResult& out) {
  const auto [outs, logits_rows] = stage_batch(tokens);
  const auto m = static_cast<uint32_t>(tokens.size());
  const auto key = std::make_tuple(static_cast<int>(kind), m, outs, logits_rows);
  auto it = batch_recordings_.find(key);
  if (it == batch_recordings_.end()) {
    if (batch_recordings_.size() >= 256) batch_recordings_.clear();  // bounded: shapes vary with the load
    auto rec = std::make_unique<vk::Commands>(ctx_.commands());
    record_batch(*rec, kind, m, outs, logits_rows);
    it = batch_recordings_.emplace(key, std::move(rec)).first;
  }
  it->second->run();
  out.ids.assign(tokens.size(), -1);
  out.logits.assign(tokens.size(), {});
  const size_t vocab = static_cast<size_t>(config_.vocab_size);
  const auto* got = static_cast<const int32_t*>(batch_ids_.mapped());
  const auto* lg = static_cast<const float*>(batch_logits_host_.mapped());
  for (uint32_t j = 0; j < outs; ++j) {
    const uint32_t i = batch_order_[m - outs + j];
    out.ids[i] = got[j];
    if (j >= outs - logits_rows) out.logits[i] = {lg + size_t(j - (outs - logits_rows)) * vocab, vocab};
  }
}

// ---- profiling -------------------------------------------------------------------------------

// Slot 0 is written before the pass; every mark writes the next slot.
void GpuModel::mark(vk::Commands& cmd, const std::string& name) {
  if (!marks_) return;
  const uint32_t slot = static_cast<uint32_t>(marks_->names.size()) + 1;
  if (slot >= marks_->slots) throw ModelError("profile: more kernel groups than timestamp slots (" + std::to_string(marks_->slots) + ")");
  cmd.barrier();
  cmd.timestamp(slot);
  marks_->names.push_back(name);
}

// An upper bound on the marks of one pass: embed, per layer 3 preparations + 7 matrices + rope +
// attention, final preparation + head + argmax.
uint32_t GpuModel::mark_slots() const { return static_cast<uint32_t>(8 + 16 * layers_.size()); }

StepProfile GpuModel::profile(std::span<const int32_t> tokens, int32_t pos0, int reps) {
  check_positions(pos0, tokens.size());
  if (tokens.size() > max_batch_)
    throw ModelError("profile: " + std::to_string(tokens.size()) + " tokens exceed the batch of " +
                     std::to_string(max_batch_));
  for (int32_t t : tokens)
    if (t < 0 || t >= config_.vocab_size) throw ModelError("token id " + std::to_string(t) + " out of range");
  const uint32_t m = static_cast<uint32_t>(tokens.size());
  std::memcpy(tokens_.mapped(), tokens.data(), m * 4);
  static_cast<uint32_t*>(step_.mapped())[0] = static_cast<uint32_t>(pos0);
  // What decode (or prefill) records at pos0: one token's step takes the direct attention there or not.
  const bool direct = m == 1 && decode_direct(pos0);
  return profile_recording([&](vk::Commands& cmd) { record_step(cmd, m, m == 1, direct); }, m, pos0, reps);
}

StepProfile GpuModel::profile_step(std::span<const BatchToken> tokens, BatchKind kind, int reps) {
  const std::pair<uint32_t, uint32_t> counts = stage_batch(tokens);  // (outputs, logits rows)
  const auto m = static_cast<uint32_t>(tokens.size());
  return profile_recording([&](vk::Commands& cmd) { record_batch(cmd, kind, m, counts.first, counts.second); }, m,
                           tokens[0].pos, reps);
}

StepProfile GpuModel::profile_recording(const std::function<void(vk::Commands&)>& record, uint32_t m, int32_t pos0,
                                        int reps) {
  if (reps < 1) throw ModelError("profile: reps must be at least 1");
  if (ctx_.info().timestamp_period_ns <= 0) throw ModelError("profile: the device has no timestamps on its compute queue");
  Marks marks;
  marks.slots = mark_slots();
  vk::Commands cmd = ctx_.commands(marks.slots);
  cmd.timestamp(0);
  marks_ = &marks;
  try {
    record(cmd);
  } catch (...) {
    marks_ = nullptr;
    throw;
  }
  marks_ = nullptr;
  for (uint32_t s = static_cast<uint32_t>(marks.names.size()) + 1; s < marks.slots; ++s) cmd.timestamp(s);  // unused slots

  // Per replay: total per kernel name; then the median over replays.
  std::vector<std::string> order;
  std::map<std::string, uint32_t> calls;
  for (const std::string& n : marks.names)
    if (calls[n]++ == 0) order.push_back(n);
  std::map<std::string, std::vector<double>> per_rep;
  std::vector<double> totals;
  for (int r = 0; r < reps; ++r) {
    cmd.run();
    const std::vector<double> ts = cmd.timestamps_ns();
    std::map<std::string, double> sum;
    for (size_t i = 0; i < marks.names.size(); ++i) sum[marks.names[i]] += ts[i + 1] - ts[i];
    for (const auto& [n, v] : sum) per_rep[n].push_back(v);
    totals.push_back(ts[marks.names.size()]);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  StepProfile p;
  p.tokens = m;
  p.pos0 = pos0;
  {  // the same pass as decode, prefill and step() record it (recorded, not run)
    vk::Commands plain = ctx_.commands();
    record(plain);
    p.dispatches = plain.dispatches();
    p.barriers = plain.barriers();
  }
  p.total_us = median(totals) / 1e3;
  for (const std::string& n : order) p.kernels.push_back({n, calls[n], median(per_rep[n]) / 1e3});
  return p;
}

// ---- entry points ------------------------------------------------------------------------------

void GpuModel::check_positions(int32_t pos0, size_t n) const {
  if (pos0 < 0 || n == 0 || size_t(pos0) + n > size_t(context_))
    throw ModelError("positions " + std::to_string(pos0) + ".." + std::to_string(size_t(pos0) + n) +
                     " exceed the context of " + std::to_string(context_) + " tokens");
}

// One decode step through the recording made on first use (with or without the GPU argmax, with
// the direct attention below decode_direct_max or the split context), replayed with the token
// and position written into host-visible buffers.
void GpuModel::run_decode(int32_t token, int32_t pos, bool argmax) {
  check_positions(pos, 1);
  if (token < 0 || token >= config_.vocab_size) throw ModelError("token id " + std::to_string(token) + " out of range");
  const bool direct = decode_direct(pos);
  std::unique_ptr<vk::Commands>& rec = decode_[direct][argmax];
  if (!rec) {
    rec = std::make_unique<vk::Commands>(ctx_.commands());
    record_step(*rec, 1, argmax, direct);
  }
  static_cast<int32_t*>(tokens_.mapped())[0] = token;
  static_cast<uint32_t*>(step_.mapped())[0] = static_cast<uint32_t>(pos);
  rec->run();
}

std::span<const float> GpuModel::forward(int32_t token, int32_t pos) {
  run_decode(token, pos, false);
  return {static_cast<const float*>(logits_.mapped()), static_cast<size_t>(config_.vocab_size)};
}

int32_t GpuModel::forward_argmax(int32_t token, int32_t pos) {
  run_decode(token, pos, true);
  return static_cast<const int32_t*>(next_.mapped())[0];
}

std::span<const float> GpuModel::prefill(std::span<const int32_t> tokens, int32_t pos0) {
  check_positions(pos0, tokens.size());
  for (int32_t t : tokens)
    if (t < 0 || t >= config_.vocab_size) throw ModelError("token id " + std::to_string(t) + " out of range");
  for (size_t done = 0; done < tokens.size();) {
    const uint32_t m = static_cast<uint32_t>(std::min<size_t>(max_batch_, tokens.size() - done));
    std::memcpy(tokens_.mapped(), tokens.data() + done, m * 4);
    static_cast<uint32_t*>(step_.mapped())[0] = static_cast<uint32_t>(pos0 + done);
    if (m == 1) {
      forward(tokens[done], static_cast<int32_t>(pos0 + done));
    } else {
      vk::Commands cmd = ctx_.commands();
      record_step(cmd, m, false);
      cmd.run();
    }
    done += m;
  }
  return {static_cast<const float*>(logits_.mapped()), static_cast<size_t>(config_.vocab_size)};
}

std::vector<float> GpuModel::prefill_all(std::span<const int32_t> tokens, int32_t pos0) {
  check_positions(pos0, tokens.size());
  for (int32_t t : tokens)
    if (t < 0 || t >= config_.vocab_size) throw ModelError("token id " + std::to_string(t) + " out of range");
  const size_t vocab = static_cast<size_t>(config_.vocab_size);
  if (!logits_all_.valid())
    logits_all_ = ctx_.buffer(size_t(max_batch_) * vocab * 4, vk::MemoryKind::device, "logits of every position");
  std::vector<float> out(tokens.size() * vocab);
  for (size_t done = 0; done < tokens.size();) {
    const uint32_t m = static_cast<uint32_t>(std::min<size_t>(max_batch_, tokens.size() - done));
    std::memcpy(tokens_.mapped(), tokens.data() + done, m * 4);
    static_cast<uint32_t*>(step_.mapped())[0] = static_cast<uint32_t>(pos0 + done);
    vk::Commands cmd = ctx_.commands();
    embed(cmd, m);
    for (const auto& L : layers_) {
      attention_block(cmd, *L, m);
      mlp_block(cmd, *L, m, Next{});
    }
    logits_all(cmd, m);
    cmd.run();
    ctx_.download(logits_all_, out.data() + done * vocab, size_t(m) * vocab * 4);
    done += m;
  }
  return out;
}

}  // namespace pqvk::llm
