#include "model/convert.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>

#include "model/error.h"
#include "model/files.h"
#include "model/pqm.h"
#include "model/safetensors.h"

namespace pqvk::model {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr size_t kKurtosisRows = 256;  // rows sampled (evenly spaced) for the kurtosis statistics

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs work(i) for i in [0, n) on `threads` threads pulling indices in order.
void parallel_for(size_t n, int threads, const std::function<void(size_t)>& work) {
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < n;) {
      try {
        work(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = n;  // stop handing out work
      }
    }
  };
  const int t = static_cast<int>(std::min<size_t>(static_cast<size_t>(std::max(threads, 1)), n));
  std::vector<std::thread> pool;
  for (int k = 1; k < t; ++k) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

// Quantization of one matrix, row chunks in parallel. The rows of a pq::QuantMatrix are
// independent in its layout (each row's words and scales are contiguous), so chunks quantized
// separately concatenate into exactly what one pq::quantize() call over all rows returns.
struct MatrixResult {
  pq::QuantMatrix q;
  std::vector<float> dequant;  // kept only when asked
  double signal = 0.0, noise = 0.0;
};

class Progress {
 public:
  Progress(const QuantizeOptions& o, uint64_t total) : o_(o), total_(total) {}
  void add(uint64_t weights, const std::string& tensor) {
    if (!o_.progress) return;
    std::lock_guard<std::mutex> lock(m_);
    done_ += weights;
    o_.progress(done_, total_, tensor);
  }

 private:
  const QuantizeOptions& o_;
  uint64_t total_, done_ = 0;
  std::mutex m_;
};

MatrixResult quantize_rows(const std::vector<float>& w, const TensorSpec& spec, int bits, pq::Method method,
                           const QuantizeOptions& o, bool keep_dequant, Progress& progress) {
  const size_t rows = spec.shape[0], cols = spec.shape[1];
  MatrixResult r;
  pq::QuantMatrix& q = r.q;
  q.method = method;
  q.bits = bits;
  q.block = o.block;
  q.rotated = method == pq::Method::pq || method == pq::Method::rot_uniform;
  q.rows = rows;
  q.cols = cols;
  q.cols_padded = (cols + o.block - 1) / o.block * o.block;
  const size_t row_words = pq::packed_words(1, q.cols_padded, bits), row_scales = q.blocks_per_row();
  q.codes.resize(rows * row_words);
  q.scales.resize(rows * row_scales);
  if (keep_dequant) r.dequant.resize(rows * cols);

  const size_t chunk_rows = std::max<size_t>(1, (size_t{1} << 16) / q.cols_padded);
  const size_t chunks = (rows + chunk_rows - 1) / chunk_rows;
  std::vector<double> signal(chunks), noise(chunks);
  parallel_for(chunks, o.threads, [&](size_t c) {
    const size_t r0 = c * chunk_rows, n = std::min(chunk_rows, rows - r0);
    const float* src = w.data() + r0 * cols;
    const pq::QuantMatrix sub = pq::quantize(src, n, cols, bits, o.block, method);
    std::copy(sub.codes.begin(), sub.codes.end(), q.codes.begin() + static_cast<ptrdiff_t>(r0 * row_words));
    std::copy(sub.scales.begin(), sub.scales.end(), q.scales.begin() + static_cast<ptrdiff_t>(r0 * row_scales));
    if (c == 0) q.codebook = sub.codebook;
    std::vector<float> local(keep_dequant ? 0 : n * cols);
    float* deq = keep_dequant ? r.dequant.data() + r0 * cols : local.data();
    pq::dequantize(sub, deq);
    for (size_t i = 0; i < n * cols; ++i) {
      const double d = double{src[i]} - deq[i];
      signal[c] += double{src[i]} * src[i];
      noise[c] += d * d;
    }
    progress.add(n * cols, spec.name);
  });
  for (size_t c = 0; c < chunks; ++c) {
    r.signal += signal[c];
    r.noise += noise[c];
  }
  return r;
}

void set_error_stats(TensorReport& rep, double signal, double noise) {
  rep.sqnr_db = noise == 0.0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(signal / noise);
  rep.rel_rmse = signal == 0.0 ? kNaN : std::sqrt(noise / signal);
}

// Kurtosis of the block coordinates before and after rotation, on evenly spaced sample rows.
void set_kurtosis(TensorReport& rep, const std::vector<float>& w, const TensorSpec& spec, int block) {
  const size_t rows = spec.shape[0], cols = spec.shape[1];
  const size_t step = std::max<size_t>(1, rows / kKurtosisRows);
  std::vector<float> sample;
  size_t n = 0;
  for (size_t r = 0; r < rows && n < kKurtosisRows; r += step, ++n) sample.insert(sample.end(), w.begin() + r * cols, w.begin() + (r + 1) * cols);
  rep.kurtosis_before = pq::block_kurtosis(sample.data(), n, cols, block, false);
  rep.kurtosis_after = pq::block_kurtosis(sample.data(), n, cols, block, true);
}

std::vector<uint8_t> f16_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = pq::f32_to_f16(v[i]);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

class Converter {
 public:
  Converter(const SourceModel& src, const std::string& out, const QuantizeOptions& o)
      : src_(src), o_(o), writer_(out), progress_(o, total_weights(src)) {
    if (!o.dequant_out.empty()) {
      std::vector<SafetensorsWriter::Entry> plan;
      for (const SourceTensor& t : src.tensors) plan.push_back({hf_name(t.spec), "F16", t.spec.shape});
      dequant_ = std::make_unique<SafetensorsWriter>(o.dequant_out, plan, std::map<std::string, std::string>{{"format", "pt"}});
    }
  }

