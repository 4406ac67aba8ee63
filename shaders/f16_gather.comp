#version 450
// f16_gather: the embedding lookup of an fp16 table: out[m][c] = W[tokens[m]][c] (fp32 out).
// Buffers: 0 W [slice_rows][ldw] fp16 pairs (this slice's rows row0 .. row0+slice_rows-1);
//          1 tokens [m] int32; 2 out [m][cols] fp32.
// Workgroup: 256 invocations, one output element each. Rows whose token lies in another slice
//          are left to that slice's dispatch.
// Dispatch: (ceil(cols / 256), m).
// Specialization: none.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer W { uint w[]; };
layout(std430, binding = 1) readonly buffer Tokens { int tokens[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };
layout(push_constant) uniform Push { uint cols, ldw, row0, slice_rows; } p;

void main() {
  uint c = gl_GlobalInvocationID.x, m = gl_WorkGroupID.y;
  int tok = tokens[m] - int(p.row0);
  if (c >= p.cols || tok < 0 || uint(tok) >= p.slice_rows) return;
  uint idx = uint(tok) * p.ldw + c;
  vec2 v = unpackHalf2x16(w[idx >> 1u]);
  o[m * p.cols + c] = (idx & 1u) == 0u ? v.x : v.y;
}
