// The body of the skinny tensor-core PolarQuant GEMM (pq_gemm_skinny.comp, which documents it),
// shared with pq_gemm_skinny_emulated.comp. The including file defines the cooperative-matrix
// operations this body is written in:
//   ACC, ACC_ZERO      a 16 x 16 fp32 accumulator type and its zero
//   FRAG               a 16 x 16 fp16 operand type
//   LOAD_A(f, e)       f = the 16 x 16 activation tile at uvec4 element e of Xs (row-major, row
//                      stride LDX uvec4), rows = tokens, columns = K
//   LOAD_B(f, e)       f = the 16 (K) x 16 (rows of W) weight tile at element e of Ws,
//                      column-major (column n is row n of the W tile, contiguous along K)
//   MULADD(a, b, c)    a * b + c
//   STORE_ACC(c, e)    c into Ws from uvec4 element e, row-major, 16 floats (4 uvec4) a row
//   SG_ID, SG_LANE     the subgroup of 32 invocations this one is in, its lane
//   SG_SYNC()          makes a subgroup's shared-memory stores visible to the subgroup
//   SG_BARRIER()       waits for the subgroup
//   LOOKUP_CODE(w, i)  the codebook value of code i of the chunk words w[] (i a constant)
#ifndef PQ_GEMM_SKINNY_GLSL
#define PQ_GEMM_SKINNY_GLSL

layout(local_size_x = 128) in;
layout(constant_id = 0) const uint BITS = 4u;
layout(constant_id = 1) const uint BLOCK = 128u;
layout(constant_id = 2) const uint NT = 1u;   // 16-token tiles: 1 (up to 16 tokens) or 2 (up to 32)
layout(constant_id = 3) const uint CPL = 4u;  // chunks per code load: 4, or 2 where nchunk % 4 != 0
layout(constant_id = 4) const uint LOOKUP = 0u;  // 0: codebook in shared memory; 1: subgroup shuffle
// Benchmarks only (PQVK_GEMM_ABLATE; wrong results, timings of what is left): 1 no lookups (the
// words and scale stored as the weights), 2 no fragment loads or products, 4 no code loads after
// the first group's.
layout(constant_id = 5) const uint ABLATE = 0u;
layout(constant_id = 6) const uint SX = 8u;  // chunks of activations staged at a time: 8, or 4 (less shared memory)
const uint RW = 32u;            // rows of W per subgroup (one per lane)
const uint SGS = 4u;            // subgroups per workgroup
const uint LD = 5u;             // shared row stride in uvec4 (40 halves; 32 used)
const uint CPBK = BLOCK / 32u;  // chunks per block (2, 4 or 8)
const uint LDX = SX * 4u + 1u;  // staged activation row stride in uvec4 (rows 16 bytes off banks)
const uint XV = NT * SX / 2u;    // uvec4 each invocation stages: 16 NT rows x 4 SX uvec4 / 128

layout(std430, binding = 0) readonly buffer Codes2 { uvec2 codes2[]; };
layout(std430, binding = 0) readonly buffer Codes4 { uvec4 codes4[]; };
layout(std430, binding = 1) readonly buffer Scales { uint scales[]; };
layout(std430, binding = 2) readonly buffer Codebook { float codebook[]; };
layout(std430, binding = 3) readonly buffer XH { uvec4 xh8[]; };  // fp16 activations, 8 a uvec4
layout(std430, binding = 4) buffer Y { float gemm_y[]; };
// As pq_gemm_coopmat.comp: kc chunks per part of K (workgroup z takes chunks z * kc ..), zstride
// floats between the parts' outputs in Y (0 when K is not split).
layout(push_constant) uniform Push { uint rows, m, nchunk, nblocks, ldx, ldy, y_offset, accumulate, kc, zstride; } p;

shared float cb[LOOKUP == 0u ? 1u << BITS : 1u];
shared uvec4 Ws[SGS * 2u * RW * LD];  // [subgroup][buffer][row][8 halves x 5]
shared uvec4 Xs[16u * NT * LDX];      // [token][SX chunks of 8 halves x 4, + 1]

#include "pq_common.glsl"
#include "gemm_store.glsl"

float cb_lane;  // LOOKUP 1: this lane's codebook entry
// What a lane carries from its global loads to its decode (at global scope, indexed by constants
// only once unrolled, so that they stay in registers: pq_gemm_coopmat.comp's experience).
uvec4 wv[8];   // word j of chunks ch0 .. ch0 + CPL - 1 of its row (component = chunk)
float ws[2];   // their block scales (two where CPL chunks span two blocks of 64)

// The words and scales of CPL chunks from ch0 of `row` (past the last row: the last row's, with
// scale 0, so that it decodes to zeros).
void load_codes(uint row, uint ch0) {
  const uint r = min(row, p.rows - 1u);
  [[unroll]] for (uint j = 0u; j < BITS; ++j) {
    const uint idx = pq_word_index(r, p.nchunk, BITS, ch0, j);
    wv[j] = CPL == 4u ? codes4[idx >> 2u] : uvec4(codes2[idx >> 1u], 0u, 0u);
  }
  [[unroll]] for (uint s = 0u; s < 2u; ++s) {
    if (s * CPBK < CPL) {
      const uint sidx = r * p.nblocks + ch0 / CPBK + s;
      ws[s] = row < p.rows ? half_at(scales[sidx >> 1u], sidx) : 0.0;
    }
  }
}

uvec4 xr[8];   // the activations this invocation stages next (XV of them)

