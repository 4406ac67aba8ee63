#version 450
// pq_gemv_batch: the PolarQuant GEMV of a batched decode step: M tokens of M different sequences
// (continuous batching), each packed code read once per NB tokens:
//   Y[v][y_offset + r] (+)= sum_b scale[r][b] * sum_j codebook[code(r, b*B + j)] * Xr[v][b*B + j]
// for v < M. Xr is the prepared activation (fwht.comp: rotated when the matrix is, row-major,
// rows of ldx floats), as the tiled GEMM reads it.
// The sum of one output is computed in the same order whatever M, NB and the token's place in
// the batch (each token's products are the same instructions on its own accumulators), so a
// sequence's results do not depend on what else runs: per input quarter-chunk q of 8 values,
// s = fma chain over the 8 products; acc = fma(s, scale, acc) over the invocation's chunks in
// order; then the sum over the workgroup's invocations in a fixed order.
// Buffers: 0 codes (uint, docs/packed-layout.md); 1 scales (fp16 pairs, [rows][nblocks]);
//          2 codebook (2^BITS fp32); 3 Xr [m][ldx] fp32; 4 Y [m][ldy] fp32.
// Workgroup: WG invocations and ROWS rows. Invocation t takes inputs 8q..8q+7 (q = t % 4) of
//          chunks (32 inputs) t / 4, t / 4 + WG / 4, ...: for each of the ROWS rows it loads the
//          (at most 3) code words that hold its 8 codes and decodes them once; then for each
//          token it loads its 8 inputs (two 16-byte loads) and accumulates all ROWS rows. Every
//          invocation runs the same iterations (past the row's end it re-reads the last chunk
//          with a scale of 0), so the subgroup lookups stay uniform.
//          LOOKUP 0: the codebook in shared memory. LOOKUP 1 (2^BITS <= subgroup size): lane l
//          holds codebook[l % 2^BITS] and a lookup is a subgroup shuffle (no bank conflicts).
//          Sums: subgroupAdd, then shared memory across subgroups.
// Dispatch: (ceil(rows / ROWS) workgroups over x and y, ceil(m / NB)): z-slice z takes tokens
//          z * NB .. z * NB + NB - 1.
// Specialization: 0 WG (local_size_x, a multiple of 4), 1 BITS, 2 ROWS, 3 NB (tokens per
//          workgroup), 4 BLOCK (B), 5 LOOKUP.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint BITS = 4u;
layout(constant_id = 2) const uint ROWS = 8u;
layout(constant_id = 3) const uint NB = 8u;
layout(constant_id = 4) const uint BLOCK = 128u;
layout(constant_id = 5) const uint LOOKUP = 0u;
#define WG gl_WorkGroupSize.x

layout(std430, binding = 0) readonly buffer Codes { uint codes[]; };
layout(std430, binding = 1) readonly buffer Scales { uint scales[]; };
layout(std430, binding = 2) readonly buffer Codebook { float codebook[]; };
layout(std430, binding = 3) readonly buffer X4 { vec4 x4[]; };
layout(std430, binding = 4) buffer Y { float y[]; };
// rows: rows of this slice; m: tokens; ldx, ldy: row strides of Xr and Y (ldx a multiple of 4);
// y_offset: where row 0's result goes in a row of Y.
layout(push_constant) uniform Push { uint rows, nchunk, nblocks, m, ldx, ldy, y_offset, accumulate; } p;

shared float cb[LOOKUP == 0u ? 1u << BITS : 1u];
shared float partial[ROWS * NB * (WG / 4u)];  // per (row, token, subgroup): subgroups of >= 4 lanes

#include "pq_common.glsl"

