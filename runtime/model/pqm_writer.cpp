// .pqm writing (PqmWriter); see pqm.h and docs/pqm-format.md.
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "model/checked_math.h"
#include "model/crc32.h"
#include "model/error.h"
#include "model/pqm.h"

namespace pqvk::model {

namespace {

json quant_json(const QuantInfo& q) {
  return {{"method", pq::method_name(q.method)}, {"bits", q.bits}, {"block", q.block}, {"rotated", q.rotated},
          {"cols_padded", q.cols_padded}};
}

json tensor_json(const TensorInfo& t) {
  json j = {{"name", t.name}, {"kind", kind_name(t.kind)}, {"shape", t.shape},
            {"offset", t.offset}, {"size", t.size}, {"crc32", t.crc32}};
  if (t.kind == TensorKind::pq) j["quant"] = quant_json(t.quant);
  return j;
}

template <typename T>
void put(uint8_t* h, size_t at, T v) {
  std::memcpy(h + at, &v, sizeof v);
}

}  // namespace

PqmWriter::PqmWriter(const std::string& path, uint32_t alignment)
    : path_(path), tmp_path_(path + ".partial"), alignment_(alignment) {
  if (alignment < 64 || alignment > (1u << 20) || (alignment & (alignment - 1)) != 0)
    model_fail(path, "alignment must be a power of two in [64, 1 MiB]");
  f_ = std::fopen(tmp_path_.c_str(), "wb");
  if (!f_) model_fail(tmp_path_, std::string("cannot create: ") + std::strerror(errno));
  const uint8_t zeros[kPqmHeaderSize] = {};
  write(zeros, sizeof zeros);  // the header, filled in by finish()
}

PqmWriter::~PqmWriter() {
  if (f_) std::fclose(f_);
  if (!finished_) std::remove(tmp_path_.c_str());
}

void PqmWriter::write(const void* data, size_t n) {
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f_) != n) model_fail(tmp_path_, std::string("write failed: ") + std::strerror(errno));
  running_crc_ = crc32(data, n, running_crc_);
  pos_ += n;
}

void PqmWriter::pad_to(uint64_t alignment) {
  static const uint8_t zeros[4096] = {};
  uint64_t pad = (alignment - pos_ % alignment) % alignment;
  while (pad > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(pad, sizeof zeros));
    write(zeros, n);
    pad -= n;
  }
}

void PqmWriter::begin_tensor(const std::string& name) {
  if (finished_) model_fail(path_, "tensor '" + name + "' added after finish()");
  if (name.empty() || name.size() > 256) model_fail(path_, "tensor name '" + name + "' must be 1..256 bytes");
  if (by_name_.count(name)) model_fail(path_, "tensor '" + name + "' added twice");
  pad_to(alignment_);
  running_crc_ = 0;
}

void PqmWriter::end_tensor(TensorInfo info, uint64_t start, uint32_t crc) {
  info.offset = start;
  info.size = pos_ - start;
  info.crc32 = crc;
  by_name_.emplace(info.name, tensors_.size());
  tensors_.push_back(std::move(info));
}

void PqmWriter::add_f32(const std::string& name, const std::vector<uint64_t>& shape, std::span<const float> data) {
  if (checked_product(shape, path_ + ": tensor '" + name + "'") != data.size())
    model_fail(path_, "tensor '" + name + "': " + std::to_string(data.size()) + " values for shape " + shape_string(shape));
  begin_tensor(name);
  const uint64_t start = pos_;
  write(data.data(), data.size_bytes());
  end_tensor({name, TensorKind::f32, shape}, start, running_crc_);
}

void PqmWriter::add_f16_bits(const std::string& name, const std::vector<uint64_t>& shape, std::span<const uint16_t> data) {
  if (checked_product(shape, path_ + ": tensor '" + name + "'") != data.size())
    model_fail(path_, "tensor '" + name + "': " + std::to_string(data.size()) + " values for shape " + shape_string(shape));
  begin_tensor(name);
  const uint64_t start = pos_;
  write(data.data(), data.size_bytes());
  end_tensor({name, TensorKind::f16, shape}, start, running_crc_);
}

