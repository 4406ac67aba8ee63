// GGUF as an input of pq-quantize (runtime/model/gguf.*, import_gguf.cpp, gguf_tokenizer.cpp):
// every block decoder against blocks built here by hand with known values; the reader on files
// written here (every metadata type, both versions, alignments) and on hostile ones (each a
// ModelError naming the file, the key or the tensor); the importer on tiny models of each
// architecture (every tensor back exactly, llama q/k permutation undone, hyperparameters, RoPE
// scaling including Llama 3.1's divisors, both tokenizer kinds); and the bundled HuggingFace
// model written as GGUF in F16 (the same .pqm, tokenizer and greedy ids as the HuggingFace
// path) and in Q8_0 (within what Q8_0's rounding allows).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <ostream>
#include <string>

#include "expect_error.h"
#include "gguf_fixtures.h"
#include "llm/cpu_model.h"
#include "model/convert.h"
#include "model/error.h"
#include "model/files.h"
#include "model/gguf.h"
#include "model/pqm.h"
#include "model/source.h"
#include "model_fixtures.h"
#include "quant/polarquant.h"
#include "tokenize/tokenizer.h"

namespace pqvk::test {
namespace {

using model::GgmlType;
using model::GgufFile;
using model::PqmFile;
using model::SourceModel;

std::vector<float> decode(GgmlType type, const std::vector<uint8_t>& bytes, size_t n) {
  std::vector<float> out(n, -12345.0f);
  model::dequantize(type, bytes.data(), n, out.data());
  return out;
}

void put_half(std::vector<uint8_t>& b, size_t at, float v) {
  const uint16_t h = pq::f32_to_f16(v);
  ASSERT_EQ(pq::f16_to_f32(h), v) << "test values must be exact in fp16";
  b[at] = static_cast<uint8_t>(h & 0xff);
  b[at + 1] = static_cast<uint8_t>(h >> 8);
}

// ---- block decoders ---------------------------------------------------------------------------------

TEST(GgufBlocks, FloatTypesFromKnownBits) {
  const std::vector<uint8_t> f16 = {0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B, 0x01, 0x00};  // 1, -2, 65504, 2^-24
  EXPECT_EQ(decode(GgmlType::f16, f16, 4), (std::vector<float>{1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24)}));
  const std::vector<uint8_t> bf16 = {0x80, 0x3F, 0x40, 0xC0, 0x49, 0x40};  // 1, -3, 3.140625
  EXPECT_EQ(decode(GgmlType::bf16, bf16, 3), (std::vector<float>{1.0f, -3.0f, 3.140625f}));
  std::vector<uint8_t> f32(8);
  const float v[2] = {0.1f, -7.25f};
  std::memcpy(f32.data(), v, 8);
  EXPECT_EQ(decode(GgmlType::f32, f32, 2), (std::vector<float>{0.1f, -7.25f}));
}

TEST(GgufBlocks, Q8_0) {
  // d = 0.5, q[k] = 4k - 64 (covers -64..60) in block 0; d = -2, q[k] = -128 + 8k in block 1.
  std::vector<uint8_t> b(68);
  put_half(b, 0, 0.5f);
  put_half(b, 34, -2.0f);
  std::vector<float> want;
  for (int k = 0; k < 32; ++k) {
    b[2 + k] = static_cast<uint8_t>(static_cast<int8_t>(4 * k - 64));
    want.push_back(0.5f * static_cast<float>(4 * k - 64));
  }
  for (int k = 0; k < 32; ++k) {
    b[36 + k] = static_cast<uint8_t>(static_cast<int8_t>(-128 + 8 * k));
    want.push_back(-2.0f * static_cast<float>(-128 + 8 * k));
  }
  EXPECT_EQ(decode(GgmlType::q8_0, b, 64), want);
  // A literal block: d = 1.0 (0x3C00), q = 0x7F, 0x80, 0x01, 0xFF, then zeros.
  std::vector<uint8_t> lit(34, 0);
  lit[1] = 0x3C, lit[2] = 0x7F, lit[3] = 0x80, lit[4] = 0x01, lit[5] = 0xFF;
  const std::vector<float> got = decode(GgmlType::q8_0, lit, 32);
  EXPECT_EQ(std::vector<float>(got.begin(), got.begin() + 5), (std::vector<float>{127, -128, 1, -1, 0}));
}

TEST(GgufBlocks, Q4_0AndQ4_1) {
  // Nibble n[k] = (7k + 3) % 16: the low nibbles of qs[0..15] are elements 0..15, the high ones 16..31.
  std::vector<uint8_t> q40(18, 0), q41(20, 0);
  put_half(q40, 0, 0.25f);
  put_half(q41, 0, 0.5f);
  put_half(q41, 2, -1.0f);
  std::vector<float> want0, want1;
  for (int k = 0; k < 32; ++k) {
    const int n = (7 * k + 3) % 16;
    q40[2 + k % 16] |= static_cast<uint8_t>(k < 16 ? n : n << 4);
    q41[4 + k % 16] |= static_cast<uint8_t>(k < 16 ? n : n << 4);
    want0.push_back(0.25f * static_cast<float>(n - 8));
    want1.push_back(0.5f * static_cast<float>(n) - 1.0f);
  }
  EXPECT_EQ(decode(GgmlType::q4_0, q40, 32), want0);
  EXPECT_EQ(decode(GgmlType::q4_1, q41, 32), want1);
  // A literal Q4_0 block: d = 1, qs[0] = 0x1F -> element 0 = 15 - 8, element 16 = 1 - 8.
  std::vector<uint8_t> lit(18, 0x88);
  lit[0] = 0x00, lit[1] = 0x3C, lit[2] = 0x1F;
  const std::vector<float> got = decode(GgmlType::q4_0, lit, 32);
  EXPECT_EQ(got[0], 7.0f);
  EXPECT_EQ(got[16], -7.0f);
  EXPECT_EQ(got[1], 0.0f);
}

TEST(GgufBlocks, Q5_0AndQ5_1) {
  // q[k] = (11k + 5) % 32; bit k of the u32 qh is its fifth bit, its low four bits the nibble.
  std::vector<uint8_t> q50(22, 0), q51(24, 0);
  put_half(q50, 0, 0.125f);
  put_half(q51, 0, 0.25f);
  put_half(q51, 2, 2.0f);
  uint32_t qh = 0;
  std::vector<float> want0, want1;
  for (int k = 0; k < 32; ++k) {
    const int q = (11 * k + 5) % 32;
    qh |= static_cast<uint32_t>(q >> 4) << k;
    q50[6 + k % 16] |= static_cast<uint8_t>(k < 16 ? (q & 15) : (q & 15) << 4);
    q51[8 + k % 16] |= static_cast<uint8_t>(k < 16 ? (q & 15) : (q & 15) << 4);
    want0.push_back(0.125f * static_cast<float>(q - 16));
    want1.push_back(0.25f * static_cast<float>(q) + 2.0f);
  }
  std::memcpy(q50.data() + 2, &qh, 4);
  std::memcpy(q51.data() + 4, &qh, 4);
  EXPECT_EQ(decode(GgmlType::q5_0, q50, 32), want0);
  EXPECT_EQ(decode(GgmlType::q5_1, q51, 32), want1);
}

// The 12 scale bytes of Q4_K / Q5_K, packed as the format describes (6-bit scales and mins).
std::vector<uint8_t> pack_k_scales(const int* scale, const int* min) {
  std::vector<uint8_t> b(12, 0);
  for (int s = 0; s < 4; ++s) {
    b[s] = static_cast<uint8_t>((scale[s] & 63) | (scale[s + 4] >> 4) << 6);
    b[s + 4] = static_cast<uint8_t>((min[s] & 63) | (min[s + 4] >> 4) << 6);
    b[s + 8] = static_cast<uint8_t>((scale[s + 4] & 15) | (min[s + 4] & 15) << 4);
  }
  return b;
}

const int kScales[8] = {1, 17, 33, 63, 48, 21, 60, 5};
const int kMins[8] = {2, 40, 7, 63, 31, 16, 59, 0};

TEST(GgufBlocks, Q4_K) {
  std::vector<uint8_t> b(144, 0);
  put_half(b, 0, 0.5f);
  put_half(b, 2, 0.25f);
  const std::vector<uint8_t> sc = pack_k_scales(kScales, kMins);
  std::copy(sc.begin(), sc.end(), b.begin() + 4);
  std::vector<float> want;
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32, l = i % 32, v = (5 * i + 3) % 16;
    b[16 + 32 * (s / 2) + l] |= static_cast<uint8_t>(s % 2 == 0 ? v : v << 4);  // run s/2: low nibbles sub-block 2r
    want.push_back(0.5f * static_cast<float>(kScales[s]) * static_cast<float>(v) - 0.25f * static_cast<float>(kMins[s]));
  }
  EXPECT_EQ(decode(GgmlType::q4_k, b, 256), want);
}

