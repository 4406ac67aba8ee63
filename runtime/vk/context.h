// The Vulkan layer: the only code in pqvk that touches raw Vulkan handles (besides pq-chat's
// window renderer, apps/chat/vulkan_window.cpp, which draws with this context's device through
// Context::native() and Context::with_queue()).
//
// A small API in the spirit of Kompute / ncnn's backend:
//   Context   instance + one device + queue, capability report, pipeline cache, validation
//   Buffer    a device buffer (device-local, or host-visible for staging), move-only
//   Pipeline  a compute pipeline built from an embedded shader + specialization constants
//   Commands  a recorded command buffer: dispatches, barriers, copies, timestamps; submit
//             it once, or record once and replay many times
// Every Vulkan failure becomes a pqvk::vk::Error with a message that names what failed;
// out-of-device-memory and device-lost are errors, never aborts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pqvk::vk {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One cooperative-matrix configuration a driver supports (VK_NV_cooperative_matrix,
// VK_KHR_cooperative_matrix): D (M x N) = A (M x K) * B (K x N) + C (M x N), each matrix with
// its component type, shared by the invocations of `scope`.
struct CoopMatShape {
  enum class Type : uint8_t { f16, f32, f64, s8, s16, s32, s64, u8, u16, u32, u64, other };
  enum class Scope : uint8_t { device, workgroup, subgroup, queue_family, other };
  uint32_t m = 0, n = 0, k = 0;
  Type a = Type::other, b = Type::other, c = Type::other, d = Type::other;  // d: the result
  Scope scope = Scope::other;
  bool saturating = false;  // KHR's saturatingAccumulation (integer types); false for NV

  static const char* name(Type t);    // "f16", "s8", ...
  static const char* name(Scope s);   // "subgroup", "queue family", ...
  std::string str() const;            // "16x8x16 f16*f16+f32->f32 subgroup[ saturating]"
};

// What a device can do, as the runtime and `pq-info` see it.
struct DeviceInfo {
  uint32_t index = 0;
  std::string name;
  std::string type;          // "discrete", "integrated", "virtual", "cpu", "other"
  std::string driver;        // driver name + info
  std::string api_version;   // "1.3.230"
  uint32_t vendor_id = 0, device_id = 0;
  uint32_t subgroup_size = 0, min_subgroup_size = 0, max_subgroup_size = 0;
  bool subgroup_size_control = false;  // can pin the subgroup size per pipeline
  bool subgroup_arithmetic = false, subgroup_shuffle = false;
  bool fp16 = false, int8 = false;                        // shaderFloat16, shaderInt8
  bool storage_8bit = false, storage_16bit = false;      // storageBuffer8/16BitAccess
  // vulkanMemoryModel with vulkanMemoryModelDeviceScope; the context enables both with
  // VK_NV_cooperative_matrix (SPIR-V with cooperative matrices declares the Vulkan memory model;
  // with it enabled, the other shaders' device-scope barriers and atomics need the device scope).
  bool vulkan_memory_model = false;
  bool cooperative_matrix_khr = false, cooperative_matrix_nv = false;
  bool cooperative_matrix2_nv = false;
  // The shapes of VK_NV_cooperative_matrix, when the device has it with its cooperativeMatrix
  // feature in compute shaders (the context then enables both); empty otherwise.
  std::vector<CoopMatShape> coopmat_nv;
  // The shapes of VK_KHR_cooperative_matrix where the device has it (reported only: the
  // context does not enable it); empty otherwise.
  std::vector<CoopMatShape> coopmat_khr;
  // Whether coopmat_nv has the M x N x K shape with fp16 A and B, fp32 C and D (fp32
  // accumulation) and subgroup scope.
  bool has_coopmat_nv_f16(uint32_t m, uint32_t n, uint32_t k) const;
  bool integer_dot_product = false;
  bool memory_budget = false;
  uint64_t max_storage_buffer_range = 0;
  uint64_t max_allocation_size = 0;
  uint32_t max_shared_memory = 0;
  uint32_t max_workgroup_invocations = 0;
  uint32_t max_workgroup_count_x = 0;
  uint32_t max_push_constants = 0;
  double timestamp_period_ns = 0;  // 0: no timestamps on the compute queue
  struct Heap {
    uint64_t size = 0, budget = 0, usage = 0;  // budget/usage 0 without VK_EXT_memory_budget
    bool device_local = false;
  };
  std::vector<Heap> heaps;
};

struct ContextOptions {
  // Which device: an index ("1") or a case-insensitive substring of its name ("H100",
  // "llvmpipe"). Empty: the PQVK_DEVICE environment variable, else the first discrete GPU,
  // then integrated, then virtual, then CPU implementations (lavapipe).
  std::string device;
  // Khronos validation layer + a debug messenger that counts every warning and error.
  // Also switched on by PQVK_VALIDATION=1.
  bool validation = false;
  // On-disk pipeline cache file. Empty: $PQVK_CACHE_DIR, else $XDG_CACHE_HOME/pqvk, else
  // ~/.cache/pqvk, named after the device's pipelineCacheUUID. "off" disables it.
  std::string pipeline_cache;

