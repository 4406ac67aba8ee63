#include "vk_test_env.h"

#include <cmath>
#include <cstdio>
#include <memory>

namespace pqvk::test {

namespace {
std::unique_ptr<vk::Context> g_ctx;
std::unique_ptr<Kernels> g_kernels;

// Fails the running test when the validation layer spoke during it.
class ValidationListener : public ::testing::EmptyTestEventListener {
  uint32_t before_ = 0;
  void OnTestStart(const ::testing::TestInfo&) override { before_ = g_ctx ? g_ctx->validation_messages() : 0; }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (!g_ctx) return;
    uint32_t now = g_ctx->validation_messages();
    if (now != before_)
      ADD_FAILURE() << info.name() << ": " << (now - before_) << " Vulkan validation message(s), see stderr";
  }
};

// Destroys the shared context before main() returns: drivers may tear themselves down in
// their own exit handlers, after which destroying a device would crash.
class ContextEnvironment : public ::testing::Environment {
  void TearDown() override {
    g_kernels.reset();
    g_ctx.reset();
  }
};

struct Registrar {
  Registrar() {
    ::testing::UnitTest::GetInstance()->listeners().Append(new ValidationListener);
    ::testing::AddGlobalTestEnvironment(new ContextEnvironment);
  }
} registrar;
}  // namespace

vk::Context& context() {
  if (!g_ctx) {
    vk::ContextOptions opts;
    opts.validation = true;
    opts.pipeline_cache = "off";
    g_ctx = std::make_unique<vk::Context>(opts);
    std::printf("[pqvk] testing on %s (subgroup size %u)\n", g_ctx->info().name.c_str(), g_ctx->info().subgroup_size);
  }
  return *g_ctx;
}

Kernels& kernels() {
  if (!g_kernels) g_kernels = std::make_unique<Kernels>(context());
  return *g_kernels;
}

std::vector<float> random_vector(size_t n, uint32_t seed, float outlier_frac) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = nd(rng);
    if (ud(rng) < outlier_frac) x *= 12.0f;
  }
  return v;
}

std::vector<float> read_floats(const vk::Buffer& b, size_t n) {
  std::vector<float> v(n);
  context().download(b, v.data(), n * 4);
  return v;
}

double rel_error(const std::vector<float>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  return rel_error(a, std::vector<double>(b.begin(), b.end()));
}

}  // namespace pqvk::test
