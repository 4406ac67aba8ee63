// The body of the tensor-core PolarQuant GEMM (pq_gemm_coopmat.comp, which documents it), shared
// with pq_gemm_coopmat_emulated.comp. The including file defines the cooperative-matrix
// operations this body is written in:
//   ACC, ACC_ZERO      a 16 x 16 fp32 accumulator type and its zero
//   FRAG               a 16 x 16 fp16 operand type
//   LOAD_A(f, e)       f = the 16 x 16 activation tile at uvec4 element e of Xs (row-major,
//                      row stride LD uvec4), rows = tokens, columns = K
//   LOAD_B(f, e)       f = the 16 (K) x 16 (rows of W) weight tile at element e of Ws,
//                      column-major (column n is row n of the W tile, contiguous along K)
//   MULADD(a, b, c)    a * b + c
//   STORE_ACC(c, e)    c into Ws from uvec4 element e, row-major, 16 floats (4 uvec4) a row
//   SG_ID, SG_LANE, SG_SIZE   the subgroup of 32 invocations this one is in, its lane, 32
//   SG_SYNC()          makes a subgroup's shared-memory stores visible to the subgroup
//   SG_BARRIER()       waits for the subgroup
#ifndef PQ_GEMM_COOPMAT_GLSL
#define PQ_GEMM_COOPMAT_GLSL

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint BITS = 4u;
layout(constant_id = 1) const uint BLOCK = 128u;
layout(constant_id = 2) const uint TM = 64u;
layout(constant_id = 3) const uint CPB = 2u;  // chunks per code load: 2, or 4 where nchunk % 4 == 0
// Benchmarks only (PQVK_GEMM_ABLATE; wrong results, timings of what is left): 1 no codebook
// decode (the scale stored as every weight), 2 no fragment loads or products, 4 no global
// loads inside the K loop, 8 no barrier inside the K loop, 16 no activation conversion.
layout(constant_id = 4) const uint ABLATE = 0u;
layout(constant_id = 5) const uint X_F16 = 0u;  // 1: Xr holds fp16 pairs (Layout::row_major_f16)
const uint TN = 128u;       // rows of W per workgroup
const uint LD = 5u;         // shared row stride in uvec4 (40 halves; 32 used)
const uint FM = TM / 32u;   // accumulator tiles per subgroup along the tokens (2 or 4)
const uint FN = 2u;         // ... along the rows
const uint CPBK = BLOCK / 32u;  // chunks per block (2, 4 or 8)

// The codes, read as 2 or 4 words at a time: word j of chunks c .. c + CPB - 1 of a group are
// consecutive (docs/packed-layout.md), and their index is a multiple of CPB where c is (rows
// hold nchunk * BITS words and groups j * gs words, both even; multiples of 4 when nchunk is).
layout(std430, binding = 0) readonly buffer Codes2 { uvec2 codes2[]; };
layout(std430, binding = 0) readonly buffer Codes4 { uvec4 codes4[]; };
layout(std430, binding = 1) readonly buffer Scales { uint scales[]; };
layout(std430, binding = 2) readonly buffer Codebook { float codebook[]; };
layout(std430, binding = 3) readonly buffer X { vec4 x4[]; };
layout(std430, binding = 3) readonly buffer XH { uvec4 xh8[]; };  // X_F16: 8 halves at a time
layout(std430, binding = 4) buffer Y { float gemm_y[]; };
// kc: chunks per split of K (split-K: workgroup z takes chunks z * kc .. z * kc + kc - 1, a
// multiple of CPB; nchunk when K is not split); zstride: floats between the splits' partial
// outputs in Y (0 when not split; Kernels then sums them with splitk_sum.comp).
layout(push_constant) uniform Push { uint rows, m, nchunk, nblocks, ldx, ldy, y_offset, accumulate, kc, zstride; } p;

shared float cb[1u << BITS];
shared uvec4 Xs[2u * TM * LD];  // [buffer][token][8 halves x 5]
shared uvec4 Ws[2u * TN * LD];  // [buffer][row][8 halves x 5]

#include "pq_common.glsl"
#include "gemm_store.glsl"

// Half h of a chunk (codes 16 h .. 16 h + 15) occupies stream bits [16 h BITS, 16 (h + 1) BITS):
// words JLO(h) .. JHI(h), at most 4.
#define JLO(h) ((16u * BITS * (h)) >> 5u)
#define JHI(h) ((16u * BITS * ((h) + 1u) - 1u) >> 5u)

// What one invocation carries from global loads to its shared-memory stores.
uvec4 wv[4];   // words JLO(h) + n (n < 4) of its row's chunks ch0 .. ch0 + CPB - 1 (component = chunk)
float ws[2];   // their block scales (two where 4 chunks span two blocks of 64)
vec4 xv[4];    // its activations of the next chunk: TM/64 groups of 8 (two vec4 each)
uvec4 xh[2];   // the same as fp16 (X_F16): one uvec4 per group
uint w[8];     // the words of the chunk being decoded (those its half's codes occupy)
float wscale;  // its block scale (0 past the last row: the row decodes to zeros)

