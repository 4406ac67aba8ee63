// Shared GLSL of the tensor-core GEMMs (pq_gemm_coopmat.glsl, pq_gemm_skinny.glsl): writing out an
// accumulator that a subgroup has stored into shared memory. The including body declares
// `shared uvec4 Ws[]`, `buffer Y { float gemm_y[]; }` and the push constants
// { rows, m, ldy, y_offset, accumulate, zstride, ... } the GEMMs share.
#ifndef GEMM_STORE_GLSL
#define GEMM_STORE_GLSL

// The 16 x 16 fp32 tile at uvec4 element `stage` of Ws (row-major, 4 uvec4 a row: tokens m0 ..
// m0 + 15, rows of W n0 .. n0 + 15) into Y, taken 4 floats at a time by lanes lane, lane + lanes,
// ...: only tokens below m and rows below `rows`, added to Y when accumulating, at the split's
// place (workgroup z of a split K writes its part at z * zstride).
void write_staged_tile(uint stage, uint m0, uint n0, uint lane, uint lanes) {
  for (uint e = lane; e < 64u; e += lanes) {
    const uint mm = m0 + (e >> 2u), nn = n0 + 4u * (e & 3u);
    if (mm < p.m) {
      const vec4 v = uintBitsToFloat(Ws[stage + e]);
      const uint o = gl_WorkGroupID.z * p.zstride + mm * p.ldy + p.y_offset + nn;
      [[unroll]] for (uint k = 0u; k < 4u; ++k)
        if (nn + k < p.rows) gemm_y[o + k] = p.accumulate != 0u ? gemm_y[o + k] + v[k] : v[k];
    }
  }
}

#endif
