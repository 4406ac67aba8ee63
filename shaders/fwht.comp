#version 450
// fwht: prepares the input of a linear layer. For every row r and block b of B = 64/128/256
// inputs (zero padded to a multiple of B):
//   v = prologue(r, b*B .. b*B+B-1)            MODE 0: x
//                                              MODE 1: RMSNorm: x * w / sqrt(mean(x_r^2) + eps)
//                                              MODE 2: SwiGLU: silu(x) * x2
//                                              MODE 3: SwiGLU of pairs: silu(x[r][2c]) * x[r][2c+1]
//                                              MODE 4: the merge of split attention (below)
// MODE 4 reads attention_decode.comp's results for S splits of the context, for head
// h = c / HD and dimension c % HD of column c: x = [S][rows][cols] partial outputs (each already
// divided by its own softmax sum), x2 = [S][rows][n_heads][2] (max, sum) pairs, and forms
// sum_s e^(m_s - m) l_s x_s / sum_s e^(m_s - m) l_s with m = max_s m_s (splits that hold no
// key come as (m_s, l_s) = (-inf, 0) and are skipped).
//   out[r][b*B + j] = ROTATE ? (H_B v)[j] : v[j]   (orthonormal Sylvester Walsh-Hadamard)
// Buffers: 0 x [rows][cols] fp32 (row r read at (in_row0 + r) * cols); 1 out fp32, row r at
//          r * out_stride, row-major or gemv-interleaved fp32, or row-major fp16 (OUT_LAYOUT; kernels.h); 2 w [cols]
//          fp32 (MODE 1), x2 [rows][cols] fp32 (MODE 2), (max, sum) pairs (MODE 4).
// Workgroup: WG invocations transform WG / (B/4) consecutive blocks of one row, 4 consecutive
//          values per invocation; butterflies via subgroup shuffles, then shared memory
//          (include/fwht_block.glsl). RMSNorm: the whole workgroup sums the squares of the row
//          first (each invocation a few independent 16-byte loads).
// Dispatch: rows * ceil(nblocks / (WG / (B/4))) workgroups, flattened over x and y.
// Used by prefill (the decode GEMV does this itself, shaders/pq_gemv.comp) and the fp16 path.
// Specialization: 0 WG (local_size_x, a multiple of B/4), 1 B, 2 MODE, 3 ROTATE (1: rotate,
//          0: only the prologue), 4 OUT_LAYOUT (0 row-major, 1 gemv-interleaved, 2 row-major fp16), 5 HD (MODE 4).
// Push constants: shape, eps (MODE 1), splits (MODE 4; the host passes in_row0 = 0).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint B = 128u;
layout(constant_id = 2) const uint MODE = 0u;
layout(constant_id = 3) const uint ROTATE = 1u;
layout(constant_id = 4) const uint OUT_LAYOUT = 0u;
layout(constant_id = 5) const uint HD = 128u;
#define WG gl_WorkGroupSize.x

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 0) readonly buffer X4 { vec4 x4[]; };  // the same input, 16 bytes at a time
layout(std430, binding = 1) writeonly buffer O { float o[]; };
layout(std430, binding = 1) writeonly buffer O2 { uvec2 o2[]; };  // OUT_LAYOUT 2: four fp16 at a time
layout(std430, binding = 2) readonly buffer X2 { float x2[]; };
layout(push_constant) uniform Push { uint rows, cols, nblocks, out_stride, in_row0; float eps; uint splits; } p;

shared vec4 fwht_sh[WG];
shared float norm_sh[WG];
#include "pq_common.glsl"
#include "fwht_block.glsl"

