// Importers (runtime/model/source.h) and conversion (convert.h) on fixtures generated here:
// HuggingFace checkpoints of every supported architecture (F16/BF16/F32, sharded or not, tied
// or not), llama2.c checkpoints and tokenizers, PolarQuant-reference directories in every
// packing (codes must come back exactly), the bundled stories260K, and bad inputs of each kind.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <ostream>
#include <string>

#include "expect_error.h"
#include "model/convert.h"
#include "model/error.h"
#include "model/files.h"
#include "model/pqm.h"
#include "model/safetensors.h"
#include "model/source.h"
#include "model_fixtures.h"

namespace pqvk::test {
namespace {

using model::PqmFile;
using model::SourceModel;

double rel_rmse(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

model::QuantizeOptions opts(const std::string& recipe, const std::string& method = "pq", int block = 128) {
  model::QuantizeOptions o;
  o.recipe = recipe;
  o.method = method;
  o.block = block;
  o.threads = 2;
  return o;
}

// ---- HuggingFace ---------------------------------------------------------------------------------
struct HfCase {
  std::string arch, dtype;
  int shards;
  bool tied, llama3, bias;
  int head_dim;
};

void PrintTo(const HfCase& c, std::ostream* os) {
  *os << c.arch << " " << c.dtype << " shards=" << c.shards << (c.tied ? " tied" : " untied");
}

class HfImport : public ::testing::TestWithParam<HfCase> {};

TEST_P(HfImport, EveryTensorExactlyAndThroughPqm) {
  const HfCase& c = GetParam();
  TempDir d;
  HfSpec s;
  s.arch = c.arch;
  s.dtype = c.dtype;
  s.shards = c.shards;
  s.tied = c.tied;
  s.llama3_rope = c.llama3;
  s.attention_bias = c.bias;
  s.head_dim = c.head_dim;
  const TensorValues values = make_hf_model(d.path(), s);
  const SourceModel m = model::open_source(d.path());
  EXPECT_EQ(m.format, "huggingface");
  const model::ModelConfig& cfg = m.config;
  EXPECT_EQ(cfg.architecture, c.arch);
  EXPECT_EQ(cfg.dim, s.dim);
  EXPECT_EQ(cfg.hidden_dim, s.hidden);
  EXPECT_EQ(cfg.n_layers, s.layers);
  EXPECT_EQ(cfg.n_kv_heads, s.kv_heads);
  EXPECT_EQ(cfg.head_dim, c.head_dim ? c.head_dim : s.dim / s.heads);
  EXPECT_EQ(cfg.tie_word_embeddings, c.tied);
  EXPECT_EQ(cfg.qkv_bias, c.arch == "qwen2" || c.bias);
  EXPECT_EQ(cfg.o_bias, c.bias);
  EXPECT_EQ(cfg.qk_norm, c.arch == "qwen3");
  EXPECT_EQ(cfg.sliding_window, c.arch == "mistral" ? 128 : 0);
  EXPECT_EQ(cfg.rope_scaling.type, c.llama3 ? "llama3" : "none");
  if (c.llama3) {
    EXPECT_EQ(cfg.rope_scaling.factor, 8.0);
    EXPECT_EQ(cfg.rope_scaling.original_max_position_embeddings, 64);
  }
  EXPECT_EQ(cfg.bos_id, 1);
  EXPECT_EQ(cfg.eos_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(m.tensors.size(), values.size());
  for (const model::SourceTensor& t : m.tensors) {
    const std::vector<float> got = t.load_floats();
    EXPECT_EQ(got, values.at(model::hf_name(t.spec))) << t.spec.name;
  }
  EXPECT_EQ(m.tokenizer.info.kind, "bpe");
  EXPECT_EQ(m.tokenizer.info.chat_template, kChatTemplate);
  EXPECT_EQ(m.tokenizer.info.added_tokens.size(), 3u);

  // fp16 storage: every matrix comes back as its fp16 rounding; vectors exactly.
  const std::string out = d.file("m.pqm");
  model::quantize_model(m, out, opts("q4", "fp16"));
  const PqmFile f = PqmFile::open(out);
  EXPECT_EQ(f.config().to_json(), cfg.to_json());
  for (const model::SourceTensor& t : m.tensors) {
    std::vector<float> want = values.at(model::hf_name(t.spec));
    if (model::is_matrix(t.spec.role))
      for (float& x : want) x = pq::f16_to_f32(pq::f32_to_f16(x));
    EXPECT_EQ(f.read_floats(f.tensor(t.spec.name)), want) << t.spec.name;
  }
  const auto vocab = f.read_strings(f.tensor("tokenizer.vocab"));
  ASSERT_EQ(vocab.size(), static_cast<size_t>(s.vocab));
  EXPECT_EQ(vocab[5], "\xc4\xa0hello");
  EXPECT_EQ(vocab[static_cast<size_t>(s.vocab) - 1], "<|im_end|>");
  const auto merges = f.read_strings(f.tensor("tokenizer.merges"));
  ASSERT_EQ(merges.size(), 42u);
  EXPECT_EQ(merges[0], "t0");
  EXPECT_EQ(merges[1], "t1");
  EXPECT_EQ(merges[40], "t1");  // the [left, right] form
  EXPECT_EQ(f.tokenizer().options["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(f.tokenizer().chat_template, kChatTemplate);
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfImport,
                         ::testing::Values(HfCase{"llama", "F16", 1, false, true, false, 0},
                                           HfCase{"llama", "BF16", 2, true, false, true, 0},
                                           HfCase{"mistral", "F32", 1, false, false, false, 0},
                                           HfCase{"qwen2", "BF16", 3, true, false, false, 0},
                                           HfCase{"qwen3", "F16", 2, false, false, false, 32},
                                           HfCase{"qwen3", "F32", 1, true, false, false, 0}),
                         [](const ::testing::TestParamInfo<HfCase>& p) {
                           const HfCase& c = p.param;
                           return c.arch + "_" + c.dtype + "_shards" + std::to_string(c.shards) + (c.tied ? "_tied" : "_untied");
                         });

TEST(HfImport, SingleSafetensorsFileWithConfigBeside) {
  TempDir d;
  HfSpec s;
  s.arch = "qwen2";
  const TensorValues values = make_hf_model(d.path(), s);
  const SourceModel m = model::open_source(d.file("model.safetensors"));
  EXPECT_EQ(m.config.architecture, "qwen2");
  EXPECT_EQ(m.tensors.size(), values.size());
}

// Quantize -> dequantize error within the bounds of Lloyd-Max theory: for N(0,1) coordinates
// the MSE-optimal b-bit quantizer has relative RMSE sqrt(D_b): 0.343, 0.186, 0.0975, 0.0500,
// 0.0253, 0.0128, 0.0064 for b = 2..8. The rotated block coordinates are close to Gaussian, so
// the measured error must be within [0.8, 1.25] of that.
TEST(Quantize, ErrorMatchesLloydMaxTheoryAtEveryWidth) {
  TempDir d;
  HfSpec s;
  s.dim = 256;
  s.hidden = 512;
  s.layers = 1;
  s.dtype = "F32";
  const TensorValues values = make_hf_model(d.path(), s);
  const SourceModel m = model::open_source(d.path());
  const double theory[9] = {0, 0, 0.343, 0.186, 0.0975, 0.0500, 0.0253, 0.0128, 0.0064};
  for (int bits = 2; bits <= 8; ++bits) {
    SCOPED_TRACE(bits);
    const std::string out = d.file("q" + std::to_string(bits) + ".pqm");
    const model::QuantizeResult r = model::quantize_model(m, out, opts("q" + std::to_string(bits), "pq", 128));
    const PqmFile f = PqmFile::open(out);
    const std::vector<float> got = f.read_floats(f.tensor("layers.0.mlp.up"));
    const double e = rel_rmse(got, values.at("model.layers.0.mlp.up_proj.weight"));
    EXPECT_GT(e, 0.8 * theory[bits]);
    EXPECT_LT(e, 1.25 * theory[bits]);
    for (const model::TensorReport& t : r.tensors)
      if (t.name == "layers.0.mlp.up") {
        EXPECT_NEAR(t.rel_rmse, e, 1e-4 * e);  // the summary reports what the file holds
        EXPECT_EQ(t.bits, bits);
        EXPECT_LT(t.kurtosis_after, t.kurtosis_before);
      }
  }
}

TEST(Quantize, RecipesMethodsAndThreadsAgree) {
  TempDir d;
  HfSpec s;
  s.dim = 128;
  s.hidden = 192;
  make_hf_model(d.path(), s);
  const SourceModel m = model::open_source(d.path());
  model::quantize_model(m, d.file("mixed.pqm"), opts("mixed"));
  const PqmFile f = PqmFile::open(d.file("mixed.pqm"));
  const std::map<std::string, int> want = {{"embed", 5}, {"layers.0.attn.q", 5}, {"layers.0.attn.k", 5},
                                           {"layers.0.attn.v", 5}, {"layers.0.attn.o", 6}, {"layers.1.mlp.gate", 3},
                                           {"layers.1.mlp.up", 3}, {"layers.1.mlp.down", 4}, {"lm_head", 6}};
  for (const auto& [name, bits] : want) EXPECT_EQ(f.tensor(name).quant.bits, bits) << name;
  EXPECT_EQ(f.tensor("layers.0.attn_norm").kind, model::TensorKind::f32);

  // Row-parallel quantization equals one pq::quantize() call over the whole matrix.
  for (const char* method : {"pq", "absmax", "rot-uniform", "lloyd"}) {
    model::QuantizeOptions o = opts("q3", method, 64);
    o.threads = 3;
    model::quantize_model(m, d.file("t.pqm"), o);
    const PqmFile g = PqmFile::open(d.file("t.pqm"));
    const std::vector<float> w = m.tensors[2].load_floats();  // layers.0.attn.q
    const pq::QuantMatrix one = pq::quantize(w.data(), 128, 128, 3, 64, [&] {
      pq::Method mm;
      pq::parse_method(method, &mm);
      return mm;
    }());
    const pq::QuantMatrix got = g.read_quant(g.tensor("layers.0.attn.q"));
    EXPECT_EQ(got.codes, one.codes) << method;
    EXPECT_EQ(got.scales, one.scales) << method;
    EXPECT_EQ(got.codebook, one.codebook) << method;
  }
}

TEST(Quantize, DequantOutIsAnFp16HfCheckpoint) {
  TempDir d;
  HfSpec s;
  s.tied = true;
  make_hf_model(d.path(), s);
  const SourceModel m = model::open_source(d.path());
  model::QuantizeOptions o = opts("q5");
  o.dequant_out = d.file("deq.safetensors");
  model::quantize_model(m, d.file("m.pqm"), o);
  const PqmFile f = PqmFile::open(d.file("m.pqm"));
  const model::SafetensorsFile st(d.file("deq.safetensors"));
  EXPECT_EQ(st.tensors().size(), m.tensors.size());
  EXPECT_EQ(st.find("lm_head.weight"), nullptr);  // tied
  for (const model::SourceTensor& t : m.tensors) {
    const model::SafeTensor& e = st.tensor(model::hf_name(t.spec));
    EXPECT_EQ(e.dtype, "F16");
    EXPECT_EQ(e.shape, t.spec.shape);
    std::vector<float> want = f.read_floats(f.tensor(t.spec.name));
    for (float& x : want) x = pq::f16_to_f32(pq::f32_to_f16(x));
    EXPECT_EQ(st.read_floats(e), want) << t.spec.name;
  }
}

// ---- HuggingFace: bad input ------------------------------------------------------------------
class HfBad : public ::testing::Test {
 protected:
  void SetUp() override { values_ = make_hf_model(d_.path(), spec_); }
  void edit_config(const std::function<void(json&)>& f) {
    json c = hf_config_json(spec_);
    f(c);
    write_text(d_.file("config.json"), c.dump());
  }
  void rewrite_weights(const std::function<void(std::vector<FixtureTensor>&)>& f) {
    std::vector<FixtureTensor> all;
    const model::SafetensorsFile st(d_.file("model.safetensors"));
    for (const auto& t : st.tensors()) all.push_back({t.name, t.dtype, t.shape, st.read_floats(t)});
    f(all);
    write_safetensors(d_.file("model.safetensors"), all);
  }
  void expect_import_error(const std::vector<std::string>& parts) {
    expect_error([&] { model::open_source(d_.path()); }, parts);
  }
  TempDir d_;
  HfSpec spec_;
  TensorValues values_;
};

TEST_F(HfBad, ConfigErrors) {
  const std::string cfg = d_.file("config.json");
  edit_config([](json& c) { c.erase("hidden_size"); });
  expect_import_error({cfg, "missing key 'hidden_size'"});
  edit_config([](json& c) { c["num_hidden_layers"] = "2"; });
  expect_import_error({cfg, "key 'num_hidden_layers': expected an integer, got string"});
  edit_config([](json& c) { c["architectures"] = {"GPT2LMHeadModel"}; });
  expect_import_error({cfg, "unsupported architecture 'GPT2LMHeadModel'"});
  edit_config([](json& c) { c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; });
  expect_import_error({cfg, "unsupported rope scaling type 'yarn'"});
  edit_config([](json& c) { c["hidden_act"] = "gelu"; });
  expect_import_error({cfg, "hidden_act 'gelu'"});
  edit_config([](json& c) { c["num_key_value_heads"] = 3; });
  expect_import_error({cfg, "not a multiple of n_kv_heads"});
  edit_config([](json& c) { c["intermediate_size"] = 100; });
  expect_import_error({"model.safetensors", "model.layers.0.mlp.gate_proj.weight", "shape [96, 64] but the config needs [100, 64]"});
  write_text(cfg, "{\"hidden_size\": 64,");
  expect_import_error({cfg, "invalid JSON"});
  std::filesystem::remove(cfg);
  expect_import_error({d_.path(), "neither a HuggingFace checkpoint"});
}

TEST_F(HfBad, TensorErrors) {
  auto named = [](std::vector<FixtureTensor>& all, const std::string& n) {
    return std::find_if(all.begin(), all.end(), [&](const FixtureTensor& t) { return t.name == n; });
  };
  rewrite_weights([&](auto& all) { all.erase(named(all, "model.layers.0.self_attn.k_proj.weight")); });
  expect_import_error({d_.path(), "missing tensor 'model.layers.0.self_attn.k_proj.weight'"});
  SetUp();
  rewrite_weights([](auto& all) { all.push_back({"model.layers.0.mlp.extra.weight", "F16", {2}, {1.0f, 2.0f}}); });
  expect_import_error({"model.safetensors", "'model.layers.0.mlp.extra.weight'", "unexpected tensor"});
  SetUp();
  rewrite_weights([&](auto& all) { named(all, "model.embed_tokens.weight")->dtype = "I32"; });
  expect_import_error({"model.safetensors", "'model.embed_tokens.weight'", "dtype I32 is not supported"});
  SetUp();
  rewrite_weights([&](auto& all) {
    auto t = named(all, "model.layers.0.input_layernorm.weight");
    t->values[3] = std::nanf("");
    t->dtype = "F32";
  });
  const SourceModel m = model::open_source(d_.path());
  ASSERT_EQ(m.tensors[1].spec.name, "layers.0.attn_norm");
  expect_error([&] { m.tensors[1].load_floats(); }, {"model.layers.0.input_layernorm.weight", "element 3 is not finite"});
}

TEST_F(HfBad, TruncatedSafetensorsAtManyCutPoints) {
  const std::string path = d_.file("model.safetensors");
  const std::vector<uint8_t> full = read_bytes(path);
  for (size_t cut = 0; cut < full.size(); cut += cut < 64 ? 1 : 397) {
    SCOPED_TRACE(cut);
    write_bytes(path, std::vector<uint8_t>(full.begin(), full.begin() + static_cast<ptrdiff_t>(cut)));
    expect_error([&] { model::SafetensorsFile f(path); }, {path});
  }
  write_bytes(path, std::vector<uint8_t>(full.begin(), full.end() - 2));
  expect_error([&] { model::SafetensorsFile f(path); }, {path, "outside the data section"});
}

// A safetensors file from a raw header and `data_bytes` bytes of data.
void write_raw_safetensors(const std::string& path, const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> b(8 + header.size() + data_bytes, 0x3c);
  const uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  write_bytes(path, b);
}

TEST(Safetensors, HostileHeaders) {
  TempDir d;
  const std::string p = d.file("x.safetensors");
  struct Case {
    std::string header, what;
  };
  const std::vector<Case> cases = {
      {R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", ""},  // valid
      {R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}})", "need 16"},
      {R"({"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}})", "outside the data section"},
      {R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}})", "outside the data section"},
      {R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 16]}})", "overflows"},
      {R"({"a": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}})", "unknown dtype 'Q4'"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       "overlaps"},
      {R"({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})", "negative"},
      {R"({"a": {"dtype": "F32", "shape": [4]}})", "missing key 'data_offsets'"},
      {R"({"a": 5})", "expected an object"},
      {R"(["a"])", "expected an object"},
      {R"({"a": )", "invalid JSON"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    write_raw_safetensors(p, c.header, 16);
    if (c.what.empty()) {
      const model::SafetensorsFile f(p);
      EXPECT_EQ(f.read_floats(f.tensor("a")).size(), 4u);
    } else {
      expect_error([&] { model::SafetensorsFile f(p); }, {p, c.what});
    }
  }
  std::vector<uint8_t> b(16, 0xff);  // header length 2^64-1
  write_bytes(p, b);
  expect_error([&] { model::SafetensorsFile f(p); }, {p, "header length"});
}

