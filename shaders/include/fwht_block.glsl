// The orthonormal Walsh-Hadamard transform of one block of B values spread over B/4
// invocations, 4 consecutive values per invocation (value index = 4 * t + k).
//   stages h = 1, 2       inside an invocation's registers
//   stages h = 4 .. B/2   between invocations t and t ^ (h/4): through subgroup shuffles while
//                         h/4 < gl_SubgroupSize, then through shared memory
// Works for any subgroup size (4..128); `t` must be the invocation's index inside the block,
// numbered so that t % gl_SubgroupSize == gl_SubgroupInvocationID (fwht_thread_index()).
// Requires: shared vec4 fwht_sh[] declared by the including shader, B/4 entries from `sh` on
// for this block (a workgroup may transform several blocks, each with its own range); called
// in uniform control flow by the whole workgroup (it has barriers).
#ifndef FWHT_BLOCK_GLSL
#define FWHT_BLOCK_GLSL

uint fwht_thread_index() { return gl_SubgroupID * gl_SubgroupSize + gl_SubgroupInvocationID; }

vec4 fwht_block(vec4 v, uint t, uint B, uint sh) {
  // h = 1 and h = 2: butterflies inside the vec4
  v = vec4(v.x + v.y, v.x - v.y, v.z + v.w, v.z - v.w);
  v = vec4(v.x + v.z, v.y + v.w, v.x - v.z, v.y - v.w);
  for (uint m = 1u; m < B / 4u; m <<= 1u) {
    vec4 w;
    if (m < gl_SubgroupSize) {
      w = subgroupShuffleXor(v, m);
    } else {
      barrier();
      fwht_sh[sh + t] = v;
      barrier();
      w = fwht_sh[sh + (t ^ m)];
    }
    v = (t & m) == 0u ? v + w : w - v;
  }
  return v * inversesqrt(float(B));
}

#endif