TEST(GgufBlocks, Q5_K) {
  std::vector<uint8_t> b(176, 0);
  put_half(b, 0, 0.25f);
  put_half(b, 2, 0.5f);
  const std::vector<uint8_t> sc = pack_k_scales(kScales, kMins);
  std::copy(sc.begin(), sc.end(), b.begin() + 4);
  std::vector<float> want;
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32, l = i % 32, v = (13 * i + 7) % 32;
    b[16 + l] |= static_cast<uint8_t>((v >> 4) << s);                                      // qh[l] bit s
    b[48 + 32 * (s / 2) + l] |= static_cast<uint8_t>(s % 2 == 0 ? (v & 15) : (v & 15) << 4);
    want.push_back(0.25f * static_cast<float>(kScales[s]) * static_cast<float>(v) - 0.5f * static_cast<float>(kMins[s]));
  }
  EXPECT_EQ(decode(GgmlType::q5_k, b, 256), want);
}

TEST(GgufBlocks, Q6_K) {
  std::vector<uint8_t> b(210, 0);
  put_half(b, 208, 0.5f);
  int8_t scales[16];
  for (int s = 0; s < 16; ++s) scales[s] = static_cast<int8_t>((s * 37) % 255 - 127);
  std::memcpy(b.data() + 192, scales, 16);
  std::vector<float> want;
  for (int i = 0; i < 256; ++i) {
    const int v = (7 * i + 1) % 64, h = i / 128, e = i % 128, l = e % 32, r = e / 32;
    // ql: byte l holds elements l (low) and l+64 (high), byte l+32 elements l+32 and l+96;
    // qh[l] holds the high two bits of elements l, l+32, l+64, l+96 at bits 0, 2, 4, 6.
    const int ql = 64 * h + l + (r % 2 == 1 ? 32 : 0);
    b[ql] |= static_cast<uint8_t>(r < 2 ? (v & 15) : (v & 15) << 4);
    b[128 + 32 * h + l] |= static_cast<uint8_t>((v >> 4) << (2 * r));
    want.push_back(0.5f * static_cast<float>(scales[i / 16]) * static_cast<float>(v - 32));
  }
  EXPECT_EQ(decode(GgmlType::q6_k, b, 256), want);
}

// ---- the reader --------------------------------------------------------------------------------------

GgufBuilder tiny_file() {
  GgufBuilder b;
  b.string("general.architecture", "llama");
  b.tensor("a", {32, 2}, kQ8_0, encode_tensor(random_weights(64, 1), kQ8_0));
  b.tensor("b", {5}, kF32, encode_tensor({1, 2, 3, 4, 5}, kF32));
  return b;
}

GgufFile from(const std::vector<uint8_t>& bytes) { return GgufFile::from_memory(bytes, "t.gguf"); }