TEST(HfShards, BadIndex) {
  TempDir d;
  HfSpec s;
  s.shards = 2;
  make_hf_model(d.path(), s);
  const std::string idx = d.file("model.safetensors.index.json");
  const std::string original = model::read_file(idx);
  json j = json::parse(original);
  j["weight_map"]["model.norm.weight"] = "../model-00001-of-00002.safetensors";
  write_text(idx, j.dump());
  expect_error([&] { model::open_source(d.path()); }, {"'model.norm.weight'", "not a plain file name"});
  // A tensor that the index places in the shard that does not hold it.
  j = json::parse(original);
  const std::string moved = "model.layers.0.mlp.up_proj.weight";
  const std::string other = j["weight_map"][moved] == "model-00001-of-00002.safetensors" ? "model-00002-of-00002.safetensors"
                                                                                          : "model-00001-of-00002.safetensors";
  j["weight_map"][moved] = other;
  write_text(idx, j.dump());
  expect_error([&] { model::open_source(d.path()); }, {other, "no tensor '" + moved + "'", "places it there"});
  write_text(idx, original);
  std::filesystem::remove(d.file("model-00002-of-00002.safetensors"));
  expect_error([&] { model::open_source(d.path()); }, {"model-00002-of-00002.safetensors", "cannot open"});
}

