// The GGUF reader and the ggml block decoders (gguf.h).
//
// Block formats, as ggml defines them (all multi-byte fields little-endian, "half" an IEEE
// binary16). Element k of a block is written x[k]; "nibbles" are the 16 bytes qs[0..15] whose
// low halves hold x[0..15] and whose high halves hold x[16..31].
//
//   Q8_0  32 elements, 34 bytes: half d; int8 q[32].                      x[k] = d * q[k]
//   Q4_0  32 elements, 18 bytes: half d; nibbles.                         x[k] = d * (n[k] - 8)
//   Q4_1  32 elements, 20 bytes: half d, half m; nibbles.                 x[k] = d * n[k] + m
//   Q5_0  32 elements, 22 bytes: half d; u32 qh; nibbles. Bit k of qh is the fifth (high) bit
//         of element k.                                                   x[k] = d * (q[k] - 16)
//   Q5_1  32 elements, 24 bytes: half d, half m; u32 qh; nibbles.         x[k] = d * q[k] + m
//
// The K-quants group 256 elements into a super-block of sub-blocks:
//
//   Q4_K  144 bytes: half d, half dmin; 12 bytes of packed 6-bit scales and mins of the eight
//         sub-blocks of 32; 128 bytes of 4-bit values. The values come in four runs of 32
//         bytes: run r holds sub-block 2r in its low nibbles and sub-block 2r+1 in its high
//         nibbles. x = d * scale[s] * v - dmin * min[s].
//   Q5_K  176 bytes: half d, half dmin; the 12 scale bytes; qh[32]; 128 bytes of low nibbles as
//         in Q4_K. Element l of sub-block s (l < 32) takes bit s of qh[l] as its fifth bit.
//   Q6_K  210 bytes: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16] (one per
//         sub-block of 16), half d last. Each half of 128 elements uses 64 bytes of ql, 32 of qh
//         and 8 scales: for l < 32, ql[l] holds elements l (low nibble) and l+64 (high), ql[l+32]
//         elements l+32 and l+96, and qh[l] bits 0-1, 2-3, 4-5, 6-7 the high bits of elements
//         l, l+32, l+64, l+96. x = d * scale[element / 16] * (v - 32).
//
// The 12 scale bytes of Q4_K / Q5_K: for sub-blocks s < 4, scale = byte[s] & 63 and min =
// byte[s+4] & 63; for s >= 4, scale = (byte[s+4] & 15) | (byte[s-4] >> 6) << 4 and
// min = (byte[s+4] >> 4) | (byte[s] >> 6) << 4 (the top two bits of bytes 0-7 carry the high
// bits of the last four scales and mins).
#include "model/gguf.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "model/checked_math.h"
#include "model/error.h"
#include "model/files.h"
#include "model/safetensors.h"
#include "quant/polarquant.h"

