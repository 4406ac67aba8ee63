#version 450
// pq_gemv_pairs: the fused PolarQuant GEMV of pq_gemv.comp, two codes per lookup in fp16.
//   y[r] (+)= sum_b scale[r][b] * sum_j codebook[code(r, b*B + j)] * xr[b*B + j]
// Codes 2j and 2j+1 of a chunk are adjacent in the bit stream, so one 2*BITS-bit field
// indexes a table of 2^(2*BITS) half2 entries (codebook[lo], codebook[hi]), multiplied by the
// half2 activation pair with one packed fp16 FMA: per two weights one shift, one AND/OR, one
// shared-memory load and one FMA, where pq_gemv.comp spends that per weight (its loop is
// bound by per-weight instructions, not by memory; bench/RESULTS.md). Each chunk of 32 codes
// is summed in fp16 (two chains of 8 pairs), chunks in fp32: about 1e-3 relative error in y,
// far below the quantization error, and the reason this is a separate, optional path (it
// needs shaderFloat16; Kernels picks it for 2-6 bits where shared memory holds the table).
// Buffers, workgroup, dispatch: as pq_gemv.comp. The table is replicated TAB_REP times
// (entry k of copy l at k * TAB_REP + l) to spread lookups over the banks.
// Specialization: 0 WG (local_size_x), 1 BITS (2..6), 2 ROWS, 3 BLOCK (B), 4 TAB_SHIFT
//          (TAB_REP = 1 << it).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint BITS = 4u;
layout(constant_id = 2) const uint ROWS = 2u;
layout(constant_id = 3) const uint BLOCK = 128u;
layout(constant_id = 4) const uint TAB_SHIFT = 3u;
const uint TAB_REP = 1u << TAB_SHIFT;
#define WG gl_WorkGroupSize.x

layout(std430, binding = 0) readonly buffer Codes { uint codes[]; };
layout(std430, binding = 1) readonly buffer Scales { uint scales[]; };
layout(std430, binding = 2) readonly buffer Codebook { float codebook[]; };
layout(std430, binding = 3) readonly buffer X { vec4 xr4[]; };
layout(std430, binding = 4) buffer Y { float y[]; };
layout(push_constant) uniform Push { uint rows, nchunk, nblocks, y_offset, accumulate; } p;

shared uint tab[(1u << (2u * BITS)) * TAB_REP];  // packHalf2x16(codebook[lo], codebook[hi])
shared float partial[ROWS * (WG / 4u)];

#include "pq_common.glsl"

void main() {
  const uint t = gl_LocalInvocationID.x;
  const uint wg = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  const uint row0 = wg * ROWS;
  const uint rep = t & (TAB_REP - 1u);
  const uint mask = (1u << BITS) - 1u;
  for (uint k = t >> TAB_SHIFT; k < (1u << (2u * BITS)); k += WG >> TAB_SHIFT)
    tab[(k << TAB_SHIFT) | rep] = packHalf2x16(vec2(codebook[k & mask], codebook[k >> BITS]));
  barrier();
  if (row0 >= p.rows) return;  // uniform over the workgroup

  float acc[ROWS];
  [[unroll]] for (uint r = 0u; r < ROWS; ++r) acc[r] = 0.0;
  const uint chunks_per_block = BLOCK / 32u;
  const uint row_words = p.nchunk * BITS;

  for (uint ch = t; ch < p.nchunk; ch += WG) {
    f16vec2 xp[16];  // activation pairs (2j, 2j+1) of the chunk
    const uint xbase = ((ch & ~31u) << 3u) + (ch & 31u);
    [[unroll]] for (uint q = 0u; q < 8u; ++q) {
      const vec4 v = xr4[xbase + (q << 5u)];
      xp[2u * q] = f16vec2(v.xy);
      xp[2u * q + 1u] = f16vec2(v.zw);
    }
    const uint g = ch >> 5u;
    const uint gs = min(32u, p.nchunk - (g << 5u));
    const uint in_row = g * 32u * BITS + (ch & 31u);
    const uint blk = ch / chunks_per_block;
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
      const uint row = min(row0 + r, p.rows - 1u);  // as in pq_gemv.comp: no branch
      uint w[9];
      const uint base = row * row_words + in_row;
      [[unroll]] for (uint j = 0u; j < 9u; ++j) w[j] = j < BITS ? codes[base + j * gs] : 0u;
      f16vec2 s0 = f16vec2(0.0), s1 = f16vec2(0.0);
      [[unroll]] for (uint j = 0u; j < 16u; j += 2u) {
        s0 = fma(unpackFloat2x16(tab[PQ_CODE_SHIFTED(w, j, 2u * BITS, TAB_SHIFT) | rep]), xp[j], s0);
        s1 = fma(unpackFloat2x16(tab[PQ_CODE_SHIFTED(w, j + 1u, 2u * BITS, TAB_SHIFT) | rep]), xp[j + 1u], s1);
      }
      const vec2 s = vec2(s0) + vec2(s1);
      const uint sidx = row * p.nblocks + blk;
      acc[r] = fma(s.x + s.y, half_at(scales[sidx >> 1u], sidx), acc[r]);
    }
  }

  GEMV_REDUCE_AND_STORE(acc, row0, t);
}
