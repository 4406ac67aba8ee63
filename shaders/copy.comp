#version 450
// copy: dst[i] = src[i] over 16-byte elements, a grid-stride loop. vk-bench uses it, beside
// vkCmdCopyBuffer, to measure the device's copy bandwidth (bytes read + written) with the
// same kind of loads and stores the kernels issue.
// Buffers: 0 src (uvec4), 1 dst (uvec4).
// Workgroup: 256 invocations. Dispatch: any count; each invocation strides by the grid size.
// Specialization: none.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer Src { uvec4 src[]; };
layout(std430, binding = 1) writeonly buffer Dst { uvec4 dst[]; };
layout(push_constant) uniform Push { uint n; } p;  // elements of 16 bytes

void main() {
  const uint stride = gl_NumWorkGroups.x * 256u;
  for (uint i = gl_GlobalInvocationID.x; i < p.n; i += stride) dst[i] = src[i];
}