namespace pqvk::model {

namespace {

constexpr uint32_t kMaxDims = 4;                     // ggml's GGML_MAX_DIMS
constexpr uint64_t kMaxTensorName = 64;              // the specification's limit
constexpr uint64_t kMaxKeyLength = 65535;            // the specification's limit
constexpr uint64_t kMaxAlignment = uint64_t{1} << 30;
constexpr int kMaxArrayDepth = 8;                    // nested arrays (kept as counts only)
constexpr uint64_t kMaxElements = uint64_t{1} << 62; // ggml counts elements in int64

// ---- types -----------------------------------------------------------------------------------

struct TypeName {
  uint32_t id;
  const char* name;
};
constexpr TypeName kTypeNames[] = {
    {0, "F32"},      {1, "F16"},     {2, "Q4_0"},     {3, "Q4_1"},    {6, "Q5_0"},    {7, "Q5_1"},   {8, "Q8_0"},
    {9, "Q8_1"},     {10, "Q2_K"},   {11, "Q3_K"},    {12, "Q4_K"},   {13, "Q5_K"},   {14, "Q6_K"},  {15, "Q8_K"},
    {16, "IQ2_XXS"}, {17, "IQ2_XS"}, {18, "IQ3_XXS"}, {19, "IQ1_S"},  {20, "IQ4_NL"}, {21, "IQ3_S"}, {22, "IQ2_S"},
    {23, "IQ4_XS"},  {24, "I8"},     {25, "I16"},     {26, "I32"},    {27, "I64"},    {28, "F64"},   {29, "IQ1_M"},
    {30, "BF16"},    {34, "TQ1_0"},  {35, "TQ2_0"},   {39, "MXFP4"}};

constexpr const char* kDecodable = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return pq::f16_to_f32(h);
}

// ---- block decoders (layouts in the comment at the top) ---------------------------------------

void decode_q8_0(const uint8_t* b, float* x) {
  const float d = half_at(b);
  for (int k = 0; k < 32; ++k) x[k] = d * static_cast<float>(static_cast<int8_t>(b[2 + k]));
}

void decode_q4_0(const uint8_t* b, float* x) {
  const float d = half_at(b);
  const uint8_t* qs = b + 2;
  for (int k = 0; k < 16; ++k) {
    x[k] = d * static_cast<float>((qs[k] & 15) - 8);
    x[k + 16] = d * static_cast<float>((qs[k] >> 4) - 8);
  }
}

void decode_q4_1(const uint8_t* b, float* x) {
  const float d = half_at(b), m = half_at(b + 2);
  const uint8_t* qs = b + 4;
  for (int k = 0; k < 16; ++k) {
    x[k] = d * static_cast<float>(qs[k] & 15) + m;
    x[k + 16] = d * static_cast<float>(qs[k] >> 4) + m;
  }
}

// The 5-bit values of a Q5_0 / Q5_1 block from its qh word and nibbles.
void five_bit_values(const uint8_t* qh_bytes, const uint8_t* qs, int* v) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  for (int k = 0; k < 16; ++k) {
    v[k] = (qs[k] & 15) | static_cast<int>(((qh >> k) & 1u) << 4);
    v[k + 16] = (qs[k] >> 4) | static_cast<int>(((qh >> (k + 16)) & 1u) << 4);
  }
}

void decode_q5_0(const uint8_t* b, float* x) {
  const float d = half_at(b);
  int v[32];
  five_bit_values(b + 2, b + 6, v);
  for (int k = 0; k < 32; ++k) x[k] = d * static_cast<float>(v[k] - 16);
}

void decode_q5_1(const uint8_t* b, float* x) {
  const float d = half_at(b), m = half_at(b + 2);
  int v[32];
  five_bit_values(b + 4, b + 8, v);
  for (int k = 0; k < 32; ++k) x[k] = d * static_cast<float>(v[k]) + m;
}

// Scale and min (6 bits each) of sub-block s (0..7) from the 12 packed bytes of Q4_K / Q5_K.
void k_scale_min(const uint8_t* sc, int s, int& scale, int& min) {
  if (s < 4) {
    scale = sc[s] & 63;
    min = sc[s + 4] & 63;
  } else {
    scale = (sc[s + 4] & 15) | ((sc[s - 4] >> 6) << 4);
    min = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
  }
}

// Q4_K and Q5_K share everything but the fifth bit (qh == nullptr: Q4_K).
void decode_k4_k5(const uint8_t* d_bytes, const uint8_t* scales, const uint8_t* qh, const uint8_t* qs, float* x) {
  const float d = half_at(d_bytes), dmin = half_at(d_bytes + 2);
  for (int s = 0; s < 8; ++s) {
    int scale = 0, min = 0;
    k_scale_min(scales, s, scale, min);
    const float ds = d * static_cast<float>(scale), ms = dmin * static_cast<float>(min);
    const uint8_t* run = qs + 32 * (s / 2);
    const int shift = (s % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      int v = (run[l] >> shift) & 15;
      if (qh) v |= ((qh[l] >> s) & 1) << 4;
      x[32 * s + l] = ds * static_cast<float>(v) - ms;
    }
  }
}

