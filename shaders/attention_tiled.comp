#version 450
// attention_tiled: causal grouped-query attention of prefill, as attention.comp computes it
// (same buffers, same result), with a tile of BQ queries of one head per workgroup, so that
// every key and value read from the cache serves BQ queries instead of one:
//   out[m][h] = sum_t softmax_t(q_m,h . k_t,kvh / sqrt(hd)) v_t,kvh,  t in [lo(pos), pos]
// pos = pos0 + m; lo = 0, or pos - window + 1 with a sliding window; kvh = h / (n_heads / n_kv).
// Keys go through shared memory BK at a time (fp32, converted from the fp16 cache), with an
// online softmax (running max and sum per query), so memory stays O(tile) at any context.
// Buffers: 0 q [M][n_heads*hd] fp32 (after qkv_rope); 1 kcache; 2 vcache (qkv_rope.comp's
//          layout: key word j holds dims j and j + hd/2, value word j dims 2j and 2j + 1);
//          3 out [M][n_heads*hd] fp32; 4 step: uint pos0 at [0].
// Workgroup: 128 invocations, BQ = 32 queries, LPQ = 4 consecutive invocations per query (lanes
//          g of one subgroup: subgroups of at least 8 invocations, which Kernels::attention
//          checks). Scores: lane g of a query takes keys g, g + LPQ, ... of
//          the tile (KPT of them), the row's max and sum are reduced by subgroup xor-shuffles
//          over its LPQ lanes, and each probability reaches the other lanes by a shuffle.
//          Output: lane g accumulates dims 4 g + 16 j .. + 3 (j < 8, vec4).
//          Each invocation loads its words of a key / value tile into registers before the
//          barrier that frees the previous tile, then stores them.
//          Shared rows are 132 floats (vec4 reads of 4 neighbouring rows fall in distinct
//          banks); dims past hd read as zeros. Shared memory: (32 + 2 BK) rows, 25 KiB at
//          BK = 8, 33 KiB at 16.
// Dispatch: (n_heads, ceil(M / 32)).
// Specialization: 0 BK (keys per tile: 8 or 16). hd <= 128 (longer heads: attention.comp).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x = 128) in;
layout(constant_id = 0) const uint BK = 16u;  // keys per tile
const uint HDMAX = 128u;
const uint BQ = 32u;               // queries per workgroup
const uint LPQ = 128u / BQ;        // lanes per query
const uint KPT = BK / LPQ;         // keys per lane and tile
const uint NJ = HDMAX / (4u * LPQ);  // output vec4 per lane
const uint RS = HDMAX / 4u + 1u;   // shared row stride in vec4
const uint TILE_IT = BK * (HDMAX / 2u) / 128u;  // a tile's key (and value) words per invocation

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer KC { uint kc[]; };
layout(std430, binding = 2) readonly buffer VC { uint vc[]; };
layout(std430, binding = 3) writeonly buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer Step { uint pos0; } step;
layout(push_constant) uniform Push { uint n_heads, n_kv, hd, window, m; } p;

shared vec4 Qs[BQ * RS];  // the queries, times 1/sqrt(hd)
shared vec4 Ks[BK * RS];
shared vec4 Vs[BK * RS];

// The lowest key position a query at `pos` sees.
uint key_lo(uint pos) { return p.window > 0u && pos + 1u > p.window ? pos + 1u - p.window : 0u; }

// Sum (or max) over the LPQ lanes of this lane's query.
float group_sum(float v) {
  [[unroll]] for (uint s = 1u; s < LPQ; s <<= 1u) v += subgroupShuffleXor(v, s);
  return v;
}
float group_max(float v) {
  [[unroll]] for (uint s = 1u; s < LPQ; s <<= 1u) v = max(v, subgroupShuffleXor(v, s));
  return v;
}