TEST(GgufReader, EveryMetadataTypeBothVersions) {
  for (uint32_t version : {2u, 3u}) {
    GgufBuilder b;
    b.version = version;
    b.kvs.push_back({"k.u8", kU8, {200}});
    b.kvs.push_back({"k.i8", kI8, {0xFE}});
    b.kvs.push_back({"k.u16", kU16, {0x34, 0x12}});
    b.kvs.push_back({"k.i16", kI16, {0xFF, 0xFF}});
    b.u32("k.u32", 4000000000u);
    b.i32("k.i32", -5);
    b.f32("k.f32", 0.25f);
    b.boolean("k.bool", true);
    b.string("k.string", "héllo");
    b.u64("k.u64", uint64_t{1} << 40);
    b.kvs.push_back({"k.i64", kI64, {0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}});
    b.f64("k.f64", 1e-300);
    b.strings("k.strings", {"a", "", "ccc"});
    b.f32s("k.f32s", {1.5f, -2.0f});
    b.i32s("k.i32s", {3, -4});
    std::vector<uint8_t> nested;  // [[1, 2], []] of u8
    put_u32(nested, kArray);
    put_u64(nested, 2);
    for (const std::vector<uint8_t>& inner : {std::vector<uint8_t>{1, 2}, std::vector<uint8_t>{}}) {
      put_u32(nested, kU8);
      put_u64(nested, inner.size());
      nested.insert(nested.end(), inner.begin(), inner.end());
    }
    b.kvs.push_back({"k.nested", kArray, nested});
    const std::vector<uint8_t> bytes = b.bytes();
    const GgufFile f = from(bytes);
    EXPECT_EQ(f.version(), version);
    EXPECT_EQ(f.metadata().size(), 16u);
    EXPECT_EQ(f.get_uint("k.u8", 255), 200u);
    EXPECT_EQ(f.get_uint("k.u16", 65535), 0x1234u);
    EXPECT_EQ(f.get_uint("k.u32", UINT32_MAX), 4000000000u);
    EXPECT_EQ(f.get_uint("k.u64", UINT64_MAX), uint64_t{1} << 40);
    EXPECT_EQ(f.get_float("k.f32"), 0.25);
    EXPECT_EQ(f.get_float("k.f64"), 1e-300);
    EXPECT_EQ(f.get_bool("k.bool"), true);
    EXPECT_EQ(f.get_string("k.string"), "héllo");
    EXPECT_EQ(f.get_strings("k.strings"), (std::vector<std::string>{"a", "", "ccc"}));
    EXPECT_EQ(f.get_floats("k.f32s"), (std::vector<float>{1.5f, -2.0f}));
    EXPECT_EQ(f.get_ints("k.i32s"), (std::vector<int64_t>{3, -4}));
    EXPECT_EQ(f.find("k.nested")->count, 2u);
    EXPECT_EQ(f.find("k.i64")->bits, static_cast<uint64_t>(int64_t{-2}));
    EXPECT_FALSE(f.get_uint("absent", 10).has_value());
    expect_error([&] { f.get_uint("k.i8", 255); }, {"t.gguf: key 'k.i8'", "-2 is negative"});
    expect_error([&] { f.get_uint("k.i16", 255); }, {"key 'k.i16'", "negative"});
    expect_error([&] { f.get_uint("k.u8", 100); }, {"key 'k.u8'", "200 is out of range [0, 100]"});
    expect_error([&] { f.get_uint("k.f32", 100); }, {"key 'k.f32'", "expected an integer, got f32"});
    expect_error([&] { f.get_string("k.u32"); }, {"key 'k.u32'", "expected a string, got u32"});
    expect_error([&] { f.get_strings("k.f32s"); }, {"key 'k.f32s'", "expected an array of strings, got array of f32"});
    expect_error([&] { f.get_floats("k.nested"); }, {"key 'k.nested'", "array of array"});
  }
}

TEST(GgufReader, AlignmentOffsetsAndShapes) {
  for (uint32_t alignment : {0u, 8u, 64u, 4096u}) {  // 0: the default (no key), 32
    GgufBuilder b = tiny_file();
    if (alignment) b.set_alignment(alignment);
    const std::vector<float> cube = random_weights(24, 3);
    b.tensor("cube", {4, 3, 2}, kF32, encode_tensor(cube, kF32));
    const std::vector<uint8_t> bytes = b.bytes();
    const GgufFile f = from(bytes);
    const uint64_t a = alignment ? alignment : 32;
    EXPECT_EQ(f.alignment(), a);
    EXPECT_EQ(f.data_offset() % a, 0u);
    ASSERT_EQ(f.tensors().size(), 3u);
    for (const model::GgufTensor& t : f.tensors()) EXPECT_EQ((t.offset - f.data_offset()) % a, 0u) << t.name;
    const model::GgufTensor& c = *f.find_tensor("cube");
    EXPECT_EQ(c.shape(), (std::vector<uint64_t>{2, 3, 4}));
    EXPECT_EQ(c.elements, 24u);
    EXPECT_EQ(f.read_floats(c), cube);
    EXPECT_EQ(f.read_floats(*f.find_tensor("b")), (std::vector<float>{1, 2, 3, 4, 5}));
    EXPECT_EQ(f.find_tensor("a")->size, 68u);
  }
}

TEST(GgufReader, TruncatedAtEveryCutPoint) {
  const std::vector<uint8_t> full = tiny_file().bytes();
  ASSERT_NO_THROW(from(full));
  for (size_t cut = 0; cut < full.size(); ++cut) {
    const std::vector<uint8_t> part(full.begin(), full.begin() + static_cast<ptrdiff_t>(cut));
    EXPECT_THROW(from(part), ModelError) << "cut at " << cut;
  }
}

TEST(GgufReader, HostileHeaders) {
  std::vector<uint8_t> b = tiny_file().bytes();
  b[0] = 'X';
  expect_error([&] { from(b); }, {"t.gguf", "bad magic"});
  for (const auto& [version, what] : std::vector<std::pair<uint32_t, std::string>>{
           {1, "version 1 is not supported"}, {4, "unknown GGUF version 4"}, {0x03000000, "big-endian"}}) {
    GgufBuilder g = tiny_file();
    g.version = version;
    expect_error([&] { from(g.bytes()); }, {"t.gguf", what});
  }
  // Counts far beyond the file.
  b = tiny_file().bytes();
  std::memset(b.data() + 16, 0xFF, 8);  // kv count
  expect_error([&] { from(b); }, {"t.gguf"});
  b = tiny_file().bytes();
  std::memset(b.data() + 8, 0x7F, 8);  // tensor count
  expect_error([&] { from(b); }, {"t.gguf"});
}

TEST(GgufReader, HostileMetadata) {
  auto with = [](std::vector<GgufBuilder::Kv> kvs) {
    GgufBuilder b = tiny_file();
    b.kvs.insert(b.kvs.end(), kvs.begin(), kvs.end());
    return b.bytes();
  };
  std::vector<uint8_t> huge_string;
  put_u64(huge_string, uint64_t{1} << 62);
  expect_error([&] { from(with({{"k", kString, huge_string}})); }, {"t.gguf", "key 'k'", "exceeds"});
  std::vector<uint8_t> huge_array;
  put_u32(huge_array, kU32);
  put_u64(huge_array, uint64_t{1} << 61);
  expect_error([&] { from(with({{"k", kArray, huge_array}})); }, {"key 'k'", "does not fit"});
  std::vector<uint8_t> bad_elem;
  put_u32(bad_elem, 13);
  put_u64(bad_elem, 1);
  expect_error([&] { from(with({{"k", kArray, bad_elem}})); }, {"key 'k'", "unknown array element type 13"});
  std::vector<uint8_t> deep;  // arrays nested 20 deep
  for (int i = 0; i < 20; ++i) {
    put_u32(deep, kArray);
    put_u64(deep, 1);
  }
  expect_error([&] { from(with({{"k", kArray, deep}})); }, {"key 'k'", "nested deeper"});
  expect_error([&] { from(with({{"k", 13, {0}}})); }, {"key 'k'", "unknown value type 13"});
  expect_error([&] { from(with({{"k", kBool, {2}}})); }, {"key 'k'", "bool of value 2"});
  std::vector<uint8_t> bools;
  put_u32(bools, kBool);
  put_u64(bools, 2);
  bools.push_back(1);
  bools.push_back(7);
  expect_error([&] { from(with({{"k", kArray, bools}})); }, {"key 'k'", "element 1 is a bool of value 7"});
  expect_error([&] { from(with({{"general.architecture", kU8, {1}}})); }, {"key 'general.architecture'", "appears twice"});
  expect_error([&] { from(with({{"", kU8, {1}}})); }, {"t.gguf", "empty or not printable ASCII"});
  expect_error([&] { from(with({{"k\xC3\xA9", kU8, {1}}})); }, {"t.gguf", "not printable ASCII"});
  expect_error([&] { from(with({{"general.alignment", kU64, {32, 0, 0, 0, 0, 0, 0, 0}}})); }, {"key 'general.alignment'", "expected a u32"});
  for (uint32_t a : {0u, 4u, 48u}) {
    std::vector<uint8_t> v;
    put_u32(v, a);
    expect_error([&] { from(with({{"general.alignment", kU32, v}})); }, {"key 'general.alignment'", "not a power of two"});
  }
}

