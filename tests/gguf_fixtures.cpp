#include "gguf_fixtures.h"

#include <sentencepiece_processor.h>

#include <cmath>
#include <cstring>
#include <numbers>
#include <stdexcept>

#include "model/safetensors.h"
#include "model_fixtures.h"
#include "quant/polarquant.h"

namespace pqvk::test {

const char* const kGgufChatTemplate = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";

// ---- encoding --------------------------------------------------------------------------------------

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_u64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put_u64(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

namespace {

template <typename T>
std::vector<uint8_t> raw_of(T v) {
  std::vector<uint8_t> b(sizeof(T));
  std::memcpy(b.data(), &v, sizeof(T));
  return b;
}

template <typename T>
std::vector<uint8_t> array_of(uint32_t elem_type, const std::vector<T>& v) {
  std::vector<uint8_t> b;
  put_u32(b, elem_type);
  put_u64(b, v.size());
  for (const T& x : v) {
    const std::vector<uint8_t> e = raw_of(x);
    b.insert(b.end(), e.begin(), e.end());
  }
  return b;
}

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

void GgufBuilder::set_alignment(uint32_t a) {
  alignment = a;
  u32("general.alignment", a);
}
void GgufBuilder::u32(const std::string& key, uint32_t v) { kvs.push_back({key, kU32, raw_of(v)}); }
void GgufBuilder::i32(const std::string& key, int32_t v) { kvs.push_back({key, kI32, raw_of(v)}); }
void GgufBuilder::u64(const std::string& key, uint64_t v) { kvs.push_back({key, kU64, raw_of(v)}); }
void GgufBuilder::f32(const std::string& key, float v) { kvs.push_back({key, kFloat32, raw_of(v)}); }
void GgufBuilder::f64(const std::string& key, double v) { kvs.push_back({key, kFloat64, raw_of(v)}); }
void GgufBuilder::boolean(const std::string& key, bool v) { kvs.push_back({key, kBool, {static_cast<uint8_t>(v)}}); }
void GgufBuilder::string(const std::string& key, const std::string& v) {
  std::vector<uint8_t> b;
  put_string(b, v);
  kvs.push_back({key, kString, b});
}
void GgufBuilder::strings(const std::string& key, const std::vector<std::string>& v) {
  std::vector<uint8_t> b;
  put_u32(b, kString);
  put_u64(b, v.size());
  for (const std::string& s : v) put_string(b, s);
  kvs.push_back({key, kArray, b});
}
void GgufBuilder::f32s(const std::string& key, const std::vector<float>& v) { kvs.push_back({key, kArray, array_of(kFloat32, v)}); }
void GgufBuilder::i32s(const std::string& key, const std::vector<int32_t>& v) { kvs.push_back({key, kArray, array_of(kI32, v)}); }
void GgufBuilder::tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, std::vector<uint8_t> data) {
  tensors.push_back({name, std::move(dims), type, std::move(data), std::nullopt});
}
bool GgufBuilder::has_key(const std::string& key) const {
  for (const Kv& kv : kvs)
    if (kv.key == key) return true;
  return false;
}

std::vector<uint8_t> GgufBuilder::bytes() const {
  std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
  put_u32(out, version);
  put_u64(out, tensors.size());
  put_u64(out, kvs.size());
  for (const Kv& kv : kvs) {
    put_string(out, kv.key);
    put_u32(out, kv.type);
    out.insert(out.end(), kv.value.begin(), kv.value.end());
  }
  std::vector<uint64_t> placed;  // where each tensor's data goes, relative to the data section
  uint64_t end = 0;
  for (const Tensor& t : tensors) {
    placed.push_back(align_up(end, alignment));
    end = placed.back() + t.data.size();
    put_string(out, t.name);
    put_u32(out, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) put_u64(out, d);
    put_u32(out, t.type);
    put_u64(out, t.offset.value_or(placed.back()));
  }
  out.resize(align_up(out.size(), alignment), 0);
  const size_t data_start = out.size();
  for (size_t i = 0; i < tensors.size(); ++i) {
    out.resize(data_start + placed[i], 0);
    out.insert(out.end(), tensors[i].data.begin(), tensors[i].data.end());
  }
  return out;
}

void GgufBuilder::write(const std::string& path) const { write_bytes(path, bytes()); }

std::vector<uint8_t> encode_tensor(const std::vector<float>& values, uint32_t type, std::vector<float>* stored) {
  std::vector<uint8_t> out;
  std::vector<float> back(values.size());
  if (type == kF32) {
    for (float v : values) {
      const std::vector<uint8_t> b = raw_of(v);
      out.insert(out.end(), b.begin(), b.end());
    }
    back = values;
  } else if (type == kF16 || type == kBF16) {
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t h = type == kF16 ? pq::f32_to_f16(values[i]) : model::f32_to_bf16(values[i]);
      out.push_back(static_cast<uint8_t>(h & 0xff));
      out.push_back(static_cast<uint8_t>(h >> 8));
      back[i] = type == kF16 ? pq::f16_to_f32(h) : model::bf16_to_f32(h);
    }
  } else if (type == kQ8_0) {
    if (values.size() % 32 != 0) throw std::runtime_error("Q8_0 needs whole blocks of 32");
    for (size_t b0 = 0; b0 < values.size(); b0 += 32) {
      float amax = 0.0f;
      for (size_t k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(values[b0 + k]));
      const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      const uint16_t h = pq::f32_to_f16(d);
      out.push_back(static_cast<uint8_t>(h & 0xff));
      out.push_back(static_cast<uint8_t>(h >> 8));
      for (size_t k = 0; k < 32; ++k) {
        const auto q = static_cast<int8_t>(std::lround(values[b0 + k] * id));
        out.push_back(static_cast<uint8_t>(q));
        back[b0 + k] = pq::f16_to_f32(h) * static_cast<float>(q);
      }
    }
  } else {
    throw std::runtime_error("encode_tensor: type " + std::to_string(type));
  }
  if (stored) *stored = std::move(back);
  return out;
}

std::vector<float> interleave_rope_rows(const std::vector<float>& w, uint64_t heads, uint64_t head_dim, uint64_t cols) {
  std::vector<float> out(w.size());
  const uint64_t half = head_dim / 2;
  for (uint64_t h = 0; h < heads; ++h)
    for (uint64_t r = 0; r < head_dim; ++r) {  // r = t * half + i in rotate-half order
      const uint64_t t = r / half, i = r % half;
      std::copy_n(w.data() + (h * head_dim + r) * cols, cols, out.data() + (h * head_dim + 2 * i + t) * cols);
    }
  return out;
}

std::vector<float> llama3_rope_divisors(const model::ModelConfig& c) {
  const model::RopeScaling& rs = c.rope_scaling;
  const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
  const double low_wavelen = old_ctx / rs.low_freq_factor, high_wavelen = old_ctx / rs.high_freq_factor;
  std::vector<float> out;
  for (int64_t d = 0; d < c.head_dim; d += 2) {
    const double freq = 1.0 / std::pow(c.rope_theta, static_cast<double>(d) / static_cast<double>(c.head_dim));
    const double wavelen = 2.0 * std::numbers::pi / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(static_cast<float>(rs.factor));
    } else {
      const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      out.push_back(static_cast<float>(1.0 / ((1.0 - smooth) / rs.factor + smooth)));
    }
  }
  return out;
}