TEST(HfTokenizer, BadTokenizerJson) {
  TempDir d;
  HfSpec s;
  make_hf_model(d.path(), s);
  const std::string tp = d.file("tokenizer.json");
  json t = json::parse(model::read_file(tp));
  t["model"]["type"] = "WordPiece";
  write_text(tp, t.dump());
  expect_error([&] { model::open_source(d.path()); }, {tp, "'WordPiece' is not supported"});
  t["model"]["type"] = "BPE";
  t["model"]["vocab"].erase("t7");
  write_text(tp, t.dump());
  expect_error([&] { model::open_source(d.path()); }, {tp, "token id 7 is missing"});
  t = json::parse(model::read_file(tp));
  t["model"]["vocab"]["t7"] = 7;
  t["model"]["merges"].push_back("a b c");
  write_text(tp, t.dump());
  expect_error([&] { model::open_source(d.path()); }, {tp, "model.merges[21]"});
}

// ---- llama2.c --------------------------------------------------------------------------------------
TEST(Llama2c, ImportPermutesQKIntoRotateHalfAndKeepsTheRest) {
  for (bool shared : {true, false}) {
    TempDir d;
    L2cSpec s;
    s.shared = shared;
    const std::vector<float> w = make_llama2c(d.file("m.bin"), s);
    const SourceModel m = model::open_source(d.file("m.bin"));
    EXPECT_EQ(m.format, "llama2c");
    EXPECT_EQ(m.config.tie_word_embeddings, shared);
    EXPECT_EQ(m.config.head_dim, 16);
    EXPECT_EQ(m.config.max_seq_len, 32);
    const size_t dim = 64, hid = 96, L = 2, hd = 16, kv = 32, V = 80;
    // llama2.c's order, computed here independently.
    const size_t emb = 0, att = V * dim, wq = att + L * dim, wk = wq + L * dim * dim, wv = wk + L * dim * kv,
                 wo = wv + L * dim * kv, ffn = wo + L * dim * dim, w1 = ffn + L * dim, w2 = w1 + L * hid * dim,
                 w3 = w2 + L * dim * hid, fin = w3 + L * hid * dim, cls = fin + dim + 32 * hd;
    auto slice = [&](size_t at, size_t n) { return std::vector<float>(w.begin() + at, w.begin() + at + n); };
    std::map<std::string, std::vector<float>> got;
    for (const auto& t : m.tensors) got[t.spec.name] = t.load_floats();
    EXPECT_EQ(got["embed"], slice(emb, V * dim));
    EXPECT_EQ(got["layers.1.attn_norm"], slice(att + dim, dim));
    EXPECT_EQ(got["layers.1.attn.v"], slice(wv + dim * kv, dim * kv));
    EXPECT_EQ(got["layers.0.attn.o"], slice(wo, dim * dim));
    EXPECT_EQ(got["layers.1.mlp.gate"], slice(w1 + hid * dim, hid * dim));
    EXPECT_EQ(got["layers.1.mlp.down"], slice(w2 + dim * hid, dim * hid));
    EXPECT_EQ(got["layers.0.mlp.up"], slice(w3, hid * dim));
    EXPECT_EQ(got["final_norm"], slice(fin, dim));
    EXPECT_EQ(got.count("lm_head"), shared ? 0u : 1u);
    if (!shared) {
      EXPECT_EQ(got["lm_head"], slice(cls, V * dim));
    }
    // q and k: within each head, new row t*hd/2 + i is old row 2i + t.
    for (auto [name, base, rows] : {std::tuple{"layers.1.attn.q", wq + dim * dim, dim}, std::tuple{"layers.1.attn.k", wk + dim * kv, kv}}) {
      const std::vector<float>& g = got[name];
      for (size_t r = 0; r < rows; ++r) {
        const size_t h = r / hd, j = r % hd, t = j / (hd / 2), i = j % (hd / 2);
        const size_t old = h * hd + 2 * i + t;
        ASSERT_EQ(0, std::memcmp(&g[r * dim], &w[base + old * dim], dim * 4)) << name << " row " << r;
      }
    }
  }
}

