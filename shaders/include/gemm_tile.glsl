// The portable tiled GEMM core shared by pq_gemm.comp and f16_gemm.comp.
//   Y[m][n] (+)= sum_k X[m][k] * W[n][k]   for a 64 x 64 tile of (tokens m, rows n)
// 256 invocations as 16 x 16; invocation (tx, ty) owns rows n0 + tx + 16 j and tokens
// m0 + ty + 16 i (i, j < 4). K advances 32 at a time: the including shader fills Ws (its
// weight tile, dequantized to fp32) and this file fills Xs, then both are multiplied from
// shared memory with fp32 accumulation. Rows are padded to 33 floats against bank conflicts.
#ifndef GEMM_TILE_GLSL
#define GEMM_TILE_GLSL

#define TM 64u
#define TN 64u
#define TK 32u
shared float Xs[TM * (TK + 1u)];
shared float Ws[TN * (TK + 1u)];

// Xs <- X[m0 .. m0+63][k0 .. k0+31] (zeros past m or past kmax).
void gemm_load_x(uint m0, uint m, uint k0, uint kmax, uint ldx) {
  const uint t = gl_LocalInvocationIndex;
  [[unroll]] for (uint q = 0u; q < 8u; ++q) {
    uint idx = t + 256u * q;
    uint mm = idx / TK, kk = idx % TK;
    uint k = k0 + kk;
    Xs[mm * (TK + 1u) + kk] = (m0 + mm < m && k < kmax) ? gemm_x[(m0 + mm) * ldx + k] : 0.0;
  }
}

void gemm_accumulate(inout float acc[16]) {
  const uint tx = gl_LocalInvocationIndex & 15u, ty = gl_LocalInvocationIndex >> 4u;
  [[unroll]] for (uint kk = 0u; kk < TK; ++kk) {
    float a[4], b[4];
    [[unroll]] for (uint i = 0u; i < 4u; ++i) a[i] = Xs[(ty + 16u * i) * (TK + 1u) + kk];
    [[unroll]] for (uint j = 0u; j < 4u; ++j) b[j] = Ws[(tx + 16u * j) * (TK + 1u) + kk];
    [[unroll]] for (uint i = 0u; i < 4u; ++i)
      [[unroll]] for (uint j = 0u; j < 4u; ++j) acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
  }
}

void gemm_store(const float acc[16], uint m0, uint m, uint n0, uint rows, uint ldy, uint y_offset, uint accumulate) {
  const uint tx = gl_LocalInvocationIndex & 15u, ty = gl_LocalInvocationIndex >> 4u;
  [[unroll]] for (uint i = 0u; i < 4u; ++i)
    [[unroll]] for (uint j = 0u; j < 4u; ++j) {
      uint mm = m0 + ty + 16u * i, nn = n0 + tx + 16u * j;
      if (mm < m && nn < rows) {
        uint o = mm * ldy + y_offset + nn;
        gemm_y[o] = accumulate != 0u ? gemm_y[o] + acc[i * 4u + j] : acc[i * 4u + j];
      }
    }
}

#endif
