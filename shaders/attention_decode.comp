#version 450
// attention_decode: one query token at position pos (decode), split over the context
// (flash-decoding), with the q/k preparation of qkv_rope.comp fused in front:
//   q, k += bias (HAS_BIAS); q, k = RMSNorm_head(q, k) * norm (HAS_NORM); q, k = RoPE(pos)
//   kcache[pos][kvh] = k, vcache[pos][kvh] = v          (by the split that holds pos)
//   for the keys t of split s:  part[s][h] = sum_t e^(q_h.k_t/sqrt(hd) - m_s) v_t / l_s,
//                               ml[s][h] = (m_s, l_s),  l_s = sum_t e^(q_h.k_t/sqrt(hd) - m_s)
// fwht.comp's merge prologue (MODE 4) combines the splits before the output projection
// (merging in the last workgroup of each KV head to finish, with an atomic counter, measured
// 7-10 us slower per layer on the H200: bench/RESULTS.md).
// DIRECT = 1 (short contexts, one split: no merge dispatch): instead of part and ml, each query
// head's normalized output o_h into the output projection's prepared input, as fwht.comp MODE 4
// writes it for one split: blocks of OUT_B values, each times the orthonormal H_OUT_B
// (OUT_ROTATE; include/fwht_block.glsl), gemv-interleaved (pq_common.glsl). A block must lie in
// the workgroup's GQ heads (OUT_B divides HD, or HD divides OUT_B and OUT_B divides GQ * HD:
// Kernels::decode_direct_supported).
// Keys are [lo, pos] (lo > 0 with a sliding window), cut into min(splits, ceil(n / 64)) ranges
// of equal length; the other splits, empty, write (max, sum) = (-inf, 0), which the merge skips
// (a max of 0 would underflow every e^(m_s - max) at very negative scores). The split
// that holds pos reads the new key and value from shared memory, not back from the caches.
// One workgroup serves the GQ = n_heads / n_kv query heads of one KV head, so each key and
// value is read once for all of them.
// KV_BITS > 0, the PolarQuant KV cache (qkv_rope.comp's records): the new key and value are
// quantized (rotated in shared memory, Lloyd-Max codes, norm) and stored, then read back like the
// others; the query heads are rotated once, scores are taken against the codes (centroid times
// norm), values summed in the rotated basis and each split's output rotated back before it is
// written, so the merge is unchanged. DIRECT: where the blocks are the heads (OUT_B = HD,
// rotated) H o_h is that rotated sum / sqrt(HD), with no transform either way; else rotated back,
// then H_OUT_B.
// Buffers: 0 qkv: q [n_heads*hd] | k [n_kv*hd] | v [n_kv*hd] (fp32, the projections);
//          1 kcache; 2 vcache (qkv_rope.comp's layout: K word j = (k_j, k_{j+hd/2}), V word i =
//          (v_2i, v_2i+1), fp16); 3 inv_freq [hd/2]; 4 biases (q | k | v); 5 norms
//          (q_norm[hd] | k_norm[hd]); 6 step: uint pos at [0]; 7 part [splits][n_heads*hd]
//          fp32 (DIRECT: the prepared input, rotated_row_elems(n_heads * hd, OUT_B,
//          gemv-interleaved) fp32); 8 ml [splits][n_heads][2] fp32 (DIRECT: unused);
//          9 (KV_BITS) Lloyd-Max centroids | cell boundaries.
// Workgroup: 128 invocations. Scores: invocation t takes key tile_start + t for all GQ heads,
//          its whole key row loaded at once (16-byte loads where hd % 8 == 0). Values: VW words
//          (2 VW dimensions) of a value row per invocation, for all GQ heads, so that
//          128 / (hd / 2 / VW) keys are in flight; the key slots are summed at the end.
//          DIRECT: the 128 invocations transform 512 / OUT_B blocks at a time, 4 values each.
// Dispatch: (n_kv, splits); DIRECT: (n_kv, 1).
// Shared memory: hd/2 * (GQ + 1) * 8 + 128 * (GQ + 1) * 4 + GQ * 132 + SLOTS * GQ * hd * 4 + hd * 4 bytes,
// KV_BITS or DIRECT GQ * hd * 4 more, DIRECT 2 KiB more (Kernels::decode_shared_bytes checks the
// device's limit).
// Specialization: 0 HAS_BIAS, 1 HAS_NORM, 2 GQ (query heads per KV head, <= 16),
//          3 HD (head size, even, <= 256), 4 KV_BITS (0: fp16 cache; 4 or 8: HD a power of two),
//          5 DIRECT (0: the splits' part and ml; 1: the prepared input, splits = 1),
//          6 OUT_B (DIRECT: 64, 128 or 256), 7 OUT_ROTATE (DIRECT: 1 rotate each block, 0 not).
//          Push constants: head counts, window, splits, eps.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x = 128) in;
layout(constant_id = 0) const uint HAS_BIAS = 0u;
layout(constant_id = 1) const uint HAS_NORM = 0u;
layout(constant_id = 2) const uint GQ = 4u;
layout(constant_id = 3) const uint HD = 128u;
layout(constant_id = 4) const uint KV_BITS = 0u;
layout(constant_id = 5) const uint DIRECT = 0u;
layout(constant_id = 6) const uint OUT_B = 128u;
layout(constant_id = 7) const uint OUT_ROTATE = 1u;
const uint HALF = HD / 2u;
const uint NQK = GQ + 1u;                      // the query heads, then the new key
const uint PAIRS_PER_T = (GQ * HALF + 127u) / 128u;  // (head, V word) pairs per invocation at the end
const uint VW0 = GQ <= 4u ? 4u : GQ <= 8u ? 2u : 1u;  // value words per invocation: GQ * VW accumulators
const uint VW1 = HALF % 2u == 0u ? 2u : 1u;
const uint VW = HALF % VW0 == 0u ? VW0 : (VW1 < VW0 ? VW1 : VW0);
const uint TPR = HALF / VW;     // invocations per value row
const uint SLOTS = 128u / TPR;  // value rows (keys) in flight
const uint P1_IT = (NQK * HALF + 127u) / 128u;  // (head, RoPE pair)s per invocation in step 1
const uint VIF = 8u;            // fp16 value rows an invocation has in flight

