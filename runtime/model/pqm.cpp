// .pqm reading (PqmFile) and the parts of the format shared with the writer; see pqm.h and
// docs/pqm-format.md.
#include "model/pqm.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <set>

#include "model/checked_math.h"
#include "model/crc32.h"
#include "model/error.h"
#include "model/files.h"
#include "model/json_fields.h"

namespace pqvk::model {

static_assert(std::endian::native == std::endian::little, "pqvk reads and writes little-endian files in place");

namespace {

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool parse_kind(const std::string& s, TensorKind* out) {
  for (TensorKind k : {TensorKind::f32, TensorKind::f16, TensorKind::blob, TensorKind::pq})
    if (s == kind_name(k)) {
      *out = k;
      return true;
    }
  return false;
}

QuantInfo parse_quant(const json& j, const TensorInfo& t, const std::string& where) {
  QuantInfo q;
  const std::string w = where + ": quant";
  require_object(j, w);
  const std::string method = get_string(j, "method", w);
  if (!pq::parse_method(method, &q.method))
    model_fail(w, "unknown method '" + method + "' (known: pq, absmax, rot-uniform, lloyd)");
  q.bits = static_cast<int>(get_int(j, "bits", w, 2, 8));
  q.block = static_cast<int>(get_int(j, "block", w, 64, 256));
  if (q.block != 64 && q.block != 128 && q.block != 256) model_fail(w, "block must be 64, 128 or 256");
  q.rotated = get_bool(j, "rotated", w);
  const bool rotating = q.method == pq::Method::pq || q.method == pq::Method::rot_uniform;
  if (q.rotated != rotating)
    model_fail(w, std::string("method ") + method + " requires rotated = " + (rotating ? "true" : "false"));
  q.cols_padded = get_u64(j, "cols_padded", w);
  const uint64_t cols = t.cols();
  if (cols > UINT64_MAX - static_cast<uint64_t>(q.block) || q.cols_padded != round_up(cols, q.block))
    model_fail(w, "cols_padded " + std::to_string(q.cols_padded) + " is not cols " + std::to_string(cols) +
                      " rounded up to the block " + std::to_string(q.block));
  return q;
}

uint64_t expected_size(const TensorInfo& t, const std::string& where) {
  const uint64_t n = checked_product(t.shape, where + ": shape " + shape_string(t.shape));
  switch (t.kind) {
    case TensorKind::f32: return checked_mul(n, 4, where);
    case TensorKind::f16: return checked_mul(n, 2, where);
    case TensorKind::blob: return n;
    case TensorKind::pq: return pq_layout(t.rows(), t.quant.cols_padded, t.quant.bits, t.quant.block, where).total;
  }
  return 0;
}

bool f16_is_finite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }

}  // namespace

std::string shape_string(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

const char* kind_name(TensorKind k) {
  switch (k) {
    case TensorKind::f32: return "f32";
    case TensorKind::f16: return "f16";
    case TensorKind::blob: return "blob";
    case TensorKind::pq: return "pq";
  }
  return "?";
}

PqLayout pq_layout(uint64_t rows, uint64_t cols_padded, int bits, int block, const std::string& where) {
  PqLayout l;
  const uint64_t words = checked_mul(checked_mul(rows, cols_padded / 32, where), static_cast<uint64_t>(bits), where);
  l.codes_bytes = checked_mul(words, 4, where);
  l.scales_offset = checked_add(l.codes_bytes, (kPqSectionAlignment - l.codes_bytes % kPqSectionAlignment) % kPqSectionAlignment, where);
  l.scales_bytes = checked_mul(checked_mul(rows, cols_padded / static_cast<uint64_t>(block), where), 2, where);
  const uint64_t scales_end = checked_add(l.scales_offset, l.scales_bytes, where);
  l.codebook_offset = checked_add(scales_end, (kPqSectionAlignment - scales_end % kPqSectionAlignment) % kPqSectionAlignment, where);
  l.codebook_bytes = uint64_t{4} << bits;
  l.total = checked_add(l.codebook_offset, l.codebook_bytes, where);
  return l;
}

uint64_t TensorInfo::elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;  // validated not to overflow when the file was opened
  return n;
}

// ---- string lists --------------------------------------------------------------------------------
std::vector<uint8_t> encode_string_list(const std::vector<std::string>& list) {
  size_t total = 4;
  for (const std::string& s : list) total += 4 + s.size();
  if (list.size() > UINT32_MAX) throw ModelError("string list: more than 2^32-1 entries");
  std::vector<uint8_t> out(total);
  size_t pos = 0;
  auto put_u32 = [&](size_t v) {
    const auto x = static_cast<uint32_t>(v);
    std::memcpy(out.data() + pos, &x, 4);
    pos += 4;
  };
  put_u32(list.size());
  for (const std::string& s : list) {
    if (s.size() > UINT32_MAX) throw ModelError("string list: a string longer than 2^32-1 bytes");
    put_u32(s.size());
    if (!s.empty()) std::memcpy(out.data() + pos, s.data(), s.size());
    pos += s.size();
  }
  return out;
}