TEST(Llama2c, BadFiles) {
  TempDir d;
  const std::string p = d.file("m.bin");
  make_llama2c(p, {});
  const std::vector<uint8_t> full = read_bytes(p);
  for (size_t cut : {size_t{0}, size_t{4}, size_t{27}, size_t{28}, size_t{1000}, full.size() - 4, full.size() - 1}) {
    write_bytes(p, std::vector<uint8_t>(full.begin(), full.begin() + static_cast<ptrdiff_t>(cut)));
    expect_error([&] { model::open_source(p); }, {p, cut < 28 ? "shorter than the 28-byte" : "truncated or not a llama2.c"});
  }
  std::vector<uint8_t> b = full;
  b.push_back(0);
  write_bytes(p, b);
  expect_error([&] { model::open_source(p); }, {p, "implies"});
  auto with_header = [&](int index, int32_t v) {
    std::vector<uint8_t> h = full;
    std::memcpy(h.data() + 4 * index, &v, 4);
    write_bytes(p, h);
  };
  with_header(0, 0);
  expect_error([&] { model::open_source(p); }, {p, "dim = 0 is not positive"});
  with_header(3, 5);
  expect_error([&] { model::open_source(p); }, {p, "not a multiple of n_heads"});
  with_header(0, 0x616b3432);
  expect_error([&] { model::open_source(p); }, {p, "version 1/2"});
  with_header(1, 0x7fffffff);  // hidden_dim 2^31-1: sizes overflow nothing, but the size cannot match
  expect_error([&] { model::open_source(p); }, {p});
}

