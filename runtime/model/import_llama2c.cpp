// llama2.c checkpoints (the legacy export: a header of 7 little-endian int32 -- dim,
// hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len -- then fp32 weights in
// llama2.c's order; a negative vocab_size means the classifier is stored, not shared).
//
// llama2.c applies RoPE to interleaved pairs (2i, 2i+1) of each head; .pqm files use the
// rotate-half convention (pairs (i, i + head_dim/2)), so the rows of wq and wk are permuted
// within each head on import: new row t*(hd/2) + i = old row 2i + t. The model computes the
// same function; the stored RoPE tables (freq_cis) are skipped, the runtime recomputes them.
#include <cmath>
#include <cstring>
#include <memory>

#include "model/checked_math.h"
#include "model/error.h"
#include "model/files.h"
#include "model/source.h"

namespace pqvk::model {

namespace {

constexpr int32_t kVersionedMagic = 0x616b3432;  // "ak42": llama2.c's version 1/2 exports

struct Header {
  int64_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
  bool shared_classifier;
};

Header read_header(const MappedFile& f) {
  const std::string& path = f.path();
  if (f.size() < 28) model_fail(path, "file is " + std::to_string(f.size()) + " bytes, shorter than the 28-byte llama2.c header");
  int32_t h[7];
  std::memcpy(h, f.data(), sizeof h);
  if (h[0] == kVersionedMagic) model_fail(path, "llama2.c version 1/2 exports are not supported (use the legacy export)");
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i)
    if (h[i] <= 0 && !(i == 5 && h[i] < 0 && h[i] != INT32_MIN))
      model_fail(path, std::string("header: ") + names[i] + " = " + std::to_string(h[i]) + " is not positive (not a llama2.c checkpoint?)");
  Header r{h[0], h[1], h[2], h[3], h[4], std::abs(int64_t{h[5]}), h[6], h[5] > 0};
  if (r.dim % r.n_heads != 0) model_fail(path, "header: dim is not a multiple of n_heads");
  if (r.n_heads % r.n_kv_heads != 0) model_fail(path, "header: n_heads is not a multiple of n_kv_heads");
  return r;
}

// Float offsets of the weight arrays, in file order.
struct Layout {
  uint64_t embed, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls, total;
};

Layout layout_of(const Header& h, const std::string& path) {
  const auto dim = static_cast<uint64_t>(h.dim), hid = static_cast<uint64_t>(h.hidden_dim);
  const auto L = static_cast<uint64_t>(h.n_layers), hd = dim / static_cast<uint64_t>(h.n_heads);
  const uint64_t kv_dim = static_cast<uint64_t>(h.n_kv_heads) * hd;
  Layout l{};
  uint64_t at = 0;
  auto take = [&](uint64_t& field, uint64_t a, uint64_t b, uint64_t c) {
    field = at;
    at = checked_add(at, checked_mul(checked_mul(a, b, path), c, path), path);
  };
  take(l.embed, static_cast<uint64_t>(h.vocab_size), dim, 1);
  take(l.rms_att, L, dim, 1);
  take(l.wq, L, dim, dim);
  take(l.wk, L, dim, kv_dim);
  take(l.wv, L, dim, kv_dim);
  take(l.wo, L, dim, dim);
  take(l.rms_ffn, L, dim, 1);
  take(l.w1, L, hid, dim);
  take(l.w2, L, dim, hid);
  take(l.w3, L, hid, dim);
  take(l.rms_final, dim, 1, 1);
  uint64_t freq = 0;
  take(freq, static_cast<uint64_t>(h.seq_len), hd, 1);  // freq_cis_real and _imag: seq_len * hd/2 each
  take(l.wcls, h.shared_classifier ? 0 : static_cast<uint64_t>(h.vocab_size), dim, 1);
  l.total = at;
  return l;
}

}  // namespace

SourceModel import_llama2c(const std::string& path, const std::string& tokenizer_path) {
  auto file = std::make_shared<MappedFile>(path);
  const Header h = read_header(*file);
  const Layout l = layout_of(h, path);
  const uint64_t want = checked_add(28, checked_mul(l.total, 4, path), path);
  if (file->size() != want)
    model_fail(path, "file is " + std::to_string(file->size()) + " bytes but its header (dim " + std::to_string(h.dim) +
                         ", " + std::to_string(h.n_layers) + " layers, vocab " + std::to_string(h.vocab_size) + ") implies " +
                         std::to_string(want) + " (truncated or not a llama2.c checkpoint?)");

  SourceModel m;
  m.path = path;
  m.format = "llama2c";
  ModelConfig& c = m.config;
  c.architecture = "llama";
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.head_dim = h.dim / h.n_heads;
  c.vocab_size = h.vocab_size;
  c.max_seq_len = h.seq_len;
  c.rope_theta = 10000.0;  // llama2.c's fixed values
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = h.shared_classifier;
  if (!tokenizer_path.empty()) {
    if (tokenizer_path.ends_with(".model")) m.tokenizer = load_sentencepiece(tokenizer_path, c.vocab_size);
    else if (tokenizer_path.ends_with(".bin")) m.tokenizer = load_llama2c_tokenizer(tokenizer_path, c.vocab_size);
    else model_fail(tokenizer_path, "unknown tokenizer file (expected a SentencePiece .model or a llama2.c tokenizer .bin)");
  }
  adopt_special_ids(c, m.tokenizer);
  if (c.bos_id < 0 && c.vocab_size > 2) c.bos_id = 1;  // llama2.c's convention (SentencePiece's defaults)
  if (c.eos_ids.empty() && c.vocab_size > 2) c.eos_ids = {2};
  c.validate(path);

  const auto hd = static_cast<uint64_t>(c.head_dim);
  for (const TensorSpec& spec : model_tensors(c)) {
    const uint64_t rows = spec.shape[0], cols = spec.shape.size() > 1 ? spec.shape[1] : 1;
    const uint64_t n = rows * cols, layer = spec.layer < 0 ? 0 : static_cast<uint64_t>(spec.layer);
    uint64_t at = 0, heads = 0;
    switch (spec.role) {
      case Role::embed: at = l.embed; break;
      case Role::attn_norm: at = l.rms_att + layer * n; break;
      case Role::attn_q: at = l.wq + layer * n; heads = static_cast<uint64_t>(c.n_heads); break;
      case Role::attn_k: at = l.wk + layer * n; heads = static_cast<uint64_t>(c.n_kv_heads); break;
      case Role::attn_v: at = l.wv + layer * n; break;
      case Role::attn_o: at = l.wo + layer * n; break;
      case Role::mlp_norm: at = l.rms_ffn + layer * n; break;
      case Role::mlp_gate: at = l.w1 + layer * n; break;
      case Role::mlp_down: at = l.w2 + layer * n; break;
      case Role::mlp_up: at = l.w3 + layer * n; break;
      case Role::final_norm: at = l.rms_final; break;
      case Role::lm_head: at = l.wcls; break;
      default: model_fail(path, std::string("llama2.c checkpoints have no ") + role_name(spec.role));
    }
    const std::string origin = path + ": " + spec.name;
    auto load = [file, at, n, heads, hd, cols, origin] {
      std::vector<float> w(n);
      std::memcpy(w.data(), file->data() + 28 + at * 4, n * 4);
      for (size_t i = 0; i < n; ++i)
        if (!std::isfinite(w[i])) model_fail(origin, "element " + std::to_string(i) + " is not finite");
      return heads ? rope_rows_to_rotate_half(w, heads, hd, cols) : w;
    };
    m.tensors.push_back({spec, origin, load, nullptr});
  }
  return m;
}

}  // namespace pqvk::model
