#version 450
// pq_gemm_skinny_emulated: pq_gemm_skinny.comp's body (include/pq_gemm_skinny.glsl: its loads,
// decode into each subgroup's fp16 tile, double buffering, split-K and epilogue) with the
// cooperative-matrix operations done by scalar code, so that everything but those operations
// runs, and is tested, on devices without VK_NV_cooperative_matrix (lavapipe). Not a fast path:
// Kernels::gemm takes it only where KernelConfig asks for the emulated tensor-core GEMM (tests).
// The stand-ins follow GLSL_NV_cooperative_matrix's definitions of coopMatLoadNV, coopMatMulAddNV
// (A * B + C, fp16 operands, fp32 sums) and coopMatStoreNV, as pq_gemm_coopmat_emulated.comp's:
// a "subgroup" is 32 consecutive invocations; lane l holds elements l, l + 32, ... (row e / 16,
// column e % 16) of each 16 x 16 accumulator and reads its operands from shared memory when it
// multiplies (they are not rewritten before). Subgroup
// synchronisation becomes workgroup barriers (every branch around one is uniform over the
// workgroup), and lookups read the codebook from shared memory (LOOKUP 0) whatever is asked.
// Buffers, push constants, dispatch and specialization: as pq_gemm_skinny.comp.
#extension GL_EXT_control_flow_attributes : require

struct Acc {
  float v[8];
};
Acc emu_muladd(uint a, uint b, Acc c);
void emu_store(Acc c, uint e);

#define ACC Acc
#define ACC_ZERO Acc(float[8](0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
#define FRAG uint
#define LOAD_A(f, e) f = (e)
#define LOAD_B(f, e) f = (e)
#define MULADD(a, b, c) emu_muladd(a, b, c)
#define STORE_ACC(c, e) emu_store(c, e)
#define SG_ID (gl_LocalInvocationIndex >> 5u)
#define SG_LANE (gl_LocalInvocationIndex & 31u)
#define SG_SYNC() barrier()
#define SG_BARRIER() barrier()
#define LOOKUP_CODE(w, i) cb[PQ_CODE_SHIFTED(w, i, BITS, 0u)]

#include "pq_gemm_skinny.glsl"

// Half number h (0..7) of a uvec4 of fp16 pairs.
float emu_half(uvec4 v, uint h) { return unpackHalf2x16(v[h >> 1u])[h & 1u]; }

// A at uvec4 element a of Xs, row-major (A[r][k] = half k of row r, rows LDX apart);
// B at element b of Ws, column-major (B[k][c] = half k of column c, columns LD apart).
Acc emu_muladd(uint a, uint b, Acc c) {
  [[dont_unroll]] for (uint r = 0u; r < 8u; ++r) {
    const uint e = SG_LANE + 32u * r, row = e >> 4u, col = e & 15u;
    float s = c.v[r];
    for (uint k = 0u; k < 16u; ++k)
      s += emu_half(Xs[a + row * LDX + (k >> 3u)], k & 7u) * emu_half(Ws[b + col * LD + (k >> 3u)], k & 7u);
    c.v[r] = s;
  }
  return c;
}

// Row-major into Ws from element e, 4 uvec4 (16 floats) a row.
void emu_store(Acc c, uint e) {
  [[unroll]] for (uint r = 0u; r < 8u; ++r) {
    const uint el = SG_LANE + 32u * r, row = el >> 4u, col = el & 15u;
    Ws[e + row * 4u + (col >> 2u)][col & 3u] = floatBitsToUint(c.v[r]);
  }
}
