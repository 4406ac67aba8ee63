#version 450
// splitk_sum: the second half of a split-K GEMM (pq_gemm_coopmat.comp with S splits of K):
//   Y[t][y_offset + r] = (accumulate ? Y[t][y_offset + r] : 0) + sum_{z < S} P[z][t][r]
// for tokens t < m and rows r < rows, the S partials added in order z = 0, 1, ... (the same
// order whatever m, so a token's result does not depend on the others).
// Buffers: 0 P [S][m][rows] fp32 (the GEMM's partial outputs, zstride = m * rows); 1 Y [m][ldy] fp32.
// Workgroup: 256 invocations, one output each. Dispatch: ceil(m * rows / 256) workgroups.
// Specialization: none.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer P { float part[]; };
layout(std430, binding = 1) buffer Y { float y[]; };
layout(push_constant) uniform Push { uint rows, m, splits, ldy, y_offset, accumulate; } p;

void main() {
  const uint i = gl_GlobalInvocationID.x;
  if (i >= p.m * p.rows) return;
  const uint t = i / p.rows, r = i % p.rows, o = t * p.ldy + p.y_offset + r;
  float v = p.accumulate != 0u ? y[o] : 0.0;
  for (uint z = 0u; z < p.splits; ++z) v += part[z * p.m * p.rows + i];
  y[o] = v;
}