TEST(GgufReader, HostileTensorInfos) {
  auto broken = [](auto&& change) {
    GgufBuilder b = tiny_file();
    change(b);
    return b.bytes();
  };
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[0].dims = {}; })); }, {"tensor 'a'", "0 dimensions"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[0].dims = {32, 1, 1, 1, 2}; })); }, {"tensor 'a'", "5 dimensions"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[1].dims = {0}; })); }, {"tensor 'b'", "dimension 0 is 0"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[1].dims = {uint64_t{1} << 32, uint64_t{1} << 32}; })); },
               {"tensor 'b'", "overflows"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[1].dims = {uint64_t{1} << 31, uint64_t{1} << 31, 2}; })); },
               {"tensor 'b'", "more than 2^62 elements"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[1].type = 99; })); }, {"t.gguf: tensor 'b'", "unknown type 99", "not supported"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[0].type = kQ2_K; })); }, {"t.gguf: tensor 'a'", "Q2_K (10) is not supported"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[0].dims = {48, 1}; })); }, {"tensor 'a'", "not whole Q8_0 blocks of 32"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[1].offset = 100; })); }, {"tensor 'b'", "not a multiple of the alignment 32"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[1].offset = 1 << 20; })); }, {"tensor 'b'", "past the end of the data section"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[1].offset = 32; })); }, {"tensor", "overlaps tensor"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[1].name = "a"; })); }, {"tensor 'a'", "appears twice"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[1].name = std::string(65, 'x'); })); }, {"t.gguf", "name of 65 bytes"});
  expect_error([&] { from(broken([](GgufBuilder& b) { b.tensors[1].name.clear(); })); }, {"t.gguf", "name of 0 bytes"});
  // A value that is not finite is an error naming the tensor and the element.
  GgufBuilder b = tiny_file();
  b.tensor("inf", {2}, kF16, {0x00, 0x3C, 0x00, 0x7C});
  const std::vector<uint8_t> bytes = b.bytes();
  const GgufFile f = from(bytes);
  expect_error([&] { f.read_floats(*f.find_tensor("inf")); }, {"t.gguf: tensor 'inf'", "element 1 is not finite"});
}

// ---- the importer -------------------------------------------------------------------------------------

struct ArchCase {
  std::string name;
  GgufModelSpec spec;
};

void PrintTo(const ArchCase& c, std::ostream* os) { *os << c.name; }

class GgufImport : public ::testing::TestWithParam<ArchCase> {};

TEST_P(GgufImport, EveryTensorExactlyAndTheConfig) {
  GgufModelSpec s = GetParam().spec;
  TempDir d;
  if (s.arch == "qwen2") s.pre = "qwen2";
  std::map<std::string, std::vector<float>> values;
  const std::string path = d.file("m.gguf");
  gguf_model_builder(s, &values).write(path);

  const SourceModel m = model::open_source(path);
  EXPECT_EQ(m.format, "gguf");
  const model::ModelConfig want = gguf_spec_config(s);
  model::ModelConfig got = m.config;
  if (s.rope == "llama3") {
    // Recovered from the divisors: close to the parameters they were made from, and giving the
    // same frequencies.
    EXPECT_EQ(got.rope_scaling.type, "llama3");
    EXPECT_NEAR(got.rope_scaling.factor, 8.0, 1e-6);
    EXPECT_NEAR(got.rope_scaling.low_freq_factor, 1.0, 1e-3);
    EXPECT_NEAR(got.rope_scaling.high_freq_factor, 4.0, 4e-3);
    EXPECT_EQ(got.rope_scaling.original_max_position_embeddings, 1024);
    const std::vector<double> fw = model::rope_inverse_frequencies(want), fg = model::rope_inverse_frequencies(got);
    for (size_t j = 0; j < fw.size(); ++j) EXPECT_NEAR(fg[j], fw[j], 1e-6 * fw[j]) << j;
    got.rope_scaling = want.rope_scaling;
  }
  EXPECT_EQ(got.to_json(), want.to_json());
  ASSERT_EQ(m.tensors.size(), values.size());
  for (const model::SourceTensor& t : m.tensors) EXPECT_EQ(t.load_floats(), values.at(t.spec.name)) << t.spec.name;

  // Through a .pqm: the file opens, with this configuration and tokenizer.
  const std::string out = d.file("m.pqm");
  model::QuantizeOptions o;
  o.method = "fp16";
  o.threads = 2;
  model::quantize_model(m, out, o);
  const PqmFile f = PqmFile::open(out);
  EXPECT_EQ(f.config().to_json(), m.config.to_json());
  EXPECT_EQ(f.index()["quantization"]["source_format"], "gguf");
  EXPECT_EQ(f.tokenizer().chat_template, kGgufChatTemplate);
}

INSTANTIATE_TEST_SUITE_P(
    Architectures, GgufImport,
    ::testing::Values(ArchCase{"llama_f16", {.matrix_type = kF16}},
                      ArchCase{"llama_q8_0_tied_bias", {.tied = true, .bias = true, .matrix_type = kQ8_0}},
                      ArchCase{"llama_f32_linear_rope", {.kv_heads = 4, .rope = "linear", .matrix_type = kF32}},
                      ArchCase{"llama_bf16_llama3_rope",
                               {.heads = 2, .kv_heads = 1, .head_dim = 32, .tied = true, .rope = "llama3", .matrix_type = kBF16}},
                      ArchCase{"qwen2_f32", {.arch = "qwen2", .tied = true, .matrix_type = kF32}},
                      ArchCase{"qwen3_bf16", {.arch = "qwen3", .head_dim = 32, .matrix_type = kBF16}}),
    [](const ::testing::TestParamInfo<ArchCase>& p) { return p.param.name; });

