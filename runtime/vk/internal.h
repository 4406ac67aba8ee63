// Private to runtime/vk: what the Vulkan layer's implementation files share (context.h is
// the public API). Nothing outside runtime/vk includes this file.
//   device.cpp     loader, instance, validation messenger, device enumeration, capability
//                  report (DeviceInfo), selection, device creation and teardown; errors
//   memory.cpp     Buffer, memory types and allocation, staged upload/download
//   pipelines.cpp  shader lookup, pipelines, specialization constants, on-disk pipeline cache
//   commands.cpp   Commands: recording, dispatch, barriers, copies, fill, timestamps, run
#pragma once

#include <volk.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "vk/context.h"

namespace pqvk::vk {

// ---- the context's Vulkan state -------------------------------------------------------------

struct Context::Impl {
  VkInstance instance = VK_NULL_HANDLE;
  VkDebugUtilsMessengerEXT messenger = VK_NULL_HANDLE;
  VkPhysicalDevice physical = VK_NULL_HANDLE;
  VkDevice device = VK_NULL_HANDLE;
  VkQueue queue = VK_NULL_HANDLE;
  uint32_t queue_family = 0;
  uint32_t timestamp_valid_bits = 0;
  bool full_subgroups = false;
  VkDeviceSize storage_alignment = 1;
  VkPhysicalDeviceMemoryProperties mem{};
  VkPipelineCache cache = VK_NULL_HANDLE;
  VkCommandPool transfer_pool = VK_NULL_HANDLE;
  std::atomic<uint32_t> validation_count{0};
  std::mutex queue_mutex;
};

// ---- handle casts: the public header keeps handles as integers ------------------------------

template <class H> uint64_t to_u64(H h) { return reinterpret_cast<uint64_t>(h); }
template <class H> H from_u64(uint64_t v) { return reinterpret_cast<H>(v); }

// Throws Error unless [offset, offset + bytes) lies inside b; `op` names the operation
// (memory.cpp; used by the staged transfers and by Commands::copy / fill).
void check_range(const Buffer& b, size_t bytes, size_t offset, const char* op);

// Submits cb to the context's queue (under its lock) signalling `fence`, and waits for the
// fence (commands.cpp; used by Commands::run and the staged transfers). `what` is appended to
// the names of the calls in errors ("" or e.g. " (transfer)").
void submit_and_wait(Context::Impl& I, VkCommandBuffer cb, VkFence fence, const char* what);

// ---- the on-disk pipeline cache (pipelines.cpp), opened and closed with the device ----------

// The cache file for ContextOptions::pipeline_cache `option` on the device with `props`:
// `option` itself, else a file named after pipelineCacheUUID in the default cache directory;
// "" when caching is off ("off", or no directory).
std::string pipeline_cache_file(const std::string& option, const VkPhysicalDeviceProperties& props);
// Creates I.cache, seeded from `file` when that file was written by this very device + driver.
void open_pipeline_cache(Context::Impl& I, const std::string& file, const VkPhysicalDeviceProperties& props);
// Writes I.cache to `file` (when not ""; best effort, through a temporary file named with
// `unique`), then destroys it. The device must be idle.
void close_pipeline_cache(Context::Impl& I, const std::string& file, uintptr_t unique);

}  // namespace pqvk::vk
