#include "model/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "model/checked_math.h"
#include "model/error.h"
#include "model/files.h"
#include "model/json_fields.h"
#include "quant/polarquant.h"

namespace pqvk::model {

namespace {

constexpr uint64_t kMaxHeader = uint64_t{100} << 20;  // the format's own limit (100 MB)

struct DtypeSize {
  const char* name;
  size_t size;
};
constexpr DtypeSize kDtypes[] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
                                 {"I16", 2}, {"I8", 1},  {"U64", 8}, {"U32", 4},  {"U16", 2}, {"U8", 1},
                                 {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};

SafeTensor parse_entry(const std::string& name, const json& e, uint64_t data_size, const std::string& path) {
  const std::string where = path + ": tensor '" + name + "'";
  require_object(e, where);
  SafeTensor t;
  t.name = name;
  t.dtype = get_string(e, "dtype", where);
  const size_t esize = dtype_size(t.dtype);
  if (esize == 0) model_fail(where, "unknown dtype '" + t.dtype + "'");
  t.shape = as_shape(require_key(e, "shape", where), where + ": shape", 8);
  const json& off = require_key(e, "data_offsets", where);
  if (!off.is_array() || off.size() != 2) model_fail(where, "data_offsets must be [begin, end]");
  t.begin = as_u64(off[0], where + ": data_offsets[0]");
  t.end = as_u64(off[1], where + ": data_offsets[1]");
  if (t.begin > t.end || t.end > data_size)
    model_fail(where, "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                          "] are outside the data section (" + std::to_string(data_size) + " bytes)");
  const uint64_t want = checked_mul(checked_product(t.shape, where + ": shape " + shape_string(t.shape)), esize, where);
  if (t.end - t.begin != want)
    model_fail(where, std::to_string(t.end - t.begin) + " bytes but dtype " + t.dtype + " and shape " +
                          shape_string(t.shape) + " need " + std::to_string(want));
  return t;
}

}  // namespace

uint64_t SafeTensor::elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

size_t dtype_size(std::string_view dtype) {
  for (const DtypeSize& d : kDtypes)
    if (dtype == d.name) return d.size;
  return 0;
}

uint16_t f32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// ---- reading ---------------------------------------------------------------------------------------
SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path), file_(std::make_unique<MappedFile>(path)) {
  const uint64_t size = file_->size();
  if (size < 8) model_fail(path, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  std::memcpy(&n, file_->data(), 8);
  if (n > kMaxHeader || n > size - 8)
    model_fail(path, "header length " + std::to_string(n) + " exceeds the file (" + std::to_string(size) +
                         " bytes) or the 100 MB limit (truncated or not a safetensors file?)");
  data_start_ = 8 + n;
  const json header = parse_json(std::string_view(reinterpret_cast<const char*>(file_->data()) + 8, n), path + ": header");
  require_object(header, path + ": header");
  const uint64_t data_size = size - data_start_;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") {
      require_object(e, path + ": __metadata__");
      metadata_ = e;
      continue;
    }
    by_name_.emplace(name, tensors_.size());
    tensors_.push_back(parse_entry(name, e, data_size, path));
  }
  std::vector<const SafeTensor*> sorted;
  for (const SafeTensor& t : tensors_) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i - 1]->end > sorted[i]->begin && sorted[i]->end > sorted[i]->begin)
      model_fail(path + ": tensor '" + sorted[i]->name + "'", "overlaps tensor '" + sorted[i - 1]->name + "'");
}

SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;

const SafeTensor* SafetensorsFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const SafeTensor& SafetensorsFile::tensor(std::string_view name) const {
  const SafeTensor* t = find(name);
  if (!t) model_fail(path_, "no tensor '" + std::string(name) + "'");
  return *t;
}

std::span<const uint8_t> SafetensorsFile::bytes(const SafeTensor& t) const {
  return {file_->data() + data_start_ + t.begin, static_cast<size_t>(t.end - t.begin)};
}

std::vector<float> SafetensorsFile::read_floats(const SafeTensor& t) const {
  const uint8_t* p = bytes(t).data();
  const size_t n = t.elements();
  std::vector<float> out(n);
  if (t.dtype == "F32") {
    std::memcpy(out.data(), p, n * 4);
  } else if (t.dtype == "F16" || t.dtype == "BF16") {
    const bool bf = t.dtype == "BF16";
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = bf ? bf16_to_f32(h) : pq::f16_to_f32(h);
    }
  } else if (t.dtype == "F64") {
    for (size_t i = 0; i < n; ++i) {
      double d;
      std::memcpy(&d, p + 8 * i, 8);
      out[i] = static_cast<float>(d);
    }
  } else {
    model_fail(path_ + ": tensor '" + t.name + "'", "dtype " + t.dtype + " is not a float type (F32, F16, BF16, F64)");
  }
  return out;
}

// ---- writing ---------------------------------------------------------------------------------------
SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<Entry> plan,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), tmp_path_(path + ".partial"), plan_(std::move(plan)) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const Entry& e : plan_) {
    const size_t esize = dtype_size(e.dtype);
    if (esize == 0) model_fail(path, "tensor '" + e.name + "': unknown dtype '" + e.dtype + "'");
    if (header.contains(e.name)) model_fail(path, "tensor '" + e.name + "' planned twice");
    const uint64_t bytes = checked_mul(checked_product(e.shape, path), esize, path);
    header[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + bytes}}};
    sizes_.push_back(bytes);
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  f_ = std::fopen(tmp_path_.c_str(), "wb");
  if (!f_) model_fail(tmp_path_, std::string("cannot create: ") + std::strerror(errno));
  const uint64_t n = text.size();
  if (std::fwrite(&n, 8, 1, f_) != 1 || std::fwrite(text.data(), 1, text.size(), f_) != text.size())
    model_fail(tmp_path_, std::string("write failed: ") + std::strerror(errno));
}

SafetensorsWriter::~SafetensorsWriter() {
  if (f_) std::fclose(f_);
  if (!finished_) std::remove(tmp_path_.c_str());
}

void SafetensorsWriter::write(const std::string& name, std::span<const uint8_t> data) {
  if (next_ >= plan_.size() || plan_[next_].name != name)
    model_fail(path_, "tensor '" + name + "' written out of the planned order");
  if (data.size() != sizes_[next_])
    model_fail(path_, "tensor '" + name + "': " + std::to_string(data.size()) + " bytes, planned " + std::to_string(sizes_[next_]));
  if (std::fwrite(data.data(), 1, data.size(), f_) != data.size())
    model_fail(tmp_path_, std::string("write failed: ") + std::strerror(errno));
  ++next_;
}

void SafetensorsWriter::finish() {
  if (next_ != plan_.size())
    model_fail(path_, "finish() with " + std::to_string(plan_.size() - next_) + " planned tensors not written");
  const int rc = std::fclose(f_);
  f_ = nullptr;
  if (rc != 0) model_fail(tmp_path_, std::string("cannot close: ") + std::strerror(errno));
  std::error_code ec;
  std::filesystem::rename(tmp_path_, path_, ec);
  if (ec) model_fail(path_, "cannot rename " + tmp_path_ + ": " + ec.message());
  finished_ = true;
}

}  // namespace pqvk::model