TEST(Llama2c, AttachLlama2cTokenizer) {
  TempDir d;
  make_llama2c(d.file("m.bin"), {});
  std::vector<float> scores;
  const auto tokens = make_llama2c_tokenizer(d.file("tok.bin"), 80, &scores);
  const SourceModel m = model::open_source(d.file("m.bin"), {.tokenizer_path = d.file("tok.bin")});
  model::quantize_model(m, d.file("m.pqm"), opts("q4"));
  const PqmFile f = PqmFile::open(d.file("m.pqm"));
  EXPECT_EQ(f.tokenizer().kind, "llama2c");
  EXPECT_EQ(f.read_strings(f.tensor("tokenizer.vocab")), tokens);
  EXPECT_EQ(f.read_floats(f.tensor("tokenizer.scores")), scores);
  EXPECT_EQ(f.tokenizer().options["max_token_length"], 8);
  make_llama2c_tokenizer(d.file("tok81.bin"), 81);
  expect_error([&] { model::open_source(d.file("m.bin"), {.tokenizer_path = d.file("tok81.bin")}); },
               {"tok81.bin", "more tokens than the model's vocab_size 80"});
  make_llama2c_tokenizer(d.file("tok79.bin"), 79);
  expect_error([&] { model::open_source(d.file("m.bin"), {.tokenizer_path = d.file("tok79.bin")}); },
               {"tok79.bin: token 79", "truncated"});
  expect_error([&] { model::open_source(d.file("m.bin"), {.tokenizer_path = d.file("tok.txt")}); }, {"tok.txt", "unknown tokenizer file"});
}

