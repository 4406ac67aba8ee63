#version 450
// prefetch: reads n 16-byte elements of a buffer and keeps nothing, so that they sit in the
// device's L2 cache when a later kernel reads them. Decode records it beside a kernel that leaves
// the memory idle (the decode attention, a few workgroups), over the codes of the GEMV that
// follows (Kernels::prefetch). The XOR of what it read is written only if it equals a constant,
// which keeps the loads from being removed; the sink is a scratch word nothing reads.
// Buffers: 0 src (uvec4), 1 sink (uint).
// Workgroup: 256 invocations, four loads in flight each. Dispatch: any count (grid-stride loop).
// Specialization: none.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer Src { uvec4 src[]; };
layout(std430, binding = 1) writeonly buffer Sink { uint sink[]; };
layout(push_constant) uniform Push { uint n; } p;  // elements of 16 bytes

void main() {
  const uint stride = gl_NumWorkGroups.x * 256u;
  uvec4 acc = uvec4(0u);
  for (uint i = gl_GlobalInvocationID.x; i < p.n; i += 4u * stride) {
    uvec4 v[4];
    for (uint u = 0u; u < 4u; ++u) v[u] = i + u * stride < p.n ? src[i + u * stride] : uvec4(0u);
    for (uint u = 0u; u < 4u; ++u) acc ^= v[u];
  }
  const uint x = acc.x ^ acc.y ^ acc.z ^ acc.w;
  if (x == 0x9E3779B9u) sink[0] = x;
}
