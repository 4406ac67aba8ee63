#version 450
// pq_gemm_skinny: the PolarQuant GEMM of a decode step of a few sequences (continuous batching,
// up to 32 tokens) on tensor cores (VK_NV_cooperative_matrix):
//   Y[m][y_offset + r] (+)= sum_b scale[r][b] * sum_j codebook[code(r, b*B + j)] * Xr[m][b*B + j]
// Where pq_gemm_coopmat.comp decodes a 128-row tile with the whole workgroup between barriers
// (bound by the latency of each K step at a few tokens), here each subgroup decodes and multiplies
// its own 32 rows with no workgroup barrier, like a GEMV: each code is read once for all tokens,
// decoded once (a lookup, the block scale, fp16), and the tensor cores do the products of every
// token. Products fp16 x fp16 with fp32 sums, as pq_gemm_coopmat.comp (about 1e-3 relative).
// Buffers: 0 codes (uint, docs/packed-layout.md); 1 scales (fp16 pairs, [rows][nblocks]);
//          2 codebook (2^BITS fp32); 3 Xr [m][ldx] fp16 pairs read as uvec4 (ldx a multiple of
//          8, the binding 16-byte aligned); 4 Y [m][ldy] fp32.
// Workgroup: 128 invocations as 4 subgroups of 32 (Kernels::gemm only takes this shader where
//          subgroups are 32 wide); subgroup s owns rows 32 s .. 32 s + 31 of the workgroup's 128,
//          lane l row 32 s + l. Per chunk (32 inputs) lane l looks its row's 32 codes up
//          (LOOKUP 1: a shuffle of the codebook held one entry per lane; 0: shared memory),
//          scales them and stores 16 fp16 pairs into its subgroup's shared tile (two buffers, so
//          one subgroup barrier a chunk), and the subgroup multiplies the 32 rows x 32 inputs
//          with the activations of NT x 16 tokens (zeros past m), which the workgroup stages in
//          shared memory SX chunks at a time between two barriers, the next stage's loads in
//          flight meanwhile (fragments loaded straight from global memory took most of the time,
//          bench/RESULTS.md). The codes of the next CPL chunks are loaded (one 8- or 16-byte load
//          per word) once the last of these is taken. K is split more finely than the 128-row-tile GEMM's (gemm_skinny_split_target):
//          a subgroup works through its chunks one after another, so the device needs many.
//          Epilogue: each accumulator through the subgroup's shared tile, written with bounds
//          checks (m and the rows need not be multiples of 16).
//          Split-K as pq_gemm_coopmat.comp: the z-th of S workgroups of a row tile takes chunks
//          z * kc .. + kc - 1 and writes its partial outputs unaccumulated at z * zstride in Y
//          (a scratch buffer); splitk_sum.comp adds them in order.
//          A token's outputs do not depend on the other tokens (each is its own row of A).
// Dispatch: (ceil(rows / 128), 1, S) workgroups.
// Specialization: 0 BITS, 1 BLOCK (B), 2 NT (16-token tiles, 1 or 2), 3 CPL (4, or 2 where
//          nchunk % 4 != 0), 4 LOOKUP, 5 ABLATE (benchmarks only), 6 SX (8, or 4 where the
//          shared memory is short).
// The body is include/pq_gemm_skinny.glsl, written in the operations defined here;
// pq_gemm_skinny_emulated.comp runs it with scalar stand-ins for them on any device.
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_NV_cooperative_matrix : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require

#define ACC fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>
#define ACC_ZERO ACC(0.0)
#define FRAG fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define LOAD_A(f, e) coopMatLoadNV(f, Xs, e, LDX, false)
#define LOAD_B(f, e) coopMatLoadNV(f, Ws, e, LD, true)
#define MULADD(a, b, c) coopMatMulAddNV(a, b, c)
#define STORE_ACC(c, e) coopMatStoreNV(c, Ws, e, 4u, false)
#define SG_ID gl_SubgroupID
#define SG_LANE gl_SubgroupInvocationID
#define SG_SYNC() subgroupMemoryBarrierShared(); subgroupBarrier()
#define SG_BARRIER() subgroupBarrier()
#define LOOKUP_CODE(w, i) (LOOKUP == 1u ? subgroupShuffle(cb_lane, PQ_CODE_SHIFTED(w, i, BITS, 0u)) : cb[PQ_CODE_SHIFTED(w, i, BITS, 0u)])

#include "pq_gemm_skinny.glsl"
