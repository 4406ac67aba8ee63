#version 450
// fwht: rotate activations. out[r][b*B + j] = (H_B x_b)[j] for every row r and block b of
// B = 64/128/256 inputs (orthonormal Sylvester Walsh-Hadamard), zero padding the row to a
// multiple of B.
// Buffers: 0 x [rows][cols] fp32 row-major; 1 out fp32, row r at r * out_stride, in row-major
//          or gemv-interleaved order (OUT_LAYOUT; kernels.h).
// Workgroup: B/4 invocations, one block; 4 consecutive values per invocation; butterflies
//          via subgroup shuffles, then shared memory (include/fwht_block.glsl).
// Dispatch: rows * nblocks workgroups, flattened over x and y.
// Specialization: 0 local_size_x (= B/4), 1 B, 2 OUT_LAYOUT (0 row-major, 1 gemv-interleaved).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint B = 128u;
layout(constant_id = 2) const uint OUT_LAYOUT = 0u;

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer O { float o[]; };
layout(push_constant) uniform Push { uint rows, cols, nblocks, out_stride; } p;

shared vec4 fwht_sh[B / 4u];
#include "pq_common.glsl"
#include "fwht_block.glsl"

void main() {
  uint wg = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  uint row = wg / p.nblocks, blk = wg % p.nblocks;
  if (row >= p.rows) return;  // uniform over the workgroup
  uint t = fwht_thread_index();
  uint col = blk * B + 4u * t;
  vec4 v;
  [[unroll]] for (uint k = 0u; k < 4u; ++k)
    v[k] = col + k < p.cols ? x[row * p.cols + col + k] : 0.0;
  v = fwht_block(v, t, B);
  uint base = row * p.out_stride;
  [[unroll]] for (uint k = 0u; k < 4u; ++k)
    o[base + (OUT_LAYOUT == 1u ? gemv_interleaved_index(col + k) : col + k)] = v[k];
}