TEST(GgufImportDetails, LlamaQkRowsAreInterleavedInTheFileAndRotateHalfAfterImport) {
  TempDir d;
  GgufModelSpec s;
  s.matrix_type = kF32;
  std::map<std::string, std::vector<float>> values;
  const std::string path = d.file("m.gguf");
  gguf_model_builder(s, &values).write(path);
  const GgufFile f = GgufFile::open(path);
  const std::vector<float> file_q = f.read_floats(*f.find_tensor("blk.1.attn_q.weight"));
  const std::vector<float> file_k = f.read_floats(*f.find_tensor("blk.1.attn_k.weight"));
  const std::vector<float>& q = values.at("layers.1.attn.q");
  const std::vector<float>& k = values.at("layers.1.attn.k");
  const size_t hd = 16, cols = 64;
  // llama.cpp's layout: file row h*hd + 2i + t is HuggingFace row h*hd + t*hd/2 + i.
  for (size_t h = 0; h < 4; ++h)
    for (size_t i = 0; i < hd / 2; ++i)
      for (size_t t = 0; t < 2; ++t)
        for (size_t c = 0; c < cols; c += 17) {
          EXPECT_EQ(file_q[(h * hd + 2 * i + t) * cols + c], q[(h * hd + t * hd / 2 + i) * cols + c]);
          if (h < 2) {
            EXPECT_EQ(file_k[(h * hd + 2 * i + t) * cols + c], k[(h * hd + t * hd / 2 + i) * cols + c]);
          }
        }
  const SourceModel m = model::open_source(path);
  for (const model::SourceTensor& t : m.tensors) {
    if (t.spec.name == "layers.1.attn.q") {
      EXPECT_EQ(t.load_floats(), q);
    }
  }
  // qwen2 files keep HuggingFace's order: nothing is permuted.
  s.arch = "qwen2";
  s.pre = "qwen2";
  gguf_model_builder(s, &values).write(path);
  const GgufFile fq = GgufFile::open(path);
  EXPECT_EQ(fq.read_floats(*fq.find_tensor("blk.1.attn_q.weight")), values.at("layers.1.attn.q"));
}

TEST(GgufImportDetails, Llama3RopeOfARealShape) {
  // Llama 3.1 8B's RoPE (head_dim 128, theta 500000, factor 8, L 8192) on a one-layer model.
  TempDir d;
  GgufModelSpec s;
  s.dim = 128, s.heads = 1, s.kv_heads = 1, s.hidden = 32, s.layers = 1, s.matrix_type = kF32, s.tokenizer = "none";
  s.rope = "none";
  GgufBuilder b = gguf_model_builder(s, nullptr);
  model::ModelConfig c = gguf_spec_config(s);
  c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 8192};
  b.tensor("rope_freqs.weight", {64}, kF32, encode_tensor(llama3_rope_divisors(c), kF32));
  b.write(d.file("m.gguf"));
  const SourceModel m = model::open_source(d.file("m.gguf"));
  EXPECT_EQ(m.config.rope_scaling.type, "llama3");
  EXPECT_NEAR(m.config.rope_scaling.factor, 8.0, 1e-6);
  EXPECT_NEAR(m.config.rope_scaling.low_freq_factor, 1.0, 1e-3);
  EXPECT_NEAR(m.config.rope_scaling.high_freq_factor, 4.0, 4e-3);
  EXPECT_NEAR(static_cast<double>(m.config.rope_scaling.original_max_position_embeddings), 8192.0, 8.0);
  const std::vector<double> fw = model::rope_inverse_frequencies(c), fg = model::rope_inverse_frequencies(m.config);
  for (size_t j = 0; j < fw.size(); ++j) EXPECT_NEAR(fg[j], fw[j], 1e-6 * fw[j]) << j;
  // Divisors that are all 1: no scaling.
  GgufBuilder ones = gguf_model_builder(s, nullptr);
  ones.tensor("rope_freqs.weight", {64}, kF32, encode_tensor(std::vector<float>(64, 1.0f), kF32));
  ones.write(d.file("ones.gguf"));
  EXPECT_EQ(model::open_source(d.file("ones.gguf")).config.rope_scaling.type, "none");
  // Divisors that are no Llama 3 scaling: a clear error.
  std::vector<float> bumpy = llama3_rope_divisors(c);
  bumpy[30] *= 1.5f;
  GgufBuilder bad = gguf_model_builder(s, nullptr);
  bad.tensor("rope_freqs.weight", {64}, kF32, encode_tensor(bumpy, kF32));
  bad.write(d.file("bad.gguf"));
  expect_error([&] { model::open_source(d.file("bad.gguf")); }, {"bad.gguf: tensor 'rope_freqs.weight'", "Llama 3 RoPE scaling"});
  std::vector<float> step(64, 1.0f);
  std::fill(step.begin() + 40, step.end(), 8.0f);
  GgufBuilder stepped = gguf_model_builder(s, nullptr);
  stepped.tensor("rope_freqs.weight", {64}, kF32, encode_tensor(step, kF32));
  stepped.write(d.file("step.gguf"));
  expect_error([&] { model::open_source(d.file("step.gguf")); }, {"tensor 'rope_freqs.weight'", "cannot recover"});
}

// Runs `change` on a valid tiny model's builder, writes it, imports it and expects an error.
template <typename F>
void expect_import_error(const GgufModelSpec& s, F&& change, const std::vector<std::string>& parts) {
  TempDir d;
  GgufBuilder b = gguf_model_builder(s, nullptr);
  change(b);
  b.write(d.file("bad.gguf"));
  std::vector<std::string> all = {d.file("bad.gguf")};
  all.insert(all.end(), parts.begin(), parts.end());
  expect_error([&] { model::open_source(d.file("bad.gguf")); }, all);
}

void set_string(GgufBuilder& b, const std::string& key, const std::string& v) {
  std::erase_if(b.kvs, [&](const GgufBuilder::Kv& kv) { return kv.key == key; });
  b.string(key, v);
}
void drop_key(GgufBuilder& b, const std::string& key) {
  std::erase_if(b.kvs, [&](const GgufBuilder::Kv& kv) { return kv.key == key; });
}

