// The PolarQuant reference's checkpoint directories (docs/polarquant.md, "The reference's
// checkpoint formats"): a HuggingFace directory whose quantized linear layers L are stored as
//   L.codes      codes, one per byte (int8), nibble-packed (bits <= 4: within each block,
//                byte j = code[j] | code[j + B/2] << 4) or 5-bit packed (8 codes in 5 bytes,
//                least significant bit first)
//   L.norms      fp16 block norms n, [out][in_padded / B]
//   L.ct_scaled  fp32 centroids / sqrt(B), 2^bits entries
// or, in format "hlwq-q5", as L.weight__packed (8 5-bit codes in 5 bytes, most significant
// bit first), L.weight__norms (fp16) and L.weight__meta (not needed: shapes come from
// config.json, the block size from polar_config.json; the codebook is the 5-bit Lloyd-Max one).
//
// The reference dequantizes w = (n / sqrt(B)) H_B centroids[codes] = n H_B ct_scaled[codes],
// which is exactly pq::QuantMatrix's w = scale H_B codebook[code] with scale = n (the same
// fp16 bits), codebook = ct_scaled (the same fp32 values) and rotated = true. So the import is
// lossless: the codes are repacked (pq::pack_codes), nothing is re-quantized.
#include <bit>
#include <cmath>
#include <cstring>
#include <optional>
#include <set>

#include "model/checked_math.h"
#include "model/error.h"
#include "model/files.h"
#include "model/hf_checkpoint.h"
#include "model/json_fields.h"
#include "model/source.h"

namespace pqvk::model {

namespace {

enum class Packing { int8, nibble, five_lsb, five_msb };

struct RefSettings {
  int block = 128;
  int bits = 0;        // 0: not given (taken from each layer's codebook)
  std::string format;
  json layers = json::object();
};

RefSettings read_polar_config(const std::string& path) {
  const json j = read_json_file(path);
  require_object(j, path);
  RefSettings s;
  s.block = static_cast<int>(has_key(j, "block_size") ? get_int(j, "block_size", path, 64, 256)
                                                      : get_int_or(j, "block", path, 64, 256, 128));
  if (s.block != 64 && s.block != 128 && s.block != 256) model_fail(path, "block size must be 64, 128 or 256");
  s.bits = static_cast<int>(get_int_or(j, "bits", path, 2, 8, 0));
  s.format = get_string_or(j, "format", path, "");
  if (has_key(j, "layers")) {
    s.layers = j["layers"];
    require_object(s.layers, path + ": layers");
  }
  return s;
}

// The codes of a [rows][in_padded] matrix, one per byte, from any of the reference packings.
std::vector<uint8_t> unpack_reference(std::span<const uint8_t> src, Packing p, uint64_t rows, uint64_t in_padded, int block) {
  std::vector<uint8_t> codes(rows * in_padded);
  switch (p) {
    case Packing::int8: std::memcpy(codes.data(), src.data(), codes.size()); break;
    case Packing::nibble: {
      const uint64_t half = static_cast<uint64_t>(block) / 2;
      for (uint64_t b = 0; b < codes.size() / block; ++b)
        for (uint64_t j = 0; j < half; ++j) {
          const uint8_t byte = src[b * half + j];
          codes[b * block + j] = byte & 0x0f;
          codes[b * block + j + half] = byte >> 4;
        }
      break;
    }
    case Packing::five_lsb:
    case Packing::five_msb:
      for (uint64_t g = 0; g < codes.size() / 8; ++g) {
        uint64_t v = 0;  // the 40-bit group
        for (int k = 0; k < 5; ++k) {
          const uint64_t byte = src[g * 5 + k];
          v |= p == Packing::five_lsb ? byte << (8 * k) : byte << (8 * (4 - k));
        }
        for (int i = 0; i < 8; ++i)
          codes[g * 8 + i] = static_cast<uint8_t>((p == Packing::five_lsb ? v >> (5 * i) : v >> (35 - 5 * i)) & 31u);
      }
      break;
  }
  return codes;
}

// The 5-bit Lloyd-Max codebook exactly as pq::quantize() builds it (centroid / sqrt(B) in
// fp32), for hlwq-q5 layers that carry no ct_scaled.
std::vector<float> lloyd_codebook(int bits, int block) {
  std::vector<float> ones(static_cast<size_t>(block), 1.0f);
  return pq::quantize(ones.data(), 1, ones.size(), bits, block, pq::Method::pq).codebook;
}

// One quantized layer of the reference checkpoint.
class RefLayer {
 public:
  RefLayer(const HfCheckpoint& ck, const RefSettings& s, const TensorSpec& spec, const std::string& weight_name);
  bool quantized() const { return codes_.has_value(); }
  const std::vector<std::string>& consumed() const { return consumed_; }
  pq::QuantMatrix load() const;
  std::string where() const { return codes_->where(); }