void main() {
  const uint t = gl_LocalInvocationID.x;
  const uint wg = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  const uint row0 = wg * ROWS;
  const uint v0 = gl_WorkGroupID.z * NB;
  const uint mask = (1u << BITS) - 1u;
  float cb_lane = 0.0;  // LOOKUP 1: this lane's codebook entry
  if (LOOKUP == 0u) {
    for (uint k = t; k < (1u << BITS); k += WG) cb[k] = codebook[k];
    barrier();
  } else {
    cb_lane = codebook[gl_SubgroupInvocationID & mask];
  }
  if (row0 >= p.rows) return;  // uniform over the workgroup
  const uint nv = min(NB, p.m - v0);

  float acc[ROWS * NB];
  [[unroll]] for (uint a = 0u; a < ROWS * NB; ++a) acc[a] = 0.0;
  const uint q = t & 3u;
  const uint bit0 = 8u * q * BITS, wi0 = bit0 >> 5u, sh0 = bit0 & 31u;  // where this quarter's codes start

  for (uint ch0 = 0u; ch0 < p.nchunk; ch0 += WG / 4u) {
    const bool live = ch0 + (t >> 2u) < p.nchunk;
    const uint ch = min(ch0 + (t >> 2u), p.nchunk - 1u);
    const uint blk = ch / (BLOCK / 32u);
    float c[ROWS * 8u];  // decoded codebook values of the 8 codes, per row
    float sc[ROWS];
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
      const uint row = min(row0 + r, p.rows - 1u);  // rows past the end re-read the last; never written
      const uint w0 = codes[pq_word_index(row, p.nchunk, BITS, ch, wi0)];
      const uint w1 = wi0 + 1u < BITS ? codes[pq_word_index(row, p.nchunk, BITS, ch, wi0 + 1u)] : 0u;
      const uint w2 = wi0 + 2u < BITS ? codes[pq_word_index(row, p.nchunk, BITS, ch, wi0 + 2u)] : 0u;
      [[unroll]] for (uint i = 0u; i < 8u; ++i) {
        const uint b = sh0 + i * BITS;  // < 32 + 7 * 8: in w0, w1 or w2
        const uint lo = b < 32u ? w0 : b < 64u ? w1 : w2;
        const uint hi = b < 32u ? w1 : w2;
        const uint s = b & 31u;
        uint code = lo >> s;
        if (s + BITS > 32u) code |= hi << (32u - s);
        c[r * 8u + i] = LOOKUP == 0u ? cb[code & mask] : subgroupShuffle(cb_lane, code & mask);
      }
      const uint sidx = row * p.nblocks + blk;
      sc[r] = live ? half_at(scales[sidx >> 1u], sidx) : 0.0;
    }
    [[unroll]] for (uint v = 0u; v < NB; ++v) {
      if (v < nv) {
        const uint xb = ((v0 + v) * p.ldx + ch * 32u + 8u * q) >> 2u;
        const vec4 xa = x4[xb], xc = x4[xb + 1u];
        [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
          float s = c[r * 8u] * xa.x;
          s = fma(c[r * 8u + 1u], xa.y, s);
          s = fma(c[r * 8u + 2u], xa.z, s);
          s = fma(c[r * 8u + 3u], xa.w, s);
          s = fma(c[r * 8u + 4u], xc.x, s);
          s = fma(c[r * 8u + 5u], xc.y, s);
          s = fma(c[r * 8u + 6u], xc.z, s);
          s = fma(c[r * 8u + 7u], xc.w, s);
          acc[r * NB + v] = fma(s, sc[r], acc[r * NB + v]);
        }
      }
    }
  }

  // Sums over the workgroup, in a fixed order: each subgroup's, then the subgroups' in order.
  [[unroll]] for (uint a = 0u; a < ROWS * NB; ++a) {
    const float s = subgroupAdd(acc[a]);
    if (subgroupElect()) partial[a * (WG / 4u) + gl_SubgroupID] = s;
  }
  barrier();
  for (uint a = t; a < ROWS * NB; a += WG) {
    const uint r = a / NB, v = a % NB;
    if (v < nv && row0 + r < p.rows) {
      float total = 0.0;
      for (uint s = 0u; s < gl_NumSubgroups; ++s) total += partial[a * (WG / 4u) + s];
      const uint o = (v0 + v) * p.ldy + p.y_offset + row0 + r;
      y[o] = p.accumulate != 0u ? y[o] + total : total;
    }
  }
}