std::vector<std::string> decode_string_list(std::span<const uint8_t> bytes, const std::string& where) {
  if (bytes.size() < 4) model_fail(where, "string list shorter than its 4-byte count");
  const uint32_t count = load<uint32_t>(bytes.data());
  // Every entry takes at least 4 bytes: a count larger than that is corrupt (and would
  // otherwise drive a huge reservation).
  if (count > (bytes.size() - 4) / 4) model_fail(where, "string list count " + std::to_string(count) + " exceeds its size");
  std::vector<std::string> list;
  list.reserve(count);
  size_t pos = 4;
  for (uint32_t i = 0; i < count; ++i) {
    if (bytes.size() - pos < 4) model_fail(where, "string " + std::to_string(i) + ": length past the end");
    const uint32_t len = load<uint32_t>(bytes.data() + pos);
    pos += 4;
    if (len > bytes.size() - pos) model_fail(where, "string " + std::to_string(i) + ": " + std::to_string(len) + " bytes past the end");
    list.emplace_back(reinterpret_cast<const char*>(bytes.data() + pos), len);
    pos += len;
  }
  if (pos != bytes.size()) model_fail(where, std::to_string(bytes.size() - pos) + " trailing bytes after the string list");
  return list;
}

// ---- PqmFile -------------------------------------------------------------------------------------
PqmFile::PqmFile(PqmFile&&) noexcept = default;
PqmFile& PqmFile::operator=(PqmFile&&) noexcept = default;
PqmFile::~PqmFile() = default;

PqmFile PqmFile::open(const std::string& path, const PqmOptions& options) {
  PqmFile f;
  f.name_ = path;
  f.file_ = std::make_unique<MappedFile>(path);
  f.bytes_ = f.file_->bytes();
  f.parse(options);
  return f;
}

PqmFile PqmFile::from_memory(std::span<const uint8_t> bytes, const std::string& name, const PqmOptions& options) {
  PqmFile f;
  f.name_ = name;
  f.bytes_ = bytes;
  f.parse(options);
  return f;
}

void PqmFile::parse(const PqmOptions& options) {
  parse_header();
  parse_index();
  check_model();
  if (options.verify_checksums) verify_checksums();
  check_tokenizer_tensors();  // reads tensor contents: after their checksums
}

void PqmFile::parse_header() {
  const uint64_t n = bytes_.size();
  if (n < kPqmHeaderSize)
    model_fail(name_, "file is " + std::to_string(n) + " bytes, shorter than the 64-byte header (truncated?)");
  const uint8_t* h = bytes_.data();
  if (std::memcmp(h, kPqmMagic, 8) != 0) model_fail(name_, "not a .pqm file (bad magic; expected \"PQVKMODL\")");
  version_ = load<uint32_t>(h + 8);
  if (version_ != kPqmVersion)
    model_fail(name_, "unsupported .pqm version " + std::to_string(version_) + " (this build reads version " +
                          std::to_string(kPqmVersion) + ")");
  alignment_ = load<uint32_t>(h + 12);
  if (alignment_ < 64 || alignment_ > (1u << 20) || !std::has_single_bit(alignment_))
    model_fail(name_, "header: alignment " + std::to_string(alignment_) + " is not a power of two in [64, 1 MiB]");
  index_offset_ = load<uint64_t>(h + 16);
  index_size_ = load<uint64_t>(h + 24);
  const uint64_t recorded_size = load<uint64_t>(h + 32);
  const uint32_t index_crc = load<uint32_t>(h + 40);
  for (size_t i = 44; i < kPqmHeaderSize; ++i)
    if (h[i] != 0) model_fail(name_, "header: reserved byte " + std::to_string(i) + " is not zero");
  if (recorded_size != n)
    model_fail(name_, "header records " + std::to_string(recorded_size) + " bytes but the file has " + std::to_string(n) +
                          " (truncated or extended)");
  if (index_offset_ < kPqmHeaderSize || index_size_ == 0 || !range_inside(index_offset_, index_size_, n) ||
      index_offset_ + index_size_ != n)
    model_fail(name_, "header: index at " + std::to_string(index_offset_) + " + " + std::to_string(index_size_) +
                          " bytes does not end the file (" + std::to_string(n) + " bytes)");
  if (crc32(h + index_offset_, index_size_) != index_crc) model_fail(name_, "index checksum mismatch (corrupt file)");
}

