#version 450
// attention: causal grouped-query attention of M queries at positions pos0 .. pos0+M-1 over
// the fp16 KV cache, one (head, query) per workgroup, keys in tiles of 128 with an online
// softmax (running max and sum), so memory stays O(tile) however long the context:
//   out[m][h] = sum_t softmax_t(q_m,h . k_t,kvh / sqrt(hd)) v_t,kvh,  t in [lo, pos0 + m]
// with kvh = h / (n_heads / n_kv) and lo = 0, or pos - window + 1 with a sliding window.
// Buffers: 0 q [M][n_heads*hd] fp32 (after qkv_rope); 1 kcache; 2 vcache (qkv_rope.comp's
//          layout); 3 out [M][n_heads*hd] fp32; 4 step: uint pos0 at [0].
// Workgroup: 128 invocations. Scores: invocation t takes key tile_start + t. Output:
//          invocation t accumulates dimensions t and t + 128 (hd <= 256).
// Dispatch: (n_heads, M).
// Specialization: none.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x = 128) in;
layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer KC { uint kc[]; };
layout(std430, binding = 2) readonly buffer VC { uint vc[]; };
layout(std430, binding = 3) writeonly buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer Step { uint pos0; } step;
layout(push_constant) uniform Push { uint n_heads, n_kv, hd, window; } p;

shared float qs[256];
shared float probs[128];
shared float red[128];

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
  const uint pos = step.pos0 + m;
  const uint lo = (p.window > 0u && pos + 1u > p.window) ? pos + 1u - p.window : 0u;
  const float scale = inversesqrt(float(hd));
  for (uint j = t; j < hd; j += 128u) qs[j] = q[(m * p.n_heads + h) * hd + j];
  barrier();

  float run_max = -1.0 / 0.0, run_sum = 0.0;
  float acc0 = 0.0, acc1 = 0.0;  // output dims t and t + 128
  for (uint start = lo; start <= pos; start += 128u) {
    const uint key = start + t;
    float s = -1.0 / 0.0;
    if (key <= pos) {
      const uint kb = (key * p.n_kv + kvh) * half_hd;
      s = 0.0;
      for (uint j = 0u; j < half_hd; ++j) {
        vec2 kv = unpackHalf2x16(kc[kb + j]);
        s = fma(qs[j], kv.x, s);
        s = fma(qs[j + half_hd], kv.y, s);
      }
      s *= scale;
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
    for (uint i = 0u; i < n; ++i) {
      const uint vb = ((start + i) * p.n_kv + kvh) * half_hd;
      const float pr = probs[i];
      if (t < hd) {
        vec2 vv = unpackHalf2x16(vc[vb + (t >> 1u)]);
        acc0 = fma(pr, (t & 1u) == 0u ? vv.x : vv.y, acc0);
      }
      if (t + 128u < hd) {
        vec2 vv = unpackHalf2x16(vc[vb + ((t + 128u) >> 1u)]);
        acc1 = fma(pr, ((t + 128u) & 1u) == 0u ? vv.x : vv.y, acc1);
      }
    }
    barrier();  // probs[] is rewritten by the next tile
  }
  const uint ob = (m * p.n_heads + h) * hd;
  if (t < hd) o[ob + t] = acc0 / run_sum;
  if (t + 128u < hd) o[ob + t + 128u] = acc1 / run_sum;
}