  QuantizeResult run(const std::string& out_path) {
    const auto t0 = std::chrono::steady_clock::now();
    QuantizeResult res;
    for (const SourceTensor& t : src_.tensors) res.tensors.push_back(convert(t));
    for (const auto& [name, bytes] : src_.tokenizer.blobs) writer_.add_blob(name, bytes);
    if (!src_.tokenizer.scores.empty())
      writer_.add_f32("tokenizer.scores", {src_.tokenizer.scores.size()}, src_.tokenizer.scores);
    const json extra = {{"quantization",
                         {{"tool", "pq-quantize"}, {"recipe", o_.method == "fp16" ? "fp16" : o_.recipe},
                          {"method", o_.method}, {"block", o_.block}, {"source_format", src_.format},
                          {"source", file_name(src_.path)}}}};
    writer_.finish(src_.config, src_.tokenizer.info, extra);
    if (dequant_) dequant_->finish();
    res.file_bytes = std::filesystem::file_size(out_path);
    res.seconds = seconds_since(t0);
    return res;
  }

 private:
  static uint64_t total_weights(const SourceModel& src) {
    uint64_t n = 0;
    for (const SourceTensor& t : src.tensors) n += t.spec.shape[0] * (t.spec.shape.size() > 1 ? t.spec.shape[1] : 1);
    return n;
  }

  TensorReport convert(const SourceTensor& t) {
    const auto t0 = std::chrono::steady_clock::now();
    TensorReport rep;
    rep.name = t.spec.name;
    rep.shape = t.spec.shape;
    rep.kurtosis_before = rep.kurtosis_after = kNaN;
    if (t.load_quant) convert_imported(t, rep);
    else if (!is_matrix(t.spec.role)) convert_vector(t, rep);
    else if (o_.method == "fp16") convert_f16(t, rep);
    else convert_quantized(t, rep);
    rep.bytes = writer_.tensors().back().size;
    rep.seconds = seconds_since(t0);
    return rep;
  }

  void emit_dequant(const SourceTensor& t, const std::vector<float>& w) {
    if (dequant_) dequant_->write(hf_name(t.spec), f16_bytes(w));
  }

  void convert_imported(const SourceTensor& t, TensorReport& rep) {
    const pq::QuantMatrix q = t.load_quant();
    writer_.add_quant(t.spec.name, q);
    rep.storage = "pq (imported)";
    rep.bits = q.bits;
    rep.bpw = q.bits_per_weight();
    rep.sqnr_db = rep.rel_rmse = kNaN;  // the original weights are not known
    if (dequant_) {
      std::vector<float> w(q.rows * q.cols);
      pq::dequantize(q, w.data());
      emit_dequant(t, w);
    }
    progress_.add(q.rows * q.cols, t.spec.name);
  }