void PqmFile::parse_index() {
  const std::string w = name_ + ": index";
  const auto* text = reinterpret_cast<const char*>(bytes_.data() + index_offset_);
  index_ = parse_json(std::string_view(text, index_size_), w);
  require_object(index_, w);
  if (get_string(index_, "format", w) != "pqm") model_fail(w, "key 'format' is not \"pqm\"");
  config_ = ModelConfig::from_json(require_key(index_, "model", w), w + ": model");
  tokenizer_ = TokenizerInfo::from_json(require_key(index_, "tokenizer", w), w + ": tokenizer");
  const json& table = require_key(index_, "tensors", w);
  if (!table.is_array()) model_fail(w, "key 'tensors' is not an array");

  for (size_t i = 0; i < table.size(); ++i) {
    const json& e = table[i];
    std::string where = w + ": tensors[" + std::to_string(i) + "]";
    require_object(e, where);
    TensorInfo t;
    t.name = get_string(e, "name", where);
    if (t.name.empty() || t.name.size() > 256 || t.name.find('\0') != std::string::npos)
      model_fail(where, "tensor names must be 1..256 bytes without NUL");
    where = name_ + ": tensor '" + t.name + "'";
    const std::string kind = get_string(e, "kind", where);
    if (!parse_kind(kind, &t.kind)) model_fail(where, "unknown kind '" + kind + "' (known: f32, f16, blob, pq)");
    t.shape = as_shape(require_key(e, "shape", where), where + ": shape", kPqmMaxDims);
    if (t.shape.empty() || std::count(t.shape.begin(), t.shape.end(), 0u) > 0)
      model_fail(where, "shape " + shape_string(t.shape) + " must have 1..4 dimensions, none of them 0");
    if (t.kind == TensorKind::blob && t.shape.size() != 1) model_fail(where, "a blob has a 1-D shape (its byte count)");
    if (t.kind == TensorKind::pq && t.shape.size() != 2) model_fail(where, "a pq tensor is a 2-D matrix");
    t.offset = get_u64(e, "offset", where);
    t.size = get_u64(e, "size", where);
    t.crc32 = static_cast<uint32_t>(get_int(e, "crc32", where, 0, UINT32_MAX));
    if (t.kind == TensorKind::pq) t.quant = parse_quant(require_key(e, "quant", where), t, where);
    const uint64_t want = expected_size(t, where);
    if (t.size != want)
      model_fail(where, "size " + std::to_string(t.size) + " does not match its kind and shape (" + std::to_string(want) + " bytes)");
    if (t.offset % alignment_ != 0 || t.offset < kPqmHeaderSize)
      model_fail(where, "offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                            std::to_string(alignment_) + " past the header");
    if (!range_inside(t.offset, t.size, index_offset_))
      model_fail(where, "offset " + std::to_string(t.offset) + " + size " + std::to_string(t.size) +
                            " runs past the tensor data (which ends at " + std::to_string(index_offset_) + ")");
    if (!by_name_.emplace(t.name, tensors_.size()).second) model_fail(where, "duplicate tensor name");
    tensors_.push_back(std::move(t));
  }

  std::vector<const TensorInfo*> sorted;
  for (const TensorInfo& t : tensors_) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i - 1]->offset + sorted[i - 1]->size > sorted[i]->offset)
      model_fail(name_ + ": tensor '" + sorted[i]->name + "'", "overlaps tensor '" + sorted[i - 1]->name + "'");
}

std::string PqmFile::where(const TensorInfo& t) const { return name_ + ": tensor '" + t.name + "'"; }

void PqmFile::check_model() {
  const std::vector<TensorSpec> specs = model_tensors(config_);
  const std::vector<std::string> tok_names = tokenizer_tensor_names(tokenizer_.kind);
  std::set<std::string, std::less<>> expected(tok_names.begin(), tok_names.end());
  for (const TensorSpec& spec : specs) expected.insert(spec.name);
  for (const TensorInfo& t : tensors_)
    if (!expected.count(t.name)) model_fail(where(t), "is not part of this model (unknown tensor name)");
  for (const TensorSpec& spec : specs) {
    const TensorInfo* t = find(spec.name);
    if (!t) model_fail(name_, "missing tensor '" + spec.name + "' (required by the model config)");
    if (t->shape != spec.shape)
      model_fail(where(*t), "shape " + shape_string(t->shape) + " but the model config needs " + shape_string(spec.shape));
    const bool ok_kind = t->kind == TensorKind::f32 || t->kind == TensorKind::f16 ||
                         (is_matrix(spec.role) && t->kind == TensorKind::pq);
    if (!ok_kind) model_fail(where(*t), std::string("kind ") + kind_name(t->kind) + " is not allowed for a " + role_name(spec.role));
  }
  for (const std::string& name : tok_names) {
    const TensorInfo* t = find(name);
    if (!t) model_fail(name_, "missing tensor '" + name + "' (required by tokenizer kind " + tokenizer_.kind + ")");
    const TensorKind want = name == "tokenizer.scores" ? TensorKind::f32 : TensorKind::blob;
    if (t->kind != want) model_fail(where(*t), std::string("must be of kind ") + kind_name(want));
  }
}

