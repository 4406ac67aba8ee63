#version 450
// f16_gemm: the unquantized baseline GEMM, Y[m][y_offset + r] (+)= sum_k X[m][k] * W[r][k].
// Buffers: 0 W [rows][ldw] fp16 pairs (rows padded with zeros to ldw, a multiple of 8 halves);
//          1 X [m][ldx] fp32 (ldx >= cols); 2 Y [m][ldy] fp32.
// Workgroup: 256 invocations, 64 x 64 output tile (include/gemm_tile.glsl); per 32-wide K step
//          each invocation converts 8 halves (one 16-byte load) of one row into shared memory.
// Dispatch: (ceil(rows / 64), ceil(m / 64)) workgroups.
// Specialization: none.
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer W { uvec4 w4[]; };
layout(std430, binding = 1) readonly buffer X { float gemm_x[]; };
layout(std430, binding = 2) buffer Y { float gemm_y[]; };
layout(push_constant) uniform Push { uint rows, m, cols, ldw, ldy, y_offset, accumulate, ldx; } p;

#include "gemm_tile.glsl"

void main() {
  const uint t = gl_LocalInvocationIndex;
  const uint n0 = gl_WorkGroupID.x * TN, m0 = gl_WorkGroupID.y * TM;
  float acc[16];
  [[unroll]] for (uint i = 0u; i < 16u; ++i) acc[i] = 0.0;
  const uint wr = t >> 2u, q = t & 3u;
  const uint row = n0 + wr;
  for (uint k0 = 0u; k0 < p.cols; k0 += TK) {
    barrier();
    gemm_load_x(m0, p.m, k0, p.cols, p.ldx);
    uvec4 h = uvec4(0u);
    if (row < p.rows && k0 + 8u * q < p.ldw) h = w4[(row * p.ldw + k0 + 8u * q) >> 3u];
    [[unroll]] for (uint i = 0u; i < 4u; ++i) {
      vec2 v = unpackHalf2x16(h[i]);
      Ws[wr * (TK + 1u) + 8u * q + 2u * i] = v.x;
      Ws[wr * (TK + 1u) + 8u * q + 2u * i + 1u] = v.y;
    }
    barrier();
    gemm_accumulate(acc);
  }
  gemm_store(acc, m0, p.m, n0, p.rows, p.ldy, p.y_offset, p.accumulate);
}
