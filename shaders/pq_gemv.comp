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
//   PROLOGUE 8 (prepared, RMSNorm folded): xr prepared without the 1/rms factor, which comes
//                             from the per-block sums of squares a fold left (buffer 8)
//   FOLD (after the epilogue) prepares the NEXT matrix's input, so that no preparation kernel
//   runs between the two: the last workgroup to finish the outputs of a block of FB rows (an
//   atomic counter per block, reset by that workgroup) reads the block's final y back and writes
//     FOLD 1: H_FB (y * gamma) and the block's sum of squares of y (the next GEMV's PROLOGUE 8)
//     FOLD 2: H_FB y
//   into buffer 7, gemv-interleaved (H_FB only where FROT; orthonormal). Needs FB / 4 <= WG,
//   FB a multiple of the outputs per workgroup, y_offset on output-row boundaries.
// Each packed code is read exactly once; weights are never rotated.
// Buffers: 0 codes (uint, docs/packed-layout.md); 1 scales (fp16 pairs, [rows][nblocks]);
//          2 codebook (2^BITS fp32); 3 x fp32: prepared, gemv-interleaved (PROLOGUE 0: 32 lanes'
//          loads of a chunk's inputs are 512 contiguous bytes), else raw [cols] row-major (zero
//          padded beyond cols by the shader); 4 y fp32 (at y_offset); 5 w [cols] fp32 (RMSNorm);
//          FOLD: 6 counters [nout / FB] (zero between dispatches), 7 the next input, 9 gamma [nout];
//          8 per-block sums of squares (written by FOLD 1, read by PROLOGUE 8).
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
//          4 CB_SHIFT (CB_REP = 1 << it), 5 LOOKUP, 6 PROLOGUE, 7 EPILOGUE, 8 FOLD, 9 FB, 10 FROT,
//          11 ABLATE (benchmarks only, PQVK_GEMV_ABLATE; wrong results, timings of what is left):
//          1 no input loads (the prepared input made from the chunk index), 2 no code or scale
//          loads (words made from the row and chunk indices).
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
layout(constant_id = 8) const uint FOLD = 0u;
layout(constant_id = 9) const uint FB = 128u;
layout(constant_id = 10) const uint FROT = 1u;
layout(constant_id = 11) const uint ABLATE = 0u;
const uint CB_REP = 1u << CB_SHIFT;
const bool ROTATE = (PROLOGUE & 1u) != 0u, NORM = (PROLOGUE & 2u) != 0u, PART_NORM = (PROLOGUE & 8u) != 0u;
const uint OUTR = EPILOGUE == 2u ? ROWS / 2u : ROWS;  // outputs per workgroup
const uint RG = 4u;  // rows whose loads are issued together
#define WG gl_WorkGroupSize.x

layout(std430, binding = 0) readonly buffer Codes { uint codes[]; };
layout(std430, binding = 1) readonly buffer Scales { uint scales[]; };
layout(std430, binding = 2) readonly buffer Codebook { float codebook[]; };
layout(std430, binding = 3) readonly buffer X { float x[]; };
layout(std430, binding = 3) readonly buffer X4 { vec4 x4[]; };  // the same input, 16 bytes at a time
layout(std430, binding = 4) coherent buffer Y { float y[]; };  // coherent: a fold reads other workgroups' rows
layout(std430, binding = 5) readonly buffer W4 { vec4 w4[]; };
layout(std430, binding = 5) readonly buffer W1 { float w1[]; };
layout(std430, binding = 6) coherent buffer Counters { uint counter[]; };
layout(std430, binding = 7) writeonly buffer Next { float nx[]; };
layout(std430, binding = 8) buffer Parts { float parts[]; };
layout(std430, binding = 9) readonly buffer Gamma { float gamma[]; };
// rows: rows of this slice; cols: inputs (x beyond them reads as 0; PROLOGUE 8: the count the
// mean of squares divides by); y_offset: where row 0's result goes in y (EPILOGUE 2: where output
// 0 goes); x_offset: where x starts (a multiple of 4); nout: outputs of the whole matrix (FOLD)
layout(push_constant) uniform Push { uint rows, nchunk, nblocks, cols, y_offset, x_offset; float eps; uint nout; } p;

shared float cb[LOOKUP == 0u ? (1u << BITS) * CB_REP : 1u];
shared float partial[(ROWS + 1u) * (WG / 4u)];  // per (row or sum of squares, subgroup)
shared vec4 fwht_sh[FOLD != 0u ? WG : 1u];
shared bool fold_last;

#include "pq_common.glsl"
#include "fwht_block.glsl"

