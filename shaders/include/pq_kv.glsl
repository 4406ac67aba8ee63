// Shared GLSL for the PolarQuant KV cache (qkv_rope.comp and attention_decode.comp write its
// records, attention.comp, attention_decode.comp and include/attention_coopmat.glsl read them): a key or value head of hd values
// is stored as hd * KV_BITS / 32 words of codes (code i at bits i * KV_BITS of the little-endian
// stream; KV_BITS is 4 or 8, so no code straddles a word), then its fp16-rounded norm n as a
// float. Code i is the Lloyd-Max cell of r_i = sqrt(hd) (H x)_i / n, H the orthonormal
// Walsh-Hadamard transform (the CPU twin: pq::quantize_vector).
// The including shader declares KV_BITS and the buffer array kvcb[]: the 2^KV_BITS centroids,
// then the 2^KV_BITS - 1 cell boundaries (Kernels::kv_codebook).
#ifndef PQ_KV_GLSL
#define PQ_KV_GLSL

const uint KV_CPW = KV_BITS > 0u ? 32u / KV_BITS : 1u;  // codes a record word holds
const uint KV_MASK = (1u << KV_BITS) - 1u;              // one code

// Code i of a record, from the record word that holds it (word i / KV_CPW).
uint pq_kv_code_in(uint word, uint i) { return (word >> ((i % KV_CPW) * KV_BITS)) & KV_MASK; }

// The code of normalized coordinate r: how many cell boundaries lie below it (binary search).
uint pq_kv_code(float r) {
  const uint nc = 1u << KV_BITS;
  uint lo = 0u, hi = nc - 1u;
  while (lo < hi) {
    const uint mid = (lo + hi) / 2u;
    if (kvcb[nc + mid] < r) lo = mid + 1u;
    else hi = mid;
  }
  return lo;
}

// The fp16 rounding of a head's norm (> 0), as the record stores it and the CPU twin rounds it:
// to nearest even, saturated at the largest fp16 (65504) rather than infinite. By integer and
// exact float operations: packHalf2x16 does not saturate, its rounding is not specified, and a
// compiler may fold unpackHalf2x16(packHalf2x16(x)) to x (the H200's did, it seems: the GPU
// decoder's errors against the CPU there were what lavapipe gives with the rounding left out).
float pq_kv_stored_norm(float norm) {
  const float n = min(norm, 65504.0);
  if (n < 6.103515625e-5) return roundEven(n * 16777216.0) / 16777216.0;  // below 2^-14: multiples of 2^-24
  const uint b = floatBitsToUint(n);  // 10 of the 23 mantissa bits kept, the 13 others rounded
  return uintBitsToFloat((b + 0xfffu + ((b >> 13u) & 1u)) & ~0x1fffu);
}

// Defines `void NAME(uint n_vec, uint hd, uint t)`: ARR[0 .. n_vec * hd), n_vec vectors of hd
// values (a power of two), each times sqrt(hd) H in place (the unnormalized Walsh-Hadamard
// transform), by the workgroup's NT invocations (t: this one's index). A barrier before every
// stage and one at the end: call it in uniform control flow. (A macro: GLSL cannot pass a
// shared array to a function.)
#define PQ_KV_DEFINE_FWHT(NAME, ARR, NT)                                                  \
  void NAME(uint n_vec, uint hd, uint t) {                                                \
    for (uint h = 1u; h < hd; h <<= 1u) {                                                 \
      barrier();                                                                          \
      for (uint u = t; u < n_vec * hd / 2u; u += (NT)) {                                  \
        const uint w = u % (hd / 2u), i = (u / (hd / 2u)) * hd + (w / h) * 2u * h + (w % h); \
        const float a = ARR[i], b = ARR[i + h];                                           \
        ARR[i] = a + b;                                                                   \
        ARR[i + h] = a - b;                                                               \
      }                                                                                   \
    }                                                                                     \
    barrier();                                                                            \
  }

// Defines `uint NAME(uint w, float divisor)`: record word w, the packed codes of
// ARR[w KV_CPW ..] / divisor, where ARR holds sqrt(hd) H x and divisor is x's stored norm.
#define PQ_KV_DEFINE_PACK(NAME, ARR)                                                      \
  uint NAME(uint w, float divisor) {                                                      \
    uint packed = 0u;                                                                     \
    for (uint k = 0u; k < KV_CPW; ++k) packed |= pq_kv_code(ARR[w * KV_CPW + k] / divisor) << (k * KV_BITS); \
    return packed;                                                                        \
  }

#endif
