#version 450
// pq_gemm_coopmat: the PolarQuant GEMM of prefill on tensor cores (VK_NV_cooperative_matrix).
//   Y[m][y_offset + r] (+)= sum_b scale[r][b] * sum_j codebook[code(r, b*B + j)] * Xr[m][b*B + j]
// Same buffers and push constants as pq_gemm.comp; the products are fp16 x fp16 with fp32
// sums: each weight (codebook value times its block's scale) and each activation is rounded to
// fp16 once (relative error 2^-11 each), so a row's result differs from the fp32 GEMM by about
// 1e-3 relative where pq_gemm.comp's differs by 1e-5 (vk-bench kernels --check bounds both).
// Buffers: 0 codes (uint, docs/packed-layout.md); 1 scales (fp16 pairs, [rows][nblocks]);
//          2 codebook (2^BITS fp32); 3 Xr [m][ldx] fp32 read as vec4 (ldx a multiple of 4, the
//          binding 16-byte aligned), or with X_F16 fp16 read as uvec4 (ldx a multiple of 8:
//          half the bytes, no conversion); 4 Y [m][ldy] fp32.
// Workgroup: 256 invocations as 8 subgroups of 32 (Kernels::gemm only takes this shader where
//          the subgroups are 32 wide), a TM (tokens) x 128 (rows of W) output tile. K advances
//          one chunk (32 inputs, one scale per row) a step, through two shared-memory buffers:
//          step s decodes its codes and converts its activations (fetched into registers
//          during step s - 1) into one buffer while the subgroups multiply from the other, so
//          one barrier a step suffices (fetching two steps ahead was slower on the H200).
//          The accumulators are named variables, not an array: with an array the H200's
//          compiler left them in memory (35 against 101 TFLOP/s, bench/RESULTS.md).
//          Decode: invocation t takes row t % 128 of the tile and codes 16 * (t / 128) ..
//          + 15 of each chunk (only the words holding them), looks them up in the codebook
//          (shared memory), multiplies by the block scale and stores fp16 pairs. Codes are
//          loaded for CPB chunks at once (word j of consecutive chunks is contiguous: one
//          8- or 16-byte load per word instead of CPB 4-byte ones, as the 128 rows of a step
//          are 128 different cache lines), their scales with them; the K loop is unrolled by
//          CPB so that a chunk's words are taken from the registers at constant indices. The
//          activations are converted 8 at a time (two vec4 loads, one 16-byte store), or
//          with X_F16 copied (one 16-byte load and store).
//          Multiply: subgroup g owns tokens (g % 2) * TM/2 .. + TM/2 - 1 and rows (g / 2) * 32
//          .. + 31, i.e. TM/32 x 2 accumulators of 16 x 16 (fcoopmatNV, fp32); per 16-wide K
//          half-step it loads TM/32 A fragments (activations, row-major) and 2 B fragments
//          (weights: column n of B is row n of the W tile, contiguous along K: column-major)
//          and issues TM/16 coopMatMulAddNV.
//          Shared rows are 40 halves (80 bytes: a multiple of the 16 bytes cooperative loads
//          need, and eight consecutive rows fall in distinct banks). Arrays are uvec4 so that
//          every fragment starts 16-byte aligned.
//          Epilogue: each subgroup stores one accumulator at a time into shared memory (the
//          weight buffers, free by then) and writes it out with bounds checks, adding to Y when
//          accumulating: M and the rows need not be multiples of the tile.
//          Split-K (few row tiles and one token tile: decode steps of a few sequences): the
//          z-th of S workgroups of a tile takes chunks z * kc .. + kc - 1 and writes its partial
//          tile, unaccumulated, at z * zstride in Y (a scratch buffer); splitk_sum.comp adds the S
//          partials in order into the real Y.
// Dispatch: (ceil(rows / 128), ceil(m / TM), S) workgroups.
// Specialization: 0 BITS, 1 BLOCK (B), 2 TM (64 or 128), 3 CPB (2, or 4 where nchunk % 4 == 0),
//          4 ABLATE (benchmarks only), 5 X_F16.
// The body is include/pq_gemm_coopmat.glsl, written in the operations defined here;
// pq_gemm_coopmat_emulated.comp runs it with scalar stand-ins for them on any device.
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_NV_cooperative_matrix : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require

#define ACC fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>
#define ACC_ZERO ACC(0.0)
#define FRAG fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define LOAD_A(f, e) coopMatLoadNV(f, Xs, e, LD, false)
#define LOAD_B(f, e) coopMatLoadNV(f, Ws, e, LD, true)
#define MULADD(a, b, c) coopMatMulAddNV(a, b, c)
#define STORE_ACC(c, e) coopMatStoreNV(c, Ws, e, 4u, false)
#define SG_ID gl_SubgroupID
#define SG_LANE gl_SubgroupInvocationID
#define SG_SIZE gl_SubgroupSize
#define SG_SYNC() subgroupMemoryBarrierShared(); subgroupBarrier()
#define SG_BARRIER() subgroupBarrier()

#include "pq_gemm_coopmat.glsl"