// The words of half h for chunks ch0 .. ch0 + CPB - 1 of `row` (h a constant: the word range folds).
void load_words(uint row, uint ch0, const uint h) {
  [[unroll]] for (uint n = 0u; n < 4u; ++n) {
    if (JLO(h) + n <= JHI(h)) {
      const uint idx = pq_word_index(row, p.nchunk, BITS, ch0, JLO(h) + n);
      wv[n] = CPB == 4u ? codes4[idx >> 2u] : uvec4(codes2[idx >> 1u], 0u, 0u);
    }
  }
}

// Chunks ch0 .. ch0 + CPB - 1: the codes and scales this invocation decodes into registers.
void load_codes(uint ch0, uint row, uint half_id) {
  if (row >= p.rows) return;  // wv, ws stay 0
  if (half_id == 0u) load_words(row, ch0, 0u);
  else load_words(row, ch0, 1u);
  [[unroll]] for (uint s = 0u; s < 2u; ++s) {
    if (s * CPBK < CPB) {
      const uint sidx = row * p.nblocks + ch0 / CPBK + s;
      ws[s] = half_at(scales[sidx >> 1u], sidx);
    }
  }
}

// Chunk ch (K = 32 ch .. 32 ch + 31): the activations this invocation converts, into registers.
void load_x(uint ch, uint m0) {
  const uint t = gl_LocalInvocationIndex, ldx4 = p.ldx >> 2u;
  [[unroll]] for (uint g = 0u; g < 2u; ++g) {
    if (g < TM / 64u) {
      const uint idx = t + 256u * g, tok = idx >> 2u, q = idx & 3u;  // 4 invocations per token
      const bool ok = m0 + tok < p.m;
      if (X_F16 != 0u) {
        xh[g] = ok ? xh8[(m0 + tok) * (p.ldx >> 3u) + ch * 4u + q] : uvec4(0u);
      } else {
        const uint base = (m0 + tok) * ldx4 + ch * 8u + q * 2u;
        xv[2u * g] = ok ? x4[base] : vec4(0.0);
        xv[2u * g + 1u] = ok ? x4[base + 1u] : vec4(0.0);
      }
    }
  }
}

// Codes i0 .. i0 + 7 of the chunk in w[] (i0 a constant, so every shift folds), looked up and
// scaled, as 4 fp16 pairs (the lower address in the low half).
uvec4 decode8(const uint i0) {
  uint h[4];
  [[unroll]] for (uint k = 0u; k < 4u; ++k) {
    const uint i = i0 + 2u * k;
    h[k] = (ABLATE & 1u) != 0u ? packHalf2x16(vec2(wscale, float(w[k]))) :
           packHalf2x16(vec2(cb[PQ_CODE_SHIFTED(w, i, BITS, 0u)], cb[PQ_CODE_SHIFTED(w, i + 1u, BITS, 0u)]) * wscale);
  }
  return uvec4(h[0], h[1], h[2], h[3]);
}

// Chunk ch0 + sub (sub < CPB a constant once unrolled) from the registers into shared buffer
// `buf`: the weights decoded, the activations (loaded by the last load_x) converted.
void store_step(uint buf, uint wr, uint half_id, const uint sub) {
  wscale = ws[sub / CPBK];
  const uint wo = (buf * TN + wr) * LD + 2u * half_id;
  if (half_id == 0u) {  // uniform per subgroup: each branch has constant word and code indices
    [[unroll]] for (uint n = 0u; n < 4u; ++n)
      if (JLO(0u) + n <= JHI(0u)) w[JLO(0u) + n] = wv[n][sub];
    Ws[wo] = decode8(0u);
    Ws[wo + 1u] = decode8(8u);
  } else {
    [[unroll]] for (uint n = 0u; n < 4u; ++n)
      if (JLO(1u) + n <= JHI(1u)) w[JLO(1u) + n] = wv[n][sub];
    Ws[wo] = decode8(16u);
    Ws[wo + 1u] = decode8(24u);
  }
  const uint t = gl_LocalInvocationIndex;
  [[unroll]] for (uint g = 0u; g < 2u; ++g) {
    if (g < TM / 64u && (ABLATE & 16u) == 0u) {
      const uint idx = t + 256u * g, tok = idx >> 2u, q = idx & 3u;
      const vec4 a = xv[2u * g], b = xv[2u * g + 1u];
      Xs[(buf * TM + tok) * LD + q] =
          X_F16 != 0u ? xh[g] : uvec4(packHalf2x16(a.xy), packHalf2x16(a.zw), packHalf2x16(b.xy), packHalf2x16(b.zw));
    }
  }
}