void PqmWriter::add_f16(const std::string& name, const std::vector<uint64_t>& shape, std::span<const float> data) {
  std::vector<uint16_t> h(data.size());
  for (size_t i = 0; i < data.size(); ++i) h[i] = pq::f32_to_f16(data[i]);
  add_f16_bits(name, shape, h);
}

void PqmWriter::add_blob(const std::string& name, std::span<const uint8_t> data) {
  if (data.empty()) model_fail(path_, "tensor '" + name + "': empty blob");
  begin_tensor(name);
  const uint64_t start = pos_;
  write(data.data(), data.size());
  end_tensor({name, TensorKind::blob, {data.size()}}, start, running_crc_);
}

void PqmWriter::add_quant(const std::string& name, const pq::QuantMatrix& q) {
  const std::string where = path_ + ": tensor '" + name + "'";
  const PqLayout l = pq_layout(q.rows, q.cols_padded, q.bits, q.block, where);
  if (q.codes.size() * 4 != l.codes_bytes || q.scales.size() * 2 != l.scales_bytes ||
      q.codebook.size() * 4 != l.codebook_bytes || q.cols_padded != round_up(q.cols, static_cast<uint64_t>(q.block)))
    model_fail(where, "inconsistent QuantMatrix (array sizes do not match its shape)");
  begin_tensor(name);
  const uint64_t start = pos_;
  write(q.codes.data(), l.codes_bytes);
  pad_to(kPqSectionAlignment);
  write(q.scales.data(), l.scales_bytes);
  pad_to(kPqSectionAlignment);
  write(q.codebook.data(), l.codebook_bytes);
  TensorInfo info{name, TensorKind::pq, {q.rows, q.cols}};
  info.quant = {q.method, q.bits, q.block, q.rotated, q.cols_padded};
  end_tensor(std::move(info), start, running_crc_);
}

void PqmWriter::finish(const ModelConfig& config, const TokenizerInfo& tokenizer, const json& extra) {
  if (finished_) model_fail(path_, "finish() called twice");
  json index = extra.is_object() ? extra : json::object();
  index["format"] = "pqm";
  index["version"] = kPqmVersion;
  index["model"] = config.to_json();
  index["tokenizer"] = tokenizer.to_json();
  json table = json::array();
  for (const TensorInfo& t : tensors_) table.push_back(tensor_json(t));
  index["tensors"] = std::move(table);
  const std::string text = index.dump(1);

  pad_to(8);
  const uint64_t index_offset = pos_;
  write(text.data(), text.size());
  uint8_t h[kPqmHeaderSize] = {};
  std::memcpy(h, kPqmMagic, 8);
  put<uint32_t>(h, 8, kPqmVersion);
  put<uint32_t>(h, 12, alignment_);
  put<uint64_t>(h, 16, index_offset);
  put<uint64_t>(h, 24, text.size());
  put<uint64_t>(h, 32, pos_);
  put<uint32_t>(h, 40, crc32(text.data(), text.size()));
  if (std::fseek(f_, 0, SEEK_SET) != 0 || std::fwrite(h, 1, sizeof h, f_) != sizeof h)
    model_fail(tmp_path_, std::string("cannot write the header: ") + std::strerror(errno));
  const int rc = std::fclose(f_);
  f_ = nullptr;
  if (rc != 0) model_fail(tmp_path_, std::string("cannot close: ") + std::strerror(errno));
  std::error_code ec;
  std::filesystem::rename(tmp_path_, path_, ec);
  if (ec) model_fail(path_, "cannot rename " + tmp_path_ + ": " + ec.message());
  finished_ = true;
  try {
    PqmFile::open(path_, {.verify_checksums = false});  // the written model must be complete and valid
  } catch (...) {
    std::remove(path_.c_str());
    throw;
  }
}

}  // namespace pqvk::model
