#version 450
// pq_gemv: the fused PolarQuant GEMV of decode (one token), with the step before it and the
// one after it folded in, so that a decoder layer needs no separate preparation kernels:
//   xr = PROLOGUE(x)          0: x as given (already prepared: rotated when the matrix is, and
//                                in gemv-interleaved layout: fwht.comp, kernels.h)
//                             4: x raw, row-major; +1: H_B x (block-wise orthonormal
//                                Walsh-Hadamard rotation); +2: x * w / rms(x) first (RMSNorm)
//   v[r] = sum_b scale[r][b] * sum_j codebook[code(r, b*B + j)] * xr[b*B + j]
//   EPILOGUE                  0: y[r] = v[r]    1: y[r] += v[r] (residual)
//                             2: y[i] = silu(v[2i]) * v[2i+1] (rows interleaved gate, up)
// Each packed code is read exactly once; weights are never rotated.
// Buffers: 0 codes (uint, docs/packed-layout.md); 1 scales (fp16 pairs, [rows][nblocks]);
//          2 codebook (2^BITS fp32); 3 x fp32: prepared, gemv-interleaved (PROLOGUE 0: 32 lanes'
//          loads of a chunk's inputs are 512 contiguous bytes), else raw [cols] row-major (zero
//          padded beyond cols by the shader); 4 y fp32 (at y_offset); 5 w [cols] fp32 (RMSNorm).
// Workgroup: WG invocations and ROWS rows. Invocation t takes chunks (32 consecutive inputs)
//          t, t + WG, ...: it loads the chunk's 32 inputs (eight 16-byte loads), applies the
//          prologue in registers (the rotation of a block of B = 32 * (B/32) inputs is H_32
//          inside each invocation and H_{B/32} across the B/32 neighbouring invocations, by
//          subgroup shuffles; the 1/sqrt(B) and 1/rms factors are applied to the sums at the
//          end), then for every row loads the chunk's `BITS` words (coalesced 128-byte loads
//          across 32 invocations) and accumulates, rows in groups of 4 with their loads issued
//          together. Every invocation runs the same iterations (past the row's end it re-reads
//          the last chunk and adds nothing), so subgroup operations stay uniform.
//          LOOKUP 0: the codebook in shared memory, replicated CB_REP times (entry k of copy l
//          at k * CB_REP + l; lane l reads copy l % CB_REP).
//          LOOKUP 1 (2^BITS <= subgroup size): invocation l holds codebook[l % 2^BITS] in a
//          register and a lookup is a subgroup shuffle.
//          LOOKUP 2: as 1, with the shuffle index the stream shifted to the code and the bits
//          above it left in place (one shift per code): every lane's register holds entry
//          l % 2^BITS, so a device that reads only the low log2(subgroup size) bits of the index
//          finds the entry. SPIR-V leaves a larger index undefined: Kernels uses this only after
//          a probe on the device gives results identical to LOOKUP 1.
//          LOOKUP 3: no lookup, a float made from the code's bits (a benchmark's measure of what
//          the lookups cost; not a GEMV of the matrix).
//          Sums: subgroupAdd, then shared memory across subgroups.
// Dispatch: ceil(rows / ROWS) workgroups over x (and y for very tall matrices).
// Specialization: 0 WG (local_size_x), 1 BITS, 2 ROWS (even for EPILOGUE 2), 3 BLOCK (B),
//          4 CB_SHIFT (CB_REP = 1 << it), 5 LOOKUP, 6 PROLOGUE, 7 EPILOGUE.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint BITS = 4u;
layout(constant_id = 2) const uint ROWS = 4u;
layout(constant_id = 3) const uint BLOCK = 128u;
layout(constant_id = 4) const uint CB_SHIFT = 5u;
layout(constant_id = 5) const uint LOOKUP = 0u;
layout(constant_id = 6) const uint PROLOGUE = 0u;
layout(constant_id = 7) const uint EPILOGUE = 0u;
const uint CB_REP = 1u << CB_SHIFT;
const bool ROTATE = (PROLOGUE & 1u) != 0u, NORM = (PROLOGUE & 2u) != 0u;
const uint RG = 4u;  // rows whose loads are issued together
#define WG gl_WorkGroupSize.x