TEST(GgufImportDetails, ConfigAndTensorErrors) {
  const GgufModelSpec s;
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "general.architecture"); }, {"missing key 'general.architecture'"});
  expect_import_error(s, [](GgufBuilder& b) { set_string(b, "general.architecture", "gemma2"); }, {"architecture 'gemma2' is not supported"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "llama.embedding_length"); }, {"missing key 'llama.embedding_length'"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "llama.attention.layer_norm_rms_epsilon"); },
                      {"missing key 'llama.attention.layer_norm_rms_epsilon'"});
  expect_import_error(s, [](GgufBuilder& b) { set_string(b, "llama.block_count", "two"); }, {"key 'llama.block_count'", "expected an integer, got string"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "llama.rope.dimension_count"), b.u32("llama.rope.dimension_count", 8); },
                      {"key 'llama.rope.dimension_count'", "partial rotary"});
  expect_import_error(s, [](GgufBuilder& b) { set_string(b, "llama.rope.scaling.type", "yarn"); }, {"RoPE scaling 'yarn' is not supported"});
  expect_import_error(s, [](GgufBuilder& b) { b.u32("llama.expert_count", 8); }, {"key 'llama.expert_count'", "8 experts (not supported)"});
  expect_import_error(s, [](GgufBuilder& b) { b.f32("llama.rope.freq_base", -1.0f); }, {"appears twice"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "llama.rope.freq_base"), b.f32("llama.rope.freq_base", -1.0f); },
                      {"rope_theta must be positive"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "llama.attention.head_count_kv"), b.u32("llama.attention.head_count_kv", 3); },
                      {"not a multiple of n_kv_heads"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "llama.vocab_size"), b.u32("llama.vocab_size", 301); },
                      {"key 'llama.vocab_size'", "301 but token_embd.weight has 300 rows"});
  expect_import_error(s, [](GgufBuilder& b) { std::erase_if(b.tensors, [](auto& t) { return t.name == "blk.1.ffn_up.weight"; }); },
                      {"missing tensor 'blk.1.ffn_up.weight'"});
  expect_import_error(s, [](GgufBuilder& b) { b.tensors.back().dims = {64, 150}; }, {"tensor 'output.weight'", "shape [150, 64]", "[300, 64]"});
  expect_import_error(s, [](GgufBuilder& b) { b.tensor("blk.0.ffn_gate_inp.weight", {64, 8}, kF32, std::vector<uint8_t>(64 * 8 * 4)); },
                      {"tensor 'blk.0.ffn_gate_inp.weight'", "unexpected tensor"});
  // A weight that is not finite is an error when its tensor loads, naming it.
  TempDir d;
  GgufBuilder b = gguf_model_builder(s, nullptr);
  ASSERT_EQ(b.tensors[2].name, "blk.0.attn_q.weight");
  b.tensors[2].data[0] = 0x00, b.tensors[2].data[1] = 0x7C;  // +inf in fp16
  b.write(d.file("inf.gguf"));
  const SourceModel m = model::open_source(d.file("inf.gguf"));
  ASSERT_EQ(m.tensors[2].spec.name, "layers.0.attn.q");
  expect_error([&] { m.tensors[2].load_floats(); }, {"inf.gguf: tensor 'blk.0.attn_q.weight'", "element 0 is not finite"});
}

TEST(GgufImportDetails, TruncatedModelAtManyCutPoints) {
  TempDir d;
  const std::vector<uint8_t> full = gguf_model_builder(GgufModelSpec{}, nullptr).bytes();
  for (size_t i = 1; i < 40; ++i) {
    const size_t cut = full.size() * i / 40;
    write_bytes(d.file("cut.gguf"), std::vector<uint8_t>(full.begin(), full.begin() + static_cast<ptrdiff_t>(cut)));
    expect_error([&] { model::open_source(d.file("cut.gguf")); }, {d.file("cut.gguf")});
  }
}

// ---- tokenizers -----------------------------------------------------------------------------------------

// A tiny model with `s`'s tokenizer, imported and written to a .pqm; its tokenizer.
struct TokenizerFixture {
  TempDir d;
  std::unique_ptr<PqmFile> pqm;
  std::unique_ptr<tokenize::Tokenizer> tok;
  explicit TokenizerFixture(const GgufModelSpec& s, const std::function<void(GgufBuilder&)>& change = {}) {
    GgufBuilder b = gguf_model_builder(s, nullptr);
    if (change) change(b);
    b.write(d.file("m.gguf"));
    model::QuantizeOptions o;
    o.method = "fp16";
    o.threads = 1;
    model::quantize_model(model::open_source(d.file("m.gguf")), d.file("m.pqm"), o);
    pqm = std::make_unique<PqmFile>(PqmFile::open(d.file("m.pqm")));
    tok = tokenize::Tokenizer::from_pqm(*pqm);
  }
};

using Ids = std::vector<int32_t>;

TEST(GgufTokenizer, Gpt2LlamaBpe) {
  TokenizerFixture fx(GgufModelSpec{});
  const tokenize::Tokenizer& t = *fx.tok;
  EXPECT_EQ(t.kind(), tokenize::TokenizerKind::bpe);
  EXPECT_TRUE(t.adds_bos());
  EXPECT_EQ(t.bos(), 264);
  EXPECT_EQ(t.eos_ids(), Ids{262});
  // "hello" merges whole, " w" is one token, the rest are single bytes (ids = byte values).
  EXPECT_EQ(t.encode("hello world<|im_end|>", true), (Ids{264, 259, 260, 'o', 'r', 'l', 'd', 262}));
  EXPECT_EQ(t.encode("<think>hi", false), (Ids{263, 'h', 'i'}));
  EXPECT_EQ(t.decode(t.encode("hello world, 12 héllo!", false)), "hello world, 12 héllo!");
  EXPECT_TRUE(t.is_special(261));
  EXPECT_FALSE(t.is_special(263));
  EXPECT_EQ(fx.pqm->tokenizer().chat_template, kGgufChatTemplate);
}

TEST(GgufTokenizer, Qwen2AndGpt2PreTokenizers) {
  GgufModelSpec s;
  s.arch = "qwen2";
  s.pre = "qwen2";
  TokenizerFixture q(s, [](GgufBuilder& b) {
    drop_key(b, "tokenizer.ggml.add_bos_token");
    b.boolean("tokenizer.ggml.add_bos_token", false);
  });
  EXPECT_FALSE(q.tok->adds_bos());
  EXPECT_EQ(q.tok->encode("hello 12", false), (Ids{259, ' ', '1', '2'}));
  // Qwen2 normalizes to NFC (e + combining acute becomes the bytes of U+00E9); Llama 3 does not.
  EXPECT_EQ(q.tok->encode("e\xCC\x81", false), (Ids{0xC3, 0xA9}));
  TokenizerFixture l{GgufModelSpec{}};
  EXPECT_EQ(l.tok->encode("e\xCC\x81", false), (Ids{'e', 0xCC, 0x81}));
  s.arch = "llama";
  s.pre = "gpt-2";
  TokenizerFixture g(s);
  EXPECT_EQ(g.tok->encode("hello world", false), (Ids{259, 260, 'o', 'r', 'l', 'd'}));
}