layout(std430, binding = 0) readonly buffer QKV { float qkv[]; };
layout(std430, binding = 1) buffer KC { uint kc[]; };
layout(std430, binding = 1) readonly buffer KC4 { uvec4 kc4[]; };  // the same cache, 16 bytes at a time
layout(std430, binding = 2) buffer VC { uint vc[]; };
layout(std430, binding = 2) readonly buffer VC4 { uvec4 vc4[]; };
layout(std430, binding = 2) readonly buffer VC2 { uvec2 vc2[]; };
layout(std430, binding = 3) readonly buffer F { float inv_freq[]; };
layout(std430, binding = 4) readonly buffer Bias { float bias[]; };
layout(std430, binding = 5) readonly buffer Norm { float norm[]; };
layout(std430, binding = 6) readonly buffer Step { uint pos; } step;
layout(std430, binding = 7) writeonly buffer Part { float part[]; };  // DIRECT: the prepared input
layout(std430, binding = 8) writeonly buffer ML { float ml[]; };
layout(std430, binding = 9) readonly buffer KVCB { float kvcb[]; };
#include "pq_kv.glsl"
const uint RW = KV_BITS > 0u ? HD / KV_CPW + 1u : HD / 2u;  // words a position and KV head take
layout(push_constant) uniform Push { uint n_heads, n_kv, window, splits; float eps; } p;

shared vec2 qk[NQK * HALF];       // RoPE pairs (x_j, x_{j+hd/2}) of the query heads and the new key
                                  // (KV_BITS: then the rotated query heads' pairs (2i, 2i + 1))
// First the per-head sums of squares (HAS_NORM; 128 slots per head), then the tile's e^(s - m)
// per head (probs).
shared float scratch[(HAS_NORM != 0u ? NQK : GQ) * 128u];
#define ssq scratch
#define probs scratch
shared float red[GQ * 32u];       // per-subgroup partial max / sum (subgroups of >= 4 lanes)
shared float head_sh[GQ];         // per head: the softmax sum, for the final division
shared vec2 vred[SLOTS * GQ * HALF];  // the key slots' value sums, [slot][head][word]
shared uint knew[HALF], vnew[HALF];  // the new key and value as the caches store them (fp16 pairs)
// KV_BITS: the query heads rotated (sqrt(HD) H q), later the rotated outputs; the centroids; the
// vector being quantized. DIRECT: the outputs (KV_BITS: rotated) in qrot; fwht_block's exchange.
shared float qrot[KV_BITS > 0u || DIRECT != 0u ? GQ * HD : 1u];
shared float cbs[KV_BITS > 0u ? 1u << KV_BITS : 1u];
shared float hvq[KV_BITS > 0u ? HD : 1u];
shared vec4 fwht_sh[DIRECT != 0u ? 128u : 1u];
#include "pq_common.glsl"
#include "fwht_block.glsl"

