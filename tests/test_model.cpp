// The .pqm format (runtime/model/pqm.h, docs/pqm-format.md): CRC-32, string lists, write ->
// read round trips of every tensor kind, and a reader that trusts nothing: truncations at many
// cut points, corrupted headers, hostile index JSON (offsets past the end, overlaps, shape
// overflow, unknown kinds, missing keys, wrong types), bad checksums. Every failure must be a
// ModelError naming the file (and the tensor), never a crash.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <string>

#include "model/crc32.h"
#include "model/error.h"
#include "model/pqm.h"
#include "model_fixtures.h"

namespace pqvk::test {
namespace {

using model::PqmFile;
using model::TensorKind;

// A bitwise CRC-32 (one bit per step, no tables): the oracle for the table-driven one.
uint32_t crc32_bitwise(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

TEST(Crc32, KnownValues) {
  EXPECT_EQ(model::crc32("123456789", 9), 0xCBF43926u);
  EXPECT_EQ(model::crc32("", 0), 0u);
  EXPECT_EQ(model::crc32("a", 1), 0xE8B7BE43u);
  const char* fox = "The quick brown fox jumps over the lazy dog";
  EXPECT_EQ(model::crc32(fox, std::strlen(fox)), 0x414FA339u);
}

TEST(Crc32, MatchesBitwiseOracleAndContinues) {
  std::vector<uint8_t> data(10007);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{64}, size_t{1000}, data.size()})
    EXPECT_EQ(model::crc32(data.data(), n), crc32_bitwise(data.data(), n)) << n;
  const uint32_t part = model::crc32(data.data(), 3333);
  EXPECT_EQ(model::crc32(data.data() + 3333, data.size() - 3333, part), crc32_bitwise(data.data(), data.size()));
}

TEST(StringList, RoundTripAndMalformed) {
  const std::vector<std::string> list = {"", "a", std::string("\0b", 2), "\xc4\xa0hello", std::string(300, 'x')};
  const std::vector<uint8_t> bytes = model::encode_string_list(list);
  EXPECT_EQ(model::decode_string_list(bytes, "t"), list);
  for (size_t cut = 0; cut < bytes.size(); ++cut)
    EXPECT_THROW(model::decode_string_list(std::span(bytes.data(), cut), "t"), ModelError) << cut;
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  EXPECT_THROW(model::decode_string_list(longer, "t"), ModelError);
  std::vector<uint8_t> huge_count = bytes;
  huge_count[3] = 0x7f;  // count ~2^31
  EXPECT_THROW(model::decode_string_list(huge_count, "t"), ModelError);
}

// ---- round trips ---------------------------------------------------------------------------------
class PqmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("tiny.pqm");
    values_ = write_tiny_pqm(path_);
    bytes_ = read_bytes(path_);
  }
  TempDir dir_;
  std::string path_;
  std::map<std::string, std::vector<float>> values_;
  std::vector<uint8_t> bytes_;
};

TEST_F(PqmTest, RoundTripEveryTensor) {
  const PqmFile f = PqmFile::open(path_);
  EXPECT_EQ(f.version(), 1u);
  EXPECT_EQ(f.config().to_json(), tiny_config().to_json());
  EXPECT_EQ(f.tokenizer().kind, "llama2c");
  EXPECT_EQ(f.tokenizer().chat_template, kChatTemplate);
  ASSERT_EQ(f.tokenizer().added_tokens.size(), 1u);
  EXPECT_EQ(f.tokenizer().added_tokens[0].content, "<|im_start|>");
  std::set<TensorKind> kinds;
  std::set<std::string> methods;
  for (const auto& t : f.tensors()) {
    kinds.insert(t.kind);
    EXPECT_EQ(t.offset % 64, 0u) << t.name;
    if (t.kind == TensorKind::blob) continue;
    if (t.kind == TensorKind::pq) methods.insert(pq::method_name(t.quant.method));
    const std::vector<float> got = f.read_floats(t);
    const std::vector<float>& want = values_.at(t.name);
    ASSERT_EQ(got.size(), want.size()) << t.name;
    // pq tensors were dequantized from the same QuantMatrix: the file stores it exactly.
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), 4 * got.size())) << t.name;
  }
  EXPECT_EQ(kinds.size(), 4u);  // f32, f16, pq, blob
  EXPECT_EQ(methods.size(), 4u);
  const auto tokens = f.read_strings(f.tensor("tokenizer.vocab"));
  ASSERT_EQ(tokens.size(), 80u);
  EXPECT_EQ(tokens[17], "tok17");
}