void decode_q4_k(const uint8_t* b, float* x) { decode_k4_k5(b, b + 4, nullptr, b + 16, x); }
void decode_q5_k(const uint8_t* b, float* x) { decode_k4_k5(b, b + 4, b + 16, b + 48, x); }

void decode_q6_k(const uint8_t* b, float* x) {
  const float d = half_at(b + 208);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = b + 64 * h;
    const uint8_t* qh = b + 128 + 32 * h;
    const auto* sc = reinterpret_cast<const int8_t*>(b + 192 + 8 * h);
    float* y = x + 128 * h;
    for (int l = 0; l < 32; ++l) {
      const int v[4] = {(ql[l] & 15) | ((qh[l] & 3) << 4), (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4),
                        (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4), (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)};
      for (int r = 0; r < 4; ++r) {
        const int e = l + 32 * r;  // element within the half
        y[e] = d * static_cast<float>(sc[e / 16]) * static_cast<float>(v[r] - 32);
      }
    }
  }
}

// ---- reading the header ------------------------------------------------------------------------

// A bounds-checked little-endian reader over the file's bytes.
class Cursor {
 public:
  Cursor(std::span<const uint8_t> bytes, const std::string& name) : b_(bytes), name_(name) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return b_.size() - pos_; }

  void need(uint64_t n, const std::string& what) const {
    if (n > left())
      model_fail(name_, what + ": needs " + std::to_string(n) + " bytes at offset " + std::to_string(pos_) +
                            " but the file ends at " + std::to_string(b_.size()) + " (truncated?)");
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::span<const uint8_t> take(uint64_t n, const std::string& what) {
    need(n, what);
    const auto s = b_.subspan(static_cast<size_t>(pos_), static_cast<size_t>(n));
    pos_ += n;
    return s;
  }
  std::string read_string(const std::string& what, uint64_t max_len) {
    const uint64_t n = read<uint64_t>(what + " length");
    if (n > max_len) model_fail(name_, what + ": length " + std::to_string(n) + " exceeds the limit of " + std::to_string(max_len));
    const auto s = take(n, what);
    return std::string(reinterpret_cast<const char*>(s.data()), s.size());
  }

 private:
  std::span<const uint8_t> b_;
  const std::string& name_;
  uint64_t pos_ = 0;
};

size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::u8: case GgufValueType::i8: case GgufValueType::boolean: return 1;
    case GgufValueType::u16: case GgufValueType::i16: return 2;
    case GgufValueType::u32: case GgufValueType::i32: case GgufValueType::f32: return 4;
    case GgufValueType::u64: case GgufValueType::i64: case GgufValueType::f64: return 8;
    default: return 0;
  }
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::f64); }

bool is_integer(GgufValueType t) {
  return scalar_size(t) > 0 && t != GgufValueType::f32 && t != GgufValueType::f64 && t != GgufValueType::boolean;
}
bool is_signed(GgufValueType t) {
  return t == GgufValueType::i8 || t == GgufValueType::i16 || t == GgufValueType::i32 || t == GgufValueType::i64;
}

// A scalar of `size` bytes at p as 64 bits: signed types sign-extended.
uint64_t integer_bits(const uint8_t* p, GgufValueType t) {
  switch (t) {
    case GgufValueType::i8: return static_cast<uint64_t>(int64_t{static_cast<int8_t>(p[0])});
    case GgufValueType::i16: { int16_t v; std::memcpy(&v, p, 2); return static_cast<uint64_t>(int64_t{v}); }
    case GgufValueType::i32: { int32_t v; std::memcpy(&v, p, 4); return static_cast<uint64_t>(int64_t{v}); }
    case GgufValueType::u16: { uint16_t v; std::memcpy(&v, p, 2); return v; }
    case GgufValueType::u32: { uint32_t v; std::memcpy(&v, p, 4); return v; }
    case GgufValueType::u64: case GgufValueType::i64: { uint64_t v; std::memcpy(&v, p, 8); return v; }
    default: return p[0];  // u8, bool
  }
}

