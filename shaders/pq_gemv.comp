#version 450
// pq_gemv: the fused PolarQuant GEMV of decode (one token).
//   y[r] (+)= sum_b scale[r][b] * sum_j codebook[code(r, b*B + j)] * xr[b*B + j]
// where xr is the already rotated activation (fwht.comp, gemv-interleaved layout), so each
// packed code is read exactly once and no weight is ever rotated.
// Buffers: 0 codes (uint, docs/packed-layout.md); 1 scales (fp16 pairs, [rows][nblocks]);
//          2 codebook (2^BITS fp32); 3 xr (fp32, gemv-interleaved); 4 y (fp32).
// Workgroup: WG invocations (a multiple of 32) and ROWS rows. Invocation t takes chunks
//          (32 codes) t, t + WG, ...: it reads `BITS` words per chunk and row, each a fully
//          coalesced 128-byte load across 32 invocations, and the chunk's 32 activations
//          (eight 16-byte loads) once for all ROWS rows. The codebook sits in shared memory
//          replicated CB_REP times, entry k of copy l at k * CB_REP + l, so that lane l reads
//          copy l % CB_REP: lookups without bank conflicts, indexed by one shift and one
//          AND/OR per code (PQ_CODE_SHIFTED). The loop is integer-ALU and shared-memory bound,
//          not arithmetic bound: keep per-code work at that minimum.
//          Partial sums: subgroupAdd, then shared memory across subgroups.
// Dispatch: ceil(rows / ROWS) workgroups over x (and y for very tall matrices).
// Specialization: 0 WG (local_size_x), 1 BITS, 2 ROWS, 3 BLOCK (B), 4 CB_SHIFT (CB_REP = 1 << it).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint BITS = 4u;
layout(constant_id = 2) const uint ROWS = 4u;
layout(constant_id = 3) const uint BLOCK = 128u;
layout(constant_id = 4) const uint CB_SHIFT = 5u;
const uint CB_REP = 1u << CB_SHIFT;
#define WG gl_WorkGroupSize.x

layout(std430, binding = 0) readonly buffer Codes { uint codes[]; };
layout(std430, binding = 1) readonly buffer Scales { uint scales[]; };
layout(std430, binding = 2) readonly buffer Codebook { float codebook[]; };
layout(std430, binding = 3) readonly buffer X { vec4 xr4[]; };
layout(std430, binding = 4) buffer Y { float y[]; };
// rows: rows of this slice; y_offset: index of its first row in y; accumulate: y += instead of =
layout(push_constant) uniform Push { uint rows, nchunk, nblocks, y_offset, accumulate; } p;

shared float cb[(1u << BITS) * CB_REP];
shared float partial[ROWS * (WG / 4u)];  // one per (row, subgroup); subgroups have >= 4 lanes

#include "pq_common.glsl"

void main() {
  const uint t = gl_LocalInvocationID.x;
  const uint wg = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  const uint row0 = wg * ROWS;
  const uint rep = t & (CB_REP - 1u);
  // Replicate the codebook: each group of CB_REP invocations writes every copy of a few
  // entries, so each entry is fetched from memory once per workgroup.
  for (uint k = t >> CB_SHIFT; k < (1u << BITS); k += WG >> CB_SHIFT) cb[(k << CB_SHIFT) | rep] = codebook[k];
  barrier();
  if (row0 >= p.rows) return;  // uniform over the workgroup

  float acc[ROWS];
  [[unroll]] for (uint r = 0u; r < ROWS; ++r) acc[r] = 0.0;
  const uint chunks_per_block = BLOCK / 32u;
  const uint row_words = p.nchunk * BITS;

  for (uint ch = t; ch < p.nchunk; ch += WG) {
    vec4 xv[8];  // elements 4q..4q+3 of the chunk: 16 contiguous bytes per lane (kernels.h)
    const uint xbase = ((ch & ~31u) << 3u) + (ch & 31u);
    [[unroll]] for (uint q = 0u; q < 8u; ++q) xv[q] = xr4[xbase + (q << 5u)];
    const uint g = ch >> 5u;
    const uint gs = min(32u, p.nchunk - (g << 5u));
    const uint in_row = g * 32u * BITS + (ch & 31u);
    const uint blk = ch / chunks_per_block;
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
      // Rows past the end (last workgroup only) recompute the last row and are not written:
      // no branch, so the compiler may issue every row's loads before the first lookup.
      const uint row = min(row0 + r, p.rows - 1u);
      uint w[9];  // one spare word: PQ_CODE_SHIFTED may name w[BITS] in a branch it never takes
      const uint base = row * row_words + in_row;
      [[unroll]] for (uint j = 0u; j < 9u; ++j) w[j] = j < BITS ? codes[base + j * gs] : 0u;
      vec4 s = vec4(0.0);  // four short FMA chains instead of one long one
      [[unroll]] for (uint i = 0u; i < 32u; ++i)
        s[i & 3u] = fma(cb[PQ_CODE_SHIFTED(w, i, BITS, CB_SHIFT) | rep], xv[i >> 2u][i & 3u], s[i & 3u]);
      const uint sidx = row * p.nblocks + blk;
      acc[r] = fma((s.x + s.y) + (s.z + s.w), half_at(scales[sidx >> 1u], sidx), acc[r]);
    }
  }

  GEMV_REDUCE_AND_STORE(acc, row0, t);
}