TEST(Llama2c, AttachSentencePieceModel) {
  TempDir d;
  L2cSpec s;
  s.dim = 8;
  s.hidden = 16;
  s.layers = 1;
  s.heads = 2;
  s.kv_heads = 1;
  s.vocab = 32000;
  make_llama2c(d.file("m.bin"), s);
  const std::string spm = std::string(PQVK_TEST_DATA) + "/llama2-tokenizer.model";
  const SourceModel m = model::open_source(d.file("m.bin"), {.tokenizer_path = spm});
  EXPECT_EQ(m.config.bos_id, 1);
  EXPECT_EQ(m.config.eos_ids, std::vector<int64_t>{2});
  model::quantize_model(m, d.file("m.pqm"), opts("q4", "pq", 64));
  const PqmFile f = PqmFile::open(d.file("m.pqm"));
  EXPECT_EQ(f.tokenizer().kind, "sentencepiece");
  const auto blob = f.bytes(f.tensor("tokenizer.model"));
  EXPECT_EQ(std::vector<uint8_t>(blob.begin(), blob.end()), read_bytes(spm));
  // Too many pieces for the model, and a file that is not a SentencePiece model.
  expect_error([&] { model::open_source(std::string(PQVK_TEST_DATA) + "/stories260K.bin", {.tokenizer_path = spm}); },
               {spm, "32000 pieces, more than the model's vocab_size 512"});
  write_text(d.file("bad.model"), "not a protobuf at all");
  expect_error([&] { model::open_source(d.file("m.bin"), {.tokenizer_path = d.file("bad.model")}); },
               {"bad.model", "not a valid SentencePiece model"});
}