TEST(GgufTokenizer, LlamaVocabularyBecomesASentencePieceModel) {
  GgufModelSpec s;
  s.tokenizer = "llama";
  TokenizerFixture fx(s);
  const tokenize::Tokenizer& t = *fx.tok;
  EXPECT_EQ(t.kind(), tokenize::TokenizerKind::sentencepiece);
  EXPECT_EQ(t.bos(), 1);
  EXPECT_EQ(t.eos_ids(), Ids{2});
  EXPECT_TRUE(t.adds_bos());
  EXPECT_TRUE(t.strips_leading_space());  // add_space_prefix: the dummy prefix
  // Pieces: 259 "▁" 260 "h" 261 "e" 262 "l" 263 "o" 264 "w" 265 "r" 266 "d" 267 "▁h" 268 "he"
  // 269 "ll" 270 "▁he" 271 "llo" 272 "▁hello"; merges by score: ▁h, ll, ▁he, llo, ▁hello.
  EXPECT_EQ(t.encode("hello world", true), (Ids{1, 272, 259, 264, 263, 265, 262, 266}));
  EXPECT_EQ(t.encode("z", false), (Ids{259, 3 + 'z'}));  // byte fallback
  EXPECT_EQ(t.decode(t.encode("hello wörld", true)), "hello wörld");
  EXPECT_TRUE(t.is_special(1));
  EXPECT_EQ(t.piece(272), "\xE2\x96\x81hello");
}

TEST(GgufTokenizer, Errors) {
  GgufModelSpec s;
  expect_import_error(s, [](GgufBuilder& b) { set_string(b, "tokenizer.ggml.model", "bert"); }, {"key 'tokenizer.ggml.model'", "'bert' is not supported"});
  expect_import_error(s, [](GgufBuilder& b) { set_string(b, "tokenizer.ggml.pre", "default"); },
                      {"key 'tokenizer.ggml.pre'", "pre-tokenizer 'default' is not supported"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "tokenizer.ggml.merges"); }, {"without tokenizer.ggml.merges"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "tokenizer.ggml.merges"), b.strings("tokenizer.ggml.merges", {"h e", "nospace"}); },
                      {"key 'tokenizer.ggml.merges'", "merge 1 'nospace'"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "tokenizer.ggml.token_type"), b.i32s("tokenizer.ggml.token_type", {1, 1}); },
                      {"key 'tokenizer.ggml.token_type'", "2 types for 265 tokens"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "tokenizer.ggml.token_type"), b.i32s("tokenizer.ggml.token_type", std::vector<int32_t>(265, 9)); },
                      {"key 'tokenizer.ggml.token_type'", "element 0 is 9"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "tokenizer.ggml.bos_token_id"), b.u32("tokenizer.ggml.bos_token_id", 300); },
                      {"key 'tokenizer.ggml.bos_token_id'", "out of range"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "tokenizer.ggml.tokens"), b.strings("tokenizer.ggml.tokens", std::vector<std::string>(301, "x")); },
                      {"key 'tokenizer.ggml.tokens'", "301 tokens, more than the 300 rows"});
  s.tokenizer = "llama";
  expect_import_error(s, [](GgufBuilder& b) {
    drop_key(b, "tokenizer.ggml.token_type");
    drop_key(b, "tokenizer.ggml.unknown_token_id");
    std::vector<int32_t> types(273, 1);
    b.i32s("tokenizer.ggml.token_type", types);
  }, {"key 'tokenizer.ggml.tokens'", "not make a valid SentencePiece model"});
  expect_import_error(s, [](GgufBuilder& b) { drop_key(b, "tokenizer.ggml.scores"), b.f32s("tokenizer.ggml.scores", {1.0f}); },
                      {"key 'tokenizer.ggml.scores'", "1 scores for 273 tokens"});
  expect_import_error(s, [](GgufBuilder& b) {
    drop_key(b, "tokenizer.ggml.token_type");
    std::vector<int32_t> types(273, 1);
    types[0] = 2, types[1] = types[2] = 3, types[200] = 6, types[265] = 6;  // 265 is "r"
    b.i32s("tokenizer.ggml.token_type", types);
  }, {"key 'tokenizer.ggml.tokens'", "token 265 'r' has the byte type"});
  expect_import_error(s, [](GgufBuilder& b) {
    std::vector<uint8_t> charsmap;
    put_u32(charsmap, kU8);
    put_u64(charsmap, 3);
    charsmap.insert(charsmap.end(), {1, 2, 3});
    b.kvs.push_back({"tokenizer.ggml.precompiled_charsmap", kArray, charsmap});
  }, {"key 'tokenizer.ggml.precompiled_charsmap'", "not supported"});
}

// ---- the bundled model through GGUF ----------------------------------------------------------------------

const std::string kBundled = std::string(PQVK_SOURCE_DIR) + "/models/pqvk-brown-10m";
const std::string kQuantize = PQVK_QUANTIZE_BIN;

const char* const kSampleText =
    "The history of the Brown corpus, 1961: 500 samples of 2000 words!\n\n  Double  spaces\tand tabs -- caf\xC3\xA9 na\xC3\xAFve "
    "\xE6\x9D\xB1\xE4\xBA\xAC \xF0\x9F\x99\x82 end.";

std::vector<int32_t> greedy(const PqmFile& f, const std::vector<int32_t>& prompt, int n) {
  llm::CpuModel m(f, {.kv_fp16 = false, .threads = 2});
  std::vector<int32_t> out;
  std::span<const float> logits = m.prefill(prompt, 0);
  for (int i = 0; i < n; ++i) {
    const auto id = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(id);
    logits = m.forward(id, static_cast<int32_t>(prompt.size() + out.size() - 1));
  }
  return out;
}

// Logits at every position of `tokens`.
std::vector<std::vector<float>> all_logits(const PqmFile& f, const std::vector<int32_t>& tokens) {
  llm::CpuModel m(f, {.kv_fp16 = false, .threads = 2});
  std::vector<std::vector<float>> out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::span<const float> l = m.forward(tokens[i], static_cast<int32_t>(i));
    out.emplace_back(l.begin(), l.end());
  }
  return out;
}

class GgufRoundTrip : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    hf_ = new SourceModel(model::open_source(kBundled));
    model::QuantizeOptions o;
    o.method = "fp16";
    o.threads = 2;
    model::quantize_model(*hf_, dir_->file("hf.pqm"), o);
  }
  static void TearDownTestSuite() {
    delete hf_;
    delete dir_;
  }
  static model::QuantizeOptions fp16() {
    model::QuantizeOptions o;
    o.method = "fp16";
    o.threads = 2;
    return o;
  }
  static TempDir* dir_;
  static SourceModel* hf_;
};
TempDir* GgufRoundTrip::dir_ = nullptr;
SourceModel* GgufRoundTrip::hf_ = nullptr;

