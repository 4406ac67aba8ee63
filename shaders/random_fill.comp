#version 450
// random_fill: dst[i] = hash(seed, i) for i < n: random 32-bit words (a PCG-style integer
// hash), for synthetic models generated on the device. With FP16_SCALE each word instead holds
// two fp16 values uniform in [lo, hi) (random block scales).
// Buffers: 0 dst (uint).
// Workgroup: 256 invocations, grid-stride loop. Dispatch: any count.
// Specialization: 0 FP16_SCALE.
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint FP16_SCALE = 0u;
layout(std430, binding = 0) writeonly buffer Dst { uint dst[]; };
layout(push_constant) uniform Push { uint n, seed; float lo, hi; } p;

uint hash(uint x) {
  x ^= p.seed * 0x9e3779b9u;
  x = x * 747796405u + 2891336453u;
  x = ((x >> ((x >> 28u) + 4u)) ^ x) * 277803737u;
  return (x >> 22u) ^ x;
}

void main() {
  const uint stride = gl_NumWorkGroups.x * 256u;
  for (uint i = gl_GlobalInvocationID.x; i < p.n; i += stride) {
    uint h = hash(i);
    if (FP16_SCALE != 0u) {
      vec2 u = vec2(float(h & 0xffffu), float(h >> 16u)) / 65536.0;
      dst[i] = packHalf2x16(mix(vec2(p.lo), vec2(p.hi), u));
    } else {
      dst[i] = h;
    }
  }
}
