#version 450
// qkv_rope: after the Q, K, V projections of M tokens at positions pos0 .. pos0+M-1 (or, with
// PER_ROW, token m of sequence slot[m] at position pos[m], each sequence's cache a region of
// max_ctx positions: continuous batching):
//   q, k, v += bias                         (Qwen2; HAS_BIAS)
//   q, k = RMSNorm_head(q, k) * norm        (Qwen3 q/k norms over head_dim; HAS_NORM)
//   q, k = RoPE(q, k, pos)                  rotate-half pairs (j, j + hd/2), angle pos * inv_freq[j]
//   kcache[pos][kvh] = k, vcache[pos][kvh] = v   (fp16; PER_ROW: position slot * max_ctx + pos)
//   KV_BITS > 0: k and v stored as PolarQuant records instead (the CPU twin: pq::quantize_vector):
//   per head, the fp16-rounded norm n and the codes of r = sqrt(hd) H x / n (H the orthonormal
//   Walsh-Hadamard transform of hd points) against the Lloyd-Max cells of KV_BITS bits.
// The rotated q goes to q_out for the attention kernel.
// KV cache layout (uint words, per layer): [max_ctx][n_kv][hd/2]; K word j holds the RoPE pair
//   (k_j, k_{j+hd/2}), V word i holds (v_{2i}, v_{2i+1}); packHalf2x16. KV_BITS > 0:
//   [max_ctx][n_kv][W], W = hd * KV_BITS / 32 + 1: code i at bits i * KV_BITS of the little-endian
//   stream of the first W - 1 words (no code straddles a word: KV_BITS is 4 or 8), then n as a float.
// Buffers: 0 qkv [M][q | k | v] fp32 (the projections; rows of n_heads*hd + 2*n_kv*hd);
//          1 q_out [M][n_heads*hd]; 2 kcache; 3 vcache; 4 inv_freq [hd/2] fp32 (rope scaling
//          applied by the host); 5 biases fp32 (q | k | v, when HAS_BIAS); 6 norms fp32
//          (q_norm[hd] | k_norm[hd], when HAS_NORM); 7 step: uint pos0 at [0] (written by the
//          host before each replay); PER_ROW: [M] (pos, slot) pairs of uints; 8 (KV_BITS) the
//          Lloyd-Max centroids [2^KV_BITS] then the cell boundaries [2^KV_BITS - 1], fp32.
// Workgroup: 64 invocations per (head, token): invocation t handles pairs j = t, t + 64, ...
//          (KV_BITS: the head vector in shared memory, rotated there; hd a power of two <= 256)
// Dispatch: (n_heads + n_kv, M).
// Specialization: 0 HAS_BIAS, 1 HAS_NORM, 2 PER_ROW, 3 KV_BITS (0: fp16 cache).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x = 64) in;
layout(constant_id = 0) const uint HAS_BIAS = 0u;
layout(constant_id = 1) const uint HAS_NORM = 0u;
layout(constant_id = 2) const uint PER_ROW = 0u;
layout(constant_id = 3) const uint KV_BITS = 0u;

layout(std430, binding = 0) readonly buffer QKV { float qkv[]; };
layout(std430, binding = 1) writeonly buffer Q { float q_out[]; };
layout(std430, binding = 2) writeonly buffer KC { uint kc[]; };
layout(std430, binding = 3) writeonly buffer VC { uint vc[]; };
layout(std430, binding = 4) readonly buffer F { float inv_freq[]; };
layout(std430, binding = 5) readonly buffer Bias { float bias[]; };
layout(std430, binding = 6) readonly buffer Norm { float norm[]; };
layout(std430, binding = 7) readonly buffer Step { uint step[]; };
layout(std430, binding = 8) readonly buffer KVCB { float kvcb[]; };
#include "pq_kv.glsl"
layout(push_constant) uniform Push { uint n_heads, n_kv, hd, max_ctx; float eps; } p;

shared float red[64];
shared float hv[256];  // KV_BITS: the head vector being quantized
PQ_KV_DEFINE_FWHT(fwht_hv, hv, 64u)
PQ_KV_DEFINE_PACK(pack_hv, hv)

// Sum over the workgroup (64 invocations; any subgroup size).
float wg_sum(float s) {
  s = subgroupAdd(s);
  if (gl_SubgroupSize >= 64u) return s;
  barrier();
  if (subgroupElect()) red[gl_SubgroupID] = s;
  barrier();
  float total = 0.0;
  for (uint i = 0u; i < gl_NumSubgroups; ++i) total += red[i];
  return total;
}

