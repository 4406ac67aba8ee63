#version 450
// pq_gemv_pairs: the decode GEMV with two codes per lookup (LOOKUP 4: a shared table of fp16
// pairs, fp16 pair FMAs within each 32-input chunk, fp32 sums from the chunk on); bit widths
// 2-4, prepared inputs (PROLOGUE 0 or 8). Needs shaderFloat16. Everything else as pq_gemv.comp:
// include/pq_gemv.glsl.
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#define PQ_GEMV_PAIRS 1
#include "pq_gemv.glsl"