layout(std430, binding = 0) readonly buffer Codes { uint codes[]; };
layout(std430, binding = 1) readonly buffer Scales { uint scales[]; };
layout(std430, binding = 2) readonly buffer Codebook { float codebook[]; };
layout(std430, binding = 3) readonly buffer X { float x[]; };
layout(std430, binding = 3) readonly buffer X4 { vec4 x4[]; };  // the same input, 16 bytes at a time
layout(std430, binding = 4) buffer Y { float y[]; };
layout(std430, binding = 5) readonly buffer W4 { vec4 w4[]; };
layout(std430, binding = 5) readonly buffer W1 { float w1[]; };
// rows: rows of this slice; cols: inputs (x beyond them reads as 0); y_offset: where row 0's
// result goes in y (EPILOGUE 2: where output 0 goes); x_offset: where x starts (a multiple of 4)
layout(push_constant) uniform Push { uint rows, nchunk, nblocks, cols, y_offset, x_offset; float eps; } p;

shared float cb[LOOKUP == 0u ? (1u << BITS) * CB_REP : 1u];
shared float partial[(ROWS + 1u) * (WG / 4u)];  // per (row or sum of squares, subgroup)

#include "pq_common.glsl"

// The 32 inputs of chunk ch (zero past cols), with the prologue's elementwise part; adds their
// squares to ss (RMSNorm).
void load_chunk(uint ch, bool live, out float v[32], inout float ss) {
  const uint e0 = ch * 32u;
  if ((PROLOGUE & 4u) == 0u) {  // prepared, gemv-interleaved: elements 4q..4q+3 are 16 contiguous bytes
    const uint xbase = p.x_offset / 4u + ((ch & ~31u) << 3u) + (ch & 31u);
    [[unroll]] for (uint q = 0u; q < 8u; ++q) {
      const vec4 a = x4[xbase + (q << 5u)];
      [[unroll]] for (uint k = 0u; k < 4u; ++k) v[4u * q + k] = a[k];
    }
  } else if (live && (p.cols & 3u) == 0u && e0 + 32u <= p.cols) {
    [[unroll]] for (uint q = 0u; q < 8u; ++q) {
      const vec4 a = x4[(p.x_offset + e0) / 4u + q];
      [[unroll]] for (uint k = 0u; k < 4u; ++k) v[4u * q + k] = a[k];
    }
    if (NORM) {
      [[unroll]] for (uint q = 0u; q < 8u; ++q) {
        const vec4 g = w4[e0 / 4u + q];
        [[unroll]] for (uint k = 0u; k < 4u; ++k) {
          ss = fma(v[4u * q + k], v[4u * q + k], ss);
          v[4u * q + k] *= g[k];
        }
      }
    }
  } else {
    [[unroll]] for (uint i = 0u; i < 32u; ++i) {
      const bool in_row = live && e0 + i < p.cols;
      v[i] = in_row ? x[p.x_offset + e0 + i] : 0.0;
      if (NORM && in_row) {
        ss = fma(v[i], v[i], ss);
        v[i] *= w1[e0 + i];
      }
    }
  }
}

// Unnormalized Walsh-Hadamard transform of the block chunk ch belongs to: H_32 on the chunk,
// then butterflies with the B/32 - 1 other chunks of the block, held by neighbouring lanes.
void rotate_chunk(uint ch, inout float v[32]) {
  [[unroll]] for (uint h = 1u; h < 32u; h <<= 1u)
    [[unroll]] for (uint i = 0u; i < 32u; ++i)
      if ((i & h) == 0u) {
        const float a = v[i], b = v[i + h];
        v[i] = a + b;
        v[i + h] = a - b;
      }
  [[unroll]] for (uint m = 1u; m < BLOCK / 32u; m <<= 1u) {
    const bool upper = (ch & m) != 0u;
    [[unroll]] for (uint i = 0u; i < 32u; ++i) {
      const float o = subgroupShuffleXor(v[i], m);
      v[i] = upper ? o - v[i] : v[i] + o;
    }
  }
}