double float_value(const uint8_t* p, GgufValueType t) {
  if (t == GgufValueType::f32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  double d;
  std::memcpy(&d, p, 8);
  return d;
}

GgufValueType value_type(Cursor& c, const std::string& where, const std::string& what) {
  const uint32_t t = c.read<uint32_t>(where + ": " + what);
  if (!known_value_type(t)) model_fail(where, "unknown " + what + " " + std::to_string(t));
  return static_cast<GgufValueType>(t);
}

void skip_value(Cursor& c, GgufValueType t, const std::string& where, int depth);

// An array's elements (after its element type and count). Nested arrays are skipped.
void read_array(Cursor& c, GgufValue& v, const std::string& where, int depth) {
  v.element_type = value_type(c, where, "array element type");
  v.count = c.read<uint64_t>(where + ": array length");
  const size_t esize = scalar_size(v.element_type);
  // The smallest encoding of one element bounds the count by the bytes left.
  const uint64_t min_size = esize ? esize : v.element_type == GgufValueType::string ? 8 : 12;
  if (v.count > c.left() / min_size)
    model_fail(where, "array of " + std::to_string(v.count) + " " + gguf_type_name(v.element_type) +
                          " elements does not fit in the " + std::to_string(c.left()) + " bytes left (truncated?)");
  if (esize) {
    const auto s = c.take(v.count * esize, where + ": array");
    v.raw.assign(s.begin(), s.end());
    if (v.element_type == GgufValueType::boolean)
      for (uint64_t i = 0; i < v.count; ++i)
        if (v.raw[i] > 1) model_fail(where, "array element " + std::to_string(i) + " is a bool of value " + std::to_string(v.raw[i]));
  } else if (v.element_type == GgufValueType::string) {
    v.strings.reserve(static_cast<size_t>(v.count));
    for (uint64_t i = 0; i < v.count; ++i) v.strings.push_back(c.read_string(where + ": array element " + std::to_string(i), c.left()));
  } else {
    if (depth >= kMaxArrayDepth) model_fail(where, "arrays nested deeper than " + std::to_string(kMaxArrayDepth) + " levels");
    for (uint64_t i = 0; i < v.count; ++i) skip_value(c, GgufValueType::array, where, depth + 1);
  }
}

void skip_value(Cursor& c, GgufValueType t, const std::string& where, int depth) {
  GgufValue v;
  if (t == GgufValueType::array) read_array(c, v, where, depth);
  else if (t == GgufValueType::string) c.read_string(where, c.left());
  else c.take(scalar_size(t), where);
}

GgufValue read_value(Cursor& c, GgufValueType t, const std::string& where) {
  GgufValue v;
  v.type = t;
  if (t == GgufValueType::array) {
    read_array(c, v, where, 1);
  } else if (t == GgufValueType::string) {
    v.text = c.read_string(where, c.left());
  } else {
    const auto s = c.take(scalar_size(t), where);
    if (t == GgufValueType::f32 || t == GgufValueType::f64) v.number = float_value(s.data(), t);
    else v.bits = integer_bits(s.data(), t);
    if (t == GgufValueType::boolean && v.bits > 1) model_fail(where, "a bool of value " + std::to_string(v.bits));
  }
  return v;
}

bool printable_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char ch) { return ch >= 0x20 && ch <= 0x7e; });
}

}  // namespace

// ---- public type helpers -------------------------------------------------------------------------