PQ_KV_DEFINE_FWHT(fwht_qrot, qrot, 128u)  // KV_BITS: each head's vector times sqrt(HD) H
PQ_KV_DEFINE_FWHT(fwht_hvq, hvq, 128u)
PQ_KV_DEFINE_PACK(pack_hvq, hvq)

// Max (is_max) or sum over the workgroup of one value per head.
void wg_reduce(inout float vals[GQ], bool is_max) {
  [[unroll]] for (uint g = 0u; g < GQ; ++g) {
    const float r = is_max ? subgroupMax(vals[g]) : subgroupAdd(vals[g]);
    if (subgroupElect()) red[g * 32u + gl_SubgroupID] = r;
  }
  barrier();
  [[unroll]] for (uint g = 0u; g < GQ; ++g) {
    float r = red[g * 32u];
    for (uint i = 1u; i < gl_NumSubgroups; ++i) r = is_max ? max(r, red[g * 32u + i]) : r + red[g * 32u + i];
    vals[g] = r;
  }
  barrier();  // red[] is reused by the next call
}

void attend(uint kvh, uint split, uint t, uint pos, uint first, uint last);
void write_direct(uint kvh, uint t);

// KV_BITS: hvq (written by the workgroup) as a PolarQuant record at word `rec` of the key cache
// (to_k) or the value cache, as qkv_rope.comp stores it, and into knew / vnew (RW <= HALF words),
// from which this workgroup reads the new position.
void store_record(bool to_k, uint rec, uint t) {
  barrier();
  float ss[GQ];
  [[unroll]] for (uint g = 0u; g < GQ; ++g) ss[g] = 0.0;
  for (uint i = t; i < HD; i += 128u) ss[0] += hvq[i] * hvq[i];
  wg_reduce(ss, false);
  const float norm = max(sqrt(ss[0]), 1e-10);
  const float stored = pq_kv_stored_norm(norm);
  const float divisor = stored > 0.0 ? stored : norm;
  fwht_hvq(1u, HD, t);
  for (uint w = t; w + 1u < RW; w += 128u) {
    const uint packed = pack_hvq(w, divisor);
    if (to_k) kc[rec + w] = knew[w] = packed;
    else vc[rec + w] = vnew[w] = packed;
  }
  if (t == 0u) {
    if (to_k) kc[rec + RW - 1u] = knew[RW - 1u] = floatBitsToUint(stored);
    else vc[rec + RW - 1u] = vnew[RW - 1u] = floatBitsToUint(stored);
  }
  barrier();
}

void main() {
  const uint kvh = gl_WorkGroupID.x, split = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
  const uint pos = step.pos;
  const uint lo = (p.window > 0u && pos + 1u > p.window) ? pos + 1u - p.window : 0u;
  const uint n = pos + 1u - lo;
  // At least 64 keys a split: at short contexts most splits are empty and return at once.
  const uint used = min(p.splits, max(1u, (n + 63u) / 64u));
  const uint len = (n + used - 1u) / used;
  const uint first = lo + split * len;
  const uint last = split < used ? min(first + len, pos + 1u) : first;  // exclusive
  if (first >= last) {  // no key in this split (short contexts): (-inf, 0), nothing for the merge
    if (t < GQ) {
      ml[(split * p.n_heads + kvh * GQ + t) * 2u] = -1.0 / 0.0;
      ml[(split * p.n_heads + kvh * GQ + t) * 2u + 1u] = 0.0;
    }
  } else {
    attend(kvh, split, t, pos, first, last);
  }
}