TEST_F(PqmTest, QuantMatrixRoundTripIsExact) {
  // Write one matrix per (method, bits, block) into a model and compare every field.
  const model::ModelConfig c = tiny_config();
  for (pq::Method m : {pq::Method::pq, pq::Method::absmax, pq::Method::rot_uniform, pq::Method::lloyd})
    for (int bits : {2, 3, 5, 8}) {
      const int block = bits == 3 ? 256 : bits == 5 ? 64 : 128;
      const std::vector<float> w = random_weights(64 * 96, 40 + bits);  // attn.o is [dim, n_heads * head_dim]
      const pq::QuantMatrix q = pq::quantize(w.data(), 64, 96, bits, block, m);
      const std::string p = dir_.file("q.pqm");
      {
        model::PqmWriter wr(p);
        for (const model::TensorSpec& t : model::model_tensors(c)) {
          if (t.name == "layers.1.attn.o") {
            wr.add_quant(t.name, q);
            continue;
          }
          uint64_t n = 1;
          for (uint64_t d : t.shape) n *= d;
          wr.add_f32(t.name, t.shape, random_weights(n, 3));
        }
        wr.finish(c, model::TokenizerInfo{});
      }
      const PqmFile f = PqmFile::open(p);
      const pq::QuantMatrix r = f.read_quant(f.tensor("layers.1.attn.o"));
      EXPECT_EQ(r.method, q.method);
      EXPECT_EQ(r.bits, q.bits);
      EXPECT_EQ(r.block, q.block);
      EXPECT_EQ(r.rotated, q.rotated);
      EXPECT_EQ(r.rows, q.rows);
      EXPECT_EQ(r.cols, q.cols);
      EXPECT_EQ(r.cols_padded, q.cols_padded);
      EXPECT_EQ(r.codes, q.codes);
      EXPECT_EQ(r.scales, q.scales);
      EXPECT_EQ(r.codebook, q.codebook);
    }
}

TEST_F(PqmTest, WriterRefusesIncompleteModelsAndLeavesNoFile) {
  const std::string p = dir_.file("incomplete.pqm");
  {
    model::PqmWriter w(p);
    w.add_f32("embed", {80, 64}, random_weights(80 * 64, 1));
    try {
      w.finish(tiny_config(), model::TokenizerInfo{});
      FAIL() << "finish() accepted a model without its layers";
    } catch (const ModelError& e) {
      EXPECT_NE(std::string(e.what()).find("missing tensor 'layers.0.attn_norm'"), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(std::filesystem::exists(p));
  EXPECT_FALSE(std::filesystem::exists(p + ".partial"));
  model::PqmWriter w(dir_.file("dup.pqm"));
  w.add_f32("embed", {2}, std::vector<float>{1.0f, 2.0f});
  EXPECT_THROW(w.add_f32("embed", {2}, std::vector<float>{1.0f, 2.0f}), ModelError);
  EXPECT_THROW(w.add_f32("x", {3}, std::vector<float>{1.0f, 2.0f}), ModelError);
}

// ---- hostile input ---------------------------------------------------------------------------------
// Opens bytes as "bad.pqm"; expects a ModelError whose message names the file and contains
// `what` (and the tensor, when given).
void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& what, const std::string& tensor = "",
                     bool verify = true) {
  try {
    PqmFile::from_memory(bytes, "bad.pqm", {.verify_checksums = verify});
    ADD_FAILURE() << "accepted a file that should fail with: " << what;
  } catch (const ModelError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("bad.pqm", 0), 0u) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "' in: " << msg;
    if (!tensor.empty()) {
      EXPECT_NE(msg.find("'" + tensor + "'"), std::string::npos) << msg;
    }
  }
}

template <typename T>
void poke(std::vector<uint8_t>& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof v);
}
template <typename T>
T peek(const std::vector<uint8_t>& b, size_t at) {
  T v;
  std::memcpy(&v, b.data() + at, sizeof v);
  return v;
}