TEST_F(GgufRoundTrip, F16GivesTheHuggingFacePathsModel) {
  const std::string gguf = dir_->file("brown-f16.gguf"), out = dir_->file("gguf-f16.pqm");
  write_gguf_from_source(*hf_, gguf, kF16);
  const SourceModel g = model::open_source(gguf);
  EXPECT_EQ(g.config.to_json(), hf_->config.to_json());
  model::quantize_model(g, out, fp16());
  const PqmFile a = PqmFile::open(dir_->file("hf.pqm")), b = PqmFile::open(out);
  EXPECT_EQ(a.config().to_json(), b.config().to_json());
  for (const model::TensorSpec& t : model::model_tensors(a.config())) {
    const auto ba = a.bytes(a.tensor(t.name)), bb = b.bytes(b.tensor(t.name));
    EXPECT_TRUE(std::equal(ba.begin(), ba.end(), bb.begin(), bb.end())) << t.name;
  }
  // The tokenizer rebuilt from tokens, scores and types tokenizes like the original model file.
  const auto ta = tokenize::Tokenizer::from_pqm(a), tb = tokenize::Tokenizer::from_pqm(b);
  const std::string brown_readme = model::read_file(kBundled + "/README.md");
  for (const std::string& text : {std::string(kSampleText), brown_readme}) {
    const Ids ia = ta->encode(text, true);
    EXPECT_EQ(ia, tb->encode(text, true));
    EXPECT_EQ(ta->decode(ia), tb->decode(ia));
  }
  EXPECT_EQ(ta->bos(), tb->bos());
  EXPECT_EQ(ta->eos_ids(), tb->eos_ids());
  // Hence the same greedy continuation.
  const Ids prompt = ta->encode("The history of the", true);
  const Ids ga = greedy(a, prompt, 32);
  EXPECT_EQ(ga, greedy(b, prompt, 32));
}

TEST_F(GgufRoundTrip, Q8_0WithinWhatItsRoundingAllows) {
  const std::string gguf = dir_->file("brown-q8_0.gguf"), out = dir_->file("gguf-q8_0.pqm");
  const std::map<std::string, std::vector<float>> stored = write_gguf_from_source(*hf_, gguf, kQ8_0);
  const SourceModel g = model::open_source(gguf);
  // Every weight within Q8_0's bound of the original: half a step (amax / 127 per block of 32)
  // plus the fp16 rounding of the step times the largest code.
  double worst = 0;
  for (size_t i = 0; i < g.tensors.size(); ++i) {
    const std::vector<float> w = hf_->tensors[i].load_floats(), q = g.tensors[i].load_floats();
    ASSERT_EQ(q, stored.at(g.tensors[i].spec.name));
    if (!model::is_matrix(g.tensors[i].spec.role)) {
      EXPECT_EQ(q, w) << g.tensors[i].spec.name;  // vectors are F32
      continue;
    }
    for (size_t b0 = 0; b0 < w.size(); b0 += 32) {
      float amax = 0;
      for (size_t k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(w[b0 + k]));
      const double step = amax / 127.0, bound = step * (0.5 + 127.0 * std::ldexp(1.0, -11)) + 1e-12;
      for (size_t k = 0; k < 32; ++k) {
        const double err = std::fabs(double(q[b0 + k]) - w[b0 + k]);
        worst = std::max(worst, err / (step + 1e-30));
        ASSERT_LE(err, bound) << g.tensors[i].spec.name << " element " << b0 + k;
      }
    }
  }
  EXPECT_GT(worst, 0.3);  // the rounding is really there
  model::quantize_model(g, out, fp16());
  const PqmFile a = PqmFile::open(dir_->file("hf.pqm")), b = PqmFile::open(out);
  // The logits along the HuggingFace model's own greedy continuation: close, and the same choice
  // wherever the HuggingFace model's choice is not a near tie.
  const auto tok = tokenize::Tokenizer::from_pqm(a);
  Ids seq = tok->encode("The history of the", true);
  const Ids cont = greedy(a, seq, 48);
  seq.insert(seq.end(), cont.begin(), cont.end());
  const auto la = all_logits(a, seq), lb = all_logits(b, seq);
  double num = 0, den = 0, max_diff = 0;
  int agree = 0, decided = 0;
  for (size_t p = 0; p < la.size(); ++p) {
    double pdiff = 0;
    for (size_t v = 0; v < la[p].size(); ++v) {
      const double dv = double(lb[p][v]) - la[p][v];
      num += dv * dv, den += double(la[p][v]) * la[p][v];
      pdiff = std::max(pdiff, std::fabs(dv));
    }
    max_diff = std::max(max_diff, pdiff);
    std::vector<float> sorted = la[p];
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    const auto ia = std::max_element(la[p].begin(), la[p].end()) - la[p].begin();
    const auto ib = std::max_element(lb[p].begin(), lb[p].end()) - lb[p].begin();
    agree += ia == ib;
    // A choice the perturbation cannot flip: the margin exceeds twice the largest logit change.
    if (sorted[0] - sorted[1] > 2 * pdiff) {
      ++decided;
      EXPECT_EQ(ia, ib) << "position " << p;
    }
  }
  const double rel = std::sqrt(num / den);
  std::printf("Q8_0 vs fp16 logits over %zu positions: relative RMS %.2e, max |diff| %.3f; argmax agrees at %d, decided %d\n",
              la.size(), rel, max_diff, agree, decided);
  EXPECT_LT(rel, 0.02);
  EXPECT_GE(agree, static_cast<int>(la.size()) * 9 / 10);
  EXPECT_GE(decided, static_cast<int>(la.size()) / 2);
}

TEST_F(GgufRoundTrip, PqQuantizeCommandLine) {
  const std::string gguf = dir_->file("cli.gguf"), out = dir_->file("cli.pqm");
  write_gguf_from_source(*hf_, gguf, kQ8_0);
  const CommandResult r = run_command(kQuantize + " '" + gguf + "' '" + out + "' --bits 5 --threads 2 -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("layers.5.mlp.down"), std::string::npos) << r.output;
  const PqmFile f = PqmFile::open(out);
  EXPECT_EQ(f.index()["quantization"]["source_format"], "gguf");
  EXPECT_EQ(f.config().dim, 384);
  // A damaged GGUF: exit status 1, the file and the tensor named, nothing written.
  std::vector<uint8_t> bytes = read_bytes(gguf);
  const GgufFile parsed = GgufFile::open(gguf);
  const model::GgufTensor& t = *parsed.find_tensor("blk.2.ffn_down.weight");
  bytes.resize(t.offset + t.size / 2);
  write_bytes(dir_->file("cut.gguf"), bytes);
  const CommandResult bad = run_command(kQuantize + " '" + dir_->file("cut.gguf") + "' '" + dir_->file("bad.pqm") + "' -q");
  EXPECT_EQ(bad.signal, 0) << bad.output;
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("pq-quantize: error: " + dir_->file("cut.gguf") + ": tensor 'blk.2.ffn_down.weight'"), std::string::npos)
      << bad.output;
  EXPECT_FALSE(std::filesystem::exists(dir_->file("bad.pqm")));
}

}  // namespace
}  // namespace pqvk::test
