// Shared GLSL for pqvk's compute shaders: the packed PolarQuant layout (docs/packed-layout.md)
// and the gemv-interleaved activation layout. Mirrors runtime/quant/polarquant.cpp
// (code_word_index) and runtime/kernels/kernels.cpp (interleave_for_gemv).
#ifndef PQ_COMMON_GLSL
#define PQ_COMMON_GLSL

// Index of word `word` of chunk `ch` (32 codes) of row `row` in a matrix whose rows hold
// `nchunk` chunks of `bits` words each; chunks are grouped by 32, word-major inside a group.
uint pq_word_index(uint row, uint nchunk, uint bits, uint ch, uint word) {
  uint g = ch >> 5u;
  uint gs = min(32u, nchunk - (g << 5u));
  return row * nchunk * bits + g * 32u * bits + word * gs + (ch & 31u);
}

// Code i (0..31) of a chunk whose `bits` words are w[0..bits-1] (bits [i*bits, i*bits+bits)
// of the little-endian stream), returned already shifted left by `sh` (< 8) and masked: the
// shape a lookup table index (code << sh) | lane needs. With constant i, bits and sh every
// shift folds: one shift (a funnel shift where the code straddles two words) and one
// AND/OR per code.
#define PQ_CODE_SHIFTED(w, i, bits, sh) \
  ((((((i) * (bits)) & 31u) >= (sh) ? ((w)[((i) * (bits)) >> 5u] >> ((((i) * (bits)) & 31u) - (sh))) \
                                     : ((w)[((i) * (bits)) >> 5u] << ((sh) - (((i) * (bits)) & 31u)))) | \
    (((((i) * (bits)) & 31u) + (bits) > 32u) ? ((w)[(((i) * (bits)) >> 5u) + 1u] << (32u + (sh) - (((i) * (bits)) & 31u))) : 0u)) & \
   (((1u << (bits)) - 1u) << (sh)))

// The bit stream of a chunk shifted so that code i starts at bit 0, higher bits NOT cleared
// (pq_gemv.comp's LOOKUP 2): one shift, or one funnel shift where the code straddles words.
#define PQ_CODE_UNMASKED(w, i, bits) \
  (((((i) * (bits)) & 31u) + (bits) > 32u) \
       ? (((w)[((i) * (bits)) >> 5u] >> (((i) * (bits)) & 31u)) | ((w)[(((i) * (bits)) >> 5u) + 1u] << (32u - (((i) * (bits)) & 31u)))) \
       : ((w)[((i) * (bits)) >> 5u] >> (((i) * (bits)) & 31u)))

// Position of element e of a prepared vector in gemv-interleaved layout (kernels.h): element i
// of chunk ch at (ch & ~31) * 32 + (i / 4) * 128 + (ch & 31) * 4 + i % 4.
uint gemv_interleaved_index(uint e) {
  uint ch = e >> 5u, i = e & 31u;
  return ((ch & ~31u) << 5u) + ((i >> 2u) << 7u) + ((ch & 31u) << 2u) + (i & 3u);
}

// fp16 value number `idx` of an array of fp16 pairs packed in 32-bit words.
float half_at(uint word, uint idx) {
  vec2 v = unpackHalf2x16(word);
  return (idx & 1u) == 0u ? v.x : v.y;
}

#endif