void PqmFile::check_tokenizer_tensors() const {
  const std::string& kind = tokenizer_.kind;
  const auto vocab_limit = static_cast<size_t>(config_.vocab_size);
  if (kind == "bpe" || kind == "llama2c") {
    const TensorInfo& v = tensor("tokenizer.vocab");
    const size_t n = read_strings(v).size();
    if (n == 0 || n > vocab_limit)
      model_fail(where(v), std::to_string(n) + " tokens, expected 1.." + std::to_string(vocab_limit) + " (vocab_size)");
    if (kind == "llama2c" && tensor("tokenizer.scores").shape != std::vector<uint64_t>{n})
      model_fail(where(tensor("tokenizer.scores")), "needs one score per token (" + std::to_string(n) + ")");
  }
  if (kind == "bpe") {
    const TensorInfo& m = tensor("tokenizer.merges");
    if (read_strings(m).size() % 2 != 0) model_fail(where(m), "holds pairs: its string count must be even");
  }
  for (const AddedToken& a : tokenizer_.added_tokens)
    if (a.id >= config_.vocab_size)
      model_fail(name_ + ": index: tokenizer", "added token id " + std::to_string(a.id) + " is not below vocab_size");
}

const TensorInfo* PqmFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& PqmFile::tensor(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (!t) model_fail(name_, "no tensor '" + std::string(name) + "'");
  return *t;
}

std::span<const uint8_t> PqmFile::bytes(const TensorInfo& t) const { return bytes_.subspan(t.offset, t.size); }

std::vector<float> PqmFile::read_floats(const TensorInfo& t) const {
  const uint8_t* p = bytes_.data() + t.offset;
  const size_t n = t.elements();
  std::vector<float> out(t.kind == TensorKind::pq ? t.rows() * t.cols() : n);
  switch (t.kind) {
    case TensorKind::f32: std::memcpy(out.data(), p, n * 4); break;
    case TensorKind::f16:
      for (size_t i = 0; i < n; ++i) out[i] = pq::f16_to_f32(load<uint16_t>(p + 2 * i));
      break;
    case TensorKind::pq: pq::dequantize(read_quant(t), out.data()); break;
    case TensorKind::blob: model_fail(where(t), "is a blob, not a float tensor");
  }
  return out;
}

pq::QuantMatrix PqmFile::read_quant(const TensorInfo& t) const {
  if (t.kind != TensorKind::pq) model_fail(where(t), std::string("is ") + kind_name(t.kind) + ", not a pq tensor");
  const PqLayout l = pq_layout(t.rows(), t.quant.cols_padded, t.quant.bits, t.quant.block, where(t));
  const uint8_t* p = bytes_.data() + t.offset;
  pq::QuantMatrix q;
  q.method = t.quant.method;
  q.bits = t.quant.bits;
  q.block = t.quant.block;
  q.rotated = t.quant.rotated;
  q.rows = t.rows();
  q.cols = t.cols();
  q.cols_padded = t.quant.cols_padded;
  q.codes.resize(l.codes_bytes / 4);
  std::memcpy(q.codes.data(), p + l.codes_offset, l.codes_bytes);
  q.scales.resize(l.scales_bytes / 2);
  std::memcpy(q.scales.data(), p + l.scales_offset, l.scales_bytes);
  q.codebook.resize(l.codebook_bytes / 4);
  std::memcpy(q.codebook.data(), p + l.codebook_offset, l.codebook_bytes);
  for (float c : q.codebook)
    if (!std::isfinite(c)) model_fail(where(t), "codebook holds a non-finite value");
  for (size_t i = 0; i < q.scales.size(); ++i)
    if (!f16_is_finite(q.scales[i])) model_fail(where(t), "scale " + std::to_string(i) + " is not finite");
  return q;
}

std::vector<std::string> PqmFile::read_strings(const TensorInfo& t) const {
  if (t.kind != TensorKind::blob) model_fail(where(t), "is not a blob");
  return decode_string_list(bytes(t), where(t));
}

void PqmFile::verify_checksums() const {
  for (const TensorInfo& t : tensors_)
    if (crc32(bytes_.data() + t.offset, t.size) != t.crc32)
      model_fail(where(t), "checksum mismatch (corrupt data; CRC-32 of its bytes differs from the index)");
}

}  // namespace pqvk::model