// Split `split` of KV head kvh: keys [first, last), at least one; writes part[] and ml[].
void attend(uint kvh, uint split, uint t, uint pos, uint first, uint last) {
  const uint q_dim = p.n_heads * HD, kv_dim = p.n_kv * HD;
  const bool has_pos = last == pos + 1u;  // this split appends the new key and value

  // 1. q (and, in the split that holds pos, k): bias, head norm, RoPE; into shared memory. All of
  // an invocation's loads first (one latency, not one per pair).
  vec2 xs[P1_IT];
  [[unroll]] for (uint it = 0u; it < P1_IT; ++it) {
    const uint i = t + 128u * it, hh = i / HALF, j = i % HALF;
    const bool is_q = hh < GQ;
    xs[it] = vec2(0.0);
    if (i < NQK * HALF && (is_q || has_pos)) {
      const uint base = is_q ? (kvh * GQ + hh) * HD : kvh * HD;
      const uint at = is_q ? base : q_dim + base;
      xs[it] = vec2(qkv[at + j], qkv[at + j + HALF]);
      if (HAS_BIAS != 0u) xs[it] += vec2(bias[at + j], bias[at + j + HALF]);
    }
  }
  [[unroll]] for (uint it = 0u; it < P1_IT; ++it) {
    const uint i = t + 128u * it, hh = i / HALF, j = i % HALF;
    if (i < NQK * HALF) {
      qk[i] = xs[it];
      if (HAS_NORM != 0u) ssq[hh * 128u + j] = dot(xs[it], xs[it]);
    }
  }
  if (HAS_NORM != 0u) {
    for (uint i = t; i < NQK * 128u; i += 128u)
      if (i % 128u >= HALF) ssq[i] = 0.0;
    barrier();
    for (uint st = 64u; st > 0u; st >>= 1u) {  // tree sum per head over 128 slots
      for (uint i = t; i < NQK * 128u; i += 128u)
        if (i % 128u < st) ssq[i] += ssq[i + st];
      barrier();
    }
  }
  barrier();
  for (uint i = t; i < NQK * HALF; i += 128u) {
    const uint hh = i / HALF, j = i % HALF;
    vec2 x = qk[i];
    if (HAS_NORM != 0u) {
      const uint nb = hh < GQ ? 0u : HD;
      x *= inversesqrt(ssq[hh * 128u] / float(HD) + p.eps) * vec2(norm[nb + j], norm[nb + j + HALF]);
    }
    const float ang = float(pos) * inv_freq[j];
    const float c = cos(ang), s = sin(ang);
    x = vec2(x.x * c - x.y * s, x.y * c + x.x * s);
    qk[i] = x;
    if (KV_BITS > 0u) {
      if (hh == GQ) {
        hvq[j] = x.x;
        hvq[j + HALF] = x.y;
      } else {
        qrot[hh * HD + j] = x.x;
        qrot[hh * HD + j + HALF] = x.y;
      }
    } else if (hh == GQ && has_pos) {
      knew[j] = packHalf2x16(x);
      kc[(pos * p.n_kv + kvh) * HALF + j] = knew[j];
    }
  }
  if (KV_BITS > 0u) {
    for (uint i = t; i < (1u << KV_BITS); i += 128u) cbs[i] = kvcb[i];
    fwht_qrot(GQ, HD, t);  // qrot = sqrt(HD) H q per head
    // The rotated queries again as pairs in qk (free in this path from here on): the scores read
    // two dimensions a shared load.
    for (uint i = t; i < GQ * HALF; i += 128u) qk[i] = vec2(qrot[2u * i], qrot[2u * i + 1u]);
    if (has_pos) {  // the new key and value as records (the caches, and knew / vnew for this workgroup)
      const uint rec = (pos * p.n_kv + kvh) * RW;
      store_record(true, rec, t);
      for (uint i = t; i < HD; i += 128u)
        hvq[i] = qkv[q_dim + kv_dim + kvh * HD + i] + (HAS_BIAS != 0u ? bias[q_dim + kv_dim + kvh * HD + i] : 0.0);
      store_record(false, rec, t);
    }
  } else if (has_pos) {
    for (uint i = t; i < HALF; i += 128u) {
      vec2 x = vec2(qkv[q_dim + kv_dim + kvh * HD + 2u * i], qkv[q_dim + kv_dim + kvh * HD + 2u * i + 1u]);
      if (HAS_BIAS != 0u) x += vec2(bias[q_dim + kv_dim + kvh * HD + 2u * i], bias[q_dim + kv_dim + kvh * HD + 2u * i + 1u]);
      vnew[i] = packHalf2x16(x);
      vc[(pos * p.n_kv + kvh) * HALF + i] = vnew[i];
    }
  }
  barrier();  // knew[], vnew[]: the new position is read from shared memory, not from the caches

  // 2. Keys in tiles of 128 with an online softmax per head.
  const float scale = inversesqrt(float(HD));
  float run_max[GQ], run_sum[GQ];
  vec2 acc[GQ * VW];  // [head][word] of this invocation's value column
  [[unroll]] for (uint g = 0u; g < GQ; ++g) { run_max[g] = -1.0 / 0.0; run_sum[g] = 0.0; }
  [[unroll]] for (uint a = 0u; a < GQ * VW; ++a) acc[a] = vec2(0.0);
  const uint col = t % TPR, slot = t / TPR;  // value words col * VW .., keys slot, slot + SLOTS, ...
  for (uint start = first; start < last; start += 128u) {
    const uint key = start + t;
    float s[GQ];
    [[unroll]] for (uint g = 0u; g < GQ; ++g) s[g] = -1.0 / 0.0;
    if (key < last && KV_BITS > 0u) {
      const uint kb = (key * p.n_kv + kvh) * RW;
      float d[GQ];
      [[unroll]] for (uint g = 0u; g < GQ; ++g) d[g] = 0.0;
      for (uint w0 = 0u; w0 + 1u < RW; w0 += 8u) {  // eight record words' loads in flight
        uint words[8];
        [[unroll]] for (uint u = 0u; u < 8u; ++u)
          words[u] = w0 + u + 1u >= RW ? 0u : key == pos ? knew[w0 + u] : kc[kb + w0 + u];
        [[unroll]] for (uint u = 0u; u < 8u; ++u) {
          if (w0 + u + 1u < RW) {
            [[unroll]] for (uint k = 0u; k < KV_CPW; k += 2u) {
              const vec2 c = vec2(cbs[pq_kv_code_in(words[u], k)], cbs[pq_kv_code_in(words[u], k + 1u)]);
              [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                const vec2 qq = qk[(g * HD + (w0 + u) * KV_CPW + k) / 2u];
                d[g] = fma(qq.x, c.x, fma(qq.y, c.y, d[g]));
              }
            }
          }
        }
      }
      const float f = uintBitsToFloat(key == pos ? knew[RW - 1u] : kc[kb + RW - 1u]) / float(HD) * scale;
      [[unroll]] for (uint g = 0u; g < GQ; ++g) s[g] = d[g] * f;
    } else if (key < last) {
      const uint kb = (key * p.n_kv + kvh) * HALF;
      vec2 d[GQ];
      [[unroll]] for (uint g = 0u; g < GQ; ++g) d[g] = vec2(0.0);
      if (HALF % 4u == 0u) {
        for (uint j0 = 0u; j0 < HALF; j0 += 64u) {  // up to 16 loads of 16 bytes in flight
          uvec4 kw[16];
          [[unroll]] for (uint u = 0u; u < 16u; ++u) {
            const uint j = j0 + 4u * u;
            if (j >= HALF) kw[u] = uvec4(0u);
            else if (key == pos) kw[u] = uvec4(knew[j], knew[j + 1u], knew[j + 2u], knew[j + 3u]);
            else kw[u] = kc4[(kb + j0) / 4u + u];
          }
          [[unroll]] for (uint u = 0u; u < 16u; ++u) {
            if (j0 + 4u * u < HALF) {
              [[unroll]] for (uint e = 0u; e < 4u; ++e) {
                const vec2 kk = unpackHalf2x16(kw[u][e]);
                [[unroll]] for (uint g = 0u; g < GQ; ++g) d[g] = fma(qk[g * HALF + j0 + 4u * u + e], kk, d[g]);
              }
            }
          }
        }
      } else {
        for (uint j = 0u; j < HALF; j += 4u) {  // four words (eight values) per step
          uint kw[4];
          [[unroll]] for (uint u = 0u; u < 4u; ++u) kw[u] = j + u >= HALF ? 0u : key == pos ? knew[j + u] : kc[kb + j + u];
          [[unroll]] for (uint u = 0u; u < 4u; ++u) {
            if (j + u < HALF) {
              const vec2 kk = unpackHalf2x16(kw[u]);
              [[unroll]] for (uint g = 0u; g < GQ; ++g) d[g] = fma(qk[g * HALF + j + u], kk, d[g]);
            }
          }
        }
      }
      [[unroll]] for (uint g = 0u; g < GQ; ++g) s[g] = (d[g].x + d[g].y) * scale;
    }
    float tile_max[GQ];
    [[unroll]] for (uint g = 0u; g < GQ; ++g) tile_max[g] = s[g];
    wg_reduce(tile_max, true);
    float e_sum[GQ], rescale[GQ];
    [[unroll]] for (uint g = 0u; g < GQ; ++g) {
      const float new_max = max(run_max[g], tile_max[g]);
      const float e = key < last ? exp(s[g] - new_max) : 0.0;
      probs[g * 128u + t] = e;
      e_sum[g] = e;
      rescale[g] = exp(run_max[g] - new_max);  // 0 on the first tile (run_max = -inf)
      run_max[g] = new_max;
    }
    wg_reduce(e_sum, false);  // its barriers also publish probs[]
    const uint nk = min(128u, last - start);
    [[unroll]] for (uint g = 0u; g < GQ; ++g)
      [[unroll]] for (uint w = 0u; w < VW; ++w) acc[g * VW + w] *= rescale[g];
    if (slot < SLOTS && KV_BITS > 0u) {  // dims 2 (col VW + w), + 1 of each value, rotated basis
      for (uint i0 = slot; i0 < nk; i0 += 4u * SLOTS) {  // four value records in flight
        uint words[4][VW];
        float vn[4];
        [[unroll]] for (uint u = 0u; u < 4u; ++u) {
          const uint i = min(i0 + u * SLOTS, nk - 1u);
          const uint vb = ((start + i) * p.n_kv + kvh) * RW;
          const bool is_new = start + i == pos;
          vn[u] = uintBitsToFloat(is_new ? vnew[RW - 1u] : vc[vb + RW - 1u]);
          [[unroll]] for (uint w = 0u; w < VW; ++w) {
            const uint wi = 2u * (col * VW + w) / KV_CPW;
            words[u][w] = is_new ? vnew[wi] : vc[vb + wi];
          }
        }
        [[unroll]] for (uint u = 0u; u < 4u; ++u) {
          const uint i = i0 + u * SLOTS;
          if (i < nk) {
            [[unroll]] for (uint w = 0u; w < VW; ++w) {
              const uint d0 = 2u * (col * VW + w);
              const vec2 vv = vec2(cbs[pq_kv_code_in(words[u][w], d0)], cbs[pq_kv_code_in(words[u][w], d0 + 1u)]) * vn[u];
              [[unroll]] for (uint g = 0u; g < GQ; ++g) acc[g * VW + w] = fma(vec2(probs[g * 128u + i]), vv, acc[g * VW + w]);
            }
          }
        }
      }
    } else if (slot < SLOTS) {
      const uint vstride = p.n_kv * HALF;  // words from one position to the next
      const uint vb = (start * p.n_kv + kvh) * HALF + col * VW;
      for (uint i0 = slot; i0 < nk; i0 += VIF * SLOTS) {  // VIF value rows in flight
        uvec4 vw[VIF];
        [[unroll]] for (uint u = 0u; u < VIF; ++u) {
          const uint i = min(i0 + u * SLOTS, nk - 1u);
          const uint at = vb + i * vstride;
          if (start + i == pos) {
            vw[u] = uvec4(vnew[col * VW], 0u, 0u, 0u);
            [[unroll]] for (uint w = 1u; w < VW; ++w) vw[u][w] = vnew[col * VW + w];
          } else if (VW == 4u) vw[u] = vc4[at / 4u];
          else if (VW == 2u) vw[u] = uvec4(vc2[at / 2u], 0u, 0u);
          else vw[u] = uvec4(vc[at], 0u, 0u, 0u);
        }
        [[unroll]] for (uint u = 0u; u < VIF; ++u) {
          const uint i = i0 + u * SLOTS;
          if (i < nk) {
            [[unroll]] for (uint w = 0u; w < VW; ++w) {
              const vec2 vv = unpackHalf2x16(vw[u][w]);
              [[unroll]] for (uint g = 0u; g < GQ; ++g) acc[g * VW + w] = fma(vec2(probs[g * 128u + i]), vv, acc[g * VW + w]);
            }
          }
        }
      }
    }
    [[unroll]] for (uint g = 0u; g < GQ; ++g) run_sum[g] = run_sum[g] * rescale[g] + e_sum[g];
    barrier();  // probs[] is rewritten by the next tile
  }
  [[unroll]] for (uint g = 0u; g < GQ; ++g) {
    if (t == g) {
      head_sh[g] = run_sum[g];
      if (DIRECT == 0u) {
        ml[(split * p.n_heads + kvh * GQ + g) * 2u] = run_max[g];
        ml[(split * p.n_heads + kvh * GQ + g) * 2u + 1u] = run_sum[g];
      }
    }
  }
  barrier();

  // 3. The key slots summed, then this split's normalized output and its (max, sum) per head
  // (DIRECT: the output prepared for the output projection).
  if (slot < SLOTS)
    [[unroll]] for (uint g = 0u; g < GQ; ++g)
      [[unroll]] for (uint w = 0u; w < VW; ++w) vred[(slot * GQ + g) * HALF + col * VW + w] = acc[g * VW + w];
  barrier();
  [[unroll]] for (uint a = 0u; a < PAIRS_PER_T; ++a) {
    const uint idx = t + a * 128u;
    if (idx < GQ * HALF) {
      const uint g = idx / HALF, wd = idx % HALF;
      vec2 sum = vec2(0.0);
      for (uint sl = 0u; sl < SLOTS; ++sl) sum += vred[(sl * GQ + g) * HALF + wd];
      if (KV_BITS > 0u || DIRECT != 0u) {
        qrot[g * HD + 2u * wd] = sum.x / head_sh[g];
        qrot[g * HD + 2u * wd + 1u] = sum.y / head_sh[g];
      } else {
        const uint o = split * q_dim + (kvh * GQ + g) * HD + 2u * wd;
        part[o] = sum.x / head_sh[g];
        part[o + 1u] = sum.y / head_sh[g];
      }
    }
  }
  if (DIRECT != 0u) {
    write_direct(kvh, t);
  } else if (KV_BITS > 0u) {  // back from the rotated basis: (sqrt(HD) H sum) / HD, the values' 1/sqrt(HD) included
    fwht_qrot(GQ, HD, t);
    for (uint i = t; i < GQ * HD; i += 128u) part[split * q_dim + kvh * GQ * HD + i] = qrot[i] / float(HD);
  }
}

