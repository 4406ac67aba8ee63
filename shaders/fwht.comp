#version 450
// fwht: prepares the input of a linear layer. For every row r and block b of B = 64/128/256
// inputs (zero padded to a multiple of B):
//   v = prologue(r, b*B .. b*B+B-1)            MODE 0: x
//                                              MODE 1: RMSNorm: x * w / sqrt(mean(x_r^2) + eps)
//                                              MODE 2: SwiGLU: silu(x) * x2
//   out[r][b*B + j] = ROTATE ? (H_B v)[j] : v[j]   (orthonormal Sylvester Walsh-Hadamard)
// Buffers: 0 x [rows][cols] fp32 (row r read at (in_row0 + r) * cols); 1 out fp32, row r at
//          r * out_stride, row-major or gemv-interleaved (OUT_LAYOUT; kernels.h);
//          2 w [cols] fp32 (MODE 1) or x2 [rows][cols] fp32 (MODE 2); unused otherwise.
// Workgroup: B/4 invocations, one block; 4 consecutive values per invocation; butterflies
//          via subgroup shuffles, then shared memory (include/fwht_block.glsl). RMSNorm: each
//          workgroup sums the squares of its whole row (the row is small and stays in cache).
// Dispatch: rows * nblocks workgroups, flattened over x and y.
// Specialization: 0 local_size_x (= B/4), 1 B, 2 OUT_LAYOUT (0 row-major, 1 gemv-interleaved),
//          3 MODE (0 copy, 1 RMSNorm, 2 SwiGLU), 4 ROTATE (1: rotate, 0: only the prologue).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint B = 128u;
layout(constant_id = 2) const uint OUT_LAYOUT = 0u;
layout(constant_id = 3) const uint MODE = 0u;
layout(constant_id = 4) const uint ROTATE = 1u;

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 0) readonly buffer X4 { vec4 x4[]; };  // the same input, 16 bytes at a time
layout(std430, binding = 1) writeonly buffer O { float o[]; };
layout(std430, binding = 2) readonly buffer X2 { float x2[]; };
layout(push_constant) uniform Push { uint rows, cols, nblocks, out_stride, in_row0; float eps; } p;

shared vec4 fwht_sh[B / 4u];
shared float norm_sh[B / 4u];
#include "pq_common.glsl"
#include "fwht_block.glsl"

// 1 / sqrt(mean of squares of row `row` + eps), computed by the whole workgroup.
float inv_rms(uint row, uint t) {
  float s = 0.0;
  if ((p.cols & 3u) == 0u) {  // rows start 16-byte aligned: vec4 loads
    for (uint c = t; c < p.cols / 4u; c += B / 4u) {
      vec4 v = x4[row * (p.cols / 4u) + c];
      s += dot(v, v);
    }
  } else {
    for (uint c = t; c < p.cols; c += B / 4u) {
      float v = x[row * p.cols + c];
      s = fma(v, v, s);
    }
  }
  s = subgroupAdd(s);
  if (gl_SubgroupSize >= B / 4u) return inversesqrt(s / float(p.cols) + p.eps);
  if (subgroupElect()) norm_sh[gl_SubgroupID] = s;
  barrier();
  float total = 0.0;
  for (uint i = 0u; i < gl_NumSubgroups; ++i) total += norm_sh[i];
  return inversesqrt(total / float(p.cols) + p.eps);
}

void main() {
  uint wg = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  uint r = wg / p.nblocks, blk = wg % p.nblocks;
  if (r >= p.rows) return;  // uniform over the workgroup
  uint t = fwht_thread_index();
  uint row = p.in_row0 + r;
  uint col = blk * B + 4u * t;
  float scale = 1.0;
  if (MODE == 1u) scale = inv_rms(row, t);  // uniform: MODE is a specialization constant
  vec4 v;
  [[unroll]] for (uint k = 0u; k < 4u; ++k) {
    uint c = col + k;
    float a = c < p.cols ? x[row * p.cols + c] : 0.0;
    if (MODE == 1u && c < p.cols) a *= scale * x2[c];
    if (MODE == 2u && c < p.cols) a = a / (1.0 + exp(-a)) * x2[row * p.cols + c];
    v[k] = a;
  }
  if (ROTATE != 0u) v = fwht_block(v, t, B);
  uint base = r * p.out_stride;
  [[unroll]] for (uint k = 0u; k < 4u; ++k)
    o[base + (OUT_LAYOUT == 1u ? gemv_interleaved_index(col + k) : col + k)] = v[k];
}