// Accumulator tile (i, j) of this subgroup out to Y through its staging area in Ws (16 rows of 16
// floats, 4 uvec4 each), with bounds checks, adding to Y when accumulating.
void store_tile(ACC c, const uint i, const uint j, uint m0, uint n0) {
  const uint sg = SG_ID, wm = sg & 1u, wn = sg >> 1u, stage = sg * 64u;
  STORE_ACC(c, stage);
  SG_SYNC();
  write_staged_tile(stage, m0 + wm * (TM / 2u) + 16u * i, n0 + wn * 32u + 16u * j, SG_LANE, SG_SIZE);
  SG_BARRIER();  // the tile is read before the next one overwrites it
}

void main() {
  const uint t = gl_LocalInvocationIndex;
  const uint n0 = gl_WorkGroupID.x * TN, m0 = gl_WorkGroupID.y * TM;
  const uint wr = t & (TN - 1u), half_id = t >> 7u;
  const uint row = n0 + wr;
  const uint sg = SG_ID, wm = sg & 1u, wn = sg >> 1u;
  for (uint i = t; i < (1u << BITS); i += 256u) cb[i] = codebook[i];
  [[unroll]] for (uint j = 0u; j < 8u; ++j) w[j] = 0u;
  [[unroll]] for (uint n = 0u; n < 4u; ++n) wv[n] = uvec4(0u);
  xh[0] = xh[1] = uvec4(0u);
  ws[0] = ws[1] = 0.0;

  // The accumulators are named, not an array: c<i><j> is the 16 x 16 tile of tokens wm * TM/2 +
  // 16 i and rows wn * 32 + 16 j (i < FM, j < 2; c2*, c3* unused when FM is 2).
  ACC c00 = ACC_ZERO, c01 = ACC_ZERO, c10 = ACC_ZERO, c11 = ACC_ZERO;
  ACC c20 = ACC_ZERO, c21 = ACC_ZERO, c30 = ACC_ZERO, c31 = ACC_ZERO;

  // This workgroup's part of K: chunks kbeg .. kend - 1 (all of them unless K is split).
  const uint kbeg = gl_WorkGroupID.z * p.kc, kend = min(kbeg + p.kc, p.nchunk);
  load_codes(kbeg, row, half_id);
  load_x(kbeg, m0);
  barrier();  // the codebook is in shared memory
  // nchunk and kc are multiples of CPB (cols_padded of 64); CPB is even, so chunk ch0 + sub goes
  // to buffer sub % 2.
  for (uint ch0 = kbeg; ch0 < kend; ch0 += CPB) {
    [[unroll]] for (uint sub = 0u; sub < CPB; ++sub) {
      const uint buf = sub & 1u, ch = ch0 + sub;
      // Buffer `buf` was last read in step ch - 2, which every subgroup finished before the
      // barrier of step ch - 1.
      store_step(buf, wr, half_id, sub);
      if ((ABLATE & 8u) == 0u) barrier();
      if (ch + 1u < kend && (ABLATE & 4u) == 0u) {  // in flight during the products
        if (sub == CPB - 1u) load_codes(ch + 1u, row, half_id);
        load_x(ch + 1u, m0);
      }
      [[unroll]] for (uint kk = 0u; kk < 2u && (ABLATE & 2u) == 0u; ++kk) {  // two K halves of 16 (2 uvec4)
        const uint ea = (buf * TM + wm * (TM / 2u)) * LD + 2u * kk, eb = (buf * TN + wn * 32u) * LD + 2u * kk;
        FRAG a0, a1, b0, b1;
        LOAD_B(b0, eb);
        LOAD_B(b1, eb + 16u * LD);
        LOAD_A(a0, ea);
        LOAD_A(a1, ea + 16u * LD);
        c00 = MULADD(a0, b0, c00);
        c01 = MULADD(a0, b1, c01);
        c10 = MULADD(a1, b0, c10);
        c11 = MULADD(a1, b1, c11);
        if (FM == 4u) {
          FRAG a2, a3;
          LOAD_A(a2, ea + 32u * LD);
          LOAD_A(a3, ea + 48u * LD);
          c20 = MULADD(a2, b0, c20);
          c21 = MULADD(a2, b1, c21);
          c30 = MULADD(a3, b0, c30);
          c31 = MULADD(a3, b1, c31);
        }
      }
    }
  }

  barrier();  // every subgroup is done with Ws: reuse it as 8 staging tiles of 16 x 16 fp32
  store_tile(c00, 0u, 0u, m0, n0);
  store_tile(c01, 0u, 1u, m0, n0);
  store_tile(c10, 1u, 0u, m0, n0);
  store_tile(c11, 1u, 1u, m0, n0);
  if (FM == 4u) {
    store_tile(c20, 2u, 0u, m0, n0);
    store_tile(c21, 2u, 1u, m0, n0);
    store_tile(c30, 3u, 0u, m0, n0);
    store_tile(c31, 3u, 1u, m0, n0);
  }
}

#endif
