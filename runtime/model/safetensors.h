// The safetensors format (HuggingFace): u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
// data; offsets are relative to the first byte after the header. The reader checks every
// offset, size and dtype against the file before anything is read.
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

namespace pqvk::model {

class MappedFile;

struct SafeTensor {
  std::string name;
  std::string dtype;             // "F32", "F16", "BF16", "I8", "U8", ...
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;   // relative to the data section
  uint64_t elements() const;
};

// Bytes per element of a safetensors dtype; 0 for an unknown one.
size_t dtype_size(std::string_view dtype);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;

  const std::string& path() const { return path_; }
  const std::vector<SafeTensor>& tensors() const { return tensors_; }
  const nlohmann::json& metadata() const { return metadata_; }
  const SafeTensor* find(std::string_view name) const;
  const SafeTensor& tensor(std::string_view name) const;  // throws naming the file and tensor
  std::span<const uint8_t> bytes(const SafeTensor& t) const;
  // F32, F16, BF16 or F64 data converted to fp32; throws for any other dtype.
  std::vector<float> read_floats(const SafeTensor& t) const;

 private:
  std::string path_;
  std::unique_ptr<MappedFile> file_;
  uint64_t data_start_ = 0;
  nlohmann::json metadata_ = nlohmann::json::object();
  std::vector<SafeTensor> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

// Writes a safetensors file whose tensors (names, dtypes, shapes) are known up front, then
// streams their data in that order. Written through path + ".partial", renamed by finish().
class SafetensorsWriter {
 public:
  struct Entry {
    std::string name, dtype;
    std::vector<uint64_t> shape;
  };
  SafetensorsWriter(const std::string& path, std::vector<Entry> plan,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // The data of the next tensor of the plan (its name must match, its size be exact).
  void write(const std::string& name, std::span<const uint8_t> data);
  void finish();

 private:
  std::string path_, tmp_path_;
  std::FILE* f_ = nullptr;
  std::vector<Entry> plan_;
  std::vector<uint64_t> sizes_;
  size_t next_ = 0;
  bool finished_ = false;
};

// fp32 -> bf16 (round to nearest even; NaN stays NaN) and back.
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);

}  // namespace pqvk::model