std::optional<GgmlBlock> ggml_block(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::f32: return GgmlBlock{1, 4};
    case GgmlType::f16: return GgmlBlock{1, 2};
    case GgmlType::bf16: return GgmlBlock{1, 2};
    case GgmlType::q8_0: return GgmlBlock{32, 34};
    case GgmlType::q4_0: return GgmlBlock{32, 18};
    case GgmlType::q4_1: return GgmlBlock{32, 20};
    case GgmlType::q5_0: return GgmlBlock{32, 22};
    case GgmlType::q5_1: return GgmlBlock{32, 24};
    case GgmlType::q4_k: return GgmlBlock{256, 144};
    case GgmlType::q5_k: return GgmlBlock{256, 176};
    case GgmlType::q6_k: return GgmlBlock{256, 210};
  }
  return std::nullopt;
}

std::string ggml_type_name(uint32_t type) {
  for (const TypeName& t : kTypeNames)
    if (t.id == type) return t.name;
  return "unknown type " + std::to_string(type);
}

void dequantize(GgmlType type, const uint8_t* src, uint64_t n, float* dst) {
  const GgmlBlock blk = *ggml_block(static_cast<uint32_t>(type));
  const uint64_t blocks = n / blk.block;
  void (*decode)(const uint8_t*, float*) = nullptr;
  switch (type) {
    case GgmlType::f32: std::memcpy(dst, src, n * 4); return;
    case GgmlType::f16:
    case GgmlType::bf16:
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = type == GgmlType::f16 ? pq::f16_to_f32(h) : bf16_to_f32(h);
      }
      return;
    case GgmlType::q8_0: decode = decode_q8_0; break;
    case GgmlType::q4_0: decode = decode_q4_0; break;
    case GgmlType::q4_1: decode = decode_q4_1; break;
    case GgmlType::q5_0: decode = decode_q5_0; break;
    case GgmlType::q5_1: decode = decode_q5_1; break;
    case GgmlType::q4_k: decode = decode_q4_k; break;
    case GgmlType::q5_k: decode = decode_q5_k; break;
    case GgmlType::q6_k: decode = decode_q6_k; break;
  }
  for (uint64_t i = 0; i < blocks; ++i) decode(src + i * blk.bytes, dst + i * blk.block);
}

const char* gguf_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::u8: return "u8";
    case GgufValueType::i8: return "i8";
    case GgufValueType::u16: return "u16";
    case GgufValueType::i16: return "i16";
    case GgufValueType::u32: return "u32";
    case GgufValueType::i32: return "i32";
    case GgufValueType::f32: return "f32";
    case GgufValueType::boolean: return "bool";
    case GgufValueType::string: return "string";
    case GgufValueType::array: return "array";
    case GgufValueType::u64: return "u64";
    case GgufValueType::i64: return "i64";
    case GgufValueType::f64: return "f64";
  }
  return "?";
}

// ---- GgufFile --------------------------------------------------------------------------------------

GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

GgufFile GgufFile::open(const std::string& path) {
  GgufFile f;
  f.name_ = path;
  f.file_ = std::make_unique<MappedFile>(path);
  f.bytes_ = f.file_->bytes();
  f.parse();
  return f;
}

GgufFile GgufFile::from_memory(std::span<const uint8_t> bytes, const std::string& name) {
  GgufFile f;
  f.name_ = name;
  f.bytes_ = bytes;
  f.parse();
  return f;
}

std::string GgufFile::where_key(std::string_view key) const { return name_ + ": key '" + std::string(key) + "'"; }
std::string GgufFile::where(const GgufTensor& t) const { return name_ + ": tensor '" + t.name + "'"; }

