// Shared GLSL for the PolarQuant KV cache (qkv_rope.comp and attention_decode.comp write its
// records, attention.comp and attention_decode.comp read them): a key or value head of hd values
// is stored as hd * KV_BITS / 32 words of codes (code i at bits i * KV_BITS of the little-endian
// stream; KV_BITS is 4 or 8, so no code straddles a word), then its fp16-rounded norm n as a
// float. Code i is the Lloyd-Max cell of r_i = sqrt(hd) (H x)_i / n, H the orthonormal
// Walsh-Hadamard transform (the CPU twin: pq::quantize_vector).
// The including shader declares KV_BITS and the buffer array kvcb[]: the 2^KV_BITS centroids,
// then the 2^KV_BITS - 1 cell boundaries (Kernels::kv_codebook).
#ifndef PQ_KV_GLSL
#define PQ_KV_GLSL

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

// The fp16 rounding of a head's norm, as the record stores it.
float pq_kv_stored_norm(float norm) { return unpackHalf2x16(packHalf2x16(vec2(norm, 0.0))).x; }

#endif
