#version 450
// argmax: the greedy choice. result = the index of the largest of x[0 .. n) (the lowest index
// among equals; NaN never wins), written to out[0] and, as the next input token, to tokens[0].
// Buffers: 0 x [n] fp32; 1 out [1] int32; 2 tokens int32.
// Workgroup: 256 invocations, one workgroup: strided scan, then a tree in shared memory.
// Dispatch: 1.
// Specialization: none.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Out { int result[]; };
layout(std430, binding = 2) writeonly buffer Tokens { int tokens[]; };
layout(push_constant) uniform Push { uint n; } p;

shared float best_v[256];
shared uint best_i[256];

void main() {
  const uint t = gl_LocalInvocationID.x;
  float bv = -1.0 / 0.0;
  uint bi = 0xffffffffu;
  for (uint i = t; i < p.n; i += 256u) {
    float v = x[i];
    if (v > bv || (bi == 0xffffffffu && !isnan(v))) { bv = v; bi = i; }
  }
  best_v[t] = bv;
  best_i[t] = bi;
  barrier();
  for (uint s = 128u; s > 0u; s >>= 1u) {
    if (t < s) {
      float ov = best_v[t + s];
      uint oi = best_i[t + s];
      if (oi != 0xffffffffu && (best_i[t] == 0xffffffffu || ov > best_v[t] || (ov == best_v[t] && oi < best_i[t]))) {
        best_v[t] = ov;
        best_i[t] = oi;
      }
    }
    barrier();
  }
  if (t == 0u) {
    int r = best_i[0] == 0xffffffffu ? 0 : int(best_i[0]);
    result[0] = r;
    tokens[0] = r;
  }
}