void GgufFile::parse() {
  Cursor c(bytes_, name_);
  const auto magic = c.take(4, "magic");
  if (std::memcmp(magic.data(), "GGUF", 4) != 0) model_fail(name_, "bad magic: not a GGUF file");
  version_ = c.read<uint32_t>("version");
  if (version_ == 1) model_fail(name_, "GGUF version 1 is not supported (only versions 2 and 3)");
  if (version_ != 2 && version_ != 3) {
    if (version_ == 0x02000000u || version_ == 0x03000000u)  // 2 or 3 written big-endian
      model_fail(name_, "a big-endian GGUF file: only little-endian files are supported");
    model_fail(name_, "unknown GGUF version " + std::to_string(version_) + " (supported: 2, 3)");
  }
  const uint64_t tensor_count = c.read<uint64_t>("tensor count");
  const uint64_t kv_count = c.read<uint64_t>("metadata key-value count");

  for (uint64_t i = 0; i < kv_count; ++i) {
    const std::string kw = "metadata key " + std::to_string(i);
    std::string key = c.read_string(kw, kMaxKeyLength);
    if (key.empty() || !printable_ascii(key)) model_fail(name_, kw + ": the key is empty or not printable ASCII");
    const std::string w = where_key(key);
    const GgufValueType t = value_type(c, w, "value type");
    GgufValue v = read_value(c, t, w);
    if (!metadata_.emplace(std::move(key), std::move(v)).second) model_fail(w, "the key appears twice");
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufValueType::u32) model_fail(where_key("general.alignment"), std::string("expected a u32, got ") + gguf_type_name(a->type));
    alignment_ = a->bits;
    if (alignment_ < 8 || alignment_ > kMaxAlignment || !std::has_single_bit(alignment_))
      model_fail(where_key("general.alignment"), std::to_string(alignment_) + " is not a power of two in [8, 2^30]");
  }

  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensor t;
    t.name = c.read_string("tensor info " + std::to_string(i) + " name", c.left());
    if (t.name.empty() || t.name.size() > kMaxTensorName)
      model_fail(name_, "tensor info " + std::to_string(i) + ": name of " + std::to_string(t.name.size()) +
                            " bytes (must be 1.." + std::to_string(kMaxTensorName) + ")");
    const std::string w = where(t);
    const uint32_t n_dims = c.read<uint32_t>(w + " dimension count");
    if (n_dims < 1 || n_dims > kMaxDims)
      model_fail(w, std::to_string(n_dims) + " dimensions (must be 1.." + std::to_string(kMaxDims) + ")");
    t.elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      t.dims.push_back(c.read<uint64_t>(w + " dimension " + std::to_string(d)));
      if (t.dims.back() == 0) model_fail(w, "dimension " + std::to_string(d) + " is 0");
      t.elements = checked_mul(t.elements, t.dims.back(), w + ": element count");
    }
    if (t.elements > kMaxElements) model_fail(w, "more than 2^62 elements");
    const uint32_t type = c.read<uint32_t>(w + " type");
    const std::optional<GgmlBlock> blk = ggml_block(type);
    if (!blk)
      model_fail(w, "ggml type " + ggml_type_name(type) + " (" + std::to_string(type) + ") is not supported (supported: " +
                        kDecodable + ")");
    t.type = static_cast<GgmlType>(type);
    if (t.dims[0] % blk->block != 0)
      model_fail(w, "rows of " + std::to_string(t.dims[0]) + " elements are not whole " + ggml_type_name(type) + " blocks of " +
                        std::to_string(blk->block));
    t.size = checked_mul(t.elements / blk->block, blk->bytes, w + ": size");
    t.offset = c.read<uint64_t>(w + " offset");
    if (t.offset % alignment_ != 0)
      model_fail(w, "offset " + std::to_string(t.offset) + " is not a multiple of the alignment " + std::to_string(alignment_));
    if (!by_name_.emplace(t.name, tensors_.size()).second) model_fail(w, "the name appears twice");
    tensors_.push_back(std::move(t));
  }

  const uint64_t header_end = c.pos();
  data_offset_ = checked_add(header_end, (alignment_ - header_end % alignment_) % alignment_, name_ + ": data section");
  if (!tensors_.empty() && data_offset_ > bytes_.size())
    model_fail(name_, "the data section would start at " + std::to_string(data_offset_) + ", past the end of the file (" +
                          std::to_string(bytes_.size()) + " bytes; truncated?)");
  const uint64_t data_size = tensors_.empty() ? 0 : bytes_.size() - data_offset_;
  for (GgufTensor& t : tensors_) {
    if (!range_inside(t.offset, t.size, data_size))
      model_fail(where(t), "offset " + std::to_string(t.offset) + " + size " + std::to_string(t.size) +
                               " is past the end of the data section (" + std::to_string(data_size) + " bytes; truncated?)");
    t.offset += data_offset_;
  }
  std::vector<const GgufTensor*> sorted;
  for (const GgufTensor& t : tensors_) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i - 1]->offset + sorted[i - 1]->size > sorted[i]->offset)
      model_fail(where(*sorted[i]), "overlaps tensor '" + sorted[i - 1]->name + "'");
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

