// The body of the tensor-core prefill attention (attention_coopmat.comp, which documents it),
// shared with attention_coopmat_emulated.comp. The including file defines the cooperative-matrix
// operations this body is written in:
//   ACC, ACC_ZERO        a 16 x 16 fp32 accumulator type and its zero
//   FRAG                 a 16 x 16 fp16 operand type
//   LOAD_H(f, e, ld, cm) f = the 16 x 16 fp16 tile at uvec4 element e of H, rows (columns when
//                        cm is true: column-major) ld uvec4 apart
//   LOAD_F(f, e, ld)     the same from F, row-major
//   MULADD(a, b, c)      a * b + c
//   STORE_ACC(c, e, ld)  c into F from uvec4 element e, row-major fp32, rows ld uvec4 apart
//   LOAD_ACC(c, e, ld)   c = the 16 x 16 fp32 tile STORE_ACC(c, e, ld) wrote
//   SG_ANY(x)            whether x holds in any invocation of the subgroup (the same answer in
//                        all of it; a stand-in may answer true always: only speed depends on it)
//   SG_ID, SG_LANE       the subgroup of 32 invocations this one is in, and its lane
//   SG_SYNC()            makes a subgroup's shared-memory stores visible to the subgroup
#ifndef ATTENTION_COOPMAT_GLSL
#define ATTENTION_COOPMAT_GLSL

layout(local_size_x = 128) in;
layout(constant_id = 0) const uint BK = 16u;  // keys per tile: 16 or 32
layout(constant_id = 1) const uint KV_BITS = 0u;  // 0: fp16 cache; 4, 8: PolarQuant records
// Benchmarks only (PQVK_ATTENTION_ABLATE; wrong results, the time of what is left): 1 no key or
// value loads (the tile's words made from its indices), 2 no products (Q K^T, P V), 4 no
// softmax (the scores' fp16 bits taken as probabilities).
layout(constant_id = 2) const uint ABLATE = 0u;
const uint BQ = 64u;    // queries per workgroup (16 per subgroup)
const uint LDH = 17u;   // row stride of H in uvec4: 128 halves + one uvec4 of padding
const uint LDF = BK / 4u + 1u;  // row stride of F in uvec4: BK floats + padding
const uint KROW = BQ, VROW = BQ + BK;  // first rows of the key and value tiles in H
const uint TILE_IT = BK / 2u;  // fp16 cache: a tile's words per invocation (BK keys of at most 64 words)
const uint HALF_COLS = BK / 2u;  // the scores of a query row each of its two lanes takes
// A row's reference maximum m moves up only when a tile's scores exceed it by more than this
// (natural log): the probabilities e^(s - m) stay below e^8 (fp16 holds them), and the output
// accumulators, which the tensor cores hold, are rescaled through shared memory only then.
const float RESCALE_MARGIN = 8.0;

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer KC { uint kc[]; };
layout(std430, binding = 2) readonly buffer VC { uint vc[]; };
layout(std430, binding = 3) writeonly buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer Step { uint pos0; } step;
layout(std430, binding = 5) readonly buffer KVCB { float kvcb[]; };
layout(push_constant) uniform Push { uint n_heads, n_kv, hd, window, m; } p;
#include "pq_kv.glsl"

// KV_BITS: a tile's record words per invocation (hd <= 128): key units (a key and one code word
// of its first half, with the word hd/2 dimensions on) and value units (a value and one code word).
const uint K_UNITS = KV_BITS > 0u ? (BK * 64u / KV_CPW + 127u) / 128u : 1u;
const uint V_UNITS = 2u * K_UNITS;