  // Presentation: for an app that also draws a window with this device (pq-chat's UI renderer,
  // apps/chat/). Unset (the default): compute only, exactly as without this option. Set: the
  // instance also enables VK_KHR_surface and `instance_extensions` (the window system's, e.g.
  // from glfwGetRequiredInstanceExtensions), the device VK_KHR_swapchain, and the one queue is
  // taken from a family with graphics + compute that `can_present` accepts; a device without
  // one is skipped (or, when named by `device`, an error).
  struct Presentation {
    std::vector<std::string> instance_extensions;
    // Whether queue family `family` of a physical device can present to the app's windows
    // (e.g. glfwGetPhysicalDevicePresentationSupport). Handles as integers: VkInstance,
    // VkPhysicalDevice.
    std::function<bool(uint64_t instance, uint64_t physical_device, uint32_t family)> can_present;
  };
  std::optional<Presentation> presentation;
};

class Context;

enum class MemoryKind {
  device,    // device-local storage buffer (weights, activations)
  upload,    // host-visible, host-coherent: CPU writes, GPU reads (staging)
  download,  // host-visible, cached where possible: GPU writes, CPU reads (staging)
};

class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&&) noexcept;
  Buffer& operator=(Buffer&&) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  size_t size() const { return size_; }
  bool valid() const { return handle_ != 0; }
  MemoryKind kind() const { return kind_; }
  void* mapped() const { return mapped_; }  // non-null for host-visible buffers

 private:
  friend class Context;
  friend class Commands;
  Context* ctx_ = nullptr;
  uint64_t handle_ = 0, memory_ = 0;  // VkBuffer, VkDeviceMemory
  size_t size_ = 0;
  MemoryKind kind_ = MemoryKind::device;
  void* mapped_ = nullptr;
  bool coherent_ = true;
  void release();
};

// A binding of (part of) a buffer. range 0 means "to the end of the buffer".
struct BufferView {
  const Buffer* buffer = nullptr;
  size_t offset = 0, range = 0;
  BufferView() = default;
  BufferView(const Buffer& b) : buffer(&b) {}  // NOLINT: implicit on purpose
  BufferView(const Buffer& b, size_t off, size_t len) : buffer(&b), offset(off), range(len) {}
  size_t bytes() const;
};

// Specialization constants: (constant_id, 32-bit value) pairs; floats as their bit pattern.
using SpecConstants = std::vector<std::pair<uint32_t, uint32_t>>;

struct PipelineDesc {
  std::string shader;            // name of shaders/<shader>.comp
  SpecConstants spec;            // local size is taken from spec ids 0/1/2 where the shader uses them
  uint32_t num_buffers = 0;      // storage buffers at set 0, bindings 0..n-1
  uint32_t push_constant_bytes = 0;
  uint32_t required_subgroup_size = 0;  // 0: the driver's choice; else needs subgroup_size_control
  uint32_t local_size_x = 0;  // the workgroup's x size, when known: with a required subgroup size
                              // that divides it, subgroups are also required to be full
};

class Pipeline {
 public:
  Pipeline() = default;
  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;
  ~Pipeline();
  const PipelineDesc& desc() const { return desc_; }
  bool valid() const { return pipeline_ != 0; }

 private:
  friend class Context;
  friend class Commands;
  Context* ctx_ = nullptr;
  PipelineDesc desc_;
  uint64_t pipeline_ = 0, layout_ = 0, set_layout_ = 0;
  void release();
};

// A command buffer being recorded. Dispatches are ordered by explicit barrier() calls
// (a full compute->compute memory barrier), so independent dispatches may overlap.
class Commands {
 public:
  Commands(Commands&&) noexcept;
  Commands& operator=(Commands&&) = delete;
  Commands(const Commands&) = delete;
  Commands& operator=(const Commands&) = delete;
  ~Commands();

  void dispatch(const Pipeline& p, const std::vector<BufferView>& buffers, const void* push,
                size_t push_bytes, uint32_t groups_x, uint32_t groups_y = 1, uint32_t groups_z = 1);
  template <class T>
  void dispatch(const Pipeline& p, const std::vector<BufferView>& buffers, const T& push,
                uint32_t gx, uint32_t gy = 1, uint32_t gz = 1) {
    dispatch(p, buffers, &push, sizeof(T), gx, gy, gz);
  }
  void barrier();                                   // compute/transfer -> compute/transfer
  void copy(const Buffer& src, const Buffer& dst, size_t bytes, size_t src_off = 0, size_t dst_off = 0);
  void fill(const Buffer& dst, uint32_t value, size_t bytes = 0, size_t offset = 0);
  // GPU timestamps: slot < the count given to Context::commands(); every slot must be written
  // before run(). Read with timestamps_ns().
  void timestamp(uint32_t slot);