// DIRECT: the workgroup's GQ outputs (qrot; KV_BITS: in the rotated basis, sqrt(HD) H o_h) into
// the prepared input, block by block (OUT_B values, OUT_B / 4 invocations each), as fwht.comp
// MODE 4 writes them. The workgroup's heads start at a block boundary (kvh * GQ * HD, a multiple
// of OUT_B), and GQ * HD is a multiple of OUT_B: every block is whole.
void write_direct(uint kvh, uint t) {
  const bool in_basis = KV_BITS > 0u && OUT_ROTATE != 0u && OUT_B == HD;  // H o_h = qrot / sqrt(HD)
  float scale = 1.0;
  if (KV_BITS > 0u && !in_basis) {
    fwht_qrot(GQ, HD, t);  // sqrt(HD) H qrot = HD o_h
    scale = 1.0 / float(HD);
  } else {
    if (in_basis) scale = inversesqrt(float(HD));
    barrier();  // qrot is complete
  }
  const uint nblk = GQ * HD / OUT_B, per_pass = 512u / OUT_B;
  const uint lt = fwht_thread_index(), sub = lt / (OUT_B / 4u), bt = lt % (OUT_B / 4u);
  for (uint b0 = 0u; b0 < nblk; b0 += per_pass) {  // uniform: fwht_block has barriers
    const uint blk = b0 + sub, at = blk * OUT_B + 4u * bt;
    vec4 v = vec4(0.0);
    if (blk < nblk) v = vec4(qrot[at], qrot[at + 1u], qrot[at + 2u], qrot[at + 3u]) * scale;
    if (OUT_ROTATE != 0u && !in_basis) v = fwht_block(v, bt, OUT_B, sub * (OUT_B / 4u));
    if (blk < nblk)
      [[unroll]] for (uint k = 0u; k < 4u; ++k) part[gemv_interleaved_index(kvh * GQ * HD + at + k)] = v[k];
  }
}