// The 32 inputs of chunk ch (zero past cols), with the prologue's elementwise part; adds their
// squares to ss (RMSNorm).
void load_chunk(uint ch, bool live, out float v[32], inout float ss) {
  const uint e0 = ch * 32u;
  if ((ABLATE & 1u) != 0u) {
    [[unroll]] for (uint i = 0u; i < 32u; ++i) v[i] = float(ch + i) * 1e-3;
  } else if ((PROLOGUE & 4u) == 0u) {  // prepared, gemv-interleaved: elements 4q..4q+3 are 16 contiguous bytes
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

// The words and scale of chunk ch of rows row0 + r0 .. + RG - 1 (those below ROWS). Rows past
// the end (last workgroup only) re-read the last row and are not written; a chunk that is not
// live gets scale 0.
void load_words(uint ch, bool live, uint r0, uint row0, out uint w[RG][9], out float sc[RG]) {
  const uint g = ch >> 5u;
  const uint gs = min(32u, p.nchunk - (g << 5u));
  const uint in_row = g * 32u * BITS + (ch & 31u);
  const uint blk = ch / (BLOCK / 32u);
  const uint row_words = p.nchunk * BITS;
  [[unroll]] for (uint r = 0u; r < RG; ++r) {
    // one spare word: the code macros may name w[BITS] in a branch never taken
    [[unroll]] for (uint j = 0u; j < 9u; ++j) w[r][j] = 0u;
    sc[r] = 0.0;
    if (r0 + r < ROWS) {
      const uint row = min(row0 + r0 + r, p.rows - 1u);
      const uint base = row * row_words + in_row;
      if ((ABLATE & 2u) != 0u) {
        [[unroll]] for (uint j = 0u; j < BITS; ++j) w[r][j] = (base + j) * 0x9E3779B9u;
        sc[r] = live ? 1.0 : 0.0;
      } else {
        [[unroll]] for (uint j = 0u; j < BITS; ++j) w[r][j] = codes[base + j * gs];
        const uint sidx = row * p.nblocks + blk;
        sc[r] = live ? half_at(scales[sidx >> 1u], sidx) : 0.0;
      }
    }
  }
}

// acc[r0 + r] += sc[r] * sum_i codebook[code i of w[r]] * xv[i] for the group's rows.
void dot_rows(uint r0, uint w[RG][9], float sc[RG], float xv[32], float cb_lane, uint rep, inout float acc[ROWS]) {
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

// FOLD: this workgroup wrote outputs out0 .. out0 + OUTR - 1, all in block out0 / FB; the last of
// the block's workgroups to get here prepares the block for the next GEMV.
void fold(uint out0) {
  memoryBarrierBuffer();  // this invocation's y writes, before the counter says they are done
  barrier();
  const uint b = out0 / FB;
  if (gl_LocalInvocationID.x == 0u) {
    const uint expected = (min(FB, p.nout - b * FB) + OUTR - 1u) / OUTR;
    const bool last = atomicAdd(counter[b], 1u) == expected - 1u;
    if (last) counter[b] = 0u;  // every other workgroup of the block is done with it
    fold_last = last;
  }
  barrier();
  if (!fold_last) return;  // uniform over the workgroup
  memoryBarrierBuffer();
  const uint t = fwht_thread_index();
  vec4 v = vec4(0.0);
  float ss = 0.0;
  if (t < FB / 4u) {
    [[unroll]] for (uint k = 0u; k < 4u; ++k) {
      const uint e = b * FB + 4u * t + k;
      const float a = e < p.nout ? y[e] : 0.0;
      ss = fma(a, a, ss);
      v[k] = FOLD == 1u && e < p.nout ? a * gamma[e] : a;
    }
  }
  if (FOLD == 1u) {
    const float s = subgroupAdd(ss);
    if (subgroupElect()) partial[gl_SubgroupID] = s;
    barrier();
    if (t == 0u) {
      float total = 0.0;
      for (uint i = 0u; i < gl_NumSubgroups; ++i) total += partial[i];
      parts[b] = total;
    }
  }
  if (FROT != 0u) v = fwht_block(v, t, FB, 0u);  // the whole workgroup: it has barriers
  if (t < FB / 4u)
    [[unroll]] for (uint k = 0u; k < 4u; ++k) nx[gemv_interleaved_index(b * FB + 4u * t + k)] = v[k];
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

  for (uint ch0 = 0u; ch0 < p.nchunk; ch0 += WG) {
    const bool live = ch0 + t < p.nchunk;
    const uint ch = min(ch0 + t, p.nchunk - 1u);
    float xv[32];
    load_chunk(ch, live, xv, ss);
    if (ROTATE) rotate_chunk(ch, xv);
    [[unroll]] for (uint r0 = 0u; r0 < ROWS; r0 += RG) {
      // The group's words and scales first, so that their loads are in flight together.
      uint w[RG][9];
      float sc[RG];
      load_words(ch, live, r0, row0, w, sc);
      dot_rows(r0, w, sc, xv, cb_lane, rep, acc);
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
  if (PART_NORM) {  // the same order in every workgroup: one factor for all rows
    float total = 0.0;
    for (uint b = 0u; b < p.nblocks; ++b) total += parts[b];
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
  if (FOLD != 0u) fold(p.y_offset + wg * OUTR);
}
