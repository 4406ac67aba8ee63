#version 450
// pq_dequant: packed codes + scales -> the dequantized matrix.
//   w[r][b*B + j] = scale[r][b] * (ROTATED ? H_B c : c)[j],  c[j] = codebook[code(r, b*B + j)]
// Buffers: 0 codes (uint, docs/packed-layout.md); 1 scales (fp16 pairs, [rows][nblocks]);
//          2 codebook (2^BITS fp32); 3 out [rows][cols], fp32 or fp16 pairs (F16_OUT; cols even).
// Workgroup: B/4 invocations per block, 4 consecutive codes each; the inverse rotation is the
//          same butterfly as fwht.comp (include/fwht_block.glsl).
//          GATHER: output row r is matrix row tokens[r] (the embedding lookup); a workgroup
//          whose token lies outside this slice's rows [row0, row0 + slice_rows) writes nothing.
// Dispatch: rows * nblocks workgroups, flattened over x and y.
// Specialization: 0 local_size_x (= B/4), 1 B, 2 BITS, 3 ROTATED, 4 F16_OUT, 5 GATHER.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint B = 128u;
layout(constant_id = 2) const uint BITS = 4u;
layout(constant_id = 3) const uint ROTATED = 1u;
layout(constant_id = 4) const uint F16_OUT = 0u;
layout(constant_id = 5) const uint GATHER = 0u;

layout(std430, binding = 0) readonly buffer Codes { uint codes[]; };
layout(std430, binding = 1) readonly buffer Scales { uint scales[]; };
layout(std430, binding = 2) readonly buffer Codebook { float codebook[]; };
layout(std430, binding = 3) writeonly buffer O { float o[]; };
layout(std430, binding = 3) writeonly buffer O16 { uint o16[]; };
layout(std430, binding = 4) readonly buffer Tokens { int tokens[]; };
// rows: output rows; row0 / slice_rows: the matrix rows this slice's buffers hold (GATHER)
layout(push_constant) uniform Push { uint rows, cols, nblocks, nchunk, row0, slice_rows; } p;

shared vec4 fwht_sh[B / 4u];
#include "pq_common.glsl"
#include "fwht_block.glsl"

uint code_at(uint row, uint col) {  // one code through the packed layout
  uint ch = col >> 5u, i = col & 31u;
  uint bit = i * BITS, word = bit >> 5u, sh = bit & 31u;
  uint v = codes[pq_word_index(row, p.nchunk, BITS, ch, word)] >> sh;
  if (sh + BITS > 32u) v |= codes[pq_word_index(row, p.nchunk, BITS, ch, word + 1u)] << (32u - sh);
  return v & ((1u << BITS) - 1u);
}

void main() {
  uint wg = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  uint orow = wg / p.nblocks, blk = wg % p.nblocks;
  if (orow >= p.rows) return;  // uniform over the workgroup
  uint row = orow;
  if (GATHER != 0u) {
    int tok = tokens[orow] - int(p.row0);
    if (tok < 0 || uint(tok) >= p.slice_rows) return;  // another slice holds this row
    row = uint(tok);
  }
  uint t = fwht_thread_index();
  uint col = blk * B + 4u * t;
  vec4 v;
  [[unroll]] for (uint k = 0u; k < 4u; ++k) v[k] = codebook[code_at(row, col + k)];
  if (ROTATED != 0u) v = fwht_block(v, t, B, 0u);  // H_B c (orthonormal; the codebook holds 1/sqrt(B))
  uint sidx = row * p.nblocks + blk;
  v *= half_at(scales[sidx >> 1u], sidx);
  if (F16_OUT != 0u) {
    [[unroll]] for (uint k = 0u; k < 4u; k += 2u)
      if (col + k < p.cols) o16[(orow * p.cols + col + k) >> 1u] = packHalf2x16(vec2(v[k], v[k + 1u]));
  } else {
    [[unroll]] for (uint k = 0u; k < 4u; ++k)
      if (col + k < p.cols) o[orow * p.cols + col + k] = v[k];
  }
}
