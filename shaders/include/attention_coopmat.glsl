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
//   SG_ID, SG_LANE       the subgroup of 32 invocations this one is in, and its lane
//   SG_SYNC()            makes a subgroup's shared-memory stores visible to the subgroup
#ifndef ATTENTION_COOPMAT_GLSL
#define ATTENTION_COOPMAT_GLSL

layout(local_size_x = 128) in;
layout(constant_id = 0) const uint BK = 16u;  // keys per tile: 16 or 32
layout(constant_id = 1) const uint KV_BITS = 0u;  // 0: fp16 cache; 4, 8: PolarQuant records
const uint BQ = 64u;    // queries per workgroup (16 per subgroup)
const uint LDH = 17u;   // row stride of H in uvec4: 128 halves + one uvec4 of padding
const uint LDF = BK / 4u + 1u;  // row stride of F in uvec4: BK floats + padding
const uint KROW = BQ, VROW = BQ + BK;  // first rows of the key and value tiles in H
const uint TILE_IT = BK / 2u;  // a tile's words per invocation: BK keys of at most 64 words (hd <= 128)

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer KC { uint kc[]; };
layout(std430, binding = 2) readonly buffer VC { uint vc[]; };
layout(std430, binding = 3) writeonly buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer Step { uint pos0; } step;
layout(std430, binding = 5) readonly buffer KVCB { float kvcb[]; };
layout(push_constant) uniform Push { uint n_heads, n_kv, hd, window, m; } p;
#include "pq_kv.glsl"

// KV_BITS: the rotated-basis values of dims i0 and i1 of the record at word rb of a cache (rw
// words a record), as an fp16 pair: centroid(code) * norm / sqrt(hd).
#define PQ_RECORD_PAIR(CACHE, rb, rw, i0, i1, inv_sqrt_hd)                                       \
  packHalf2x16(vec2(kvcb[pq_kv_code_in(CACHE[(rb) + (i0) / KV_CPW], i0)],                          \
                    kvcb[pq_kv_code_in(CACHE[(rb) + (i1) / KV_CPW], i1)]) *                        \
               (uintBitsToFloat(CACHE[(rb) + (rw) - 1u]) * (inv_sqrt_hd)))

shared uvec4 H[(BQ + 2u * BK) * LDH];  // fp16 rows: queries, keys, values
shared uvec4 F[4u * 16u * LDF];        // per subgroup: scores (fp32), then probabilities (fp16), then output
shared float Lsum[BQ];                 // the softmax denominators

uint key_lo(uint pos) { return p.window > 0u && pos + 1u > p.window ? pos + 1u - p.window : 0u; }

// Output tile j (dims 16 j .. 16 j + 15) of this subgroup's 16 queries, divided by their sums.
void store_out(ACC c, const uint j, uint m0, uint h) {
  const uint sg = SG_ID, lane = SG_LANE, fb = sg * 16u * LDF;
  STORE_ACC(c, fb, LDF);
  SG_SYNC();
  for (uint e = lane; e < 256u; e += 32u) {
    const uint r = e >> 4u, d = 16u * j + (e & 15u), qr = 16u * sg + r;
    if (m0 + qr < p.m && d < p.hd)
      o[((m0 + qr) * p.n_heads + h) * p.hd + d] = uintBitsToFloat(F[fb + r * LDF + ((e & 15u) >> 2u)][e & 3u]) / Lsum[qr];
  }
  SG_SYNC();
}