[[noreturn]] void wrong_type(const std::string& where, const char* want, const GgufValue& v) {
  std::string got = gguf_type_name(v.type);
  if (v.type == GgufValueType::array) got += std::string(" of ") + gguf_type_name(v.element_type);
  model_fail(where, std::string("expected ") + want + ", got " + got);
}

}  // namespace

std::optional<uint64_t> GgufFile::get_uint(std::string_view key, uint64_t max) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  const std::string w = where_key(key);
  if (!is_integer(v->type)) wrong_type(w, "an integer", *v);
  if (is_signed(v->type) && static_cast<int64_t>(v->bits) < 0)
    model_fail(w, std::to_string(static_cast<int64_t>(v->bits)) + " is negative");
  if (v->bits > max) model_fail(w, std::to_string(v->bits) + " is out of range [0, " + std::to_string(max) + "]");
  return v->bits;
}

std::optional<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::f32 && v->type != GgufValueType::f64) wrong_type(where_key(key), "a float", *v);
  if (!std::isfinite(v->number)) model_fail(where_key(key), "not a finite number");
  return v->number;
}

std::optional<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::boolean) wrong_type(where_key(key), "a bool", *v);
  return v->bits != 0;
}

std::optional<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::string) wrong_type(where_key(key), "a string", *v);
  return v->text;
}

std::optional<std::vector<std::string>> GgufFile::get_strings(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::array || v->element_type != GgufValueType::string)
    wrong_type(where_key(key), "an array of strings", *v);
  return v->strings;
}

std::optional<std::vector<float>> GgufFile::get_floats(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::array || (v->element_type != GgufValueType::f32 && v->element_type != GgufValueType::f64))
    wrong_type(where_key(key), "an array of floats", *v);
  const size_t esize = scalar_size(v->element_type);
  std::vector<float> out(static_cast<size_t>(v->count));
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(float_value(v->raw.data() + i * esize, v->element_type));
  return out;
}

std::optional<std::vector<int64_t>> GgufFile::get_ints(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::array || !is_integer(v->element_type)) wrong_type(where_key(key), "an array of integers", *v);
  const size_t esize = scalar_size(v->element_type);
  std::vector<int64_t> out(static_cast<size_t>(v->count));
  for (size_t i = 0; i < out.size(); ++i) {
    const uint64_t bits = integer_bits(v->raw.data() + i * esize, v->element_type);
    if (v->element_type == GgufValueType::u64 && bits > uint64_t{INT64_MAX})
      model_fail(where_key(key), "element " + std::to_string(i) + " is out of range");
    out[i] = static_cast<int64_t>(bits);
  }
  return out;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> GgufFile::bytes(const GgufTensor& t) const {
  return bytes_.subspan(static_cast<size_t>(t.offset), static_cast<size_t>(t.size));
}

std::vector<float> GgufFile::read_floats(const GgufTensor& t) const {
  std::vector<float> out(static_cast<size_t>(t.elements));
  dequantize(t.type, bytes(t).data(), t.elements, out.data());
  for (size_t i = 0; i < out.size(); ++i)
    if (!std::isfinite(out[i])) model_fail(where(t), "element " + std::to_string(i) + " is not finite");
  return out;
}

}  // namespace pqvk::model
