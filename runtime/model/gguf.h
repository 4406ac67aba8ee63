// GGUF files, the model format of llama.cpp / ggml (versions 2 and 3, little-endian): the
// header, the typed metadata key-value pairs, the tensor infos and the tensor data, and the
// decoders of ggml's block formats to fp32. pq-quantize reads GGUF as an input
// (import_gguf.cpp maps a llama / qwen2 / qwen3 model onto a ModelConfig and its tensors).
//
// The reader is as strict as the .pqm reader: every count, length, offset and size is checked
// against the file before it is used (overflow included), the alignment, the tensor dimensions,
// the block structure of quantized rows and the tensors' placement are validated when the file
// is opened, and every failure is a ModelError naming the file and, where there is one, the key
// or the tensor. A tensor of a type pqvk does not decode is an error when the file is opened.
//
// Layout (docs/gguf.md of ggml): "GGUF", u32 version, u64 tensor count, u64 key-value count;
// the key-value pairs (string key, u32 value type, value); the tensor infos (string name, u32
// dimension count, u64 dimensions with ne0 -- the contiguous one -- first, u32 ggml type, u64
// offset relative to the data section); padding to `general.alignment` (default 32); the data
// section. Strings are a u64 byte count and the bytes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pqvk::model {

class MappedFile;
struct SourceModel;
struct SourceTokenizer;

// ---- ggml tensor types -------------------------------------------------------------------------

// The ggml types pqvk decodes (values as stored in tensor infos).
enum class GgmlType : uint32_t {
  f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q4_k = 12, q5_k = 13, q6_k = 14, bf16 = 30
};

// How a type stores its elements: rows are made of whole blocks of `block` elements taking
// `bytes` bytes each (1 element for the float types).
struct GgmlBlock {
  uint32_t block = 1;
  uint32_t bytes = 4;
};
// The block of a decodable type; nullopt for any other value.
std::optional<GgmlBlock> ggml_block(uint32_t type);
// "Q4_K", "IQ2_XXS", ... for every type ggml defines; "unknown type N" otherwise.
std::string ggml_type_name(uint32_t type);

// Decodes `n` elements (a whole number of blocks) of a decodable type from `src`, which holds
// n / block * bytes bytes, into dst[0..n).
void dequantize(GgmlType type, const uint8_t* src, uint64_t n, float* dst);

// ---- metadata ------------------------------------------------------------------------------------

enum class GgufValueType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9, u64 = 10,
  i64 = 11, f64 = 12
};
const char* gguf_type_name(GgufValueType t);

struct GgufValue {
  GgufValueType type = GgufValueType::u8;
  // Scalars: integers (signed ones as their two's-complement bits, sign-extended) and bools in
  // `bits`; floats in `number`; strings in `text`.
  uint64_t bits = 0;
  double number = 0.0;
  std::string text;
  // Arrays: the element type and count; numbers and bools as the bytes stored (little-endian),
  // strings one by one. A nested array keeps only its type and count.
  GgufValueType element_type = GgufValueType::u8;
  uint64_t count = 0;
  std::vector<uint8_t> raw;
  std::vector<std::string> strings;
};

// ---- tensors -------------------------------------------------------------------------------------

struct GgufTensor {
  std::string name;
  std::vector<uint64_t> dims;  // as stored: ne0 (contiguous) first
  GgmlType type = GgmlType::f32;
  uint64_t offset = 0;         // from the start of the file
  uint64_t size = 0;           // bytes
  uint64_t elements = 0;
  // Row-major, slowest dimension first (dims reversed): a matrix of ne1 rows of ne0 columns is
  // [ne1, ne0], the shape of the same tensor in PyTorch / safetensors.
  std::vector<uint64_t> shape() const { return {dims.rbegin(), dims.rend()}; }
};

inline constexpr uint32_t kGgufDefaultAlignment = 32;

class GgufFile {
 public:
  // Maps and validates a file.
  static GgufFile open(const std::string& path);
  // Validates bytes that the caller keeps alive as long as the GgufFile; `name` is used in errors.
  static GgufFile from_memory(std::span<const uint8_t> bytes, const std::string& name);

  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  ~GgufFile();

  const std::string& path() const { return name_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // where the data section starts
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }

  // "<file>: key '<key>'" and "<file>: tensor '<name>'", for messages.
  std::string where_key(std::string_view key) const;
  std::string where(const GgufTensor& t) const;

  // Typed metadata: nullopt when the key is absent; a ModelError naming the key when it has
  // another type or (integers) a value outside [0, max].
  const GgufValue* find(std::string_view key) const;
  std::optional<uint64_t> get_uint(std::string_view key, uint64_t max) const;  // any integer type
  std::optional<double> get_float(std::string_view key) const;                 // f32 or f64
  std::optional<bool> get_bool(std::string_view key) const;
  std::optional<std::string> get_string(std::string_view key) const;
  std::optional<std::vector<std::string>> get_strings(std::string_view key) const;  // array of strings
  std::optional<std::vector<float>> get_floats(std::string_view key) const;         // array of f32 or f64
  std::optional<std::vector<int64_t>> get_ints(std::string_view key) const;         // array of integers

  const GgufTensor* find_tensor(std::string_view name) const;
  std::span<const uint8_t> bytes(const GgufTensor& t) const;
  // The tensor decoded to fp32 in row-major order ([ne1][ne0] for a matrix). A value that is
  // not finite is a ModelError naming the tensor and the element.
  std::vector<float> read_floats(const GgufTensor& t) const;

 private:
  GgufFile() = default;
  void parse();

  std::string name_;
  std::unique_ptr<MappedFile> file_;
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

// A GGUF model (general.architecture llama -- which includes Mistral --, qwen2 or qwen3) as a
// SourceModel: hyperparameters, tokenizer, and one loader per tensor (dequantized to fp32, q/k
// rows of llama models permuted back to the rotate-half layout). import_gguf.cpp.
SourceModel import_gguf(std::shared_ptr<const GgufFile> file);
// Its tokenizer (tokenizer.ggml.*, tokenizer.chat_template*; gguf_tokenizer.cpp): "llama"
// vocabularies as a SentencePiece model, "gpt2" ones as byte-level BPE. vocab_size (the
// embedding rows) bounds the token count.
SourceTokenizer load_gguf_tokenizer(const GgufFile& f, int64_t vocab_size);

}  // namespace pqvk::model