TEST(Stories260K, ImportAndQuantizeQ4) {
  TempDir d;
  const SourceModel m = model::open_source(std::string(PQVK_TEST_DATA) + "/stories260K.bin");
  const model::ModelConfig& c = m.config;
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  const model::QuantizeResult r = model::quantize_model(m, d.file("s.pqm"), opts("q4", "pq", 64));
  const PqmFile f = PqmFile::open(d.file("s.pqm"));
  EXPECT_EQ(f.tensors().size(), 47u);
  double before = 0, after = 0;
  int n = 0;
  for (const model::TensorReport& t : r.tensors) {
    if (t.bits == 0) continue;
    EXPECT_GT(t.sqnr_db, 17.0) << t.name;  // Lloyd-Max 4-bit on N(0,1): 20.2 dB
    EXPECT_LT(t.sqnr_db, 23.0) << t.name;
    before += t.kurtosis_before;
    after += t.kurtosis_after;
    ++n;
  }
  EXPECT_EQ(n, 36);
  EXPECT_GT(before / n, 0.8);            // trained weights are heavy-tailed per block (measured 1.1)...
  EXPECT_LT(std::fabs(after / n), 0.3);  // ...and near-Gaussian after the rotation (measured ~0)
}

// ---- PolarQuant reference checkpoints -------------------------------------------------------------
struct RefCase {
  std::string packing;
  int bits, block;
};
void PrintTo(const RefCase& c, std::ostream* os) { *os << c.packing << " q" << c.bits << " B" << c.block; }

class ReferenceImport : public ::testing::TestWithParam<RefCase> {};

TEST_P(ReferenceImport, CodesComeBackExactly) {
  const RefCase& c = GetParam();
  TempDir d;
  const auto originals = make_reference_dir(d.path(), c.packing, c.bits, c.block);
  const SourceModel m = model::open_source(d.path());
  EXPECT_EQ(m.format, "polarquant-reference");
  size_t quantized = 0;
  for (const model::SourceTensor& t : m.tensors) {
    auto it = originals.find(model::hf_name(t.spec));
    if (it == originals.end()) {
      EXPECT_TRUE(t.load_floats) << t.spec.name;
      continue;
    }
    ASSERT_TRUE(t.load_quant) << t.spec.name;
    const pq::QuantMatrix q = t.load_quant(), &o = it->second;
    EXPECT_EQ(q.method, pq::Method::pq);
    EXPECT_TRUE(q.rotated);
    EXPECT_EQ(q.bits, o.bits);
    EXPECT_EQ(q.block, o.block);
    EXPECT_EQ(q.rows, o.rows);
    EXPECT_EQ(q.cols, o.cols);
    EXPECT_EQ(q.cols_padded, o.cols_padded);
    EXPECT_EQ(q.codes, o.codes) << t.spec.name;
    EXPECT_EQ(q.scales, o.scales) << t.spec.name;
    EXPECT_EQ(q.codebook, o.codebook) << t.spec.name;  // hlwq-q5 has none stored: rebuilt identically
    ++quantized;
  }
  EXPECT_EQ(quantized, originals.size());
  // Through pq-quantize: imported tensors are kept, not re-quantized.
  model::quantize_model(m, d.file("r.pqm"), opts("q6"));
  const PqmFile f = PqmFile::open(d.file("r.pqm"));
  EXPECT_EQ(f.read_quant(f.tensor("layers.1.mlp.down")).codes, originals.at("model.layers.1.mlp.down_proj.weight").codes);
  EXPECT_EQ(f.tensor("embed").quant.bits, 6);
}

INSTANTIATE_TEST_SUITE_P(Packings, ReferenceImport,
                         ::testing::Values(RefCase{"int8", 3, 128}, RefCase{"int8", 8, 64}, RefCase{"nibble", 2, 64},
                                           RefCase{"nibble", 4, 128}, RefCase{"5bit", 5, 128}, RefCase{"5bit", 5, 256},
                                           RefCase{"hlwq-q5", 5, 64}, RefCase{"hlwq-q5", 5, 128}),
                         [](const ::testing::TestParamInfo<RefCase>& p) {
                           std::string n = p.param.packing;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n + "_q" + std::to_string(p.param.bits) + "_B" + std::to_string(p.param.block);
                         });

