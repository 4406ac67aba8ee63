// PolarQuant on the CPU: the reference twins of the GPU kernels.
//
// Everything here is plain C++ (fp32 data, fp64 where accuracy matters) and is the oracle the
// GPU tests compare against. The packed layout of codes is specified in docs/packed-layout.md;
// code_word_index() below is its single source of truth on the CPU side, and
// shaders/include/pq_layout.glsl mirrors it on the GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pq {

// ---- fp16 <-> fp32 (IEEE binary16, round to nearest even) ---------------------------------
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

// ---- Walsh-Hadamard transform -----------------------------------------------------------
// Orthonormal FWHT in Sylvester order, in place, n a power of two in [2, 1024]:
// x <- H_n x with H_n = H_n^T = H_n^-1. Throws std::invalid_argument on a bad n.
void fwht(float* x, int n);
void fwht(double* x, int n);
// Rotates every row of a [rows][cols] matrix block by block (block size B), writing
// [rows][cols_padded] where cols_padded = round_up(cols, B); the padding of each row is zeros
// before the transform. This is what the GPU's fwht shader computes.
void fwht_rows(const float* x, size_t rows, size_t cols, int B, float* out);

// ---- Codebooks --------------------------------------------------------------------------
// Lloyd-Max centroids for N(0,1) with 2^bits levels, ascending, symmetric about 0 (bits 1..8),
// computed by the Lloyd-Max iteration on the Gaussian density (cached after the first call).
const std::vector<double>& lloyd_max_centroids(int bits);
// The cell boundaries of lloyd_max_centroids(bits) (the midpoints of neighbouring centroids),
// computed once per width: the KV cache quantizes every head of every token against them.
const std::vector<double>& lloyd_max_midpoints(int bits);
// The MSE-optimal uniform (mid-rise) grid for N(0,1) with 2^bits levels: (k - (L-1)/2) * step.
const std::vector<double>& gaussian_uniform_grid(int bits);

// ---- One vector (a KV cache head, issue 13's PolarQuant KV cache) ---------------------
// PolarQuant of n values (n a power of two in [2, 1024], bits 1..8): y = H_n x (orthonormal
// WHT), its L2 norm stored as fp16, and per coordinate the nearest Lloyd-Max centroid of
// sqrt(n) y_i / norm. Writes n codes, returns the fp16 norm. Throws std::invalid_argument on a
// bad n or bits.
uint16_t quantize_vector(const float* x, int n, int bits, uint8_t* codes);
// The vector the codes stand for, back in the original basis: H_n (norm / sqrt(n) c[codes]).
void dequantize_vector(const uint8_t* codes, uint16_t norm, int n, int bits, float* out);

// ---- Quantization -----------------------------------------------------------------------
// The ablation of docs/polarquant.md, all on one representation:
//   pq          normalize + rotate + Lloyd-Max       (full PolarQuant)
//   absmax      per-block max|w| scale, symmetric integer grid, no rotation
//   rot_uniform normalize + rotate + uniform grid
//   lloyd       normalize + Lloyd-Max, no rotation
enum class Method { pq, absmax, rot_uniform, lloyd };
const char* method_name(Method m);
bool parse_method(const std::string& s, Method* out);  // "pq", "absmax", "rot-uniform", "lloyd"

// A quantized matrix W [rows][cols] (rows = output features). Columns are cut into blocks of
// `block` (64, 128 or 256) and padded with zeros to cols_padded. Dequantization of block b of
// row i is
//   w = scale[i][b] * (rotated ? H_B c : c),   c[k] = codebook[code_k]
// where the codebook already holds any constant factor (1/sqrt(B) for the normalized methods),
// so one kernel serves every method. scale is the block's L2 norm (pq, rot_uniform, lloyd) or
// the absmax step (absmax), stored as fp16.
struct QuantMatrix {
  Method method = Method::pq;
  int bits = 0;      // 2..8
  int block = 128;   // B
  bool rotated = false;
  size_t rows = 0, cols = 0, cols_padded = 0;
  std::vector<float> codebook;   // 2^bits entries
  std::vector<uint32_t> codes;   // packed_words(rows, cols_padded, bits) words
  std::vector<uint16_t> scales;  // fp16, rows * (cols_padded / block)

  size_t blocks_per_row() const { return cols_padded / block; }
  uint32_t code(size_t row, size_t col) const;  // col < cols_padded
  double bits_per_weight() const;               // bits + 16 / block
};

// Throws std::invalid_argument for bits outside 2..8, a block other than 64/128/256, or an
// empty matrix.
QuantMatrix quantize(const float* w, size_t rows, size_t cols, int bits, int block, Method m);
// Writes rows * cols floats (the padding is dropped).
void dequantize(const QuantMatrix& q, float* out);
// The same in fp64 (dequantize() is this rounded to fp32 once): the exact oracle that
// gemv_reference() is checked against.
void dequantize_f64(const QuantMatrix& q, double* out);
// y[rows] = W_dequant x, computed in fp64 the way the GPU does it: x is rotated block-wise first
// when q.rotated (the CPU twin of the fused GEMV). x has q.cols entries.
void gemv_reference(const QuantMatrix& q, const float* x, double* y);
// The same on an input already prepared as the GEMV shader reads it: xr [cols_padded], zero
// padded and, for rotated matrices, already rotated block-wise (the twin of pq_gemv.comp).
void gemv_reference_prepared(const QuantMatrix& q, const double* xr, double* y);

// The rows of several matrices of one format (method, bits, block, rotation, columns and
// codebook all equal) as one matrix: stacked (all of parts[0]'s rows, then parts[1]'s, ...) or
// interleaved (row 0 of every part, then row 1 of every part, ...; equal row counts). Rows
// are self-contained in the packed layout, so this only moves whole rows of codes and scales.
// Throws std::invalid_argument naming what differs.
QuantMatrix join_rows(const std::vector<const QuantMatrix*>& parts, bool interleave);

// ---- Packed layout ----------------------------------------------------------------------
// Codes of one row are cut into chunks of 32 codes; a chunk is a little-endian bit stream of
// 32*bits bits = `bits` 32-bit words (code i of the chunk at bits [i*bits, i*bits+bits)).
// Chunks are grouped by 32; inside a group, word j of every chunk is stored next to word j of
// the other chunks, so that 32 threads reading word j of 32 consecutive chunks read 128
// contiguous bytes. See docs/packed-layout.md.
size_t packed_words(size_t rows, size_t cols_padded, int bits);
size_t code_word_index(size_t cols_padded, int bits, size_t row, size_t chunk, int word);
// codes: rows * cols_padded values < 2^bits (one per byte) -> packed words, and back.
void pack_codes(const uint8_t* codes, size_t rows, size_t cols_padded, int bits, uint32_t* out);
void unpack_codes(const uint32_t* words, size_t rows, size_t cols_padded, int bits, uint8_t* out);

// ---- Statistics -------------------------------------------------------------------------
double sqnr_db(const float* ref, const float* approx, size_t n);  // 10 log10(|ref|^2/|ref-approx|^2)
double excess_kurtosis(const float* x, size_t n);
// Excess kurtosis of the block coordinates sqrt(B) * w_block / |w_block| before (rotate=false)
// and after (rotate=true) the Hadamard rotation: the paper's Gaussianity claim, measured.
double block_kurtosis(const float* w, size_t rows, size_t cols, int block, bool rotate);

}  // namespace pq
