#version 450
// attention_coopmat_emulated: attention_coopmat.comp's body (include/attention_coopmat.glsl)
// with the cooperative-matrix operations done by scalar code, so that everything but those
// operations runs, and is tested, on devices without VK_NV_cooperative_matrix (lavapipe). Not
// a fast path: Kernels::attention takes it only when KernelConfig asks for it (tests).
// The stand-ins follow GLSL_NV_cooperative_matrix's definitions of coopMatLoadNV, coopMatMulAddNV
// and coopMatStoreNV as pq_gemm_coopmat_emulated.comp's do: a fragment is where its tile sits in
// shared memory (read when it is multiplied; nothing rewrites it before), an accumulator is the
// 8 elements lane l holds (l, l + 32, ...: row e / 16, column e % 16). A "subgroup" is 32
// consecutive invocations; its synchronisation becomes a workgroup barrier (uniform here).
// Buffers, push constants, dispatch and specialization: as attention_coopmat.comp.
#extension GL_EXT_control_flow_attributes : require

struct Acc {
  float v[8];
};
Acc emu_muladd(uvec4 a, uvec4 b, Acc c);
void emu_store(Acc c, uint e, uint ld);
Acc emu_load(uint e, uint ld);

#define ACC Acc
#define ACC_ZERO Acc(float[8](0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
#define FRAG uvec4
// (array: 0 H, 1 F; element; row or column stride; 1 column-major)
#define LOAD_H(f, e, ld, cm) f = uvec4(0u, (e), (ld), (cm) ? 1u : 0u)
#define LOAD_F(f, e, ld) f = uvec4(1u, (e), (ld), 0u)
#define MULADD(a, b, c) emu_muladd(a, b, c)
#define STORE_ACC(c, e, ld) emu_store(c, e, ld)
#define LOAD_ACC(c, e, ld) c = emu_load(e, ld)
// Always: the rescale's syncs are workgroup barriers here, so every subgroup takes it (a factor of
// 1 for the rows that keep their maximum), which also tests that path on every tile.
#define SG_ANY(x) true
#define SG_ID (gl_LocalInvocationIndex >> 5u)
#define SG_LANE (gl_LocalInvocationIndex & 31u)
#define SG_SYNC() barrier()

#include "attention_coopmat.glsl"

// Half h (0..7) of uvec4 element e of array `arr`.
float emu_half(uint arr, uint e, uint h) {
  const uint w = arr == 0u ? H[e][h >> 1u] : F[e][h >> 1u];
  return unpackHalf2x16(w)[h & 1u];
}

// Element (r, c) of a 16 x 16 fp16 tile: row-major, row r at element f.y + r * f.z; column-major,
// column c at f.y + c * f.z.
float emu_elem(uvec4 f, uint r, uint c) {
  const uint along = f.w != 0u ? r : c, across = f.w != 0u ? c : r;
  return emu_half(f.x, f.y + across * f.z + (along >> 3u), along & 7u);
}

Acc emu_muladd(uvec4 a, uvec4 b, Acc c) {
  [[dont_unroll]] for (uint i = 0u; i < 8u; ++i) {
    const uint e = SG_LANE + 32u * i, row = e >> 4u, col = e & 15u;
    float s = c.v[i];
    for (uint k = 0u; k < 16u; ++k) s += emu_elem(a, row, k) * emu_elem(b, k, col);
    c.v[i] = s;
  }
  return c;
}

void emu_store(Acc c, uint e, uint ld) {
  [[unroll]] for (uint i = 0u; i < 8u; ++i) {
    const uint el = SG_LANE + 32u * i, row = el >> 4u, col = el & 15u;
    F[e + row * ld + (col >> 2u)][col & 3u] = floatBitsToUint(c.v[i]);
  }
}

Acc emu_load(uint e, uint ld) {
  Acc c;
  [[unroll]] for (uint i = 0u; i < 8u; ++i) {
    const uint el = SG_LANE + 32u * i, row = el >> 4u, col = el & 15u;
    c.v[i] = uintBitsToFloat(F[e + row * ld + (col >> 2u)][col & 3u]);
  }
  return c;
}