shared uvec4 H[(BQ + 2u * BK) * LDH];  // fp16 rows: queries, keys, values
shared uvec4 F[4u * 16u * LDF];        // per subgroup: scores (fp32), then probabilities (fp16); output
// Per subgroup 32 slots: in an exchange lane l's partial max or sum at slot l (its partner, lane
// l ^ 16, reads it); after one, slot 16 + r holds query row r's factor (the output's rescale), at
// the end its softmax denominator (each written by lane r, the only reader of that partial).
shared float xch[128u];
#define RFAC(r) xch[32u * sg + 16u + (r)]
#define LSUM(r) xch[32u * sg + 16u + (r)]
shared float cbs[KV_BITS > 0u ? 1u << KV_BITS : 1u];  // KV_BITS: the centroids

uint key_lo(uint pos) { return p.window > 0u && pos + 1u > p.window ? pos + 1u - p.window : 0u; }

// Output tile j (dims 16 j .. 16 j + 15) of this subgroup's 16 queries, divided by their sums.
void store_out(ACC c, const uint j, uint m0, uint h) {
  const uint sg = SG_ID, lane = SG_LANE, fb = sg * 16u * LDF;
  STORE_ACC(c, fb, LDF);
  SG_SYNC();
  for (uint e = lane; e < 256u; e += 32u) {
    const uint r = e >> 4u, d = 16u * j + (e & 15u), qr = 16u * sg + r;
    if (m0 + qr < p.m && d < p.hd)
      o[((m0 + qr) * p.n_heads + h) * p.hd + d] = uintBitsToFloat(F[fb + r * LDF + ((e & 15u) >> 2u)][e & 3u]) / LSUM(r);
  }
  SG_SYNC();
}

// Output tile c of this subgroup's 16 queries, each row times its RFAC (through the subgroup's F).
#define RESCALE(c)                                                                       \
  {                                                                                      \
    STORE_ACC(c, fb, LDF);                                                               \
    SG_SYNC();                                                                           \
    for (uint e = lane; e < 256u; e += 32u) {                                            \
      const uint at = fb + (e >> 4u) * LDF + ((e & 15u) >> 2u);                          \
      F[at][e & 3u] = floatBitsToUint(uintBitsToFloat(F[at][e & 3u]) * RFAC(e >> 4u)); \
    }                                                                                    \
    SG_SYNC();                                                                           \
    LOAD_ACC(c, fb, LDF);                                                                \
    SG_SYNC();                                                                           \
  }

// The subgroup's probabilities (16 x BK, fp16 in its F rows) times the value tile, into the
// output accumulators o0 .. o(nks - 1).
#define PV_PRODUCTS()                                                                          \
  [[unroll]] for (uint kk = 0u; kk < ((ABLATE & 2u) != 0u ? 0u : BK / 16u); ++kk) {          \
    FRAG a, b;                                                                                 \
    LOAD_F(a, fb + 2u * kk, LDF);                                                              \
    const uint vb = (VROW + 16u * kk) * LDH;                                                   \
    LOAD_H(b, vb, LDH, false);                                                                 \
    o0 = MULADD(a, b, o0);                                                                     \
    if (nks > 1u) { LOAD_H(b, vb + 2u, LDH, false); o1 = MULADD(a, b, o1); }                   \
    if (nks > 2u) { LOAD_H(b, vb + 4u, LDH, false); o2 = MULADD(a, b, o2); }                   \
    if (nks > 3u) { LOAD_H(b, vb + 6u, LDH, false); o3 = MULADD(a, b, o3); }                   \
    if (nks > 4u) { LOAD_H(b, vb + 8u, LDH, false); o4 = MULADD(a, b, o4); }                   \
    if (nks > 5u) { LOAD_H(b, vb + 10u, LDH, false); o5 = MULADD(a, b, o5); }                  \
    if (nks > 6u) { LOAD_H(b, vb + 12u, LDH, false); o6 = MULADD(a, b, o6); }                  \
    if (nks > 7u) { LOAD_H(b, vb + 14u, LDH, false); o7 = MULADD(a, b, o7); }                  \
  }