  // Ends recording (first call) and submits; waits for completion. May be called again to
  // replay the same recording.
  void run();
  // Timestamps of the last run(), in nanoseconds, relative to slot 0.
  std::vector<double> timestamps_ns() const;

  // What has been recorded so far: vkCmdDispatch calls (a dispatch of zero workgroups records
  // nothing and is not counted) and barrier() calls. Replays do not change them.
  uint32_t dispatches() const { return dispatches_; }
  uint32_t barriers() const { return barriers_; }

 private:
  friend class Context;
  explicit Commands(Context* ctx, uint32_t timestamp_slots);
  Context* ctx_;
  uint64_t pool_ = 0, cmd_ = 0, desc_pool_ = 0, query_pool_ = 0, fence_ = 0;
  std::vector<uint64_t> desc_pools_;
  uint32_t timestamp_slots_ = 0, sets_in_pool_ = 0;
  uint32_t dispatches_ = 0, barriers_ = 0;
  bool ended_ = false;
  uint64_t allocate_set(uint64_t layout);
  void ensure_recording(const char* what) const;
};

class Context {
 public:
  explicit Context(const ContextOptions& opts = {});
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Every device the loader sees (creates a temporary instance).
  static std::vector<DeviceInfo> list_devices();

  const DeviceInfo& info() const { return info_; }
  // Number of validation warnings/errors seen so far (0 when validation is off).
  uint32_t validation_messages() const;
  bool validation_enabled() const { return validation_; }
  const std::string& pipeline_cache_path() const { return cache_path_; }

  // Throws Error naming `what` when bytes exceed maxMemoryAllocationSize or memory runs out.
  Buffer buffer(size_t bytes, MemoryKind kind = MemoryKind::device, const std::string& what = "");
  // Staged copies between host memory and any buffer (blocking).
  void upload(const Buffer& dst, const void* src, size_t bytes, size_t dst_offset = 0);
  void download(const Buffer& src, void* dst, size_t bytes, size_t src_offset = 0);
  template <class T> void upload(const Buffer& dst, const std::vector<T>& v) {
    upload(dst, v.data(), v.size() * sizeof(T));
  }
  template <class T> Buffer upload_new(const std::vector<T>& v, const std::string& what = "") {
    Buffer b = buffer(v.size() * sizeof(T), MemoryKind::device, what);
    upload(b, v.data(), v.size() * sizeof(T));
    return b;
  }
  template <class T> std::vector<T> download_all(const Buffer& b) {
    std::vector<T> v(b.size() / sizeof(T));
    download(b, v.data(), v.size() * sizeof(T));
    return v;
  }

  Pipeline pipeline(const PipelineDesc& desc);
  Commands commands(uint32_t timestamp_slots = 0);

  // Device memory currently allocated through this context, in bytes.
  uint64_t allocated_bytes() const { return allocated_; }

  // ---- raw access, for an app's UI renderer only (apps/chat/) ----
  // Model code never uses these: it goes through Buffer / Pipeline / Commands. A UI renderer
  // (Dear ImGui's Vulkan backend, a swapchain) needs the handles themselves. Vulkan functions
  // are reached through volk (volk.h), which this context has loaded for its instance and
  // device. Handles as integers to keep Vulkan headers out of this file.
  struct Native {
    uint64_t instance = 0;         // VkInstance
    uint64_t physical_device = 0;  // VkPhysicalDevice
    uint64_t device = 0;           // VkDevice
    uint64_t queue = 0;            // VkQueue (graphics + compute + present with `presentation`)
    uint32_t queue_family = 0;
  };
  Native native() const;
  bool presentation_enabled() const { return presentation_; }
  // Runs fn holding the lock that serializes every use of the queue: this layer's own
  // submissions take it, so code outside it that calls vkQueueSubmit, vkQueuePresentKHR or
  // vkQueueWaitIdle on native().queue (another thread may be running the model) must do so
  // inside fn. fn must not call back into this Context's submitting functions (deadlock).
  void with_queue(const std::function<void()>& fn) const;

  struct Impl;  // Vulkan handles; defined in internal.h

 private:
  friend class Buffer;
  friend class Pipeline;
  friend class Commands;
  void destroy();
  std::unique_ptr<Impl> impl_;
  DeviceInfo info_;
  bool validation_ = false;
  bool presentation_ = false;
  std::string cache_path_;
  uint64_t allocated_ = 0;
};

// Throws Error("<what>: <VkResult name>") unless r is VK_SUCCESS (r as int to keep Vulkan
// headers out of this file).
void check(int vk_result, const char* what);
const char* result_name(int vk_result);

}  // namespace pqvk::vk
