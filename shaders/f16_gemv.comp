#version 450
// f16_gemv: the unquantized baseline GEMV, y[y_offset + r] (+)= sum_k W[r][k] * x[k].
// Buffers: 0 W [rows][ldw] fp16 pairs (rows zero padded to ldw, a multiple of 8 halves);
//          1 x [cols] fp32; 2 y fp32.
// Workgroup: WG invocations and ROWS rows; invocation t takes 8-element groups t, t + WG, ...
//          (one 16-byte load per row and group), x read once for all ROWS rows; partial sums
//          through subgroupAdd, then shared memory.
// Dispatch: ceil(rows / ROWS) workgroups over x (and y).
// Specialization: 0 WG (local_size_x), 1 ROWS.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint ROWS = 4u;
#define WG gl_WorkGroupSize.x

layout(std430, binding = 0) readonly buffer W { uvec4 w4[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) buffer Y { float y[]; };
layout(push_constant) uniform Push { uint rows, cols, ldw, y_offset, accumulate; } p;

shared float partial[ROWS * (WG / 4u)];

void main() {
  const uint t = gl_LocalInvocationID.x;
  const uint row0 = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * ROWS;
  if (row0 >= p.rows) return;  // uniform over the workgroup
  float acc[ROWS];
  [[unroll]] for (uint r = 0u; r < ROWS; ++r) acc[r] = 0.0;
  const uint groups = p.ldw >> 3u;
  for (uint g = t; g < groups; g += WG) {
    float xv[8];
    [[unroll]] for (uint i = 0u; i < 8u; ++i) xv[i] = 8u * g + i < p.cols ? x[8u * g + i] : 0.0;
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
      if (row0 + r < p.rows) {
        uvec4 h = w4[(row0 + r) * groups + g];
        float s = acc[r];
        [[unroll]] for (uint i = 0u; i < 4u; ++i) {
          vec2 v = unpackHalf2x16(h[i]);
          s = fma(v.x, xv[2u * i], s);
          s = fma(v.y, xv[2u * i + 1u], s);
        }
        acc[r] = s;
      }
    }
  }
  [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
    float v = subgroupAdd(acc[r]);
    if (subgroupElect()) partial[r * (WG / 4u) + gl_SubgroupID] = v;
  }
  barrier();
  if (t < ROWS && row0 + t < p.rows) {
    float v = 0.0;
    for (uint s = 0u; s < gl_NumSubgroups; ++s) v += partial[t * (WG / 4u) + s];
    const uint o = p.y_offset + row0 + t;
    y[o] = p.accumulate != 0u ? y[o] + v : v;
  }
}
