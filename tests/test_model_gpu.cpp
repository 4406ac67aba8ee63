// A pq tensor of a .pqm file goes to the GPU as it is: PqmFile::read_quant() gives the
// pq::QuantMatrix that kernels' upload_quant() takes, and the GPU's dequantization of it
// matches the CPU's (PqmFile::read_floats). Validation is on (tests/vk_test_env.cpp).
#include <gtest/gtest.h>

#include <string>

#include "model/convert.h"
#include "model/pqm.h"
#include "model/source.h"
#include "model_fixtures.h"
#include "vk_test_env.h"

namespace pqvk::test {
namespace {

void check_every_pq_tensor(const model::PqmFile& f) {
  int checked = 0;
  for (const model::TensorInfo& t : f.tensors()) {
    if (t.kind != model::TensorKind::pq) continue;
    const DeviceQuantMatrix d = upload_quant(context(), f.read_quant(t), t.name);
    const size_t n = t.rows() * t.cols();
    vk::Buffer out = context().buffer(n * 4, vk::MemoryKind::device, "dequant out");
    auto cmd = context().commands();
    cmd.fill(out, kPoison);
    cmd.barrier();
    kernels().dequant(cmd, d, out);
    cmd.run();
    EXPECT_LT(rel_error(read_floats(out, n), f.read_floats(t)), 1e-5) << t.name;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST(ModelGpu, TinyPqmEveryMethodAndBlock) {
  TempDir d;
  write_tiny_pqm(d.file("tiny.pqm"));
  check_every_pq_tensor(model::PqmFile::open(d.file("tiny.pqm")));
}

TEST(ModelGpu, Stories260KMixedRecipe) {
  TempDir d;
  const model::SourceModel src = model::open_source(std::string(PQVK_TEST_DATA) + "/stories260K.bin");
  model::QuantizeOptions o;
  o.recipe = "mixed";
  o.block = 64;
  o.threads = 2;
  model::quantize_model(src, d.file("s.pqm"), o);
  check_every_pq_tensor(model::PqmFile::open(d.file("s.pqm")));
}

}  // namespace
}  // namespace pqvk::test
