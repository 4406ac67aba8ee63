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

// Code i (0..31) of a chunk whose `bits` words are w[0..bits-1]: bits [i*bits, i*bits+bits)
// of the little-endian stream. With constant i and bits the compiler folds every shift.
#define PQ_EXTRACT(w, i, bits) \
  ((((w)[((i) * (bits)) >> 5u] >> (((i) * (bits)) & 31u)) | \
    (((((i) * (bits)) & 31u) + (bits) > 32u) ? ((w)[(((i) * (bits)) >> 5u) + 1u] << (32u - (((i) * (bits)) & 31u))) : 0u)) & \
   ((1u << (bits)) - 1u))

// Element e of a rotated vector in gemv-interleaved layout.
uint gemv_interleaved_index(uint e) {
  uint ch = e >> 5u;
  return ((ch & ~31u) << 5u) + ((e & 31u) << 5u) + (ch & 31u);
}

// fp16 value number `idx` of an array of fp16 pairs packed in 32-bit words.
float half_at(uint word, uint idx) {
  vec2 v = unpackHalf2x16(word);
  return (idx & 1u) == 0u ? v.x : v.y;
}

#endif