  void convert_vector(const SourceTensor& t, TensorReport& rep) {
    const std::vector<float> w = t.load_floats();
    writer_.add_f32(t.spec.name, t.spec.shape, w);
    rep.storage = "f32";
    rep.bpw = 32.0;
    set_error_stats(rep, 1.0, 0.0);
    emit_dequant(t, w);
    progress_.add(w.size(), t.spec.name);
  }

  void convert_f16(const SourceTensor& t, TensorReport& rep) {
    const std::vector<float> w = t.load_floats();
    std::vector<uint16_t> h(w.size());
    std::vector<float> back(w.size());
    double signal = 0.0, noise = 0.0;
    for (size_t i = 0; i < w.size(); ++i) {
      h[i] = pq::f32_to_f16(w[i]);
      back[i] = pq::f16_to_f32(h[i]);
      signal += double{w[i]} * w[i];
      noise += (double{w[i]} - back[i]) * (double{w[i]} - back[i]);
    }
    writer_.add_f16_bits(t.spec.name, t.spec.shape, h);
    rep.storage = "f16";
    rep.bpw = 16.0;
    set_error_stats(rep, signal, noise);
    set_kurtosis(rep, w, t.spec, o_.block);
    emit_dequant(t, back);
    progress_.add(w.size(), t.spec.name);
  }

  void convert_quantized(const SourceTensor& t, TensorReport& rep) {
    const std::vector<float> w = t.load_floats();
    pq::Method method = pq::Method::pq;
    pq::parse_method(o_.method, &method);
    const int bits = recipe_bits(o_.recipe, t.spec.role);
    MatrixResult r = quantize_rows(w, t.spec, bits, method, o_, dequant_ != nullptr, progress_);
    writer_.add_quant(t.spec.name, r.q);
    rep.storage = o_.method;
    rep.bits = bits;
    rep.bpw = r.q.bits_per_weight();
    set_error_stats(rep, r.signal, r.noise);
    set_kurtosis(rep, w, t.spec, o_.block);
    emit_dequant(t, r.dequant);
  }

  const SourceModel& src_;
  const QuantizeOptions& o_;
  PqmWriter writer_;
  std::unique_ptr<SafetensorsWriter> dequant_;
  Progress progress_;
};

}  // namespace

bool is_valid_recipe(const std::string& recipe) {
  if (recipe == "mixed") return true;
  return recipe.size() == 2 && recipe[0] == 'q' && recipe[1] >= '2' && recipe[1] <= '8';
}

int recipe_bits(const std::string& recipe, Role role) {
  if (!is_valid_recipe(recipe)) throw ModelError("--recipe: unknown recipe '" + recipe + "' (known: q2..q8, mixed)");
  if (!is_matrix(role)) return 0;
  if (recipe != "mixed") return recipe[1] - '0';
  switch (role) {
    case Role::attn_q: case Role::attn_k: case Role::attn_v: return 5;
    case Role::attn_o: return 6;
    case Role::mlp_gate: case Role::mlp_up: return 3;
    case Role::mlp_down: return 4;
    case Role::embed: return 5;
    case Role::lm_head: return 6;
    default: return 0;
  }
}

void validate_options(const QuantizeOptions& o) {
  if (!is_valid_recipe(o.recipe)) throw ModelError("--recipe: unknown recipe '" + o.recipe + "' (known: q2..q8, mixed)");
  if (o.method != "fp16" && !pq::parse_method(o.method, nullptr))
    throw ModelError("--method: unknown method '" + o.method + "' (known: pq, absmax, rot-uniform, lloyd, fp16)");
  if (o.block != 64 && o.block != 128 && o.block != 256)
    throw ModelError("--block-size: must be 64, 128 or 256, got " + std::to_string(o.block));
  if (o.threads < 0 || o.threads > 1024) throw ModelError("--threads: must be 0..1024, got " + std::to_string(o.threads));
}

QuantizeResult quantize_model(const SourceModel& src, const std::string& out_path, const QuantizeOptions& options) {
  validate_options(options);
  QuantizeOptions o = options;
  if (o.threads == 0) o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Converter c(src, out_path, o);
  return c.run(out_path);
}

}  // namespace pqvk::model