// The file with its index JSON replaced by `edit(index)` (header size and CRC fixed), or by
// raw text.
std::vector<uint8_t> with_index_text(std::vector<uint8_t> b, const std::string& text) {
  const auto off = peek<uint64_t>(b, 16);
  b.resize(off);
  b.insert(b.end(), text.begin(), text.end());
  poke<uint64_t>(b, 24, text.size());
  poke<uint64_t>(b, 32, b.size());
  poke<uint32_t>(b, 40, model::crc32(text.data(), text.size()));
  return b;
}
std::vector<uint8_t> with_index(const std::vector<uint8_t>& b, const std::function<void(json&)>& edit) {
  const auto off = peek<uint64_t>(b, 16), size = peek<uint64_t>(b, 24);
  json index = json::parse(std::string(reinterpret_cast<const char*>(b.data() + off), size));
  edit(index);
  return with_index_text(b, index.dump());
}
json& tensor_entry(json& index, const std::string& name) {
  for (json& e : index["tensors"])
    if (e["name"] == name) return e;
  throw std::runtime_error("no " + name);
}

TEST_F(PqmTest, TruncatedAtManyCutPoints) {
  std::vector<size_t> cuts;
  for (size_t c = 0; c <= 80; ++c) cuts.push_back(c);
  for (size_t c = 81; c < bytes_.size(); c += 61) cuts.push_back(c);
  for (size_t c = bytes_.size() - 40; c < bytes_.size(); ++c) cuts.push_back(c);
  for (size_t cut : cuts) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    std::vector<uint8_t> t(bytes_.begin(), bytes_.begin() + static_cast<ptrdiff_t>(cut));
    expect_rejected(t, cut < 64 ? "shorter than the 64-byte header" : "truncated or extended");
    // Even with the header's file size patched to match, a cut file is rejected (the index
    // no longer ends the file, or its CRC fails).
    if (cut >= 64) {
      poke<uint64_t>(t, 32, cut);
      expect_rejected(t, "");
    }
  }
}

TEST_F(PqmTest, BadHeaders) {
  auto b = bytes_;
  b[0] = 'X';
  expect_rejected(b, "bad magic");
  b = bytes_;
  poke<uint32_t>(b, 8, 2);
  expect_rejected(b, "unsupported .pqm version 2");
  b = bytes_;
  poke<uint32_t>(b, 12, 48);
  expect_rejected(b, "alignment 48");
  b = bytes_;
  b[50] = 1;
  expect_rejected(b, "reserved byte 50");
  b = bytes_;
  b.push_back(0);
  expect_rejected(b, "truncated or extended");
  b = bytes_;
  poke<uint64_t>(b, 16, ~uint64_t{0} - 8);  // index offset near 2^64: no wrap-around
  expect_rejected(b, "does not end the file");
  b = bytes_;
  b[peek<uint64_t>(b, 16) + 5] ^= 0x20;
  expect_rejected(b, "index checksum mismatch");
}

