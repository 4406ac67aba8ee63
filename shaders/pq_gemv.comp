#version 450
// pq_gemv: the decode GEMV (one token), codes looked up one at a time in fp32 (subgroup shuffle
// or shared table): y = W x with its prologue, epilogue and fold. Layout, workgroup shape and
// specialization constants: include/pq_gemv.glsl (LOOKUP 0-3).
#include "pq_gemv.glsl"