void main() {
  const uint t = gl_LocalInvocationID.x;
  const uint wg = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
  const uint row0 = wg * ROWS;
  const uint rep = t & (CB_REP - 1u);
  float cb_lane = 0.0;  // LOOKUP 1, 2: this lane's codebook entry
  if (LOOKUP == 0u) {
    // Replicate the codebook: each group of CB_REP invocations writes every copy of a few entries.
    for (uint k = t >> CB_SHIFT; k < (1u << BITS); k += WG >> CB_SHIFT) cb[(k << CB_SHIFT) | rep] = codebook[k];
    barrier();
  } else if (LOOKUP == 1u || LOOKUP == 2u) {
    cb_lane = codebook[gl_SubgroupInvocationID & ((1u << BITS) - 1u)];
  }
  if (row0 >= p.rows) return;  // uniform over the workgroup

  float acc[ROWS];
  [[unroll]] for (uint r = 0u; r < ROWS; ++r) acc[r] = 0.0;
  float ss = 0.0;  // sum of squares of this invocation's inputs (RMSNorm)
  const uint chunks_per_block = BLOCK / 32u;
  const uint row_words = p.nchunk * BITS;

  for (uint ch0 = 0u; ch0 < p.nchunk; ch0 += WG) {
    const bool live = ch0 + t < p.nchunk;
    const uint ch = min(ch0 + t, p.nchunk - 1u);
    float xv[32];
    load_chunk(ch, live, xv, ss);
    if (ROTATE) rotate_chunk(ch, xv);
    const uint g = ch >> 5u;
    const uint gs = min(32u, p.nchunk - (g << 5u));
    const uint in_row = g * 32u * BITS + (ch & 31u);
    const uint blk = ch / chunks_per_block;
    [[unroll]] for (uint r0 = 0u; r0 < ROWS; r0 += RG) {
      // The group's words and scales first, so that their loads are in flight together. Rows
      // past the end (last workgroup only) re-read the last row and are not written.
      uint w[RG][9];  // one spare word: the code macros may name w[BITS] in a branch never taken
      float sc[RG];
      [[unroll]] for (uint r = 0u; r < RG; ++r) {
        if (r0 + r < ROWS) {
          const uint row = min(row0 + r0 + r, p.rows - 1u);
          const uint base = row * row_words + in_row;
          [[unroll]] for (uint j = 0u; j < 9u; ++j) w[r][j] = j < BITS ? codes[base + j * gs] : 0u;
          const uint sidx = row * p.nblocks + blk;
          sc[r] = live ? half_at(scales[sidx >> 1u], sidx) : 0.0;
        }
      }
      [[unroll]] for (uint r = 0u; r < RG; ++r) {
        if (r0 + r < ROWS) {
          vec4 s = vec4(0.0);  // four short FMA chains instead of one long one
          [[unroll]] for (uint i = 0u; i < 32u; ++i) {
            float c;
            if (LOOKUP == 0u) c = cb[PQ_CODE_SHIFTED(w[r], i, BITS, CB_SHIFT) | rep];
            else if (LOOKUP == 1u) c = subgroupShuffle(cb_lane, PQ_CODE_SHIFTED(w[r], i, BITS, 0u));
            else if (LOOKUP == 2u) c = subgroupShuffle(cb_lane, PQ_CODE_UNMASKED(w[r], i, BITS));
            else c = uintBitsToFloat((PQ_CODE_UNMASKED(w[r], i, BITS) & 0x007fffffu) | 0x3f800000u);
            s[i & 3u] = fma(c, xv[i], s[i & 3u]);
          }
          acc[r0 + r] = fma((s.x + s.y) + (s.z + s.w), sc[r], acc[r0 + r]);
        }
      }
    }
  }

  // Sums over the workgroup: every row's, and the sum of squares.
  [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
    const float v = subgroupAdd(acc[r]);
    if (subgroupElect()) partial[r * (WG / 4u) + gl_SubgroupID] = v;
  }
  if (NORM) {
    const float v = subgroupAdd(ss);
    if (subgroupElect()) partial[ROWS * (WG / 4u) + gl_SubgroupID] = v;
  }
  barrier();
  float factor = ROTATE ? inversesqrt(float(BLOCK)) : 1.0;
  if (NORM) {
    float total = 0.0;
    for (uint s = 0u; s < gl_NumSubgroups; ++s) total += partial[ROWS * (WG / 4u) + s];
    factor *= inversesqrt(total / float(p.cols) + p.eps);
  }
  if (EPILOGUE == 2u) {  // rows 2i and 2i+1: gate and up of output row0 / 2 + i
    if (t < ROWS / 2u && row0 + 2u * t + 1u < p.rows) {
      float gate = 0.0, up = 0.0;
      for (uint s = 0u; s < gl_NumSubgroups; ++s) {
        gate += partial[(2u * t) * (WG / 4u) + s];
        up += partial[(2u * t + 1u) * (WG / 4u) + s];
      }
      gate *= factor;
      up *= factor;
      y[p.y_offset + row0 / 2u + t] = gate / (1.0 + exp(-gate)) * up;
    }
  } else if (t < ROWS && row0 + t < p.rows) {
    float v = 0.0;
    for (uint s = 0u; s < gl_NumSubgroups; ++s) v += partial[t * (WG / 4u) + s];
    v *= factor;
    const uint o = p.y_offset + row0 + t;
    y[o] = EPILOGUE == 1u ? y[o] + v : v;
  }
}