// ---- models ------------------------------------------------------------------------------------------

namespace {

// llama.cpp's tensor names, by the canonical name's last part.
std::string gguf_name_of(const model::TensorSpec& t) {
  static const std::map<std::string, std::string> layer = {
      {"attn_norm", "attn_norm.weight"}, {"attn.q", "attn_q.weight"},       {"attn.k", "attn_k.weight"},
      {"attn.v", "attn_v.weight"},       {"attn.o", "attn_output.weight"},  {"attn.q_bias", "attn_q.bias"},
      {"attn.k_bias", "attn_k.bias"},    {"attn.v_bias", "attn_v.bias"},    {"attn.o_bias", "attn_output.bias"},
      {"attn.q_norm", "attn_q_norm.weight"}, {"attn.k_norm", "attn_k_norm.weight"}, {"mlp_norm", "ffn_norm.weight"},
      {"mlp.gate", "ffn_gate.weight"},   {"mlp.up", "ffn_up.weight"},       {"mlp.down", "ffn_down.weight"}};
  if (t.layer < 0) {
    static const std::map<std::string, std::string> top = {
        {"embed", "token_embd.weight"}, {"final_norm", "output_norm.weight"}, {"lm_head", "output.weight"}};
    return top.at(t.name);
  }
  const std::string prefix = "layers." + std::to_string(t.layer) + ".";
  return "blk." + std::to_string(t.layer) + "." + layer.at(t.name.substr(prefix.size()));
}

// The metadata llama.cpp's converter writes for a configuration (tokenizer apart).
void add_model_metadata(GgufBuilder& b, const model::ModelConfig& c, uint32_t file_type) {
  const std::string a = c.architecture;
  b.string("general.architecture", a);
  b.string("general.name", "pqvk test model");
  b.u32("general.file_type", file_type);
  b.u32("general.quantization_version", 2);
  b.u32(a + ".context_length", static_cast<uint32_t>(c.max_seq_len));
  b.u32(a + ".embedding_length", static_cast<uint32_t>(c.dim));
  b.u32(a + ".feed_forward_length", static_cast<uint32_t>(c.hidden_dim));
  b.u32(a + ".block_count", static_cast<uint32_t>(c.n_layers));
  b.u32(a + ".attention.head_count", static_cast<uint32_t>(c.n_heads));
  b.u32(a + ".attention.head_count_kv", static_cast<uint32_t>(c.n_kv_heads));
  b.f32(a + ".rope.freq_base", static_cast<float>(c.rope_theta));
  b.f32(a + ".attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  b.u32(a + ".rope.dimension_count", static_cast<uint32_t>(c.head_dim));
  b.u32(a + ".vocab_size", static_cast<uint32_t>(c.vocab_size));
  if (c.head_dim * c.n_heads != c.dim) {
    b.u32(a + ".attention.key_length", static_cast<uint32_t>(c.head_dim));
    b.u32(a + ".attention.value_length", static_cast<uint32_t>(c.head_dim));
  }
  if (c.rope_scaling.type == "linear") {
    b.string(a + ".rope.scaling.type", "linear");
    b.f32(a + ".rope.scaling.factor", static_cast<float>(c.rope_scaling.factor));
  }
  if (c.sliding_window > 0) b.u32(a + ".attention.sliding_window", static_cast<uint32_t>(c.sliding_window));
}

// Tensors from canonical values: q/k rows interleaved for llama, matrices as `matrix_type`,
// vectors as F32; Llama 3.1 scaling as rope_freqs.weight. `stored` receives the canonical
// values as stored.
void add_model_tensors(GgufBuilder& b, const model::ModelConfig& c, const std::map<std::string, std::vector<float>>& values,
                       uint32_t matrix_type, std::map<std::string, std::vector<float>>* stored) {
  if (c.rope_scaling.type == "llama3")
    b.tensor("rope_freqs.weight", {static_cast<uint64_t>(c.head_dim / 2)}, kF32, encode_tensor(llama3_rope_divisors(c), kF32));
  for (const model::TensorSpec& t : model::model_tensors(c)) {
    const std::vector<float>& v = values.at(t.name);
    const bool matrix = model::is_matrix(t.role);
    const uint32_t type = matrix ? matrix_type : kF32;
    std::vector<float> as_stored;
    encode_tensor(v, type, &as_stored);  // per-row encodings: the same values whatever the row order
    if (stored) (*stored)[t.name] = as_stored;
    uint64_t heads = 0;
    if (c.architecture == "llama" && (t.role == model::Role::attn_q || t.role == model::Role::q_bias)) heads = c.n_heads;
    if (c.architecture == "llama" && (t.role == model::Role::attn_k || t.role == model::Role::k_bias)) heads = c.n_kv_heads;
    const uint64_t cols = t.shape.size() > 1 ? t.shape[1] : 1;
    const std::vector<float> file_order = heads ? interleave_rope_rows(v, heads, c.head_dim, cols) : v;
    b.tensor(gguf_name_of(t), {t.shape.rbegin(), t.shape.rend()}, type, encode_tensor(file_order, type));
  }
}

void add_gpt2_vocab(GgufBuilder& b, const std::string& pre) {
  std::vector<std::string> tokens;
  int next = 256;
  for (int c = 0; c < 256; ++c) {  // GPT-2's byte-to-character map
    const bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
    const int cp = printable ? c : next++;
    std::string s;
    if (cp < 0x80) s += static_cast<char>(cp);
    else s += {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
    tokens.push_back(s);
  }
  for (const char* t : {"he", "ll", "hell", "hello", "\xC4\xA0w", "<|im_start|>", "<|im_end|>", "<think>", "<|begin_of_text|>"})
    tokens.push_back(t);
  std::vector<int32_t> types(tokens.size(), 1);
  types[261] = types[262] = types[264] = 3;
  types[263] = 4;
  b.string("tokenizer.ggml.model", "gpt2");
  b.string("tokenizer.ggml.pre", pre);
  b.strings("tokenizer.ggml.tokens", tokens);
  b.i32s("tokenizer.ggml.token_type", types);
  b.strings("tokenizer.ggml.merges", {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w"});
  b.u32("tokenizer.ggml.bos_token_id", 264);
  b.u32("tokenizer.ggml.eos_token_id", 262);
  b.u32("tokenizer.ggml.eot_token_id", 262);
  b.boolean("tokenizer.ggml.add_bos_token", true);
}

void add_llama_vocab(GgufBuilder& b) {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  std::vector<float> scores = {0.0f, 0.0f, 0.0f};
  const char* hex = "0123456789ABCDEF";
  for (int c = 0; c < 256; ++c) {
    tokens.push_back(std::string("<0x") + hex[c >> 4] + hex[c & 15] + ">");
    types.push_back(6);
    scores.push_back(0.0f);
  }
  const char* chars[] = {"\xE2\x96\x81", "h", "e", "l", "o", "w", "r", "d"};
  for (int i = 0; i < 8; ++i) {
    tokens.push_back(chars[i]);
    types.push_back(1);
    scores.push_back(-100.0f - static_cast<float>(i));
  }
  const char* merged[] = {"\xE2\x96\x81h", "he", "ll", "\xE2\x96\x81he", "llo", "\xE2\x96\x81hello"};
  for (int i = 0; i < 6; ++i) {
    tokens.push_back(merged[i]);
    types.push_back(1);
    scores.push_back(-1.0f - static_cast<float>(i));
  }
  b.string("tokenizer.ggml.model", "llama");
  b.strings("tokenizer.ggml.tokens", tokens);
  b.f32s("tokenizer.ggml.scores", scores);
  b.i32s("tokenizer.ggml.token_type", types);
  b.u32("tokenizer.ggml.bos_token_id", 1);
  b.u32("tokenizer.ggml.eos_token_id", 2);
  b.u32("tokenizer.ggml.unknown_token_id", 0);
  b.boolean("tokenizer.ggml.add_bos_token", true);
  b.boolean("tokenizer.ggml.add_space_prefix", true);
}

}  // namespace

model::ModelConfig gguf_spec_config(const GgufModelSpec& s) {
  model::ModelConfig c = tiny_arch_config(s.arch, s.dim, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.vocab);
  c.max_seq_len = s.ctx;
  c.rope_theta = s.arch == "llama" ? 500000.0 : 1000000.0;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = s.tied;
  c.qkv_bias = c.qkv_bias || s.bias;
  c.o_bias = s.bias;
  if (s.rope == "linear") c.rope_scaling = {"linear", 2.0, 1.0, 4.0, 0};
  if (s.rope == "llama3") c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 1024};
  if (s.tokenizer == "gpt2") c.bos_id = 264, c.eos_ids = {262};
  if (s.tokenizer == "llama") c.bos_id = 1, c.eos_ids = {2};
  return c;
}

GgufBuilder gguf_model_builder(const GgufModelSpec& s, std::map<std::string, std::vector<float>>* values) {
  const model::ModelConfig c = gguf_spec_config(s);
  GgufBuilder b;
  add_model_metadata(b, c, s.matrix_type == kF32 ? 0 : s.matrix_type == kF16 ? 1 : 7);
  if (s.tokenizer == "gpt2") add_gpt2_vocab(b, s.pre);
  if (s.tokenizer == "llama") add_llama_vocab(b);
  if (s.tokenizer != "none") b.string("tokenizer.chat_template", kGgufChatTemplate);
  const std::map<std::string, std::vector<float>> canonical = random_model_weights(c, 100);
  add_model_tensors(b, c, canonical, s.matrix_type, values);
  return b;
}

std::map<std::string, std::vector<float>> write_gguf_from_source(const model::SourceModel& src, const std::string& path,
                                                                 uint32_t matrix_type) {
  const model::ModelConfig& c = src.config;
  if (c.architecture != "llama" || src.tokenizer.info.kind != "sentencepiece")
    throw std::runtime_error("write_gguf_from_source: a llama model with a SentencePiece tokenizer");
  GgufBuilder b;
  add_model_metadata(b, c, matrix_type == kF16 ? 1 : 7);
  sentencepiece::SentencePieceProcessor sp;
  const std::vector<uint8_t>& proto = src.tokenizer.blobs.at(0).second;
  if (!sp.LoadFromSerializedProto(std::string_view(reinterpret_cast<const char*>(proto.data()), proto.size())).ok())
    throw std::runtime_error("write_gguf_from_source: not a SentencePiece model");
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    tokens.push_back(sp.IdToPiece(id));
    scores.push_back(sp.GetScore(id));
    types.push_back(sp.IsUnknown(id) ? 2 : sp.IsControl(id) ? 3 : sp.IsUnused(id) ? 5 : sp.IsByte(id) ? 6 : 1);
  }
  b.string("tokenizer.ggml.model", "llama");
  b.strings("tokenizer.ggml.tokens", tokens);
  b.f32s("tokenizer.ggml.scores", scores);
  b.i32s("tokenizer.ggml.token_type", types);
  b.u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(sp.bos_id()));
  b.u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(sp.eos_id()));
  b.u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(sp.unk_id()));
  b.boolean("tokenizer.ggml.add_bos_token", true);
  b.boolean("tokenizer.ggml.add_eos_token", false);
  if (!src.tokenizer.info.chat_template.empty()) b.string("tokenizer.chat_template", src.tokenizer.info.chat_template);
  std::map<std::string, std::vector<float>> canonical, stored;
  for (const model::SourceTensor& t : src.tensors) canonical[t.spec.name] = t.load_floats();
  add_model_tensors(b, c, canonical, matrix_type, &stored);
  b.write(path);
  return stored;
}

}  // namespace pqvk::test