 private:
  void resolve_codebook(const RefSettings& s, const std::string& module);
  void resolve_packing();  // from the byte count of the codes (hlwq-q5: checks it)
  void check_norms() const;

  TensorSpec spec_;
  int block_ = 128, bits_ = 0;
  uint64_t in_padded_ = 0;
  Packing packing_ = Packing::int8;
  // Copies (each holds its file open): the checkpoint index does not outlive the import.
  std::optional<HfCheckpoint::Ref> codes_, norms_, ct_;
  std::vector<std::string> consumed_;
};

RefLayer::RefLayer(const HfCheckpoint& ck, const RefSettings& s, const TensorSpec& spec, const std::string& weight_name)
    : spec_(spec), block_(s.block), in_padded_(round_up(spec.shape[1], static_cast<uint64_t>(s.block))) {
  const std::string module = weight_name.substr(0, weight_name.size() - std::string(".weight").size());
  const bool hlwq = ck.find(weight_name + "__packed") != nullptr;
  const std::string codes_name = hlwq ? weight_name + "__packed" : module + ".codes";
  const std::string norms_name = hlwq ? weight_name + "__norms" : module + ".norms";
  auto copy = [](const HfCheckpoint::Ref* r) { return r ? std::optional<HfCheckpoint::Ref>(*r) : std::nullopt; };
  codes_ = copy(ck.find(codes_name));
  if (!codes_) return;  // stored unquantized
  norms_ = copy(ck.find(norms_name));
  if (!norms_) model_fail(codes_->where(), "has no '" + norms_name + "' beside it");
  ct_ = copy(ck.find(module + ".ct_scaled"));
  consumed_ = {codes_name, norms_name};
  if (ct_) consumed_.push_back(module + ".ct_scaled");
  if (hlwq) {
    if (!ck.find(weight_name + "__meta")) model_fail(codes_->where(), "has no '" + weight_name + "__meta' beside it");
    consumed_.push_back(weight_name + "__meta");
    packing_ = Packing::five_msb;
  }
  resolve_codebook(s, module);
  resolve_packing();
  check_norms();
}

void RefLayer::check_norms() const {
  const SafeTensor& n = *norms_->tensor;
  const uint64_t want = spec_.shape[0] * (in_padded_ / static_cast<uint64_t>(block_));
  if ((n.dtype != "F16" && n.dtype != "F32") || n.elements() != want)
    model_fail(norms_->where(), "expected " + std::to_string(want) + " F16 norms (one per block of " + std::to_string(block_) +
                                    "), got " + std::to_string(n.elements()) + " " + n.dtype);
}

void RefLayer::resolve_codebook(const RefSettings& s, const std::string& module) {
  int layer_bits = 0;
  if (s.layers.contains(module) && s.layers[module].is_object())
    layer_bits = static_cast<int>(get_int_or(s.layers[module], "bits", "polar_config.json: layers['" + module + "']", 2, 8, 0));
  if (ct_) {
    const uint64_t n = ct_->tensor->elements();
    if ((ct_->tensor->dtype != "F32" && ct_->tensor->dtype != "F16") || n < 4 || n > 256 || !std::has_single_bit(n))
      model_fail(ct_->where(), "expected 2^bits (4..256) F32 centroids, got " + std::to_string(n) + " " + ct_->tensor->dtype);
    bits_ = std::countr_zero(n);
  } else {
    bits_ = packing_ == Packing::five_msb ? 5 : (layer_bits ? layer_bits : s.bits);
    if (bits_ == 0) model_fail(codes_->where(), "has no ct_scaled beside it and polar_config.json gives no bits");
  }
  if (layer_bits && layer_bits != bits_)
    model_fail(codes_->where(), "polar_config.json says " + std::to_string(layer_bits) + " bits, the codebook has " +
                                    std::to_string(bits_));
  if (packing_ == Packing::five_msb && bits_ != 5) model_fail(codes_->where(), "hlwq-q5 layers have 5-bit codes");
}

void RefLayer::resolve_packing() {
  const SafeTensor& t = *codes_->tensor;
  if (t.dtype != "I8" && t.dtype != "U8") model_fail(codes_->where(), "codes must be I8 or U8, got " + t.dtype);
  const uint64_t bytes = t.end - t.begin, rows = spec_.shape[0];
  auto fits = [&](uint64_t num, uint64_t den) { return bytes * den == rows * in_padded_ * num; };  // bytes = rows*in_padded*num/den
  if (packing_ == Packing::five_msb) {  // hlwq-q5: the packing is known, the size must match
    if (fits(5, 8)) return;
  } else if (fits(1, 1)) {
    packing_ = Packing::int8;
    return;
  } else if (fits(1, 2) && bits_ <= 4) {
    packing_ = Packing::nibble;
    return;
  } else if (fits(5, 8) && bits_ == 5) {
    packing_ = Packing::five_lsb;
    return;
  }
  model_fail(codes_->where(), std::to_string(bytes) + " bytes of " + std::to_string(bits_) + "-bit codes fit no known packing for " +
                                  shape_string(spec_.shape) + " padded to " + std::to_string(in_padded_) +
                                  " columns (int8: 1 byte per code, nibble: 1/2, 5-bit: 5/8)");
}

pq::QuantMatrix RefLayer::load() const {
  pq::QuantMatrix q;
  q.method = pq::Method::pq;
  q.bits = bits_;
  q.block = block_;
  q.rotated = true;
  q.rows = spec_.shape[0];
  q.cols = spec_.shape[1];
  q.cols_padded = in_padded_;
  const std::vector<uint8_t> codes = unpack_reference(codes_->file->bytes(*codes_->tensor), packing_, q.rows, in_padded_, block_);
  const uint32_t limit = 1u << bits_;
  for (size_t i = 0; i < codes.size(); ++i)
    if (codes[i] >= limit)
      model_fail(where(), "code " + std::to_string(codes[i]) + " at index " + std::to_string(i) + " does not fit in " +
                              std::to_string(bits_) + " bits");
  q.codes.resize(pq::packed_words(q.rows, q.cols_padded, q.bits));
  pq::pack_codes(codes.data(), q.rows, q.cols_padded, q.bits, q.codes.data());

  const SafeTensor& n = *norms_->tensor;
  const auto nb = norms_->file->bytes(n);
  q.scales.resize(n.elements());
  if (n.dtype == "F16") std::memcpy(q.scales.data(), nb.data(), nb.size());  // the same bits: lossless
  else
    for (size_t i = 0; i < q.scales.size(); ++i) {
      float v;
      std::memcpy(&v, nb.data() + 4 * i, 4);
      q.scales[i] = pq::f32_to_f16(v);
    }
  for (size_t i = 0; i < q.scales.size(); ++i)
    if ((q.scales[i] & 0x7c00u) == 0x7c00u) model_fail(norms_->where(), "norm " + std::to_string(i) + " is not finite");

  if (ct_) q.codebook = ct_->file->read_floats(*ct_->tensor);
  else q.codebook = lloyd_codebook(bits_, block_);
  for (float c : q.codebook)
    if (!std::isfinite(c)) model_fail(ct_ ? ct_->where() : where(), "codebook holds a non-finite value");
  return q;
}

}  // namespace

SourceModel import_reference(const std::string& dir) {
  const std::string cfg_path = join_path(dir, "config.json");
  if (!file_exists(cfg_path)) model_fail(dir, "no config.json in it");
  const RefSettings settings = read_polar_config(join_path(dir, "polar_config.json"));
  SourceModel m;
  m.path = dir;
  m.format = "polarquant-reference";
  m.config = hf_model_config(read_json_file(cfg_path), cfg_path);
  const HfCheckpoint ck = HfCheckpoint::open_dir(dir);
  m.tokenizer = load_hf_tokenizer(dir, m.config.vocab_size);
  adopt_special_ids(m.config, m.tokenizer);
  m.config.validate(cfg_path);

  std::set<std::string> used;
  for (const TensorSpec& spec : model_tensors(m.config)) {
    const std::string name = hf_name(spec);
    if (is_matrix(spec.role)) {
      auto layer = std::make_shared<RefLayer>(ck, settings, spec, name);
      if (layer->quantized()) {
        used.insert(layer->consumed().begin(), layer->consumed().end());
        m.tensors.push_back({spec, layer->where(), nullptr, [layer] { return layer->load(); }});
        continue;
      }
    }
    const HfCheckpoint::Ref* ref = ck.find(name);
    if (!ref) model_fail(dir, "missing tensor '" + name + "' (neither quantized nor plain)");
    used.insert(name);
    m.tensors.push_back({spec, ref->where(), HfCheckpoint::float_loader(*ref, spec.shape), nullptr});
  }
  reject_unused(ck, used, m.config);
  return m;
}

}  // namespace pqvk::model