// KV_BITS: hv[0..hd) (written by every invocation) as a PolarQuant record at word `rec` of the
// key cache (to_k) or the value cache.
void store_record(bool to_k, uint rec) {
  const uint hd = p.hd, t = gl_LocalInvocationID.x;
  barrier();
  float ss = 0.0;
  for (uint i = t; i < hd; i += 64u) ss += hv[i] * hv[i];
  const float norm = max(sqrt(wg_sum(ss)), 1e-10);
  // Codes against the stored (fp16-rounded) norm, as the CPU twin; the exact one if that is 0.
  const float stored = pq_kv_stored_norm(norm);
  const float divisor = stored > 0.0 ? stored : norm;
  fwht_hv(1u, hd, t);  // hv becomes sqrt(hd) H x
  const uint words = hd / KV_CPW;
  for (uint w = t; w < words; w += 64u) {
    const uint packed = pack_hv(w, divisor);
    if (to_k) kc[rec + w] = packed;
    else vc[rec + w] = packed;
  }
  if (t == 0u) {
    if (to_k) kc[rec + words] = floatBitsToUint(stored);
    else vc[rec + words] = floatBitsToUint(stored);
  }
  barrier();  // hv is rewritten next
}

void main() {
  const uint h = gl_WorkGroupID.x, m = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
  const uint hd = p.hd, half_hd = p.hd / 2u;
  const bool is_q = h < p.n_heads;
  const uint kvh = is_q ? 0u : h - p.n_heads;
  const uint q_dim = p.n_heads * hd, kv_dim = p.n_kv * hd;
  const uint row = m * (q_dim + 2u * kv_dim);                  // token m's q | k | v
  const uint base = row + (is_q ? h * hd : q_dim + kvh * hd);  // this head's q or k
  const uint bias_base = is_q ? h * hd : q_dim + kvh * hd;
  const uint pos = PER_ROW != 0u ? step[2u * m] : step[0] + m;
  const uint cpos = PER_ROW != 0u ? step[2u * m + 1u] * p.max_ctx + pos : pos;  // where it is cached

  // q or k: bias, head norm, RoPE (pairs j, j + hd/2 stay in one invocation)
  float ss = 0.0;
  for (uint j = t; j < half_hd; j += 64u) {
    float a = qkv[base + j], b = qkv[base + j + half_hd];
    if (HAS_BIAS != 0u) { a += bias[bias_base + j]; b += bias[bias_base + j + half_hd]; }
    ss += a * a + b * b;
  }
  float inv = 1.0;
  if (HAS_NORM != 0u) inv = inversesqrt(wg_sum(ss) / float(hd) + p.eps);
  for (uint j = t; j < half_hd; j += 64u) {
    float a = qkv[base + j], b = qkv[base + j + half_hd];
    if (HAS_BIAS != 0u) { a += bias[bias_base + j]; b += bias[bias_base + j + half_hd]; }
    if (HAS_NORM != 0u) {
      uint nb = is_q ? 0u : hd;
      a *= inv * norm[nb + j];
      b *= inv * norm[nb + j + half_hd];
    }
    float ang = float(pos) * inv_freq[j];
    float c = cos(ang), s = sin(ang);
    float ra = a * c - b * s, rb = b * c + a * s;
    if (is_q) {
      q_out[m * q_dim + h * hd + j] = ra;
      q_out[m * q_dim + h * hd + j + half_hd] = rb;
    } else if (KV_BITS > 0u) {
      hv[j] = ra;
      hv[j + half_hd] = rb;
    } else {
      kc[(cpos * p.n_kv + kvh) * half_hd + j] = packHalf2x16(vec2(ra, rb));
    }
  }
  if (!is_q && KV_BITS > 0u) {
    const uint rec = (cpos * p.n_kv + kvh) * (hd * KV_BITS / 32u + 1u);
    store_record(true, rec);
    const uint vb = q_dim + kv_dim + kvh * hd;
    for (uint i = t; i < hd; i += 64u) hv[i] = qkv[row + vb + i] + (HAS_BIAS != 0u ? bias[vb + i] : 0.0);
    store_record(false, rec);
  } else if (!is_q) {
    const uint vb = q_dim + kv_dim + kvh * hd;  // v's column in a row (and in the biases)
    for (uint i = t; i < half_hd; i += 64u) {
      float a = qkv[row + vb + 2u * i], b = qkv[row + vb + 2u * i + 1u];
      if (HAS_BIAS != 0u) { a += bias[vb + 2u * i]; b += bias[vb + 2u * i + 1u]; }
      vc[(cpos * p.n_kv + kvh) * half_hd + i] = packHalf2x16(vec2(a, b));
    }
  }
}
