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
//          One pass over the keys with an online softmax: each query row keeps a reference
//          maximum m that moves up only when a tile's scores pass it by more than 8 (so the
//          probabilities e^(s - m) stay within fp16); only then are the output tiles, which live
//          in the tensor cores and cannot be scaled row by row there, rescaled through shared
//          memory (rare after a row's first keys). Each tile: S = Q K^T (BK / 16 accumulators
//          per subgroup) is stored to the subgroup's shared rows, lanes l and l + 16 each take
//          half of query row l's scores (mask, max, exp and sum, fp16 probabilities written over
//          the front of the row), and P (16 x BK) times V (BK x hd) adds to the hd / 16 output
//          accumulators. PolarQuant records: each code word is loaded once and decoded through
//          the centroids in shared memory.
//          Shared memory (rows of 128 halves + 16 bytes of padding): 31 KiB at BK = 16
//          (within the 32 KiB every Vulkan device has, also with pq8's 1 KiB of centroids), 43.5 KiB
//          at BK = 32 (Kernels' attention_coopmat_shared_bytes).
// Dispatch: (n_heads, ceil(M / 64)).
// Specialization: 0 BK (keys per tile, 16 or 32), 1 KV_BITS (0: fp16 cache; 4 or 8), 2 ABLATE
//          (benchmarks only, PQVK_ATTENTION_ABLATE: 1 no key or value loads, 2 no products, 4 no
//          softmax; wrong results). hd <= 128.
// The body is include/attention_coopmat.glsl, written in the operations defined here;
// attention_coopmat_emulated.comp runs it with scalar stand-ins for them on any device.
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_vote : require
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
#define LOAD_ACC(c, e, ld) coopMatLoadNV(c, F, e, ld, false)
#define SG_ANY(x) subgroupAny(x)
#define SG_ID gl_SubgroupID
#define SG_LANE gl_SubgroupInvocationID
#define SG_SYNC() subgroupMemoryBarrierShared(); subgroupBarrier()

#include "attention_coopmat.glsl"
