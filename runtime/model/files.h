// Files: a read-only memory map, whole-file reads and JSON parsing, each failing with a
// ModelError that names the path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pqvk::model {

// A read-only, private memory map of a whole file (an empty file maps to an empty span).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

bool file_exists(const std::string& path);
bool is_directory(const std::string& path);
std::string read_file(const std::string& path);
std::vector<uint8_t> read_binary_file(const std::string& path);
// Parses JSON text; `where` names the source in errors. Nesting deeper than 128 levels is
// rejected (untrusted input must not drive recursion).
nlohmann::json parse_json(std::string_view text, const std::string& where);
nlohmann::json read_json_file(const std::string& path);
// path joined with a file name ("dir" + "config.json" -> "dir/config.json").
std::string join_path(const std::string& dir, const std::string& name);
std::string parent_dir(const std::string& path);  // "." for a bare file name
std::string file_name(const std::string& path);

}  // namespace pqvk::model
