#version 450
// pq_gemm: the tiled PolarQuant GEMM for M tokens (prefill, perplexity).
//   Y[m][y_offset + r] (+)= sum_b scale[r][b] * sum_j codebook[code(r, b*B + j)] * Xr[m][b*B + j]
// Xr is the rotated activation matrix (fwht.comp, row-major, ldx = cols_padded).
// Buffers: 0 codes (uint, docs/packed-layout.md); 1 scales (fp16 pairs, [rows][nblocks]);
//          2 codebook (2^BITS fp32); 3 Xr [m][ldx] fp32; 4 Y [m][ldy] fp32.
// Workgroup: 256 invocations, a 64 (tokens) x 64 (rows) output tile (include/gemm_tile.glsl);
//          per 32-wide K step each invocation decodes 8 codes of one row into shared memory
//          (codebook value times block scale), fp32 accumulation.
// Dispatch: (ceil(rows / 64), ceil(m / 64)) workgroups.
// Specialization: 0 BITS, 1 BLOCK (B).
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint BITS = 4u;
layout(constant_id = 1) const uint BLOCK = 128u;

layout(std430, binding = 0) readonly buffer Codes { uint codes[]; };
layout(std430, binding = 1) readonly buffer Scales { uint scales[]; };
layout(std430, binding = 2) readonly buffer Codebook { float codebook[]; };
layout(std430, binding = 3) readonly buffer X { float gemm_x[]; };
layout(std430, binding = 4) buffer Y { float gemm_y[]; };
layout(push_constant) uniform Push { uint rows, m, nchunk, nblocks, ldx, ldy, y_offset, accumulate; } p;

shared float cb[1u << BITS];

#include "pq_common.glsl"
#include "gemm_tile.glsl"

void main() {
  const uint t = gl_LocalInvocationIndex;
  const uint n0 = gl_WorkGroupID.x * TN, m0 = gl_WorkGroupID.y * TM;
  for (uint i = t; i < (1u << BITS); i += 256u) cb[i] = codebook[i];
  float acc[16];
  [[unroll]] for (uint i = 0u; i < 16u; ++i) acc[i] = 0.0;
  const uint wr = t >> 2u, q = t & 3u;  // this invocation decodes codes 8q..8q+7 of row n0+wr
  const uint row = n0 + wr;
  for (uint ch = 0u; ch < p.nchunk; ++ch) {
    barrier();  // the previous step is done with Xs, Ws (and cb is written before the first)
    gemm_load_x(m0, p.m, ch * TK, p.nchunk * TK, p.ldx);
    if (row < p.rows) {
      uint w[9];
      [[unroll]] for (uint j = 0u; j < 9u; ++j) w[j] = j < BITS ? codes[pq_word_index(row, p.nchunk, BITS, ch, j)] : 0u;
      const uint sidx = row * p.nblocks + ch / (BLOCK / 32u);
      const float s = half_at(scales[sidx >> 1u], sidx);
      [[unroll]] for (uint ii = 0u; ii < 8u; ++ii) {
        uint i = 8u * q + ii;
        uint bit = i * BITS, wi = bit >> 5u, sh = bit & 31u;
        uint v = w[wi] >> sh;
        if (sh + BITS > 32u) v |= w[wi + 1u] << (32u - sh);
        Ws[wr * (TK + 1u) + i] = cb[v & ((1u << BITS) - 1u)] * s;
      }
    } else {
      [[unroll]] for (uint ii = 0u; ii < 8u; ++ii) Ws[wr * (TK + 1u) + 8u * q + ii] = 0.0;
    }
    barrier();
    gemm_accumulate(acc);
  }
  gemm_store(acc, m0, p.m, n0, p.rows, p.ldy, p.y_offset, p.accumulate);
}