TEST_F(PqmTest, HostileIndex) {
  const uint64_t end = peek<uint64_t>(bytes_, 16);
  struct Case {
    std::string what, tensor;
    std::function<void(json&)> edit;
  };
  const std::vector<Case> cases = {
      {"runs past the tensor data", "embed", [&](json& j) { tensor_entry(j, "embed")["offset"] = end; }},
      {"runs past the tensor data", "embed", [](json& j) { tensor_entry(j, "embed")["offset"] = ~uint64_t{0} - 63; }},
      {"overlaps tensor", "", [](json& j) {
         tensor_entry(j, "layers.0.attn_norm")["offset"] = tensor_entry(j, "embed")["offset"];
         tensor_entry(j, "layers.0.attn_norm")["crc32"] = tensor_entry(j, "embed")["crc32"];
       }},
      {"size overflows 64 bits", "final_norm",
       [](json& j) { tensor_entry(j, "final_norm")["shape"] = {uint64_t{1} << 32, uint64_t{1} << 32, 16}; }},
      {"overflows 64 bits", "embed",
       [](json& j) {
         json& e = tensor_entry(j, "embed");
         e["kind"] = "f32";
         e["shape"] = {uint64_t{1} << 62, 2};
       }},
      {"unknown kind 'q4_k'", "final_norm", [](json& j) { tensor_entry(j, "final_norm")["kind"] = "q4_k"; }},
      {"not a multiple of the alignment", "final_norm",
       [](json& j) { tensor_entry(j, "final_norm")["offset"] = tensor_entry(j, "final_norm")["offset"].get<uint64_t>() + 4; }},
      {"does not match its kind and shape", "final_norm",
       [](json& j) { tensor_entry(j, "final_norm")["size"] = tensor_entry(j, "final_norm")["size"].get<uint64_t>() - 4; }},
      {"shape [0]", "final_norm", [](json& j) { tensor_entry(j, "final_norm")["shape"] = {0}; }},
      {"at most 4 allowed", "final_norm", [](json& j) { tensor_entry(j, "final_norm")["shape"] = {1, 1, 1, 1, 64}; }},
      {"is negative", "final_norm", [](json& j) { tensor_entry(j, "final_norm")["offset"] = -64; }},
      {"expected a non-negative integer, got string", "final_norm", [](json& j) { tensor_entry(j, "final_norm")["size"] = "256"; }},
      {"out of range", "final_norm", [](json& j) { tensor_entry(j, "final_norm")["crc32"] = uint64_t{1} << 32; }},
      {"duplicate tensor name", "final_norm", [](json& j) { j["tensors"].push_back(tensor_entry(j, "final_norm")); }},
      {"missing tensor 'lm_head'", "", [](json& j) {
         auto& t = j["tensors"];
         for (size_t i = 0; i < t.size(); ++i)
           if (t[i]["name"] == "lm_head") t.erase(i);
       }},
      {"is not part of this model", "extra", [](json& j) { tensor_entry(j, "final_norm")["name"] = "extra"; }},
      {"shape [96, 64] but the model config needs [64, 64]", "layers.0.attn.q",
       [](json& j) { j["model"]["n_heads"] = 4; j["model"]["head_dim"] = 16; }},  // q: 4*16 rows
      {"missing key 'dim'", "", [](json& j) { j["model"].erase("dim"); }},
      {"key 'dim': expected an integer, got string", "", [](json& j) { j["model"]["dim"] = "64"; }},
      {"key 'n_layers': value 0 is out of range", "", [](json& j) { j["model"]["n_layers"] = 0; }},
      {"not a multiple of n_kv_heads", "", [](json& j) { j["model"]["n_kv_heads"] = 3; }},
      {"unknown architecture 'gpt2'", "", [](json& j) { j["model"]["architecture"] = "gpt2"; }},
      {"unsupported type 'yarn'", "", [](json& j) { j["model"]["rope_scaling"]["type"] = "yarn"; }},
      {"missing key 'tensors'", "", [](json& j) { j.erase("tensors"); }},
      {"key 'format' is not \"pqm\"", "", [](json& j) { j["format"] = "gguf"; }},
      {"unknown tokenizer kind 'wordpiece'", "", [](json& j) { j["tokenizer"]["kind"] = "wordpiece"; }},
      {"missing tensor 'tokenizer.model'", "", [](json& j) {
         j["tokenizer"]["kind"] = "sentencepiece";
         auto& t = j["tensors"];
         for (size_t i = t.size(); i-- > 0;)
           if (t[i]["name"].get<std::string>().starts_with("tokenizer.")) t.erase(i);
       }},
      {"is not part of this model", "tokenizer.vocab", [](json& j) { j["tokenizer"]["kind"] = "sentencepiece"; }},
      {"added token id 90", "", [](json& j) { j["tokenizer"]["added_tokens"][0]["id"] = 90; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    expect_rejected(with_index(bytes_, c.edit), c.what, c.tensor, false);
  }
  expect_rejected(with_index_text(bytes_, "{\"format\": \"pqm\", "), "invalid JSON");
  expect_rejected(with_index_text(bytes_, "[1, 2, 3]"), "expected an object");
  expect_rejected(with_index_text(bytes_, std::string(200, '[') + std::string(200, ']')), "nested deeper");
}

TEST_F(PqmTest, HostilePqTensors) {
  const PqmFile f = PqmFile::open(path_);
  std::string name;
  for (const auto& t : f.tensors())
    if (t.kind == TensorKind::pq && t.quant.method == pq::Method::pq) name = t.name;
  ASSERT_FALSE(name.empty());
  expect_rejected(with_index(bytes_, [&](json& j) { tensor_entry(j, name)["quant"]["bits"] = 9; }), "out of range", name, false);
  expect_rejected(with_index(bytes_, [&](json& j) { tensor_entry(j, name)["quant"]["block"] = 96; }), "block must be", name, false);
  expect_rejected(with_index(bytes_, [&](json& j) { tensor_entry(j, name)["quant"]["rotated"] = false; }), "requires rotated", name, false);
  expect_rejected(with_index(bytes_, [&](json& j) { tensor_entry(j, name)["quant"]["method"] = "nf4"; }), "unknown method", name, false);
  expect_rejected(with_index(bytes_, [&](json& j) { tensor_entry(j, name)["quant"]["cols_padded"] = 32; }), "cols_padded", name, false);
  expect_rejected(with_index(bytes_, [&](json& j) { tensor_entry(j, name).erase("quant"); }), "missing key 'quant'", name, false);
  expect_rejected(with_index(bytes_, [&](json& j) { tensor_entry(j, "embed")["kind"] = "blob"; }), "1-D shape", "embed", false);

  // A NaN in the codebook (with the CRC fixed so that only the value check can catch it).
  const model::TensorInfo& t = f.tensor(name);
  const model::PqLayout l = model::pq_layout(t.rows(), t.quant.cols_padded, t.quant.bits, t.quant.block, "");
  std::vector<uint8_t> b = bytes_;
  poke<float>(b, t.offset + l.codebook_offset + 4, std::nanf(""));
  const uint32_t crc = model::crc32(b.data() + t.offset, t.size);
  b = with_index(b, [&](json& j) { tensor_entry(j, name)["crc32"] = crc; });
  const PqmFile g = PqmFile::from_memory(b, "bad.pqm");
  try {
    g.read_quant(g.tensor(name));
    ADD_FAILURE() << "a NaN codebook was accepted";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.pqm: tensor '" + name + "': codebook holds a non-finite value"),
              std::string::npos) << e.what();
  }
}

TEST_F(PqmTest, ChecksumMismatchNamesTheTensor) {
  const PqmFile f = PqmFile::open(path_);
  for (const char* name : {"embed", "layers.1.mlp.down", "tokenizer.vocab"}) {
    const model::TensorInfo& t = f.tensor(name);
    std::vector<uint8_t> b = bytes_;
    b[t.offset + t.size - 1] ^= 0x01;  // the last byte: for the vocab blob, a character, not a length
    expect_rejected(b, "checksum mismatch", name);
    EXPECT_NO_THROW(PqmFile::from_memory(b, "bad.pqm", {.verify_checksums = false}));  // --no-verify
  }
}

TEST_F(PqmTest, MalformedTokenizerBlob) {
  const PqmFile f = PqmFile::open(path_);
  const model::TensorInfo& t = f.tensor("tokenizer.vocab");
  std::vector<uint8_t> b = bytes_;
  poke<uint32_t>(b, t.offset + 4, 1000000);  // the first string's length runs past the blob
  expect_rejected(b, "past the end", "tokenizer.vocab", false);
}

TEST(PqmMissingFile, NamesThePath) {
  try {
    PqmFile::open("/nonexistent/dir/model.pqm");
    FAIL();
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/model.pqm: cannot open"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace pqvk::test