// The mapping of docs/pqm-format.md, checked against the reference's own formula: the
// reference dequantizes w = (n / sqrt(B)) H_B centroids[codes]; pqvk computes
// scale * H_B codebook[code] from the imported matrix. Both must agree.
TEST(ReferenceImport, DequantizationMatchesTheReferenceFormula) {
  TempDir d;
  const int B = 64;
  const auto originals = make_reference_dir(d.path(), "5bit", 5, B);
  const SourceModel m = model::open_source(d.path());
  const std::vector<double>& centroids = pq::lloyd_max_centroids(5);
  for (const model::SourceTensor& t : m.tensors) {
    if (!t.load_quant) continue;
    const pq::QuantMatrix q = t.load_quant();
    std::vector<float> ours(q.rows * q.cols);
    pq::dequantize(q, ours.data());
    std::vector<double> ref(q.rows * q.cols);
    std::vector<double> blk(B);
    for (size_t r = 0; r < q.rows; ++r)
      for (size_t b = 0; b < q.cols_padded / B; ++b) {
        // Dense Sylvester Hadamard (orthonormal): H[i][j] = (-1)^popcount(i & j) / sqrt(B).
        std::vector<double> c(B);
        for (int k = 0; k < B; ++k) c[k] = centroids[q.code(r, b * B + k)];
        const double n = pq::f16_to_f32(q.scales[r * (q.cols_padded / B) + b]);
        for (int i = 0; i < B; ++i) {
          double acc = 0;
          for (int j = 0; j < B; ++j) acc += (std::popcount(unsigned(i & j)) % 2 ? -c[j] : c[j]);
          blk[i] = n / std::sqrt(double(B)) * acc / std::sqrt(double(B));
        }
        for (int k = 0; k < B && b * B + k < q.cols; ++k) ref[r * q.cols + b * B + k] = blk[k];
      }
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      num += (ours[i] - ref[i]) * (ours[i] - ref[i]);
      den += ref[i] * ref[i];
    }
    EXPECT_LT(std::sqrt(num / den), 1e-6) << t.spec.name;
  }
}

TEST(ReferenceImport, BadDirectories) {
  TempDir d;
  make_reference_dir(d.path(), "int8", 3, 128);
  const std::string st = d.file("model.safetensors");
  std::vector<FixtureTensor> all;
  {
    const model::SafetensorsFile f(st);
    for (const auto& t : f.tensors()) all.push_back({t.name, t.dtype, t.shape, {}});
    for (size_t i = 0; i < all.size(); ++i) {
      const auto& t = f.tensors()[i];
      const auto bytes = f.bytes(t);
      if (t.dtype == "I8")
        for (uint8_t b : bytes) all[i].values.push_back(float(b));
      else
        all[i].values = f.read_floats(t);
    }
  }
  auto rewrite = [&](const std::function<void(std::vector<FixtureTensor>&)>& edit) {
    auto copy = all;
    edit(copy);
    write_safetensors(st, copy);
  };
  auto find = [](std::vector<FixtureTensor>& v, const std::string& name) -> FixtureTensor& {
    for (auto& t : v)
      if (t.name == name) return t;
    throw std::runtime_error(name);
  };
  rewrite([&](auto& v) { find(v, "model.layers.0.self_attn.q_proj.codes").values[7] = 9; });
  const SourceModel m = model::open_source(d.path());
  expect_error([&] {
    for (const auto& t : m.tensors)
      if (t.load_quant) t.load_quant();
  }, {"model.layers.0.self_attn.q_proj.codes", "code 9 at index 7 does not fit in 3 bits"});
  rewrite([&](auto& v) { v.erase(std::find_if(v.begin(), v.end(), [](auto& t) { return t.name == "model.layers.1.mlp.up_proj.norms"; })); });
  expect_error([&] { model::open_source(d.path()); }, {"mlp.up_proj.codes", "has no 'model.layers.1.mlp.up_proj.norms'"});
  rewrite([&](auto& v) {
    auto& t = find(v, "model.layers.0.mlp.down_proj.codes");
    t.values.resize(t.values.size() - t.shape[1]);
    t.shape[0] -= 1;
  });
  expect_error([&] { model::open_source(d.path()); }, {"down_proj.codes", "fit no known packing"});
  rewrite([&](auto& v) { find(v, "model.layers.0.self_attn.o_proj.ct_scaled").values.resize(6); find(v, "model.layers.0.self_attn.o_proj.ct_scaled").shape = {6}; });
  expect_error([&] { model::open_source(d.path()); }, {"o_proj.ct_scaled", "expected 2^bits"});
}

}  // namespace
}  // namespace pqvk::test
