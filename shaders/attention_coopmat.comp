#version 450
// attention_coopmat: causal grouped-query attention of prefill on tensor cores
// (VK_NV_cooperative_matrix), the same result as attention.comp / attention_tiled.comp
// (same buffers and push constants as attention_tiled.comp) within fp16 rounding:
//   out[m][h] = sum_t softmax_t(q_m,h . k_t,kvh / sqrt(hd)) v_t,kvh,  t in [lo(pos), pos]
// Q K^T and P V are fp16 x fp16 products with fp32 sums: the queries (times 1/sqrt(hd)) and the
// probabilities are rounded to fp16 once (keys and values are fp16 in the cache already).
// Buffers: 0 q [M][n_heads*hd] fp32 (after qkv_rope); 1 kcache; 2 vcache (qkv_rope.comp's
//          layout: key word j holds dims j and j + hd/2, value word j dims 2j and 2j + 1);
//          3 out [M][n_heads*hd] fp32; 4 step: uint pos0 at [0]; 5 (KV_BITS) the PolarQuant
//          centroids (include/pq_kv.glsl).
// KV_BITS > 0, the PolarQuant KV cache (qkv_rope.comp's records): keys and values are decoded
//          into the tiles in the rotated basis, (H k)_i = centroid(code_i) * norm / sqrt(hd), so q
//          must come rotated (H q per head) and out leaves rotated (H o per head): Kernels::attention
//          rotates both with fwht.comp (hd 64 or 128).
// Workgroup: 128 invocations as 4 subgroups of 32 (Kernels::attention takes this shader only
//          where subgroups are 32 wide), BQ = 64 queries of one head; subgroup g owns queries
//          16 g .. 16 g + 15. The queries are stored once as fp16 rows in shared memory in the
//          keys' dimension order (so q . k needs no reordering), padded with zeros to a
//          multiple of 16 dims. Keys (and values) go through shared memory BK at a time, each
//          invocation loading all of its words of a tile into registers before storing any.
//          Two passes over the keys: the first finds each query's highest score, the second
//          computes probabilities against it and accumulates P V in 16 x 16 fp32 tiles that
//          stay in the tensor cores (no online rescaling, which these tiles do not allow
//          element-wise). Each tile: S = Q K^T (BK / 16 accumulators per subgroup) is stored to the
//          subgroup's shared rows, lanes 0..15 each take one query's row (mask, max or exp and
//          sum, fp16 probabilities written over the front of the row), and P (16 x BK) times
//          V (BK x hd) adds to the hd / 16 output accumulators.
//          Shared memory (rows of 128 halves + 16 bytes of padding): 30.75 KiB at BK = 16
//          (within the 32 KiB every Vulkan device has), 43.25 KiB at BK = 32.
// Dispatch: (n_heads, ceil(M / 64)).
// Specialization: 0 BK (keys per tile, 16 or 32), 1 KV_BITS (0: fp16 cache; 4 or 8). hd <= 128.
// The body is include/attention_coopmat.glsl, written in the operations defined here;
// attention_coopmat_emulated.comp runs it with scalar stand-ins for them on any device.
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_NV_cooperative_matrix : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require

#define ACC fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>
#define ACC_ZERO ACC(0.0)
#define FRAG fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define LOAD_H(f, e, ld, cm) coopMatLoadNV(f, H, e, ld, cm)
#define LOAD_F(f, e, ld) coopMatLoadNV(f, F, e, ld, false)
#define MULADD(a, b, c) coopMatMulAddNV(a, b, c)
#define STORE_ACC(c, e, ld) coopMatStoreNV(c, F, e, ld, false)
#define SG_ID gl_SubgroupID
#define SG_LANE gl_SubgroupInvocationID
#define SG_SYNC() subgroupMemoryBarrierShared(); subgroupBarrier()

#include "attention_coopmat.glsl"
