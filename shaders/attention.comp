#version 450
// attention: causal grouped-query attention of M queries at positions pos0 .. pos0+M-1 over
// the fp16 KV cache, one (head, query) per workgroup, keys in tiles of 128 with an online
// softmax (running max and sum), so memory stays O(tile) however long the context:
//   out[m][h] = sum_t softmax_t(q_m,h . k_t,kvh / sqrt(hd)) v_t,kvh,  t in [lo, pos0 + m]
// with kvh = h / (n_heads / n_kv) and lo = 0, or pos - window + 1 with a sliding window.
// PER_ROW (continuous batching): query m belongs to the sequence of slot[m] at position pos[m],
// its keys [lo, pos[m]] are those of that sequence's cache region (positions from slot * max_ctx).
// KV_BITS > 0 (the PolarQuant KV cache, qkv_rope.comp's records): each query is rotated once by
// the Walsh-Hadamard transform of its head, so q . k = (H q) . (H k) is computed against the
// keys' codes (centroid times norm / sqrt(hd)) without rotating any key back; the values are
// summed in the rotated basis and the output rotated back once.
// Buffers: 0 q [M][n_heads*hd] fp32 (after qkv_rope); 1 kcache; 2 vcache (qkv_rope.comp's
//          layout); 3 out [M][n_heads*hd] fp32; 4 step: uint pos0 at [0]; PER_ROW: [M] (pos,
//          slot) pairs of uints; 5 (KV_BITS) the Lloyd-Max centroids [2^KV_BITS] (and the cell
//          boundaries, unused here).
// Workgroup: 128 invocations. Scores: invocation t takes key tile_start + t. Output:
//          invocation t accumulates dimensions t and t + 128 (hd <= 256).
// Dispatch: (n_heads, M).
// Specialization: 0 PER_ROW, 1 KV_BITS (0: fp16 cache; 4 or 8: hd a power of two <= 256).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x = 128) in;
layout(constant_id = 0) const uint PER_ROW = 0u;
layout(constant_id = 1) const uint KV_BITS = 0u;
layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer KC { uint kc[]; };
layout(std430, binding = 2) readonly buffer VC { uint vc[]; };
layout(std430, binding = 3) writeonly buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer Step { uint step[]; };
layout(std430, binding = 5) readonly buffer KVCB { float kvcb[]; };
#include "pq_kv.glsl"
layout(push_constant) uniform Push { uint n_heads, n_kv, hd, window, max_ctx; } p;

shared float qs[256];
shared float probs[128];
shared float red[128];
shared float cbs[KV_BITS > 0u ? 1u << KV_BITS : 1u];  // KV_BITS: the centroids

PQ_KV_DEFINE_FWHT(fwht_qs, qs, 128u)  // KV_BITS: qs[0..hd) times sqrt(hd) H, in place

float wg_max(float v) {
  v = subgroupMax(v);
  barrier();
  if (subgroupElect()) red[gl_SubgroupID] = v;
  barrier();
  float r = red[0];
  for (uint i = 1u; i < gl_NumSubgroups; ++i) r = max(r, red[i]);
  return r;
}

float wg_sum(float v) {
  v = subgroupAdd(v);
  barrier();
  if (subgroupElect()) red[gl_SubgroupID] = v;
  barrier();
  float r = 0.0;
  for (uint i = 0u; i < gl_NumSubgroups; ++i) r += red[i];
  return r;
}

