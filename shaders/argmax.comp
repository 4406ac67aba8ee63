#version 450
// argmax: the greedy choice, for each of R rows of x (rows of ldx floats; R > 1: the rows of a
// batched decode step). result = the index of the largest of x[r][0 .. n) (the lowest index
// among equals; NaN never wins), written to out[r] and, as the next input token, to tokens[r].
// Two passes, so that a 150k-entry vocabulary is scanned by many workgroups:
//   PASS 0: workgroup (g, r) scans its segment x[r][g * seg .. (g + 1) * seg) and writes its
//           best (value, index) to part[r][2g], part[r][2g + 1]   (index 0xffffffff: nothing valid)
//   PASS 1: workgroup (0, r) reduces the `n` partial results of row r and writes out[r], tokens[r]
// Buffers: 0 x [R][ldx] fp32; 1 out [R] int32; 2 tokens [R] int32; 3 part [R][512] uint.
// Workgroup: 256 invocations: strided scan, then a tree in shared memory.
// Dispatch: PASS 0: (groups <= 256, R) workgroups; PASS 1: (1, R).
// Specialization: 0 PASS.
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint PASS = 0u;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Out { int result[]; };
layout(std430, binding = 2) writeonly buffer Tokens { int tokens[]; };
layout(std430, binding = 3) buffer Part { uint part[]; };
layout(push_constant) uniform Push { uint n, seg, ldx; } p;

shared float best_v[256];
shared uint best_i[256];

const uint NONE = 0xffffffffu;

// Is (v, i) better than (bv, bi)? Larger value, then lower index; NaN and NONE never win.
bool better(float v, uint i, float bv, uint bi) {
  if (i == NONE || isnan(v)) return false;
  return bi == NONE || v > bv || (v == bv && i < bi);
}

void main() {
  const uint t = gl_LocalInvocationID.x, g = gl_WorkGroupID.x, r = gl_WorkGroupID.y;
  const uint xb = r * p.ldx, pb = r * 512u;  // this row's logits and partial results
  float bv = 0.0;
  uint bi = NONE;
  if (PASS == 0u) {
    const uint lo = g * p.seg, hi = min(p.n, lo + p.seg);
    for (uint i = lo + t; i < hi; i += 256u)
      if (better(x[xb + i], i, bv, bi)) { bv = x[xb + i]; bi = i; }
  } else {
    for (uint k = t; k < p.n; k += 256u) {
      const float v = uintBitsToFloat(part[pb + 2u * k]);
      const uint i = part[pb + 2u * k + 1u];
      if (better(v, i, bv, bi)) { bv = v; bi = i; }
    }
  }
  best_v[t] = bv;
  best_i[t] = bi;
  barrier();
  for (uint s = 128u; s > 0u; s >>= 1u) {
    if (t < s && better(best_v[t + s], best_i[t + s], best_v[t], best_i[t])) {
      best_v[t] = best_v[t + s];
      best_i[t] = best_i[t + s];
    }
    barrier();
  }
  if (t == 0u) {
    if (PASS == 0u) {
      part[pb + 2u * g] = floatBitsToUint(best_v[0]);
      part[pb + 2u * g + 1u] = best_i[0];
    } else {
      const int id = best_i[0] == NONE ? 0 : int(best_i[0]);
      result[r] = id;
      tokens[r] = id;
    }
  }
}