void main() {
  const uint h = gl_WorkGroupID.x, t = gl_LocalInvocationIndex, sg = SG_ID, lane = SG_LANE;
  const uint hd = p.hd, half_hd = hd / 2u, nks = (hd + 15u) / 16u, hw = nks * 8u;  // hw: words per padded row
  const uint kvh = h / (p.n_heads / p.n_kv);
  const uint m0 = gl_WorkGroupID.y * BQ;
  const uint p_first = step.pos0 + m0, p_last = step.pos0 + min(m0 + BQ, p.m) - 1u;
  const float scale = inversesqrt(float(hd));
  const uint fb = sg * 16u * LDF;
  // Lanes l and l + 16 share one query row of the subgroup for the softmax, each taking half of
  // a tile's columns (queries past M repeat the last one and are not written).
  const uint qr = 16u * sg + (lane & 15u), col0 = (lane >> 4u) * HALF_COLS;
  const uint pos = step.pos0 + min(m0 + qr, p.m - 1u), lo = key_lo(pos);

  // Queries, times 1/sqrt(hd), as fp16 in the keys' dimension order (word j: dims j, j + hd/2),
  // 16 words an invocation at a time with their loads in flight together.
  for (uint i0 = 0u; i0 < BQ * hw; i0 += 16u * 128u) {
    vec2 qv[16];
    [[unroll]] for (uint it = 0u; it < 16u; ++it) {
      const uint i = i0 + t + 128u * it, r = i / hw, j = i % hw, mq = min(m0 + r, p.m - 1u);
      qv[it] = vec2(0.0);
      if (i < BQ * hw && j < half_hd) {
        const uint b = (mq * p.n_heads + h) * hd;
        qv[it] = vec2(q[b + j], q[b + j + half_hd]);
      }
    }
    [[unroll]] for (uint it = 0u; it < 16u; ++it) {
      const uint i = i0 + t + 128u * it, r = i / hw, j = i % hw;
      if (i < BQ * hw) H[r * LDH + (j >> 2u)][j & 3u] = packHalf2x16(qv[it] * scale);
    }
  }
  if (KV_BITS > 0u)
    for (uint i = t; i < (1u << KV_BITS); i += 128u) cbs[i] = kvcb[i];

  // One pass over the keys with an online softmax: row_max is the row's reference maximum m
  // (it lags the true one by at most RESCALE_MARGIN), row_sum this lane's part of the sum of
  // e^(s - m) as fp16 rounds them.
  float row_max = -1.0 / 0.0, row_sum = 0.0;
  ACC o0 = ACC_ZERO, o1 = ACC_ZERO, o2 = ACC_ZERO, o3 = ACC_ZERO;
  ACC o4 = ACC_ZERO, o5 = ACC_ZERO, o6 = ACC_ZERO, o7 = ACC_ZERO;
  const uint rw = hd / KV_CPW + 1u, kcw = half_hd / KV_CPW, vcw = hd / KV_CPW;  // KV_BITS: record, code words
  for (uint start = key_lo(p_first); start <= p_last; start += BK) {
    // The tile's words (zeros past p_last and past hd), each invocation's loads all issued
    // before its first store: a loop storing each word as it came waited on one load at a time.
    uint kw[TILE_IT], vw[TILE_IT];
    uint kl[K_UNITS], kh[K_UNITS], vr[V_UNITS];
    float kn[K_UNITS], vn[V_UNITS];
    if (KV_BITS == 0u) {
      [[unroll]] for (uint it = 0u; it < TILE_IT; ++it) {
        const uint i = t + 128u * it, kj = i / hw, j = i % hw, key = start + kj;
        kw[it] = 0u;
        vw[it] = 0u;
        if (i < BK * hw && key <= p_last && j < half_hd) {
          const uint w = (key * p.n_kv + kvh) * half_hd + j;
          if ((ABLATE & 1u) != 0u) {
            kw[it] = (w * 0x9E3779B9u) & 0x3bff3bffu;
            vw[it] = kw[it] ^ 0x00010001u;
          } else {
            kw[it] = kc[w];
            vw[it] = vc[w];
          }
        }
      }
    } else {  // each record word read once; norm 0 past p_last (zero words)
      [[unroll]] for (uint it = 0u; it < K_UNITS; ++it) {
        const uint u = t + 128u * it, kj = u / kcw, key = start + kj;
        kl[it] = 0u; kh[it] = 0u; kn[it] = 0.0;
        if (u < BK * kcw && key <= p_last) {
          const uint rb = (key * p.n_kv + kvh) * rw, w = u % kcw;
          if ((ABLATE & 1u) != 0u) {
            kl[it] = rb * 0x9E3779B9u;
            kh[it] = kl[it] ^ w;
            kn[it] = scale;
          } else {
            kl[it] = kc[rb + w];
            kh[it] = kc[rb + w + kcw];
            kn[it] = uintBitsToFloat(kc[rb + rw - 1u]) * scale;
          }
        }
      }
      [[unroll]] for (uint it = 0u; it < V_UNITS; ++it) {
        const uint u = t + 128u * it, kj = u / vcw, key = start + kj;
        vr[it] = 0u; vn[it] = 0.0;
        if (u < BK * vcw && key <= p_last) {
          const uint rb = (key * p.n_kv + kvh) * rw;
          if ((ABLATE & 1u) != 0u) {
            vr[it] = (rb + u) * 0x9E3779B9u;
            vn[it] = scale;
          } else {
            vr[it] = vc[rb + u % vcw];
            vn[it] = uintBitsToFloat(vc[rb + rw - 1u]) * scale;
          }
        }
      }
    }
    barrier();  // the previous tile is consumed (the first time: the queries and centroids are stored)
    if (KV_BITS == 0u) {
      [[unroll]] for (uint it = 0u; it < TILE_IT; ++it) {
        const uint i = t + 128u * it, kj = i / hw, j = i % hw;
        if (i < BK * hw) {
          H[(KROW + kj) * LDH + (j >> 2u)][j & 3u] = kw[it];
          H[(VROW + kj) * LDH + (j >> 2u)][j & 3u] = vw[it];
        }
      }
    } else {  // the rotated-basis values centroid(code) * norm / sqrt(hd) as fp16 pairs
      // Key word j: dims j, j + hd/2; a key unit's code words give words w KV_CPW .. + KV_CPW - 1.
      [[unroll]] for (uint it = 0u; it < K_UNITS; ++it) {
        const uint u = t + 128u * it, kj = u / kcw, j0 = (u % kcw) * KV_CPW;
        if (u < BK * kcw)
          [[unroll]] for (uint k = 0u; k < KV_CPW; ++k)
            H[(KROW + kj) * LDH + ((j0 + k) >> 2u)][(j0 + k) & 3u] =
                packHalf2x16(vec2(cbs[pq_kv_code_in(kl[it], k)], cbs[pq_kv_code_in(kh[it], k)]) * kn[it]);
      }
      // Value word j: dims 2j, 2j + 1; a value unit's code word gives KV_CPW / 2 words.
      [[unroll]] for (uint it = 0u; it < V_UNITS; ++it) {
        const uint u = t + 128u * it, kj = u / vcw, j0 = (u % vcw) * (KV_CPW / 2u);
        if (u < BK * vcw)
          [[unroll]] for (uint k = 0u; k < KV_CPW / 2u; ++k)
            H[(VROW + kj) * LDH + ((j0 + k) >> 2u)][(j0 + k) & 3u] =
                packHalf2x16(vec2(cbs[pq_kv_code_in(vr[it], 2u * k)], cbs[pq_kv_code_in(vr[it], 2u * k + 1u)]) * vn[it]);
      }
    }
    barrier();

    ACC s0 = ACC_ZERO, s1 = ACC_ZERO;  // scores of keys start .. + 15 and (BK = 32) + 16 .. + 31
    for (uint kk = 0u; kk < ((ABLATE & 2u) != 0u ? 0u : nks); ++kk) {
      FRAG a, b;
      LOAD_H(a, (16u * sg) * LDH + 2u * kk, LDH, false);
      LOAD_H(b, KROW * LDH + 2u * kk, LDH, true);
      s0 = MULADD(a, b, s0);
      if (BK == 32u) {
        LOAD_H(b, (KROW + 16u) * LDH + 2u * kk, LDH, true);
        s1 = MULADD(a, b, s1);
      }
    }
    STORE_ACC(s0, fb, LDF);
    if (BK == 32u) STORE_ACC(s1, fb + 4u, LDF);
    SG_SYNC();
    // This lane's half of its row's scores (-inf where masked), and the row's tile maximum.
    const uint rb = fb + (lane & 15u) * LDF;
    if ((ABLATE & 4u) != 0u) {  // the products' operands as they are: no softmax
      SG_SYNC();
      PV_PRODUCTS();
      SG_SYNC();
      row_sum = 1.0;
      continue;
    }
    float s[HALF_COLS];
    float tile_max = -1.0 / 0.0;
    [[unroll]] for (uint c = 0u; c < HALF_COLS; ++c) {
      const uint key = start + col0 + c;
      s[c] = key >= lo && key <= pos ? uintBitsToFloat(F[rb + ((col0 + c) >> 2u)][(col0 + c) & 3u]) : -1.0 / 0.0;
      tile_max = max(tile_max, s[c]);
    }
    xch[t] = tile_max;
    SG_SYNC();
    tile_max = max(tile_max, xch[t ^ 16u]);
    // A new reference maximum where the tile's exceeds the old one by more than the margin (the
    // first keys of a row always): the sums so far times e^(old - new), and the output rows too
    // where they hold anything (a rare event after a row's first keys).
    const bool grows = tile_max > row_max + RESCALE_MARGIN;
    const float factor = grows ? exp(row_max - tile_max) : 1.0;  // e^-inf = 0: nothing summed yet
    if (lane < 16u) RFAC(lane) = factor;
    if (SG_ANY(grows && row_max > -1.0 / 0.0)) {
      RESCALE(o0);
      if (nks > 1u) RESCALE(o1);
      if (nks > 2u) RESCALE(o2);
      if (nks > 3u) RESCALE(o3);
      if (nks > 4u) RESCALE(o4);
      if (nks > 5u) RESCALE(o5);
      if (nks > 6u) RESCALE(o6);
      if (nks > 7u) RESCALE(o7);
    }
    row_sum *= factor;
    if (grows) row_max = tile_max;
    // The probabilities as fp16 pairs over the front of the row (each lane its half: words
    // col0 / 2 ..; every score of the row was read above, before the exchange's sync).
    [[unroll]] for (uint c = 0u; c < HALF_COLS; c += 2u) {
      vec2 pr;
      [[unroll]] for (uint u = 0u; u < 2u; ++u) pr[u] = s[c + u] > -1.0 / 0.0 ? exp(s[c + u] - row_max) : 0.0;
      // The sum of what the products will use: the probabilities rounded to fp16.
      const uint hp = packHalf2x16(pr);
      const vec2 r16 = unpackHalf2x16(hp);
      row_sum += r16.x + r16.y;
      const uint wd = (col0 + c) >> 1u;
      F[rb + (wd >> 2u)][wd & 3u] = hp;
    }
    SG_SYNC();
    PV_PRODUCTS();
    SG_SYNC();  // F is read before the next tile's scores overwrite it
  }

  xch[t] = row_sum;
  SG_SYNC();
  if (lane < 16u) LSUM(lane) = row_sum + xch[t ^ 16u];
  SG_SYNC();
  store_out(o0, 0u, m0, h);
  if (nks > 1u) store_out(o1, 1u, m0, h);
  if (nks > 2u) store_out(o2, 2u, m0, h);
  if (nks > 3u) store_out(o3, 3u, m0, h);
  if (nks > 4u) store_out(o4, 4u, m0, h);
  if (nks > 5u) store_out(o5, 5u, m0, h);
  if (nks > 6u) store_out(o6, 6u, m0, h);
  if (nks > 7u) store_out(o7, 7u, m0, h);
}

#endif
