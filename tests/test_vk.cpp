// The Vulkan layer: device selection, buffers and transfers, errors for bad requests,
// pipelines, recording and replay, timestamps, the pipeline cache.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <unistd.h>

#include "vk/shader_registry.h"
#include "vk_test_env.h"

namespace pqvk::test {
namespace {

TEST(Vk, ListsDevicesAndSelectsByNameAndIndex) {
  auto all = vk::Context::list_devices();
  ASSERT_FALSE(all.empty());
  const auto& info = context().info();
  EXPECT_GT(info.subgroup_size, 0u);
  EXPECT_GT(info.max_storage_buffer_range, 0u);
  EXPECT_TRUE(info.subgroup_arithmetic);
  // Selecting the same device by index and by a name substring (different case).
  vk::ContextOptions by_index;
  by_index.device = std::to_string(info.index);
  by_index.validation = true;
  by_index.pipeline_cache = "off";
  vk::Context a(by_index);
  EXPECT_EQ(a.info().name, info.name);
  vk::ContextOptions by_name = by_index;
  std::string sub = info.name.substr(0, 4);
  for (char& ch : sub) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  by_name.device = sub;
  vk::Context b(by_name);
  EXPECT_EQ(b.info().name.substr(0, 4), info.name.substr(0, 4));
  EXPECT_EQ(a.validation_messages() + b.validation_messages(), 0u);
}

TEST(Vk, CooperativeMatrixShapes) {
  using T = vk::CoopMatShape::Type;
  using S = vk::CoopMatShape::Scope;
  // The device's report: shapes only where the extension is.
  const auto& info = context().info();
  if (!info.cooperative_matrix_nv) {
    EXPECT_TRUE(info.coopmat_nv.empty());
  }
  if (!info.cooperative_matrix_khr) {
    EXPECT_TRUE(info.coopmat_khr.empty());
  }
  for (const auto& s : info.coopmat_nv) {
    EXPECT_GT(s.m * s.n * s.k, 0u) << s.str();
    EXPECT_FALSE(s.saturating) << s.str();
  }
  // has_coopmat_nv_f16 asks for fp16 A and B, fp32 C and D, subgroup scope, the exact shape.
  vk::DeviceInfo d;
  EXPECT_FALSE(d.has_coopmat_nv_f16(16, 16, 16));
  vk::CoopMatShape f16acc{16, 8, 16, T::f16, T::f16, T::f16, T::f16, S::subgroup};
  vk::CoopMatShape f32acc{16, 8, 16, T::f16, T::f16, T::f32, T::f32, S::subgroup};
  vk::CoopMatShape workgroup{16, 16, 16, T::f16, T::f16, T::f32, T::f32, S::workgroup};
  d.coopmat_nv = {f16acc, workgroup};
  EXPECT_FALSE(d.has_coopmat_nv_f16(16, 8, 16));   // fp16 accumulation only
  EXPECT_FALSE(d.has_coopmat_nv_f16(16, 16, 16));  // not subgroup scope
  d.coopmat_nv.push_back(f32acc);
  EXPECT_TRUE(d.has_coopmat_nv_f16(16, 8, 16));
  EXPECT_FALSE(d.has_coopmat_nv_f16(8, 16, 16));
  EXPECT_FALSE(d.has_coopmat_nv_f16(16, 8, 8));
  d.coopmat_khr = d.coopmat_nv;  // KHR shapes are reported, never used by this helper
  d.coopmat_nv.clear();
  EXPECT_FALSE(d.has_coopmat_nv_f16(16, 8, 16));
  EXPECT_EQ(f32acc.str(), "16x8x16 f16*f16+f32->f32 subgroup");
  vk::CoopMatShape s8{16, 16, 32, T::s8, T::u8, T::s32, T::s32, S::queue_family, true};
  EXPECT_EQ(s8.str(), "16x16x32 s8*u8+s32->s32 queue family saturating");
}

TEST(Vk, UnknownDeviceIsAClearError) {
  vk::ContextOptions o;
  o.device = "no-such-gpu-xyz";
  o.pipeline_cache = "off";
  try {
    vk::Context c(o);
    FAIL() << "expected an error";
  } catch (const vk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-gpu-xyz"), std::string::npos) << e.what();
  }
}

TEST(Vk, UploadDownloadRoundTripEveryMemoryKind) {
  for (auto kind : {vk::MemoryKind::device, vk::MemoryKind::upload, vk::MemoryKind::download}) {
    std::vector<uint32_t> v(100003);
    std::iota(v.begin(), v.end(), 7u);
    vk::Buffer b = context().buffer(v.size() * 4, kind, "round trip");
    context().upload(b, v);
    std::vector<uint32_t> back(v.size(), 0);
    context().download(b, back.data(), back.size() * 4);
    EXPECT_EQ(back, v);
    // a partial transfer at an offset
    std::vector<uint32_t> part(10, 0xabcdef01u);
    context().upload(b, part.data(), 40, 400);
    context().download(b, back.data(), back.size() * 4);
    EXPECT_EQ(back[99], v[99]);
    EXPECT_EQ(back[100], 0xabcdef01u);
    EXPECT_EQ(back[110], v[110]);
  }
}

TEST(Vk, TransfersLargerThanTheStagingBuffer) {
  const size_t n = (65u << 20) / 4 + 12345;  // > 64 MiB staging chunk
  std::vector<uint32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint32_t>(i * 2654435761u);
  vk::Buffer b = context().upload_new(v, "large");
  auto back = context().download_all<uint32_t>(b);
  EXPECT_TRUE(back == v);
}

TEST(Vk, BadRequestsAreErrorsNotCrashes) {
  EXPECT_THROW(context().buffer(0, vk::MemoryKind::device, "empty"), vk::Error);
  const auto& info = context().info();
  try {
    context().buffer(info.max_allocation_size + 1, vk::MemoryKind::device, "too big tensor");
    FAIL() << "expected an error";
  } catch (const vk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("too big tensor"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("maxMemoryAllocationSize"), std::string::npos);
  }
  vk::Buffer small = context().buffer(64);
  std::vector<char> data(65);
  EXPECT_THROW(context().upload(small, data.data(), 65), vk::Error);
  EXPECT_THROW(context().download(small, data.data(), 8, 60), vk::Error);
  EXPECT_THROW(context().pipeline({"no_such_shader", {}, 1, 0, 0}), vk::Error);
  EXPECT_THROW(context().pipeline({"fwht", {{0, 32}, {1, 128}}, 2, 16, 3}), vk::Error);  // subgroup size 3
}

TEST(Vk, BindingLargerThanStorageBufferRangeIsRefused) {
  const auto& info = context().info();
  const uint64_t want = info.max_storage_buffer_range + 1024;
  if (want > info.max_allocation_size || want > (1ull << 31))
    GTEST_SKIP() << "this device's binding range is too large to exceed in a test";
  vk::Buffer big = context().buffer(want, vk::MemoryKind::device, "big");
  vk::Buffer out = context().buffer(1024);
  Kernels& k = kernels();
  auto cmd = context().commands();
  try {
    k.fwht(cmd, big, out, 1, 128, 128);
    FAIL() << "expected an error";
  } catch (const vk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("maxStorageBufferRange"), std::string::npos) << e.what();
  }
}

TEST(Vk, RecordOnceReplayManyWithTimestamps) {
  std::vector<float> v(4096, 1.5f);
  vk::Buffer a = context().upload_new(v, "a");
  vk::Buffer b = context().buffer(v.size() * 4);
  auto cmd = context().commands(3);
  cmd.timestamp(0);
  cmd.fill(b, 0x7fc0dead);
  cmd.barrier();
  cmd.timestamp(1);
  cmd.copy(a, b, v.size() * 4);
  cmd.timestamp(2);
  for (int rep = 0; rep < 3; ++rep) {
    context().upload(b, std::vector<float>(v.size(), -1.0f));
    cmd.run();
    EXPECT_EQ(context().download_all<float>(b), v);
    auto ts = cmd.timestamps_ns();
    ASSERT_EQ(ts.size(), 3u);
    EXPECT_LE(ts[0], ts[1]);
    EXPECT_LE(ts[1], ts[2]);
  }
  EXPECT_THROW(cmd.copy(a, b, 4), vk::Error);  // recording is closed once it ran
}

TEST(Vk, CountsRecordedDispatchesAndBarriers) {
  std::vector<uint32_t> v(1024);
  std::iota(v.begin(), v.end(), 1u);
  vk::Buffer a = context().upload_new(v, "a");
  vk::Buffer b = context().buffer(v.size() * 4);
  vk::Buffer c = context().buffer(v.size() * 4);
  vk::Pipeline copy = context().pipeline({"copy", {}, 2, 4, 0});
  const uint32_t n16 = static_cast<uint32_t>(v.size() * 4 / 16);
  auto cmd = context().commands(1);
  EXPECT_EQ(cmd.dispatches(), 0u);
  EXPECT_EQ(cmd.barriers(), 0u);
  cmd.timestamp(0);
  cmd.fill(c, 0);  // transfers and timestamps are neither
  cmd.barrier();
  cmd.dispatch(copy, {a, b}, n16, 1);
  cmd.dispatch(copy, {a, b}, n16, 0);  // no workgroups: nothing recorded, not counted
  cmd.barrier();
  cmd.dispatch(copy, {b, c}, n16, 2);
  EXPECT_EQ(cmd.dispatches(), 2u);
  EXPECT_EQ(cmd.barriers(), 2u);
  vk::Commands moved = std::move(cmd);
  for (int rep = 0; rep < 2; ++rep) {  // replays record nothing new
    moved.run();
    EXPECT_EQ(context().download_all<uint32_t>(c), v);
  }
  EXPECT_EQ(moved.dispatches(), 2u);
  EXPECT_EQ(moved.barriers(), 2u);
}

TEST(Vk, PipelineCacheIsWrittenAndReused) {
  auto dir = std::filesystem::temp_directory_path() / ("pqvk-cache-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string file = (dir / "cache.bin").string();
  for (int round = 0; round < 2; ++round) {
    vk::ContextOptions o;
    o.pipeline_cache = file;
    o.validation = true;
    vk::Context c(o);
    auto p = c.pipeline({"copy", {}, 2, 4, 0});
    EXPECT_TRUE(p.valid());
    EXPECT_EQ(c.validation_messages(), 0u);
  }
  EXPECT_TRUE(std::filesystem::exists(file));
  EXPECT_GT(std::filesystem::file_size(file), 16u);
  // A corrupt cache file is ignored, not handed to the driver.
  { std::ofstream(file, std::ios::binary) << "garbage garbage garbage garbage garbage"; }
  vk::ContextOptions o;
  o.pipeline_cache = file;
  vk::Context c(o);
  EXPECT_TRUE(c.pipeline({"copy", {}, 2, 4, 0}).valid());
  std::filesystem::remove_all(dir);
}

TEST(Vk, EveryShaderIsEmbedded) {
  auto names = shaders::names();
  for (const char* want : {"fwht", "pq_dequant", "pq_gemv", "pq_gemm", "pq_gemm_coopmat", "pq_gemm_coopmat_emulated", "f16_gemv", "f16_gemm",
                           "attention", "attention_tiled", "attention_decode"})
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
}

}  // namespace
}  // namespace pqvk::test