void main() {
  const uint h = gl_WorkGroupID.x, t = gl_LocalInvocationIndex, sg = SG_ID, lane = SG_LANE;
  const uint hd = p.hd, half_hd = hd / 2u, nks = (hd + 15u) / 16u, hw = nks * 8u;  // hw: words per padded row
  const uint kvh = h / (p.n_heads / p.n_kv);
  const uint m0 = gl_WorkGroupID.y * BQ;
  const uint p_first = step.pos0 + m0, p_last = step.pos0 + min(m0 + BQ, p.m) - 1u;
  const float scale = inversesqrt(float(hd));
  const uint fb = sg * 16u * LDF;
  // Lanes 0..15 each own one query row of the subgroup for the softmax (queries past M repeat
  // the last one and are not written).
  const uint qr = 16u * sg + (lane & 15u);
  const uint pos = step.pos0 + min(m0 + qr, p.m - 1u), lo = key_lo(pos);

  // Queries, times 1/sqrt(hd), as fp16 in the keys' dimension order (word j: dims j, j + hd/2).
  for (uint i = t; i < BQ * hw; i += 128u) {
    const uint r = i / hw, j = i % hw, mq = min(m0 + r, p.m - 1u);
    uint w = 0u;
    if (j < half_hd) {
      const uint b = (mq * p.n_heads + h) * hd;
      w = packHalf2x16(vec2(q[b + j], q[b + j + half_hd]) * scale);
    }
    H[r * LDH + (j >> 2u)][j & 3u] = w;
  }

  float row_max = -1.0 / 0.0, row_sum = 0.0;
  ACC o0 = ACC_ZERO, o1 = ACC_ZERO, o2 = ACC_ZERO, o3 = ACC_ZERO;
  ACC o4 = ACC_ZERO, o5 = ACC_ZERO, o6 = ACC_ZERO, o7 = ACC_ZERO;
  // Pass 0: each query's highest score; pass 1: probabilities against it and the products
  // with the values (no running rescale of the accumulators, which live in the tensor cores).
  for (uint pass = 0u; pass < 2u; ++pass) {
    for (uint start = key_lo(p_first); start <= p_last; start += BK) {
      // The tile's words (zeros past p_last and past hd), each invocation's loads all issued
      // before its first store: a loop storing each word as it came waited on one load at a time.
      uint kw[TILE_IT], vw[TILE_IT];
      [[unroll]] for (uint it = 0u; it < TILE_IT; ++it) {
        const uint i = t + 128u * it, kj = i / hw, j = i % hw, key = start + kj;
        kw[it] = 0u;
        vw[it] = 0u;
        if (i < BK * hw && key <= p_last && j < half_hd) {
          if (KV_BITS == 0u) {
            const uint w = (key * p.n_kv + kvh) * half_hd + j;
            kw[it] = kc[w];
            if (pass == 1u) vw[it] = vc[w];
          } else {  // key word j: dims j, j + hd/2 (the queries' order); value word j: dims 2j, 2j + 1
            const uint rw = hd / KV_CPW + 1u, rb = (key * p.n_kv + kvh) * rw;
            kw[it] = PQ_RECORD_PAIR(kc, rb, rw, j, j + half_hd, scale);
            if (pass == 1u) vw[it] = PQ_RECORD_PAIR(vc, rb, rw, 2u * j, 2u * j + 1u, scale);
          }
        }
      }
      barrier();  // the previous tile is consumed (the first time: the queries are stored)
      [[unroll]] for (uint it = 0u; it < TILE_IT; ++it) {
        const uint i = t + 128u * it, kj = i / hw, j = i % hw;
        if (i < BK * hw) {
          H[(KROW + kj) * LDH + (j >> 2u)][j & 3u] = kw[it];
          if (pass == 1u) H[(VROW + kj) * LDH + (j >> 2u)][j & 3u] = vw[it];
        }
      }
      barrier();

      ACC s0 = ACC_ZERO, s1 = ACC_ZERO;  // scores of keys start .. + 15 and (BK = 32) + 16 .. + 31
      for (uint kk = 0u; kk < nks; ++kk) {
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
      if (lane < 16u) {
        const uint rb = fb + lane * LDF;
        if (pass == 0u) {
          for (uint c = 0u; c < BK; ++c) {
            const uint key = start + c;
            if (key >= lo && key <= pos) row_max = max(row_max, uintBitsToFloat(F[rb + (c >> 2u)][c & 3u]));
          }
        } else {
          uint packed[BK / 2u];
          [[unroll]] for (uint c = 0u; c < BK; c += 2u) {
            vec2 pr;
            [[unroll]] for (uint u = 0u; u < 2u; ++u) {
              const uint key = start + c + u;
              const float s = uintBitsToFloat(F[rb + ((c + u) >> 2u)][(c + u) & 3u]);
              pr[u] = key >= lo && key <= pos ? exp(s - row_max) : 0.0;
            }
            // The sum of what the products will use: the probabilities rounded to fp16.
            const uint hp = packHalf2x16(pr);
            const vec2 r16 = unpackHalf2x16(hp);
            row_sum += r16.x + r16.y;
            packed[c >> 1u] = hp;
          }
          // The probabilities over the front of the same row (this lane read all of it).
          [[unroll]] for (uint c = 0u; c < BK / 2u; ++c) F[rb + (c >> 2u)][c & 3u] = packed[c];
        }
      }
      if (pass == 1u) {
        SG_SYNC();
        [[unroll]] for (uint kk = 0u; kk < BK / 16u; ++kk) {
          FRAG a, b;
          LOAD_F(a, fb + 2u * kk, LDF);
          const uint vb = (VROW + 16u * kk) * LDH;
          LOAD_H(b, vb, LDH, false);
          o0 = MULADD(a, b, o0);
          if (nks > 1u) { LOAD_H(b, vb + 2u, LDH, false); o1 = MULADD(a, b, o1); }
          if (nks > 2u) { LOAD_H(b, vb + 4u, LDH, false); o2 = MULADD(a, b, o2); }
          if (nks > 3u) { LOAD_H(b, vb + 6u, LDH, false); o3 = MULADD(a, b, o3); }
          if (nks > 4u) { LOAD_H(b, vb + 8u, LDH, false); o4 = MULADD(a, b, o4); }
          if (nks > 5u) { LOAD_H(b, vb + 10u, LDH, false); o5 = MULADD(a, b, o5); }
          if (nks > 6u) { LOAD_H(b, vb + 12u, LDH, false); o6 = MULADD(a, b, o6); }
          if (nks > 7u) { LOAD_H(b, vb + 14u, LDH, false); o7 = MULADD(a, b, o7); }
        }
      }
      SG_SYNC();  // F is read before the next tile's scores overwrite it
    }
  }

  if (lane < 16u) Lsum[qr] = row_sum;
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