void main() {
  const uint h = gl_WorkGroupID.x, t = gl_LocalInvocationID.x;
  const uint qi = t / LPQ, g = t % LPQ;
  const uint hd = p.hd, half_hd = hd / 2u, hd4 = (hd + 3u) / 4u;
  const uint kvh = h / (p.n_heads / p.n_kv);
  const uint m0 = gl_WorkGroupID.y * BQ;
  const uint m = min(m0 + qi, p.m - 1u);  // queries past M repeat the last one, unwritten
  const uint pos = step.pos0 + m, lo = key_lo(pos);
  const uint p_first = step.pos0 + m0, p_last = step.pos0 + min(m0 + BQ, p.m) - 1u;
  const float scale = inversesqrt(float(hd));
  const uint lane0 = gl_SubgroupInvocationID & ~(LPQ - 1u);  // this query's first lane

  // Queries into shared memory; zeros past hd in Qs and Ks (the dot products run over hd4 vec4).
  for (uint i = t; i < BQ * RS; i += 128u) {
    const uint r = i / RS, c = i % RS, mq = min(m0 + r, p.m - 1u);
    vec4 v = vec4(0.0);
    [[unroll]] for (uint e = 0u; e < 4u; ++e)
      if (4u * c + e < hd) v[e] = q[(mq * p.n_heads + h) * hd + 4u * c + e] * scale;
    Qs[i] = v;
  }
  for (uint i = t; i < BK * RS; i += 128u) Ks[i] = vec4(0.0);

  float run_max = -1.0 / 0.0, run_sum = 0.0;
  vec4 acc[NJ];
  [[unroll]] for (uint j = 0u; j < NJ; ++j) acc[j] = vec4(0.0);

  for (uint start = key_lo(p_first); start <= p_last; start += BK) {
    // Keys and values start .. start + BK - 1 (zeros past p_last: never written to the cache),
    // each invocation's words all loaded before the barrier and its first store (a loop storing
    // each word as it came waited on one load at a time).
    uint kw[TILE_IT], vw[TILE_IT];
    [[unroll]] for (uint it = 0u; it < TILE_IT; ++it) {
      const uint i = t + 128u * it, kj = i / half_hd, j = i % half_hd, key = start + kj;
      kw[it] = 0u;
      vw[it] = 0u;
      if (i < BK * half_hd && key <= p_last) {
        const uint w = (key * p.n_kv + kvh) * half_hd + j;
        kw[it] = kc[w];
        vw[it] = vc[w];
      }
    }
    barrier();  // the previous tile is consumed (and, the first time, Qs and the zeros are stored)
    [[unroll]] for (uint it = 0u; it < TILE_IT; ++it) {
      const uint i = t + 128u * it, kj = i / half_hd, j = i % half_hd;
      if (i < BK * half_hd) {
        const vec2 kk = unpackHalf2x16(kw[it]), vv = unpackHalf2x16(vw[it]);
        Ks[kj * RS + j / 4u][j % 4u] = kk.x;
        Ks[kj * RS + (j + half_hd) / 4u][(j + half_hd) % 4u] = kk.y;
        Vs[kj * RS + (2u * j) / 4u][(2u * j) % 4u] = vv.x;
        Vs[kj * RS + (2u * j + 1u) / 4u][(2u * j + 1u) % 4u] = vv.y;
      }
    }
    barrier();

    // Scores of this lane's keys g + LPQ u.
    float s[KPT];
    [[unroll]] for (uint u = 0u; u < KPT; ++u) s[u] = 0.0;
    for (uint c = 0u; c < hd4; ++c) {
      const vec4 qv = Qs[qi * RS + c];
      [[unroll]] for (uint u = 0u; u < KPT; ++u) s[u] += dot(qv, Ks[(g + LPQ * u) * RS + c]);
    }
    float tile_max = -1.0 / 0.0;
    [[unroll]] for (uint u = 0u; u < KPT; ++u) {
      const uint key = start + g + LPQ * u;
      if (key > pos || key < lo) s[u] = -1.0 / 0.0;
      tile_max = max(tile_max, s[u]);
    }
    const float new_max = max(run_max, group_max(tile_max));
    const float ref = new_max == -1.0 / 0.0 ? 0.0 : new_max;  // no key of this query yet
    float tile_sum = 0.0;
    [[unroll]] for (uint u = 0u; u < KPT; ++u) {
      s[u] = exp(s[u] - ref);  // exp(-inf) = 0 for masked keys
      tile_sum += s[u];
    }
    const float rescale = exp(run_max - ref);
    run_sum = run_sum * rescale + group_sum(tile_sum);
    run_max = new_max;
    [[unroll]] for (uint j = 0u; j < NJ; ++j) acc[j] *= rescale;

    // acc += sum_k p_k v_k; p_k lives in lane k % LPQ of this query, as its s[k / LPQ].
    [[unroll]] for (uint u = 0u; u < KPT; ++u) {
      [[unroll]] for (uint gg = 0u; gg < LPQ; ++gg) {
        const float pk = subgroupShuffle(s[u], lane0 + gg);
        const uint kj = gg + LPQ * u;
        [[unroll]] for (uint j = 0u; j < NJ; ++j)
          if (4u * (g + LPQ * j) < hd) acc[j] = fma(vec4(pk), Vs[kj * RS + g + LPQ * j], acc[j]);
      }
    }
  }

  if (m0 + qi < p.m) {
    const uint ob = ((m0 + qi) * p.n_heads + h) * hd;
    const float inv = 1.0 / run_sum;
    [[unroll]] for (uint j = 0u; j < NJ; ++j)
      [[unroll]] for (uint e = 0u; e < 4u; ++e) {
        const uint d = 4u * (g + LPQ * j) + e;
        if (d < hd) o[ob + d] = acc[j][e] * inv;
      }
  }
}