void main() {
  const uint h = gl_WorkGroupID.x, m = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
  const uint hd = p.hd, half_hd = hd / 2u;
  const uint kvh = h / (p.n_heads / p.n_kv);
  const uint pos = PER_ROW != 0u ? step[2u * m] : step[0] + m;
  const uint lo = (p.window > 0u && pos + 1u > p.window) ? pos + 1u - p.window : 0u;
  const uint base = PER_ROW != 0u ? step[2u * m + 1u] * p.max_ctx : 0u;  // the sequence's first cached position
  const float scale = inversesqrt(float(hd));
  for (uint j = t; j < hd; j += 128u) qs[j] = q[(m * p.n_heads + h) * hd + j];
  // PolarQuant records: W words per (position, KV head), KV_CPW codes a word, the norm last.
  const uint W = KV_BITS > 0u ? hd / KV_CPW + 1u : half_hd;
  if (KV_BITS > 0u) {
    for (uint i = t; i < (1u << KV_BITS); i += 128u) cbs[i] = kvcb[i];
    fwht_qs(1u, hd, t);  // qs = sqrt(hd) H q
  }
  barrier();

  float run_max = -1.0 / 0.0, run_sum = 0.0;
  float acc0 = 0.0, acc1 = 0.0;  // output dims t and t + 128
  for (uint start = lo; start <= pos; start += 128u) {
    const uint key = start + t;
    float s = -1.0 / 0.0;
    if (key <= pos && KV_BITS > 0u) {
      // (H q) . (H k) with H k = centroids * norm / sqrt(hd) and qs = sqrt(hd) H q.
      const uint kb = ((base + key) * p.n_kv + kvh) * W;
      vec4 d = vec4(0.0);
      for (uint w = 0u; w + 1u < W; ++w) {
        const uint word = kc[kb + w];
        for (uint k = 0u; k < KV_CPW; ++k) d[k & 3u] = fma(qs[w * KV_CPW + k], cbs[pq_kv_code_in(word, k)], d[k & 3u]);
      }
      s = ((d.x + d.y) + (d.z + d.w)) * uintBitsToFloat(kc[kb + W - 1u]) / float(hd) * scale;
    } else if (key <= pos) {
      const uint kb = ((base + key) * p.n_kv + kvh) * half_hd;
      vec4 d = vec4(0.0);  // four independent chains: several loads in flight (hd is even, >= 2)
      uint j = 0u;
      for (; j + 2u <= half_hd; j += 2u) {
        const vec2 k0 = unpackHalf2x16(kc[kb + j]), k1 = unpackHalf2x16(kc[kb + j + 1u]);
        d = fma(vec4(qs[j], qs[j + half_hd], qs[j + 1u], qs[j + 1u + half_hd]), vec4(k0, k1), d);
      }
      if (j < half_hd) {
        const vec2 k0 = unpackHalf2x16(kc[kb + j]);
        d.xy = fma(vec2(qs[j], qs[j + half_hd]), k0, d.xy);
      }
      s = ((d.x + d.y) + (d.z + d.w)) * scale;
    }
    const float tile_max = wg_max(s);
    const float new_max = max(run_max, tile_max);
    const float e = key <= pos ? exp(s - new_max) : 0.0;
    const float rescale = exp(run_max - new_max);  // 0 on the first tile (run_max = -inf)
    probs[t] = e;
    run_sum = run_sum * rescale + wg_sum(e);  // wg_sum's barriers also publish probs[]
    run_max = new_max;
    acc0 *= rescale;
    acc1 *= rescale;
    const uint n = min(128u, pos + 1u - start);
    if (KV_BITS > 0u) {  // acc += sum_i probs[i] * norm_i * centroid(code_i, dim), rotated basis
      const uint vstride = p.n_kv * W, vb0 = ((base + start) * p.n_kv + kvh) * W;
      for (uint i = 0u; i < n; ++i) {
        const uint vb = vb0 + i * vstride;
        const float pn = probs[i] * uintBitsToFloat(vc[vb + W - 1u]);
        if (t < hd) acc0 = fma(pn, cbs[pq_kv_code_in(vc[vb + t / KV_CPW], t)], acc0);
        if (t + 128u < hd) acc1 = fma(pn, cbs[pq_kv_code_in(vc[vb + (t + 128u) / KV_CPW], t + 128u)], acc1);
      }
      barrier();  // probs[] is rewritten by the next tile
      continue;
    }
    // acc += sum_i probs[i] * v_i, four keys per step so that four loads are in flight.
    const uint vstride = p.n_kv * half_hd;  // words from one position to the next
    const uint vb0 = ((base + start) * p.n_kv + kvh) * half_hd;
    const uint w0 = t >> 1u, w1 = (t + 128u) >> 1u;
    const bool lo_half = (t & 1u) == 0u;
    vec4 a0 = vec4(0.0), a1 = vec4(0.0);
    uint i = 0u;
    for (; i + 4u <= n; i += 4u) {
      const vec4 pr = vec4(probs[i], probs[i + 1u], probs[i + 2u], probs[i + 3u]);
      const uint vb = vb0 + i * vstride;
      if (t < hd) {
        vec4 v;
        [[unroll]] for (uint u = 0u; u < 4u; ++u) {
          const vec2 vv = unpackHalf2x16(vc[vb + u * vstride + w0]);
          v[u] = lo_half ? vv.x : vv.y;
        }
        a0 = fma(pr, v, a0);
      }
      if (t + 128u < hd) {
        vec4 v;
        [[unroll]] for (uint u = 0u; u < 4u; ++u) {
          const vec2 vv = unpackHalf2x16(vc[vb + u * vstride + w1]);
          v[u] = lo_half ? vv.x : vv.y;
        }
        a1 = fma(pr, v, a1);
      }
    }
    for (; i < n; ++i) {
      const uint vb = vb0 + i * vstride;
      if (t < hd) {
        const vec2 vv = unpackHalf2x16(vc[vb + w0]);
        a0.x = fma(probs[i], lo_half ? vv.x : vv.y, a0.x);
      }
      if (t + 128u < hd) {
        const vec2 vv = unpackHalf2x16(vc[vb + w1]);
        a1.x = fma(probs[i], lo_half ? vv.x : vv.y, a1.x);
      }
    }
    acc0 += (a0.x + a0.y) + (a0.z + a0.w);
    acc1 += (a1.x + a1.y) + (a1.z + a1.w);
    barrier();  // probs[] is rewritten by the next tile
  }
  const uint ob = (m * p.n_heads + h) * hd;
  if (KV_BITS > 0u) {  // back from the rotated basis: H acc = (sqrt(hd) H acc) / sqrt(hd), and the values' 1 / sqrt(hd)
    if (t < hd) qs[t] = acc0;
    if (t + 128u < hd) qs[t + 128u] = acc1;
    fwht_qs(1u, hd, t);
    if (t < hd) o[ob + t] = qs[t] / (float(hd) * run_sum);
    if (t + 128u < hd) o[ob + t + 128u] = qs[t + 128u] / (float(hd) * run_sum);
    return;
  }
  if (t < hd) o[ob + t] = acc0 / run_sum;
  if (t + 128u < hd) o[ob + t + 128u] = acc1 / run_sum;
}