// Chunks c0 .. c0 + SX - 1 (those below kend) of the 16 NT token rows, into registers: zeros past
// the tokens and past kend (16-byte loads, 32 invocations per token row).
void load_x(uint c0, uint kend) {
  const uint ldx8 = p.ldx >> 3u;
  [[unroll]] for (uint i = 0u; i < 8u; ++i) {
    if (i < XV) {
      const uint idx = gl_LocalInvocationIndex + 128u * i, tok = idx / (SX * 4u), col = idx % (SX * 4u);
      xr[i] = tok < p.m && c0 * 4u + col < kend * 4u ? xh8[tok * ldx8 + c0 * 4u + col] : uvec4(0u);
    }
  }
}

// Accumulator (token tile t, row tile j) of this subgroup out to Y through its staging area in
// Ws, with bounds checks, adding to Y when accumulating.
void store_tile(ACC c, const uint t, const uint j, uint n0, uint stage) {
  STORE_ACC(c, stage);
  SG_SYNC();
  write_staged_tile(stage, 16u * t, n0 + 16u * j, SG_LANE, 32u);
  SG_BARRIER();  // the tile is read before the next one overwrites it
}

void main() {
  const uint sg = SG_ID, lane = SG_LANE;
  const uint n0 = gl_WorkGroupID.x * (SGS * RW) + sg * RW;  // this subgroup's first row
  const uint row = n0 + lane;
  const uint wbase = sg * 2u * RW * LD;  // this subgroup's two buffers
  cb_lane = 0.0;
  if (LOOKUP == 0u) {
    for (uint i = gl_LocalInvocationIndex; i < (1u << BITS); i += 128u) cb[i] = codebook[i];
    barrier();
  } else {
    cb_lane = codebook[lane & ((1u << BITS) - 1u)];
  }

  ACC c00 = ACC_ZERO, c01 = ACC_ZERO, c10 = ACC_ZERO, c11 = ACC_ZERO;  // c<t><j>: tokens 16 t.., rows 16 j..
  const uint kbeg = gl_WorkGroupID.z * p.kc, kend = min(kbeg + p.kc, p.nchunk);
  [[unroll]] for (uint j = 0u; j < 8u; ++j) wv[j] = uvec4(0u);
  ws[0] = ws[1] = 0.0;
  load_codes(row, kbeg);
  load_x(kbeg, kend);
  // The activations go through shared memory SX chunks at a time (the next stage's loaded during
  // this one's products), the workgroup's barriers around each store; in between each subgroup
  // runs on its own. kc and nchunk are multiples of CPL (even), and SX of CPL: chunk ch0 + sub
  // goes to buffer sub % 2.
  for (uint cs = kbeg; cs < kend; cs += SX) {
    barrier();  // every subgroup is done with the previous stage
    [[unroll]] for (uint i = 0u; i < 8u; ++i) {
      if (i < XV) {
        const uint idx = gl_LocalInvocationIndex + 128u * i;
        Xs[(idx / (SX * 4u)) * LDX + idx % (SX * 4u)] = xr[i];
      }
    }
    barrier();
    if (cs + SX < kend) load_x(cs + SX, kend);
    for (uint ch0 = cs; ch0 < min(cs + SX, kend); ch0 += CPL) {
      [[unroll]] for (uint sub = 0u; sub < CPL; ++sub) {
        const uint ch = ch0 + sub, buf = sub & 1u;
        uint w[9];  // one spare: the code macros may name w[BITS] in a branch never taken
        [[unroll]] for (uint j = 0u; j < 9u; ++j) w[j] = j < BITS ? wv[j][sub] : 0u;
        const float sc = ws[sub / CPBK];
        // The last chunk of the group taken from wv: the next group's codes in flight from here.
        if (sub == CPL - 1u && ch0 + CPL < kend && (ABLATE & 4u) == 0u) load_codes(row, ch0 + CPL);
        // Row `lane` of the tile: its 32 codes looked up, scaled, as 16 fp16 pairs. Buffer `buf`
        // was last read for chunk ch - 2, before every lane passed chunk ch - 1's SG_SYNC.
        const uint wo = wbase + (buf * RW + lane) * LD;
        [[unroll]] for (uint q = 0u; q < 4u; ++q) {
          uint h[4];
          [[unroll]] for (uint k = 0u; k < 4u; ++k) {
            const uint i = 8u * q + 2u * k;
            h[k] = (ABLATE & 1u) != 0u ? packHalf2x16(vec2(sc, float(w[(q + k) % BITS]))) :
                   packHalf2x16(vec2(LOOKUP_CODE(w, i), LOOKUP_CODE(w, i + 1u)) * sc);
          }
          Ws[wo + q] = uvec4(h[0], h[1], h[2], h[3]);
        }
        SG_SYNC();
        [[unroll]] for (uint kk = 0u; kk < 2u && (ABLATE & 2u) == 0u; ++kk) {  // two K halves of 16 (2 uvec4)
          const uint eb = wbase + buf * RW * LD + 2u * kk, ea = (ch - cs) * 4u + 2u * kk;
          FRAG a0, b0, b1;
          LOAD_A(a0, ea);
          LOAD_B(b0, eb);
          LOAD_B(b1, eb + 16u * LD);
          c00 = MULADD(a0, b0, c00);
          c01 = MULADD(a0, b1, c01);
          if (NT == 2u) {
            FRAG a1;
            LOAD_A(a1, ea + 16u * LDX);
            c10 = MULADD(a1, b0, c10);
            c11 = MULADD(a1, b1, c11);
          }
        }
      }
    }
  }

  SG_BARRIER();  // every lane is done with the buffers: the first 64 uvec4 stage the outputs
  store_tile(c00, 0u, 0u, n0, wbase);
  store_tile(c01, 0u, 1u, n0, wbase);
  if (NT == 2u) {
    store_tile(c10, 1u, 0u, n0, wbase);
    store_tile(c11, 1u, 1u, n0, wbase);
  }
}

#endif
