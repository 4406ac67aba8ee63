// GGUF files written by the tests themselves (the format is simple enough to write here, from
// ggml's specification, independently of the reader under test): a builder whose fields hostile
// tests can break one at a time, encoders of tensor data, tiny models of each architecture the
// importer maps, and any imported model (the bundled HuggingFace checkpoint) written the way
// llama.cpp's converter writes it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/source.h"

namespace pqvk::test {

// ggml type ids and GGUF value types, as the specification numbers them.
enum GgmlTypeId : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ2_K = 10, kQ4_K = 12, kQ5_K = 13,
  kQ6_K = 14, kBF16 = 30
};
enum GgufTypeId : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kFloat32 = 6, kBool = 7, kString = 8, kArray = 9, kU64 = 10,
  kI64 = 11, kFloat64 = 12
};

// Little-endian encoding helpers.
void put_u32(std::vector<uint8_t>& out, uint32_t v);
void put_u64(std::vector<uint8_t>& out, uint64_t v);
void put_string(std::vector<uint8_t>& out, const std::string& s);  // u64 length + bytes

struct GgufBuilder {
  struct Kv {
    std::string key;
    uint32_t type;               // the value type written after the key
    std::vector<uint8_t> value;  // the encoded value
  };
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;  // ne0 first
    uint32_t type;
    std::vector<uint8_t> data;
    std::optional<uint64_t> offset;  // relative to the data section; default: packed, aligned
  };
  uint32_t version = 3;
  uint64_t alignment = 32;  // the padding written; set_alignment() also writes general.alignment
  std::vector<Kv> kvs;
  std::vector<Tensor> tensors;

  void set_alignment(uint32_t a);
  void u32(const std::string& key, uint32_t v);
  void i32(const std::string& key, int32_t v);
  void u64(const std::string& key, uint64_t v);
  void f32(const std::string& key, float v);
  void f64(const std::string& key, double v);
  void boolean(const std::string& key, bool v);
  void string(const std::string& key, const std::string& v);
  void strings(const std::string& key, const std::vector<std::string>& v);
  void f32s(const std::string& key, const std::vector<float>& v);
  void i32s(const std::string& key, const std::vector<int32_t>& v);
  void tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, std::vector<uint8_t> data);
  bool has_key(const std::string& key) const;

  std::vector<uint8_t> bytes() const;
  void write(const std::string& path) const;
};

// Tensor data of `type` (F32, F16, BF16 or Q8_0 -- rows of whole 32-blocks --, as ggml's
// reference quantizer rounds); `stored` receives the values a correct decoder returns.
std::vector<uint8_t> encode_tensor(const std::vector<float>& values, uint32_t type, std::vector<float>* stored = nullptr);

// llama.cpp's permutation of q/k rows for llama models (the inverse of what the importer undoes):
// row h*head_dim + 2i + t = rotate-half row h*head_dim + t*head_dim/2 + i.
std::vector<float> interleave_rope_rows(const std::vector<float>& w, uint64_t heads, uint64_t head_dim, uint64_t cols);

// The per-frequency divisors llama.cpp's converter writes as rope_freqs.weight for Llama 3.1
// scaling (its formula, written here from the conversion's description).
std::vector<float> llama3_rope_divisors(const model::ModelConfig& c);

// A tiny model of `arch` ("llama", "qwen2", "qwen3") with random weights; matrices stored as
// `matrix_type`, vectors as F32; a tokenizer of `tokenizer` ("gpt2", "llama" or "none").
struct GgufModelSpec {
  std::string arch = "llama";
  int dim = 64, hidden = 96, layers = 2, heads = 4, kv_heads = 2, head_dim = 0 /* 0: dim/heads */, vocab = 300, ctx = 128;
  bool tied = false;
  bool bias = false;         // llama: q/k/v/o biases
  std::string rope = "none"; // none | linear | llama3
  uint32_t matrix_type = kF16;
  std::string tokenizer = "gpt2";
  std::string pre = "llama-bpe";  // gpt2 tokenizers: tokenizer.ggml.pre
};
model::ModelConfig gguf_spec_config(const GgufModelSpec& s);
// The builder of such a file (tests break it before writing), and the values the importer must
// return: canonical .pqm names -> values as stored, in rotate-half order.
GgufBuilder gguf_model_builder(const GgufModelSpec& s, std::map<std::string, std::vector<float>>* values = nullptr);

// The tiny vocabularies (written by gguf_model_builder). gpt2: ids 0..255 are the 256 bytes in
// GPT-2's byte-to-character map, then "he" (256), "ll" (257), "hell" (258), "hello" (259),
// "Ġw" (260), "<|im_start|>" (261, control), "<|im_end|>" (262, control), "<think>" (263, user
// defined), "<|begin_of_text|>" (264, control, BOS); EOS 262. llama: <unk> 0, <s> 1, </s> 2,
// <0x00>..<0xFF> 3..258, then "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "he", "ll", "▁he",
// "llo", "▁hello" with scores rising with the merge order.
extern const char* const kGgufChatTemplate;

// Writes an imported model as llama.cpp's converter would (llama architecture metadata, q/k rows
// interleaved, matrices as `matrix_type`, vectors F32, a SentencePiece tokenizer as a "llama"
// vocabulary of tokens / scores / token types). Returns canonical name -> values as stored
// (rotate-half order), what importing the file must give back.
std::map<std::string, std::vector<float>> write_gguf_from_source(const model::SourceModel& src, const std::string& path,
                                                                 uint32_t matrix_type);

}  // namespace pqvk::test
