#include "model_fixtures.h"

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>

#include "model/pqm.h"
#include "model/safetensors.h"

namespace pqvk::test {

const char* const kChatTemplate =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/pqvk-test-XXXXXX";
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::vector<float> random_weights(size_t n, uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sigma);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) {
    x = nd(rng);
    if (u(rng) < 0.01f) x *= 10.0f;  // a few outliers, as in real weights
  }
  return v;
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

void write_text(const std::string& path, const std::string& text) {
  write_bytes(path, std::vector<uint8_t>(text.begin(), text.end()));
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

float stored_value(float v, const std::string& dtype) {
  if (dtype == "F16") return pq::f16_to_f32(pq::f32_to_f16(v));
  if (dtype == "BF16") return model::bf16_to_f32(model::f32_to_bf16(v));
  return v;
}

void write_safetensors(const std::string& path, const std::vector<FixtureTensor>& tensors) {
  std::vector<model::SafetensorsWriter::Entry> plan;
  for (const FixtureTensor& t : tensors) plan.push_back({t.name, t.dtype, t.shape});
  model::SafetensorsWriter w(path, plan, {{"format", "pt"}});
  for (const FixtureTensor& t : tensors) {
    std::vector<uint8_t> bytes;
    for (float v : t.values) {
      if (t.dtype == "F32") {
        const auto* p = reinterpret_cast<const uint8_t*>(&v);
        bytes.insert(bytes.end(), p, p + 4);
      } else if (t.dtype == "F16" || t.dtype == "BF16") {
        const uint16_t h = t.dtype == "F16" ? pq::f32_to_f16(v) : model::f32_to_bf16(v);
        bytes.push_back(static_cast<uint8_t>(h & 0xff));
        bytes.push_back(static_cast<uint8_t>(h >> 8));
      } else if (t.dtype == "I8" || t.dtype == "U8") {
        bytes.push_back(static_cast<uint8_t>(static_cast<int>(v)));
      } else if (t.dtype == "I32") {
        const auto x = static_cast<int32_t>(v);
        const auto* p = reinterpret_cast<const uint8_t*>(&x);
        bytes.insert(bytes.end(), p, p + 4);
      } else {
        throw std::runtime_error("fixture dtype " + t.dtype);
      }
    }
    w.write(t.name, bytes);
  }
  w.finish();
}

// ---- HuggingFace -----------------------------------------------------------------------------
json hf_config_json(const HfSpec& s) {
  static const std::map<std::string, std::string> arch = {{"llama", "LlamaForCausalLM"}, {"mistral", "MistralForCausalLM"},
                                                          {"qwen2", "Qwen2ForCausalLM"}, {"qwen3", "Qwen3ForCausalLM"}};
  json c = {{"architectures", {arch.at(s.arch)}}, {"model_type", s.arch}, {"hidden_size", s.dim},
            {"intermediate_size", s.hidden}, {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
            {"num_key_value_heads", s.kv_heads}, {"vocab_size", s.vocab}, {"max_position_embeddings", 256},
            {"rope_theta", s.arch == "qwen2" ? 1000000.0 : 500000.0}, {"rms_norm_eps", 1e-6},
            {"tie_word_embeddings", s.tied}, {"hidden_act", "silu"}, {"bos_token_id", 1}, {"eos_token_id", {2, 3}},
            {"torch_dtype", "bfloat16"}};
  if (s.head_dim) c["head_dim"] = s.head_dim;
  if (s.arch == "llama") c["attention_bias"] = s.attention_bias;
  if (s.arch == "mistral") c["sliding_window"] = 128;
  if (s.llama3_rope)
    c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  return c;
}

namespace {

void write_hf_tokenizer(const std::string& dir, int vocab) {
  json v = json::object();
  const int base = vocab - 3;
  for (int i = 0; i < base; ++i) v[i == 5 ? std::string("\xc4\xa0hello") : "t" + std::to_string(i)] = i;
  json merges = json::array();
  for (int i = 0; i + 1 < base && i < 20; ++i) merges.push_back("t" + std::to_string(i) + " t" + std::to_string(i + 1));
  merges.push_back(json::array({"t1", "t2"}));  // the newer list form
  json added = json::array();
  const char* specials[3] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  for (int k = 0; k < 3; ++k) added.push_back({{"id", base + k}, {"content", specials[k]}, {"special", true}});
  const json tok = {{"version", "1.0"}, {"added_tokens", added}, {"normalizer", nullptr},
                    {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                    {"decoder", {{"type", "ByteLevel"}}},
                    {"model", {{"type", "BPE"}, {"byte_fallback", false}, {"vocab", v}, {"merges", merges}}}};
  write_text(dir + "/tokenizer.json", tok.dump());
  const json cfg = {{"chat_template", kChatTemplate}, {"bos_token", "<|endoftext|>"}, {"eos_token", {{"content", "<|im_end|>"}}}};
  write_text(dir + "/tokenizer_config.json", cfg.dump());
}

}  // namespace

model::ModelConfig tiny_arch_config(const std::string& arch, int dim, int hidden, int layers, int heads, int kv_heads,
                                    int head_dim, int vocab) {
  model::ModelConfig c;
  c.architecture = arch;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = head_dim ? head_dim : dim / heads;
  c.vocab_size = vocab;
  c.qkv_bias = arch == "qwen2";
  c.qk_norm = arch == "qwen3";
  return c;
}

std::map<std::string, std::vector<float>> random_model_weights(const model::ModelConfig& c, uint32_t seed) {
  std::map<std::string, std::vector<float>> values;
  for (const model::TensorSpec& t : model::model_tensors(c)) {
    uint64_t n = 1;
    for (uint64_t d : t.shape) n *= d;
    std::vector<float> w = random_weights(n, seed++, model::is_matrix(t.role) ? 0.02f : 0.5f);
    if (!model::is_matrix(t.role) && t.role != model::Role::q_bias && t.role != model::Role::k_bias &&
        t.role != model::Role::v_bias && t.role != model::Role::o_bias)
      for (float& x : w) x += 1.0f;  // norm weights hover around 1
    values[t.name] = std::move(w);
  }
  return values;
}

TensorValues make_hf_model(const std::string& dir, const HfSpec& s) {
  write_text(dir + "/config.json", hf_config_json(s).dump(2));
  if (s.tokenizer) write_hf_tokenizer(dir, s.vocab);
  model::ModelConfig c = tiny_arch_config(s.arch, s.dim, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.vocab);
  c.tie_word_embeddings = s.tied;
  c.qkv_bias = c.qkv_bias || (s.arch == "llama" && s.attention_bias);
  c.o_bias = s.arch == "llama" && s.attention_bias;
  std::vector<FixtureTensor> all;
  TensorValues values;
  std::map<std::string, std::vector<float>> weights = random_model_weights(c, 100);
  for (const model::TensorSpec& t : model::model_tensors(c)) {
    std::vector<float>& w = weights.at(t.name);
    for (float& x : w) x = stored_value(x, s.dtype);
    const std::string name = model::hf_name(t);
    values[name] = w;
    all.push_back({name, s.dtype, t.shape, w});
  }
  if (s.shards <= 1) {
    write_safetensors(dir + "/model.safetensors", all);
    return values;
  }
  json map = json::object();
  for (int k = 0; k < s.shards; ++k) {
    char file[64];
    std::snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, s.shards);
    std::vector<FixtureTensor> part;
    for (size_t i = static_cast<size_t>(k); i < all.size(); i += static_cast<size_t>(s.shards)) {
      part.push_back(all[i]);
      map[all[i].name] = file;
    }
    write_safetensors(dir + "/" + file, part);
  }
  write_text(dir + "/model.safetensors.index.json", json({{"metadata", {{"total_size", 0}}}, {"weight_map", map}}).dump(2));
  return values;
}

// ---- llama2.c ----------------------------------------------------------------------------------
std::vector<float> make_llama2c(const std::string& path, const L2cSpec& s) {
  const int hd = s.dim / s.heads, kv_dim = s.kv_heads * hd;
  const size_t n = size_t(s.vocab) * s.dim + size_t(s.layers) * (2 * s.dim + 2 * s.dim * s.dim + 2 * s.dim * kv_dim +
                                                                    3 * s.dim * s.hidden) +
                   s.dim + size_t(s.seq_len) * hd + (s.shared ? 0 : size_t(s.vocab) * s.dim);
  std::vector<float> w = random_weights(n, 7);
  const int32_t header[7] = {s.dim, s.hidden, s.layers, s.heads, s.kv_heads, s.shared ? s.vocab : -s.vocab, s.seq_len};
  std::vector<uint8_t> bytes(28 + 4 * n);
  std::memcpy(bytes.data(), header, 28);
  std::memcpy(bytes.data() + 28, w.data(), 4 * n);
  write_bytes(path, bytes);
  return w;
}

std::vector<std::string> make_llama2c_tokenizer(const std::string& path, int n, std::vector<float>* scores) {
  std::vector<std::string> tokens;
  std::vector<uint8_t> bytes(4);
  const int32_t max_len = 8;
  std::memcpy(bytes.data(), &max_len, 4);
  for (int i = 0; i < n; ++i) {
    std::string t = i == 0 ? "<unk>" : i == 1 ? "\n<s>\n" : "tok" + std::to_string(i);
    t = t.substr(0, max_len);
    const float score = -static_cast<float>(i) * 0.5f;
    const auto len = static_cast<int32_t>(t.size());
    const auto* sp = reinterpret_cast<const uint8_t*>(&score);
    const auto* lp = reinterpret_cast<const uint8_t*>(&len);
    bytes.insert(bytes.end(), sp, sp + 4);
    bytes.insert(bytes.end(), lp, lp + 4);
    bytes.insert(bytes.end(), t.begin(), t.end());
    tokens.push_back(t);
    if (scores) scores->push_back(score);
  }
  write_bytes(path, bytes);
  return tokens;
}

// ---- PolarQuant reference ------------------------------------------------------------------
std::vector<uint8_t> pack_nibbles_reference(const std::vector<uint8_t>& codes, int block) {
  std::vector<uint8_t> out;
  const size_t half = static_cast<size_t>(block) / 2;
  for (size_t b = 0; b < codes.size(); b += static_cast<size_t>(block))
    for (size_t j = 0; j < half; ++j) out.push_back(static_cast<uint8_t>(codes[b + j] | (codes[b + j + half] << 4)));
  return out;
}

std::vector<uint8_t> pack_5bit_lsb_reference(const std::vector<uint8_t>& codes) {
  std::vector<uint8_t> out;
  for (size_t g = 0; g < codes.size(); g += 8) {
    const unsigned c0 = codes[g], c1 = codes[g + 1], c2 = codes[g + 2], c3 = codes[g + 3], c4 = codes[g + 4],
                   c5 = codes[g + 5], c6 = codes[g + 6], c7 = codes[g + 7];
    out.push_back(static_cast<uint8_t>((c0 | c1 << 5) & 0xFF));
    out.push_back(static_cast<uint8_t>((c1 >> 3 | c2 << 2 | c3 << 7) & 0xFF));
    out.push_back(static_cast<uint8_t>((c3 >> 1 | c4 << 4) & 0xFF));
    out.push_back(static_cast<uint8_t>((c4 >> 4 | c5 << 1 | c6 << 6) & 0xFF));
    out.push_back(static_cast<uint8_t>((c6 >> 2 | c7 << 3) & 0xFF));
  }
  return out;
}

std::vector<uint8_t> pack_5bit_msb_reference(const std::vector<uint8_t>& codes) {
  std::vector<uint8_t> out;
  for (size_t g = 0; g < codes.size(); g += 8) {
    const unsigned c0 = codes[g], c1 = codes[g + 1], c2 = codes[g + 2], c3 = codes[g + 3], c4 = codes[g + 4],
                   c5 = codes[g + 5], c6 = codes[g + 6], c7 = codes[g + 7];
    out.push_back(static_cast<uint8_t>((c0 << 3 | c1 >> 2) & 0xFF));
    out.push_back(static_cast<uint8_t>(((c1 & 3) << 6 | c2 << 1 | c3 >> 4) & 0xFF));
    out.push_back(static_cast<uint8_t>(((c3 & 15) << 4 | c4 >> 1) & 0xFF));
    out.push_back(static_cast<uint8_t>(((c4 & 1) << 7 | c5 << 2 | c6 >> 3) & 0xFF));
    out.push_back(static_cast<uint8_t>(((c6 & 7) << 5 | c7) & 0xFF));
  }
  return out;
}

std::map<std::string, pq::QuantMatrix> make_reference_dir(const std::string& dir, const std::string& packing, int bits,
                                                           int block) {
  HfSpec s;
  s.dim = 96;  // not a multiple of 64 or 128: rows are padded
  s.hidden = 160;
  s.tokenizer = false;
  write_text(dir + "/config.json", hf_config_json(s).dump(2));
  json layers = json::object();
  model::ModelConfig c;
  c.dim = s.dim;
  c.hidden_dim = s.hidden;
  c.n_layers = s.layers;
  c.n_heads = s.heads;
  c.n_kv_heads = s.kv_heads;
  c.head_dim = s.dim / s.heads;
  c.vocab_size = s.vocab;
  std::vector<FixtureTensor> all;
  std::map<std::string, pq::QuantMatrix> quantized;
  uint32_t seed = 500;
  for (const model::TensorSpec& t : model::model_tensors(c)) {
    const std::string name = model::hf_name(t);
    uint64_t n = 1;
    for (uint64_t d : t.shape) n *= d;
    std::vector<float> w = random_weights(n, seed++);
    if (!model::is_matrix(t.role) || t.role == model::Role::embed) {
      all.push_back({name, "F16", t.shape, w});
      continue;
    }
    const pq::QuantMatrix q = pq::quantize(w.data(), t.shape[0], t.shape[1], bits, block, pq::Method::pq);
    quantized[name] = q;
    std::vector<uint8_t> codes(q.rows * q.cols_padded);
    pq::unpack_codes(q.codes.data(), q.rows, q.cols_padded, q.bits, codes.data());
    std::vector<uint8_t> packed = packing == "int8" ? codes
                                  : packing == "nibble" ? pack_nibbles_reference(codes, block)
                                  : packing == "5bit"   ? pack_5bit_lsb_reference(codes)
                                                        : pack_5bit_msb_reference(codes);
    const uint64_t cols_bytes = packed.size() / q.rows;
    std::vector<float> packed_f(packed.begin(), packed.end());
    std::vector<float> norms;
    for (uint16_t h : q.scales) norms.push_back(pq::f16_to_f32(h));  // exact: fp16 -> fp32 -> fp16
    const std::string module = name.substr(0, name.size() - 7);     // drop ".weight"
    const std::vector<uint64_t> norm_shape = {q.rows, q.cols_padded / static_cast<uint64_t>(block)};
    if (packing == "hlwq-q5") {
      all.push_back({name + "__packed", "U8", {q.rows, cols_bytes}, packed_f});
      all.push_back({name + "__norms", "F16", norm_shape, norms});
      all.push_back({name + "__meta", "I32", {4}, {float(q.rows), float(q.cols), float(block), float(bits)}});
    } else {
      all.push_back({module + ".codes", packing == "int8" ? "I8" : "U8", {q.rows, cols_bytes}, packed_f});
      all.push_back({module + ".norms", "F16", norm_shape, norms});
      all.push_back({module + ".ct_scaled", "F32", {q.codebook.size()}, q.codebook});
    }
    layers[module] = {{"bits", bits}};
  }
  write_safetensors(dir + "/model.safetensors", all);
  const json polar = {{"format", packing == "hlwq-q5" ? "hlwq-q5" : "polarquant"}, {"block_size", block}, {"bits", bits},
                      {"layers", layers}};
  write_text(dir + "/polar_config.json", polar.dump(2));
  return quantized;
}

// ---- .pqm ----------------------------------------------------------------------------------------
model::ModelConfig tiny_config() {
  model::ModelConfig c;
  c.architecture = "qwen3";
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 24;  // not dim / n_heads, as Qwen3 allows
  c.vocab_size = 80;
  c.max_seq_len = 64;
  c.qkv_bias = c.o_bias = c.qk_norm = true;
  c.bos_id = 1;
  c.eos_ids = {2};
  c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 32};
  return c;
}

std::map<std::string, std::vector<float>> write_tiny_pqm(const std::string& path) {
  const model::ModelConfig c = tiny_config();
  model::PqmWriter w(path);
  std::map<std::string, std::vector<float>> values;
  const pq::Method methods[] = {pq::Method::pq, pq::Method::absmax, pq::Method::rot_uniform, pq::Method::lloyd};
  const int blocks[] = {64, 128, 256};
  uint32_t seed = 1;
  int m = 0;
  for (const model::TensorSpec& t : model::model_tensors(c)) {
    uint64_t n = 1;
    for (uint64_t d : t.shape) n *= d;
    std::vector<float> v = random_weights(n, seed++, 0.5f);
    if (!model::is_matrix(t.role) || m % 5 == 4) {  // vectors, and every fifth matrix, stay float
      if (seed % 2) {
        w.add_f32(t.name, t.shape, v);
      } else {
        w.add_f16(t.name, t.shape, v);
        for (float& x : v) x = pq::f16_to_f32(pq::f32_to_f16(x));
      }
      m += model::is_matrix(t.role);
      values[t.name] = v;
      continue;
    }
    const int bits = 2 + m % 7;
    const pq::QuantMatrix q = pq::quantize(v.data(), t.shape[0], t.shape[1], bits, blocks[m % 3], methods[m % 4]);
    w.add_quant(t.name, q);
    pq::dequantize(q, v.data());
    values[t.name] = v;
    ++m;
  }
  std::vector<float> scores;
  const std::vector<std::string> tokens = [&] {
    std::vector<std::string> t;
    for (int i = 0; i < 80; ++i) {
      t.push_back("tok" + std::to_string(i));
      scores.push_back(-0.25f * static_cast<float>(i));
    }
    return t;
  }();
  w.add_blob("tokenizer.vocab", model::encode_string_list(tokens));
  w.add_f32("tokenizer.scores", {scores.size()}, scores);
  model::TokenizerInfo tok;
  tok.kind = "llama2c";
  tok.options = {{"max_token_length", 8}};
  tok.chat_template = kChatTemplate;
  tok.added_tokens = {{3, "<|im_start|>", true}};
  w.finish(c, tok, {{"quantization", {{"tool", "test"}}}});
  values["tokenizer.scores"] = scores;
  return values;
}

CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  std::FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = pclose(p);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

}  // namespace pqvk::test