// 1 / sqrt(mean of squares of row `row` + eps), computed by the whole workgroup.
float inv_rms(uint row, uint lt) {
  float s = 0.0;
  if ((p.cols & 3u) == 0u) {  // rows start 16-byte aligned: vec4 loads, four in flight
    const uint n4 = p.cols / 4u, base = row * n4;
    for (uint c = lt; c < n4; c += 4u * WG) {
      vec4 v[4];
      [[unroll]] for (uint u = 0u; u < 4u; ++u) v[u] = c + u * WG < n4 ? x4[base + c + u * WG] : vec4(0.0);
      [[unroll]] for (uint u = 0u; u < 4u; ++u) s += dot(v[u], v[u]);
    }
  } else {
    for (uint c = lt; c < p.cols; c += WG) {
      float v = x[row * p.cols + c];
      s = fma(v, v, s);
    }
  }
  s = subgroupAdd(s);
  if (subgroupElect()) norm_sh[gl_SubgroupID] = s;
  barrier();
  float total = 0.0;
  for (uint i = 0u; i < gl_NumSubgroups; ++i) total += norm_sh[i];
  return inversesqrt(total / float(p.cols) + p.eps);
}

// Column c of row r merged over the attention splits (MODE 4). Splits without keys come as
// (-inf, 0): they change neither the max nor the sums.
float merge_splits(uint r, uint c) {
  const uint nh = p.cols / HD, h = c / HD;
  float m = -1.0 / 0.0;
  for (uint s = 0u; s < p.splits; ++s) m = max(m, x2[((s * p.rows + r) * nh + h) * 2u]);
  float num = 0.0, den = 0.0;
  for (uint s = 0u; s < p.splits; ++s) {
    const uint ml = ((s * p.rows + r) * nh + h) * 2u;
    const float l = x2[ml + 1u];
    if (l > 0.0) {
      const float wgt = exp(x2[ml] - m) * l;
      num = fma(wgt, x[(s * p.rows + r) * p.cols + c], num);
      den += wgt;
    }
  }
  return num / den;
}

void main() {
  const uint per_wg = WG / (B / 4u);  // blocks per workgroup
  const uint groups = (p.nblocks + per_wg - 1u) / per_wg;
  const uint wg = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  const uint r = wg / groups;
  if (r >= p.rows) return;  // uniform over the workgroup
  const uint lt = fwht_thread_index();
  const uint sub = lt / (B / 4u), t = lt % (B / 4u);  // block within the workgroup, invocation within the block
  const uint blk = (wg % groups) * per_wg + sub;
  const uint row = p.in_row0 + r;
  const uint col = blk * B + 4u * t;
  float scale = 1.0;
  if (MODE == 1u) scale = inv_rms(row, lt);  // uniform: MODE is a specialization constant
  vec4 v;
  [[unroll]] for (uint k = 0u; k < 4u; ++k) {
    const uint c = col + k;
    const bool in_row = c < p.cols && blk < p.nblocks;
    float a = 0.0;
    if (in_row) {
      if (MODE == 4u) {
        a = merge_splits(r, c);
      } else if (MODE == 3u) {
        const float g = x[(row * p.cols + c) * 2u];
        a = g / (1.0 + exp(-g)) * x[(row * p.cols + c) * 2u + 1u];
      } else {
        a = x[row * p.cols + c];
        if (MODE == 1u) a *= scale * x2[c];
        if (MODE == 2u) a = a / (1.0 + exp(-a)) * x2[row * p.cols + c];
      }
    }
    v[k] = a;
  }
  if (ROTATE != 0u) v = fwht_block(v, t, B, sub * (B / 4u));
  if (blk >= p.nblocks) return;  // after the last barrier: the blocks past the row's end
  const uint base = r * p.out_stride;
  if (OUT_LAYOUT == 2u) {  // out_stride and col are multiples of 4
    o2[(base + col) / 4u] = uvec2(packHalf2x16(v.xy), packHalf2x16(v.zw));
    return;
  }
  [[unroll]] for (uint k = 0u; k < 4u; ++k)
    o[base + (OUT_LAYOUT == 1u ? gemv_interleaved_index(col + k) : col + k)] = v[k];
}
