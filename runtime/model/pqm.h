// The .pqm model file: one file holding a model's metadata (JSON) and its tensors (f32, f16,
// PolarQuant-packed matrices, opaque blobs), specified in docs/pqm-format.md.
//
//   PqmFile  maps a file (or wraps bytes), validates everything before returning: header,
//            index JSON, every tensor's kind, shape, size, offset and alignment, overlaps, the
//            model config and the tensors it requires, and (unless disabled) every checksum.
//   PqmWriter streams tensors to disk one at a time, then writes the index and the header.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "quant/polarquant.h"

namespace pqvk::model {

using nlohmann::json;

// ---- format constants (docs/pqm-format.md, "Header") ---------------------------------------------
inline constexpr char kPqmMagic[8] = {'P', 'Q', 'V', 'K', 'M', 'O', 'D', 'L'};
inline constexpr uint32_t kPqmVersion = 1;
inline constexpr uint64_t kPqmHeaderSize = 64;
inline constexpr uint32_t kPqmDefaultAlignment = 64;
inline constexpr uint64_t kPqSectionAlignment = 64;  // codes / scales / codebook inside a pq tensor
inline constexpr size_t kPqmMaxDims = 4;

enum class TensorKind { f32, f16, blob, pq };
const char* kind_name(TensorKind k);

// The quantization of a pq tensor: the pq::QuantMatrix fields that are not arrays.
struct QuantInfo {
  pq::Method method = pq::Method::pq;
  int bits = 0;
  int block = 128;
  bool rotated = false;
  uint64_t cols_padded = 0;
};

// Byte layout of a pq tensor's data (offsets from the tensor's start).
struct PqLayout {
  uint64_t codes_offset = 0, codes_bytes = 0;
  uint64_t scales_offset = 0, scales_bytes = 0;
  uint64_t codebook_offset = 0, codebook_bytes = 0;
  uint64_t total = 0;
};
// Throws a ModelError naming `where` when the sizes overflow.
PqLayout pq_layout(uint64_t rows, uint64_t cols_padded, int bits, int block, const std::string& where);

struct TensorInfo {
  std::string name;
  TensorKind kind = TensorKind::f32;
  std::vector<uint64_t> shape;
  uint64_t offset = 0;  // from the start of the file
  uint64_t size = 0;    // bytes
  uint32_t crc32 = 0;
  QuantInfo quant;      // kind == pq only

  uint64_t elements() const;
  uint64_t rows() const { return shape.empty() ? 0 : shape[0]; }
  uint64_t cols() const { return shape.size() < 2 ? 0 : shape[1]; }
};

// ---- blob encodings --------------------------------------------------------------------------------
// A list of byte strings: u32 count, then per string u32 length and the bytes (little-endian).
std::vector<uint8_t> encode_string_list(const std::vector<std::string>& list);
// Throws a ModelError naming `where` unless the bytes are exactly one well-formed list.
std::vector<std::string> decode_string_list(std::span<const uint8_t> bytes, const std::string& where);

// ---- reading -----------------------------------------------------------------------------------------
struct PqmOptions {
  bool verify_checksums = true;  // CRC-32 of every tensor (the index's own CRC is always checked)
};

class MappedFile;

class PqmFile {
 public:
  // Maps and validates a file. Every error is a ModelError naming the file (and the tensor).
  static PqmFile open(const std::string& path, const PqmOptions& options = {});
  // Validates bytes that the caller keeps alive as long as the PqmFile; `name` is used in errors.
  static PqmFile from_memory(std::span<const uint8_t> bytes, const std::string& name, const PqmOptions& options = {});

  PqmFile(PqmFile&&) noexcept;
  PqmFile& operator=(PqmFile&&) noexcept;
  ~PqmFile();

  const std::string& path() const { return name_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t file_size() const { return bytes_.size(); }
  const json& index() const { return index_; }  // the whole index JSON
  const ModelConfig& config() const { return config_; }
  const TokenizerInfo& tokenizer() const { return tokenizer_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  const TensorInfo* find(std::string_view name) const;
  const TensorInfo& tensor(std::string_view name) const;  // throws naming the file and the tensor
  std::span<const uint8_t> bytes(const TensorInfo& t) const;

  // f32 and f16 tensors as floats; a pq tensor dequantized ([rows][cols]); not for blobs.
  std::vector<float> read_floats(const TensorInfo& t) const;
  // A pq tensor as the pq::QuantMatrix it was written from (ready for kernels' upload_quant()).
  pq::QuantMatrix read_quant(const TensorInfo& t) const;
  std::vector<std::string> read_strings(const TensorInfo& t) const;  // a blob holding a string list
  // Throws naming the first tensor whose CRC-32 does not match.
  void verify_checksums() const;

 private:
  PqmFile() = default;
  void parse(const PqmOptions& options);
  void parse_header();
  void parse_index();
  void check_model();
  void check_tokenizer_tensors() const;
  std::string where(const TensorInfo& t) const;

  std::string name_;
  std::unique_ptr<MappedFile> file_;
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0, alignment_ = 0;
  uint64_t index_offset_ = 0, index_size_ = 0;
  json index_;
  ModelConfig config_;
  TokenizerInfo tokenizer_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

// ---- writing -----------------------------------------------------------------------------------------
// Writes `path` through a temporary file (path + ".partial") renamed at finish(), so a failed
// run never leaves a truncated model behind. Tensors are written as they are added; only the
// table stays in memory.
class PqmWriter {
 public:
  explicit PqmWriter(const std::string& path, uint32_t alignment = kPqmDefaultAlignment);
  ~PqmWriter();  // removes the temporary file unless finish() succeeded
  PqmWriter(const PqmWriter&) = delete;
  PqmWriter& operator=(const PqmWriter&) = delete;

  void add_f32(const std::string& name, const std::vector<uint64_t>& shape, std::span<const float> data);
  void add_f16(const std::string& name, const std::vector<uint64_t>& shape, std::span<const float> data);
  void add_f16_bits(const std::string& name, const std::vector<uint64_t>& shape, std::span<const uint16_t> data);
  void add_blob(const std::string& name, std::span<const uint8_t> data);
  void add_quant(const std::string& name, const pq::QuantMatrix& q);

  // Writes the index (the model config, tokenizer, `extra` top-level keys such as
  // "quantization", and the tensor table) and the header, then re-opens the file with
  // PqmFile (checksums skipped) so that a model missing a tensor is never left on disk.
  void finish(const ModelConfig& config, const TokenizerInfo& tokenizer, const json& extra = json::object());

  const std::vector<TensorInfo>& tensors() const { return tensors_; }

 private:
  void begin_tensor(const std::string& name);
  void write(const void* data, size_t n);
  void pad_to(uint64_t alignment);
  void end_tensor(TensorInfo info, uint64_t start, uint32_t crc);

  std::string path_, tmp_path_;
  std::FILE* f_ = nullptr;
  uint32_t alignment_;
  uint64_t pos_ = 0;
  uint32_t running_crc_ = 0;
  bool finished_ = false;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

}  // namespace pqvk::model
