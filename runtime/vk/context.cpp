// The Vulkan layer (see context.h). Sections, top to bottom:
//   errors, handle casts, capability queries, instance + device selection, memory/buffers,
//   pipeline cache, pipelines, command recording, timestamps.
#include "vk/context.h"

#include <volk.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "vk/shader_registry.h"

namespace pqvk::vk {

// ---- errors ------------------------------------------------------------------------------

const char* result_name(int r) {
  switch (static_cast<VkResult>(r)) {
#define PQVK_CASE(x) case x: return #x;
    PQVK_CASE(VK_SUCCESS) PQVK_CASE(VK_NOT_READY) PQVK_CASE(VK_TIMEOUT) PQVK_CASE(VK_INCOMPLETE)
    PQVK_CASE(VK_ERROR_OUT_OF_HOST_MEMORY) PQVK_CASE(VK_ERROR_OUT_OF_DEVICE_MEMORY)
    PQVK_CASE(VK_ERROR_INITIALIZATION_FAILED) PQVK_CASE(VK_ERROR_DEVICE_LOST)
    PQVK_CASE(VK_ERROR_MEMORY_MAP_FAILED) PQVK_CASE(VK_ERROR_LAYER_NOT_PRESENT)
    PQVK_CASE(VK_ERROR_EXTENSION_NOT_PRESENT) PQVK_CASE(VK_ERROR_FEATURE_NOT_PRESENT)
    PQVK_CASE(VK_ERROR_INCOMPATIBLE_DRIVER) PQVK_CASE(VK_ERROR_TOO_MANY_OBJECTS)
    PQVK_CASE(VK_ERROR_FORMAT_NOT_SUPPORTED) PQVK_CASE(VK_ERROR_FRAGMENTED_POOL)
    PQVK_CASE(VK_ERROR_OUT_OF_POOL_MEMORY) PQVK_CASE(VK_ERROR_INVALID_SHADER_NV)
    PQVK_CASE(VK_ERROR_UNKNOWN)
#undef PQVK_CASE
    default: return "VkResult(unknown)";
  }
}

void check(int r, const char* what) {
  if (r == VK_SUCCESS) return;
  std::string msg = std::string(what) + ": " + result_name(r);
  if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY) msg += " (out of device memory)";
  if (r == VK_ERROR_OUT_OF_HOST_MEMORY) msg += " (out of host memory)";
  if (r == VK_ERROR_DEVICE_LOST) msg += " (the GPU device was lost: driver reset, timeout or fault)";
  throw Error(msg);
}

namespace {

template <class H> uint64_t to_u64(H h) { return reinterpret_cast<uint64_t>(h); }
template <class H> H from_u64(uint64_t v) { return reinterpret_cast<H>(v); }

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

const char* type_name(VkPhysicalDeviceType t) {
  switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "cpu";
    default: return "other";
  }
}

int type_rank(VkPhysicalDeviceType t) {  // lower is preferred
  switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return 3;
    default: return 4;
  }
}

std::string version_string(uint32_t v) {
  return std::to_string(VK_API_VERSION_MAJOR(v)) + "." + std::to_string(VK_API_VERSION_MINOR(v)) +
         "." + std::to_string(VK_API_VERSION_PATCH(v));
}

std::vector<VkExtensionProperties> device_extensions(VkPhysicalDevice pd) {
  uint32_t n = 0;
  vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, nullptr);
  std::vector<VkExtensionProperties> v(n);
  vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, v.data());
  return v;
}

bool has_ext(const std::vector<VkExtensionProperties>& v, const char* name) {
  for (const auto& e : v)
    if (std::strcmp(e.extensionName, name) == 0) return true;
  return false;
}

// The features pqvk may enable, queried through one chain.
struct FeatureChain {
  VkPhysicalDeviceFeatures2 f2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
  VkPhysicalDeviceVulkan11Features v11{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
  VkPhysicalDeviceVulkan12Features v12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  VkPhysicalDeviceSubgroupSizeControlFeatures ssc{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_FEATURES};
  VkPhysicalDeviceShaderIntegerDotProductFeatures idot{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES};
  void link(bool with_ssc, bool with_idot) {
    f2.pNext = &v11;
    v11.pNext = &v12;
    void** tail = &v12.pNext;
    *tail = nullptr;
    if (with_ssc) { *tail = &ssc; tail = &ssc.pNext; *tail = nullptr; }
    if (with_idot) { *tail = &idot; tail = &idot.pNext; *tail = nullptr; }
  }
};

struct Candidate {
  VkPhysicalDevice pd = VK_NULL_HANDLE;
  DeviceInfo info;
  VkPhysicalDeviceType vk_type{};
  bool has_ssc_ext = false, has_idot = false, full_subgroups = false;
  uint32_t api = 0;
};

Candidate describe(VkPhysicalDevice pd, uint32_t index) {
  Candidate c;
  c.pd = pd;
  DeviceInfo& d = c.info;
  d.index = index;
  auto exts = device_extensions(pd);

  VkPhysicalDeviceProperties base{};
  vkGetPhysicalDeviceProperties(pd, &base);
  c.api = base.apiVersion;
  const bool v13 = VK_API_VERSION_MINOR(base.apiVersion) >= 3 || VK_API_VERSION_MAJOR(base.apiVersion) > 1;
  c.has_ssc_ext = v13 || has_ext(exts, VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME);
  c.has_idot = v13 || has_ext(exts, VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME);

  VkPhysicalDeviceProperties2 p2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
  VkPhysicalDeviceSubgroupProperties sg{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  VkPhysicalDeviceSubgroupSizeControlProperties sscp{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_PROPERTIES};
  VkPhysicalDeviceDriverProperties drv{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
  p2.pNext = &sg;
  sg.pNext = &drv;
  if (c.has_ssc_ext) drv.pNext = &sscp;
  vkGetPhysicalDeviceProperties2(pd, &p2);
  const VkPhysicalDeviceLimits& lim = base.limits;

  FeatureChain fc;
  fc.link(c.has_ssc_ext, c.has_idot);
  vkGetPhysicalDeviceFeatures2(pd, &fc.f2);

  d.name = base.deviceName;
  d.type = type_name(base.deviceType);
  c.vk_type = base.deviceType;
  d.driver = std::string(drv.driverName) + " " + drv.driverInfo;
  d.api_version = version_string(base.apiVersion);
  d.vendor_id = base.vendorID;
  d.device_id = base.deviceID;
  d.subgroup_size = sg.subgroupSize;
  d.min_subgroup_size = d.max_subgroup_size = sg.subgroupSize;
  if (c.has_ssc_ext && fc.ssc.subgroupSizeControl) {
    d.subgroup_size_control = (sscp.requiredSubgroupSizeStages & VK_SHADER_STAGE_COMPUTE_BIT) != 0;
    d.min_subgroup_size = sscp.minSubgroupSize;
    d.max_subgroup_size = sscp.maxSubgroupSize;
    c.full_subgroups = fc.ssc.computeFullSubgroups;
  }
  const bool compute_sg = (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) != 0;
  d.subgroup_arithmetic = compute_sg && (sg.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT);
  d.subgroup_shuffle = compute_sg && (sg.supportedOperations & VK_SUBGROUP_FEATURE_SHUFFLE_BIT);
  d.fp16 = fc.v12.shaderFloat16;
  d.int8 = fc.v12.shaderInt8;
  d.storage_8bit = fc.v12.storageBuffer8BitAccess;
  d.storage_16bit = fc.v11.storageBuffer16BitAccess;
  d.cooperative_matrix_khr = has_ext(exts, "VK_KHR_cooperative_matrix");
  d.cooperative_matrix_nv = has_ext(exts, "VK_NV_cooperative_matrix");
  d.cooperative_matrix2_nv = has_ext(exts, "VK_NV_cooperative_matrix2");
  d.integer_dot_product = c.has_idot && fc.idot.shaderIntegerDotProduct;
  d.memory_budget = has_ext(exts, VK_EXT_MEMORY_BUDGET_EXTENSION_NAME);
  d.max_storage_buffer_range = lim.maxStorageBufferRange;
  d.max_shared_memory = lim.maxComputeSharedMemorySize;
  d.max_workgroup_invocations = lim.maxComputeWorkGroupInvocations;
  d.max_workgroup_count_x = lim.maxComputeWorkGroupCount[0];
  d.max_push_constants = lim.maxPushConstantsSize;

  VkPhysicalDeviceMaintenance3Properties m3{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
  VkPhysicalDeviceProperties2 p2b{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
  p2b.pNext = &m3;
  vkGetPhysicalDeviceProperties2(pd, &p2b);
  d.max_allocation_size = m3.maxMemoryAllocationSize;

  // Timestamps need a compute queue with valid bits.
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, nullptr);
  std::vector<VkQueueFamilyProperties> qf(nq);
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, qf.data());
  for (const auto& q : qf)
    if ((q.queueFlags & VK_QUEUE_COMPUTE_BIT) && q.timestampValidBits > 0 &&
        lim.timestampComputeAndGraphics) {
      d.timestamp_period_ns = lim.timestampPeriod;
      break;
    }

  VkPhysicalDeviceMemoryProperties2 mp{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2};
  VkPhysicalDeviceMemoryBudgetPropertiesEXT budget{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT};
  if (d.memory_budget) mp.pNext = &budget;
  vkGetPhysicalDeviceMemoryProperties2(pd, &mp);
  for (uint32_t i = 0; i < mp.memoryProperties.memoryHeapCount; ++i) {
    DeviceInfo::Heap h;
    h.size = mp.memoryProperties.memoryHeaps[i].size;
    h.device_local = mp.memoryProperties.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT;
    if (d.memory_budget) {
      h.budget = budget.heapBudget[i];
      h.usage = budget.heapUsage[i];
    }
    d.heaps.push_back(h);
  }
  return c;
}

void init_loader() {
  static std::once_flag once;
  static VkResult result = VK_SUCCESS;
  std::call_once(once, [] { result = volkInitialize(); });
  if (result != VK_SUCCESS)
    throw Error("no Vulkan loader found (libvulkan.so.1): install the Debian package libvulkan1 "
                "and a driver (mesa-vulkan-drivers for lavapipe)");
}

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

bool layer_available(const char* name) {
  uint32_t n = 0;
  vkEnumerateInstanceLayerProperties(&n, nullptr);
  std::vector<VkLayerProperties> v(n);
  vkEnumerateInstanceLayerProperties(&n, v.data());
  for (const auto& l : v)
    if (std::strcmp(l.layerName, name) == 0) return true;
  return false;
}

bool instance_extension_available(const char* name) {
  uint32_t n = 0;
  vkEnumerateInstanceExtensionProperties(nullptr, &n, nullptr);
  std::vector<VkExtensionProperties> v(n);
  vkEnumerateInstanceExtensionProperties(nullptr, &n, v.data());
  return has_ext(v, name);
}

// extra: instance extensions asked for by ContextOptions::presentation (none otherwise).
VkInstance make_instance(bool validation, VkDebugUtilsMessengerCreateInfoEXT* messenger_info,
                         const std::vector<std::string>& extra = {}) {
  init_loader();
  VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
  app.pApplicationName = "pqvk";
  app.pEngineName = "pqvk";
  app.apiVersion = VK_API_VERSION_1_3;
  std::vector<const char*> layers, exts;
  if (validation) {
    if (!layer_available("VK_LAYER_KHRONOS_validation"))
      throw Error("validation requested (PQVK_VALIDATION) but VK_LAYER_KHRONOS_validation is not "
                  "installed: install the Debian package vulkan-validationlayers");
    layers.push_back("VK_LAYER_KHRONOS_validation");
    exts.push_back(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
  }
  for (const std::string& e : extra) {
    if (!instance_extension_available(e.c_str()))
      throw Error("the Vulkan instance extension " + e + " (needed to draw a window) is not available: "
                  "install a Vulkan driver with window-system support (mesa-vulkan-drivers)");
    exts.push_back(e.c_str());
  }
  VkInstanceCreateInfo ci{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
  ci.pApplicationInfo = &app;
  ci.enabledLayerCount = static_cast<uint32_t>(layers.size());
  ci.ppEnabledLayerNames = layers.data();
  ci.enabledExtensionCount = static_cast<uint32_t>(exts.size());
  ci.ppEnabledExtensionNames = exts.data();
  if (validation) ci.pNext = messenger_info;  // also catches messages from create/destroy
  VkInstance inst = VK_NULL_HANDLE;
  check(vkCreateInstance(&ci, nullptr, &inst), "vkCreateInstance");
  volkLoadInstanceOnly(inst);
  return inst;
}

std::vector<Candidate> enumerate(VkInstance inst) {
  uint32_t n = 0;
  check(vkEnumeratePhysicalDevices(inst, &n, nullptr), "vkEnumeratePhysicalDevices");
  std::vector<VkPhysicalDevice> pds(n);
  check(vkEnumeratePhysicalDevices(inst, &n, pds.data()), "vkEnumeratePhysicalDevices");
  std::vector<Candidate> out;
  for (uint32_t i = 0; i < n; ++i) out.push_back(describe(pds[i], i));
  return out;
}

}  // namespace

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

namespace {

VKAPI_ATTR VkBool32 VKAPI_CALL on_validation(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                              VkDebugUtilsMessageTypeFlagsEXT,
                                              const VkDebugUtilsMessengerCallbackDataEXT* data,
                                              void* user) {
  auto* count = static_cast<std::atomic<uint32_t>*>(user);
  count->fetch_add(1);
  std::fprintf(stderr, "[vulkan validation %s] %s\n",
               (severity & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT) ? "error" : "warning",
               data && data->pMessage ? data->pMessage : "(no message)");
  return VK_FALSE;
}

uint32_t find_memory_type(const VkPhysicalDeviceMemoryProperties& mem, uint32_t type_bits,
                          std::initializer_list<VkMemoryPropertyFlags> preferences) {
  for (VkMemoryPropertyFlags want : preferences)
    for (uint32_t i = 0; i < mem.memoryTypeCount; ++i)
      if ((type_bits & (1u << i)) && (mem.memoryTypes[i].propertyFlags & want) == want) return i;
  return UINT32_MAX;
}

// The queue family a presenting context uses on `pd`: graphics + compute, accepted by
// can_present, timestamps preferred; UINT32_MAX when there is none or the device lacks
// VK_KHR_swapchain.
uint32_t graphics_present_family(VkInstance inst, VkPhysicalDevice pd,
                                 const std::function<bool(uint64_t, uint64_t, uint32_t)>& can_present) {
  if (!has_ext(device_extensions(pd), VK_KHR_SWAPCHAIN_EXTENSION_NAME)) return UINT32_MAX;
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, nullptr);
  std::vector<VkQueueFamilyProperties> qf(nq);
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, qf.data());
  uint32_t best = UINT32_MAX;
  const VkQueueFlags need = VK_QUEUE_GRAPHICS_BIT | VK_QUEUE_COMPUTE_BIT;
  for (uint32_t i = 0; i < nq; ++i)
    if ((qf[i].queueFlags & need) == need && can_present(to_u64(inst), to_u64(pd), i) &&
        (best == UINT32_MAX || (qf[i].timestampValidBits && !qf[best].timestampValidBits)))
      best = i;
  return best;
}

std::string default_cache_dir() {
  if (const char* d = std::getenv("PQVK_CACHE_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/pqvk";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/pqvk";
  return "";
}

std::string hex(const uint8_t* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

}  // namespace

// ---- Context --------------------------------------------------------------------------------

std::vector<DeviceInfo> Context::list_devices() {
  VkInstance inst = make_instance(false, nullptr);
  std::vector<DeviceInfo> out;
  try {
    for (auto& c : enumerate(inst)) out.push_back(c.info);
  } catch (...) {
    vkDestroyInstance(inst, nullptr);
    throw;
  }
  vkDestroyInstance(inst, nullptr);
  return out;
}

Context::Context(const ContextOptions& opts) : impl_(std::make_unique<Impl>()) {
  validation_ = opts.validation || env_flag("PQVK_VALIDATION");
  Impl& I = *impl_;

  VkDebugUtilsMessengerCreateInfoEXT mi{VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT};
  mi.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
  mi.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                   VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                   VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
  mi.pfnUserCallback = on_validation;
  mi.pUserData = &I.validation_count;
  presentation_ = opts.presentation.has_value();
  if (presentation_ && !opts.presentation->can_present)
    throw Error("ContextOptions::presentation needs a can_present function");
  std::vector<std::string> window_exts;  // VK_KHR_surface (which VK_KHR_swapchain needs) + the app's
  if (presentation_) {
    window_exts.push_back(VK_KHR_SURFACE_EXTENSION_NAME);
    for (const std::string& e : opts.presentation->instance_extensions)
      if (std::find(window_exts.begin(), window_exts.end(), e) == window_exts.end()) window_exts.push_back(e);
  }
  I.instance = make_instance(validation_, &mi, window_exts);
  try {
    if (validation_)
      check(vkCreateDebugUtilsMessengerEXT(I.instance, &mi, nullptr, &I.messenger),
            "vkCreateDebugUtilsMessengerEXT");

    // ---- choose the device ----
    std::vector<Candidate> all = enumerate(I.instance);
    if (all.empty())
      throw Error("no Vulkan device found: install a driver (mesa-vulkan-drivers provides lavapipe)");
    std::string want = opts.device;
    if (want.empty())
      if (const char* e = std::getenv("PQVK_DEVICE")) want = e;
    // With presentation: the queue family each device would use (UINT32_MAX: it cannot draw).
    std::vector<uint32_t> present_family(all.size(), UINT32_MAX);
    if (presentation_)
      for (size_t k = 0; k < all.size(); ++k)
        present_family[k] = graphics_present_family(I.instance, all[k].pd, opts.presentation->can_present);
    auto usable = [&](const Candidate& c) { return !presentation_ || present_family[&c - all.data()] != UINT32_MAX; };
    const Candidate* chosen = nullptr;
    if (!want.empty()) {
      const bool numeric = std::all_of(want.begin(), want.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); });
      for (const auto& c : all) {
        if (numeric ? std::to_string(c.info.index) == want
                    : lower(c.info.name).find(lower(want)) != std::string::npos) {
          chosen = &c;
          break;
        }
      }
      if (!chosen) {
        std::string names;
        for (const auto& c : all) names += "\n  " + std::to_string(c.info.index) + ": " + c.info.name;
        throw Error("--device/PQVK_DEVICE '" + want + "' matches no Vulkan device; devices:" + names);
      }
      if (!usable(*chosen))
        throw Error("device '" + chosen->info.name + "' cannot draw to this window (no VK_KHR_swapchain, or no "
                    "queue family with graphics, compute and presentation)");
    } else {
      for (const auto& c : all)
        if (usable(c) && (!chosen || type_rank(c.vk_type) < type_rank(chosen->vk_type))) chosen = &c;
      if (!chosen)
        throw Error("no Vulkan device can draw to this window (each lacks VK_KHR_swapchain or a queue family "
                    "with graphics, compute and presentation)");
    }
    info_ = chosen->info;
    I.physical = chosen->pd;
    I.full_subgroups = chosen->full_subgroups;
    if (VK_API_VERSION_MINOR(chosen->api) < 2 && VK_API_VERSION_MAJOR(chosen->api) == 1)
      throw Error("device '" + info_.name + "' supports Vulkan " + info_.api_version +
                  "; pqvk needs Vulkan 1.2 or newer");
    if (!info_.subgroup_arithmetic)
      throw Error("device '" + info_.name + "' lacks subgroup arithmetic in compute shaders, which pqvk needs");

    // ---- queue ----
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(I.physical, &nq, nullptr);
    std::vector<VkQueueFamilyProperties> qf(nq);
    vkGetPhysicalDeviceQueueFamilyProperties(I.physical, &nq, qf.data());
    I.queue_family = UINT32_MAX;
    if (presentation_) {
      I.queue_family = present_family[chosen - all.data()];
      I.timestamp_valid_bits = qf[I.queue_family].timestampValidBits;
    } else {
      for (uint32_t i = 0; i < nq; ++i)  // prefer a compute queue with timestamps
        if ((qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) &&
            (I.queue_family == UINT32_MAX || (qf[i].timestampValidBits && !I.timestamp_valid_bits))) {
          I.queue_family = i;
          I.timestamp_valid_bits = qf[i].timestampValidBits;
        }
    }
    if (I.queue_family == UINT32_MAX) throw Error("device '" + info_.name + "' has no compute queue");

    // ---- features and extensions to enable ----
    FeatureChain have;
    have.link(chosen->has_ssc_ext, chosen->has_idot);
    vkGetPhysicalDeviceFeatures2(I.physical, &have.f2);
    FeatureChain on;
    on.link(chosen->has_ssc_ext && info_.subgroup_size_control, false);
    on.v11.storageBuffer16BitAccess = have.v11.storageBuffer16BitAccess;
    on.v12.shaderFloat16 = have.v12.shaderFloat16;
    on.v12.shaderInt8 = have.v12.shaderInt8;
    on.v12.storageBuffer8BitAccess = have.v12.storageBuffer8BitAccess;
    on.v12.hostQueryReset = have.v12.hostQueryReset;
    on.f2.features.shaderInt64 = have.f2.features.shaderInt64;
    if (info_.subgroup_size_control) {
      on.ssc.subgroupSizeControl = VK_TRUE;
      on.ssc.computeFullSubgroups = have.ssc.computeFullSubgroups;
    }
    auto exts = device_extensions(I.physical);
    std::vector<const char*> enable;
    const bool v13 = VK_API_VERSION_MINOR(chosen->api) >= 3;
    if (info_.subgroup_size_control && !v13) enable.push_back(VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME);
    if (info_.memory_budget) enable.push_back(VK_EXT_MEMORY_BUDGET_EXTENSION_NAME);
    if (presentation_) enable.push_back(VK_KHR_SWAPCHAIN_EXTENSION_NAME);

    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
    qci.queueFamilyIndex = I.queue_family;
    qci.queueCount = 1;
    qci.pQueuePriorities = &prio;
    VkDeviceCreateInfo dci{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
    dci.pNext = &on.f2;
    dci.queueCreateInfoCount = 1;
    dci.pQueueCreateInfos = &qci;
    dci.enabledExtensionCount = static_cast<uint32_t>(enable.size());
    dci.ppEnabledExtensionNames = enable.data();
    check(vkCreateDevice(I.physical, &dci, nullptr, &I.device), "vkCreateDevice");
    volkLoadDevice(I.device);
    vkGetDeviceQueue(I.device, I.queue_family, 0, &I.queue);
    vkGetPhysicalDeviceMemoryProperties(I.physical, &I.mem);
    VkPhysicalDeviceProperties props{};
    vkGetPhysicalDeviceProperties(I.physical, &props);
    I.storage_alignment = props.limits.minStorageBufferOffsetAlignment;

    VkCommandPoolCreateInfo pci{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
    pci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    pci.queueFamilyIndex = I.queue_family;
    check(vkCreateCommandPool(I.device, &pci, nullptr, &I.transfer_pool), "vkCreateCommandPool");

    // ---- pipeline cache: load the file if it was written by this very device + driver ----
    cache_path_ = opts.pipeline_cache;
    if (cache_path_.empty()) {
      std::string dir = default_cache_dir();
      if (!dir.empty()) cache_path_ = dir + "/pipelines-" + hex(props.pipelineCacheUUID, VK_UUID_SIZE) + ".bin";
    }
    if (cache_path_ == "off") cache_path_.clear();
    std::vector<char> blob;
    if (!cache_path_.empty()) {
      std::ifstream f(cache_path_, std::ios::binary);
      if (f) blob.assign(std::istreambuf_iterator<char>(f), {});
      // Header: u32 length, u32 version, u32 vendor, u32 device, u8[16] uuid. Anything else is
      // ignored rather than handed to the driver.
      bool ok = blob.size() >= 32;
      if (ok) {
        uint32_t hdr[4];
        std::memcpy(hdr, blob.data(), 16);
        ok = hdr[0] >= 32 && hdr[1] == VK_PIPELINE_CACHE_HEADER_VERSION_ONE &&
             hdr[2] == props.vendorID && hdr[3] == props.deviceID &&
             std::memcmp(blob.data() + 16, props.pipelineCacheUUID, VK_UUID_SIZE) == 0;
      }
      if (!ok) blob.clear();
    }
    VkPipelineCacheCreateInfo cci{VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
    cci.initialDataSize = blob.size();
    cci.pInitialData = blob.empty() ? nullptr : blob.data();
    check(vkCreatePipelineCache(I.device, &cci, nullptr, &I.cache), "vkCreatePipelineCache");
  } catch (...) {
    destroy();
    throw;
  }
}

Context::~Context() { destroy(); }

void Context::destroy() {
  if (!impl_) return;
  Impl& I = *impl_;
  if (I.device) {
    vkDeviceWaitIdle(I.device);
    if (I.cache) {
      if (!cache_path_.empty()) {
        size_t n = 0;
        if (vkGetPipelineCacheData(I.device, I.cache, &n, nullptr) == VK_SUCCESS && n) {
          std::vector<char> data(n);
          if (vkGetPipelineCacheData(I.device, I.cache, &n, data.data()) == VK_SUCCESS) {
            std::error_code ec;
            std::filesystem::create_directories(std::filesystem::path(cache_path_).parent_path(), ec);
            std::string tmp = cache_path_ + ".tmp" + std::to_string(reinterpret_cast<uintptr_t>(this));
            std::ofstream f(tmp, std::ios::binary);
            if (f && f.write(data.data(), static_cast<std::streamsize>(n))) {
              f.close();
              std::filesystem::rename(tmp, cache_path_, ec);
            }
            std::filesystem::remove(tmp, ec);
          }
        }
      }
      vkDestroyPipelineCache(I.device, I.cache, nullptr);
    }
    if (I.transfer_pool) vkDestroyCommandPool(I.device, I.transfer_pool, nullptr);
    vkDestroyDevice(I.device, nullptr);
  }
  if (I.messenger) vkDestroyDebugUtilsMessengerEXT(I.instance, I.messenger, nullptr);
  if (I.instance) vkDestroyInstance(I.instance, nullptr);
  impl_.reset();
}

uint32_t Context::validation_messages() const { return impl_->validation_count.load(); }

Context::Native Context::native() const {
  const Impl& I = *impl_;
  Native n;
  n.instance = to_u64(I.instance);
  n.physical_device = to_u64(I.physical);
  n.device = to_u64(I.device);
  n.queue = to_u64(I.queue);
  n.queue_family = I.queue_family;
  return n;
}

void Context::with_queue(const std::function<void()>& fn) const {
  std::lock_guard<std::mutex> lock(impl_->queue_mutex);
  fn();
}

// ---- buffers ---------------------------------------------------------------------------------

Buffer Context::buffer(size_t bytes, MemoryKind kind, const std::string& what) {
  Impl& I = *impl_;
  const std::string name = what.empty() ? "buffer" : what;
  if (bytes == 0) throw Error(name + ": cannot allocate a buffer of 0 bytes");
  if (info_.max_allocation_size && bytes > info_.max_allocation_size)
    throw Error(name + ": " + std::to_string(bytes) + " bytes exceed the device's maxMemoryAllocationSize (" +
                std::to_string(info_.max_allocation_size) + " bytes) on '" + info_.name +
                "'; split the tensor into several buffers");
  Buffer b;
  b.ctx_ = this;
  b.size_ = bytes;
  b.kind_ = kind;
  VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
  bci.size = bytes;
  bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
              VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  VkBuffer buf = VK_NULL_HANDLE;
  check(vkCreateBuffer(I.device, &bci, nullptr, &buf), (name + ": vkCreateBuffer").c_str());
  b.handle_ = to_u64(buf);
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(I.device, buf, &req);
  constexpr VkMemoryPropertyFlags DL = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
  constexpr VkMemoryPropertyFlags HV = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT;
  constexpr VkMemoryPropertyFlags HC = VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  constexpr VkMemoryPropertyFlags CA = VK_MEMORY_PROPERTY_HOST_CACHED_BIT;
  uint32_t type = UINT32_MAX;
  switch (kind) {
    case MemoryKind::device: type = find_memory_type(I.mem, req.memoryTypeBits, {DL, 0}); break;
    case MemoryKind::upload: type = find_memory_type(I.mem, req.memoryTypeBits, {HV | HC}); break;
    case MemoryKind::download:
      type = find_memory_type(I.mem, req.memoryTypeBits, {HV | HC | CA, HV | HC});
      break;
  }
  if (type == UINT32_MAX) throw Error(name + ": no suitable Vulkan memory type");
  VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
  mai.allocationSize = req.size;
  mai.memoryTypeIndex = type;
  VkDeviceMemory mem = VK_NULL_HANDLE;
  VkResult r = vkAllocateMemory(I.device, &mai, nullptr, &mem);
  if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
    throw Error(name + ": out of " + (r == VK_ERROR_OUT_OF_DEVICE_MEMORY ? "device" : "host") +
                " memory allocating " + std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB on '" +
                info_.name + "' (" + std::to_string(allocated_ >> 20) + " MiB already allocated by pqvk)");
  check(r, (name + ": vkAllocateMemory").c_str());
  b.memory_ = to_u64(mem);
  check(vkBindBufferMemory(I.device, buf, mem, 0), (name + ": vkBindBufferMemory").c_str());
  if (I.mem.memoryTypes[type].propertyFlags & HV) {
    check(vkMapMemory(I.device, mem, 0, VK_WHOLE_SIZE, 0, &b.mapped_), (name + ": vkMapMemory").c_str());
    b.coherent_ = I.mem.memoryTypes[type].propertyFlags & HC;
  }
  allocated_ += bytes;
  return b;
}

Buffer::Buffer(Buffer&& o) noexcept { *this = std::move(o); }
Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    ctx_ = o.ctx_;
    handle_ = o.handle_;
    memory_ = o.memory_;
    size_ = o.size_;
    kind_ = o.kind_;
    mapped_ = o.mapped_;
    coherent_ = o.coherent_;
    o.handle_ = o.memory_ = 0;
    o.mapped_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}
Buffer::~Buffer() { release(); }
void Buffer::release() {
  if (!ctx_ || !ctx_->impl_) return;
  VkDevice dev = ctx_->impl_->device;
  if (handle_) vkDestroyBuffer(dev, from_u64<VkBuffer>(handle_), nullptr);
  if (memory_) {
    vkFreeMemory(dev, from_u64<VkDeviceMemory>(memory_), nullptr);
    ctx_->allocated_ -= std::min<uint64_t>(ctx_->allocated_, size_);
  }
  handle_ = memory_ = 0;
  mapped_ = nullptr;
}

size_t BufferView::bytes() const { return range ? range : buffer->size() - offset; }

namespace {
// Runs `record` in a one-shot command buffer on the context's queue and waits.
template <class F>
void one_shot(Context::Impl& I, F&& record) {
  VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
  ai.commandPool = I.transfer_pool;
  ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  ai.commandBufferCount = 1;
  VkCommandBuffer cb = VK_NULL_HANDLE;
  check(vkAllocateCommandBuffers(I.device, &ai, &cb), "vkAllocateCommandBuffers");
  VkFence fence = VK_NULL_HANDLE;
  try {
    VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    check(vkBeginCommandBuffer(cb, &bi), "vkBeginCommandBuffer");
    record(cb);
    check(vkEndCommandBuffer(cb), "vkEndCommandBuffer");
    VkFenceCreateInfo fi{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    check(vkCreateFence(I.device, &fi, nullptr, &fence), "vkCreateFence");
    VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
    si.commandBufferCount = 1;
    si.pCommandBuffers = &cb;
    {
      std::lock_guard<std::mutex> lock(I.queue_mutex);
      check(vkQueueSubmit(I.queue, 1, &si, fence), "vkQueueSubmit (transfer)");
    }
    check(vkWaitForFences(I.device, 1, &fence, VK_TRUE, UINT64_MAX), "vkWaitForFences (transfer)");
  } catch (...) {
    if (fence) vkDestroyFence(I.device, fence, nullptr);
    vkFreeCommandBuffers(I.device, I.transfer_pool, 1, &cb);
    throw;
  }
  vkDestroyFence(I.device, fence, nullptr);
  vkFreeCommandBuffers(I.device, I.transfer_pool, 1, &cb);
}

void check_range(const Buffer& b, size_t bytes, size_t offset, const char* op) {
  if (offset > b.size() || bytes > b.size() - offset)
    throw Error(std::string(op) + ": " + std::to_string(bytes) + " bytes at offset " +
                std::to_string(offset) + " run past the end of a " + std::to_string(b.size()) +
                "-byte buffer");
}

constexpr size_t kStagingBytes = 64u << 20;
}  // namespace

void Context::upload(const Buffer& dst, const void* src, size_t bytes, size_t dst_offset) {
  check_range(dst, bytes, dst_offset, "upload");
  if (bytes == 0) return;
  if (dst.mapped()) {
    std::memcpy(static_cast<char*>(dst.mapped()) + dst_offset, src, bytes);
    return;
  }
  Buffer staging = buffer(std::min(bytes, kStagingBytes), MemoryKind::upload, "upload staging");
  for (size_t done = 0; done < bytes;) {
    size_t n = std::min(bytes - done, staging.size());
    std::memcpy(staging.mapped(), static_cast<const char*>(src) + done, n);
    one_shot(*impl_, [&](VkCommandBuffer cb) {
      VkBufferCopy region{0, dst_offset + done, n};
      vkCmdCopyBuffer(cb, from_u64<VkBuffer>(staging.handle_), from_u64<VkBuffer>(dst.handle_), 1, &region);
    });
    done += n;
  }
}

void Context::download(const Buffer& src, void* dst, size_t bytes, size_t src_offset) {
  check_range(src, bytes, src_offset, "download");
  if (bytes == 0) return;
  if (src.mapped()) {
    std::memcpy(dst, static_cast<const char*>(src.mapped()) + src_offset, bytes);
    return;
  }
  Buffer staging = buffer(std::min(bytes, kStagingBytes), MemoryKind::download, "download staging");
  for (size_t done = 0; done < bytes;) {
    size_t n = std::min(bytes - done, staging.size());
    one_shot(*impl_, [&](VkCommandBuffer cb) {
      VkBufferCopy region{src_offset + done, 0, n};
      vkCmdCopyBuffer(cb, from_u64<VkBuffer>(src.handle_), from_u64<VkBuffer>(staging.handle_), 1, &region);
    });
    std::memcpy(static_cast<char*>(dst) + done, staging.mapped(), n);
    done += n;
  }
}

// ---- pipelines -------------------------------------------------------------------------------

Pipeline Context::pipeline(const PipelineDesc& desc) {
  Impl& I = *impl_;
  const uint32_t* words = nullptr;
  size_t count = 0;
  if (!shaders::find(desc.shader.c_str(), &words, &count))
    throw Error("no embedded shader named '" + desc.shader + "'");
  if (desc.push_constant_bytes > info_.max_push_constants)
    throw Error(desc.shader + ": " + std::to_string(desc.push_constant_bytes) +
                " bytes of push constants exceed the device limit");
  if (desc.required_subgroup_size) {
    const uint32_t s = desc.required_subgroup_size;
    if (!info_.subgroup_size_control || s < info_.min_subgroup_size || s > info_.max_subgroup_size ||
        (s & (s - 1)))
      throw Error(desc.shader + ": subgroup size " + std::to_string(s) + " is not supported on '" +
                  info_.name + "' (range " + std::to_string(info_.min_subgroup_size) + ".." +
                  std::to_string(info_.max_subgroup_size) + ")");
  }
  Pipeline p;
  p.ctx_ = this;
  p.desc_ = desc;

  std::vector<VkDescriptorSetLayoutBinding> binds(desc.num_buffers);
  for (uint32_t i = 0; i < desc.num_buffers; ++i)
    binds[i] = {i, VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 1, VK_SHADER_STAGE_COMPUTE_BIT, nullptr};
  VkDescriptorSetLayoutCreateInfo dl{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
  dl.bindingCount = desc.num_buffers;
  dl.pBindings = binds.data();
  VkDescriptorSetLayout set_layout = VK_NULL_HANDLE;
  check(vkCreateDescriptorSetLayout(I.device, &dl, nullptr, &set_layout), "vkCreateDescriptorSetLayout");
  p.set_layout_ = to_u64(set_layout);

  VkPushConstantRange pcr{VK_SHADER_STAGE_COMPUTE_BIT, 0, desc.push_constant_bytes};
  VkPipelineLayoutCreateInfo pl{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
  pl.setLayoutCount = 1;
  pl.pSetLayouts = &set_layout;
  pl.pushConstantRangeCount = desc.push_constant_bytes ? 1 : 0;
  pl.pPushConstantRanges = &pcr;
  VkPipelineLayout layout = VK_NULL_HANDLE;
  check(vkCreatePipelineLayout(I.device, &pl, nullptr, &layout), "vkCreatePipelineLayout");
  p.layout_ = to_u64(layout);

  VkShaderModuleCreateInfo smi{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
  smi.codeSize = count * sizeof(uint32_t);
  smi.pCode = words;
  VkShaderModule module = VK_NULL_HANDLE;
  check(vkCreateShaderModule(I.device, &smi, nullptr, &module), (desc.shader + ": vkCreateShaderModule").c_str());

  std::vector<VkSpecializationMapEntry> entries;
  std::vector<uint32_t> values;
  for (const auto& [id, value] : desc.spec) {
    entries.push_back({id, static_cast<uint32_t>(values.size() * 4), 4});
    values.push_back(value);
  }
  VkSpecializationInfo si{static_cast<uint32_t>(entries.size()), entries.data(), values.size() * 4, values.data()};
  VkPipelineShaderStageRequiredSubgroupSizeCreateInfo rss{
      VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_REQUIRED_SUBGROUP_SIZE_CREATE_INFO};
  rss.requiredSubgroupSize = desc.required_subgroup_size;
  VkComputePipelineCreateInfo cpi{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
  cpi.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
  cpi.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
  cpi.stage.module = module;
  cpi.stage.pName = "main";
  cpi.stage.pSpecializationInfo = entries.empty() ? nullptr : &si;
  if (desc.required_subgroup_size) {
    cpi.stage.pNext = &rss;
    if (I.full_subgroups && desc.local_size_x && desc.local_size_x % desc.required_subgroup_size == 0)
      cpi.stage.flags |= VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT;
  }
  cpi.layout = layout;
  VkPipeline pipe = VK_NULL_HANDLE;
  VkResult r = vkCreateComputePipelines(I.device, I.cache, 1, &cpi, nullptr, &pipe);
  vkDestroyShaderModule(I.device, module, nullptr);
  check(r, (desc.shader + ": vkCreateComputePipelines").c_str());
  p.pipeline_ = to_u64(pipe);
  return p;
}

Pipeline::Pipeline(Pipeline&& o) noexcept { *this = std::move(o); }
Pipeline& Pipeline::operator=(Pipeline&& o) noexcept {
  if (this != &o) {
    release();
    ctx_ = o.ctx_;
    desc_ = std::move(o.desc_);
    pipeline_ = o.pipeline_;
    layout_ = o.layout_;
    set_layout_ = o.set_layout_;
    o.pipeline_ = o.layout_ = o.set_layout_ = 0;
  }
  return *this;
}
Pipeline::~Pipeline() { release(); }
void Pipeline::release() {
  if (!ctx_ || !ctx_->impl_) return;
  VkDevice dev = ctx_->impl_->device;
  if (pipeline_) vkDestroyPipeline(dev, from_u64<VkPipeline>(pipeline_), nullptr);
  if (layout_) vkDestroyPipelineLayout(dev, from_u64<VkPipelineLayout>(layout_), nullptr);
  if (set_layout_) vkDestroyDescriptorSetLayout(dev, from_u64<VkDescriptorSetLayout>(set_layout_), nullptr);
  pipeline_ = layout_ = set_layout_ = 0;
}

// ---- command recording -----------------------------------------------------------------------

namespace {
constexpr uint32_t kSetsPerPool = 256;
constexpr uint32_t kBuffersPerSet = 16;
}  // namespace

Commands Context::commands(uint32_t timestamp_slots) { return Commands(this, timestamp_slots); }

Commands::Commands(Context* ctx, uint32_t timestamp_slots) : ctx_(ctx), timestamp_slots_(timestamp_slots) {
  Context::Impl& I = *ctx_->impl_;
  VkCommandPoolCreateInfo pci{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  pci.queueFamilyIndex = I.queue_family;
  VkCommandPool pool = VK_NULL_HANDLE;
  check(vkCreateCommandPool(I.device, &pci, nullptr, &pool), "vkCreateCommandPool");
  pool_ = to_u64(pool);
  VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
  ai.commandPool = pool;
  ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  ai.commandBufferCount = 1;
  VkCommandBuffer cb = VK_NULL_HANDLE;
  check(vkAllocateCommandBuffers(I.device, &ai, &cb), "vkAllocateCommandBuffers");
  cmd_ = to_u64(cb);
  VkFenceCreateInfo fi{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  VkFence fence = VK_NULL_HANDLE;
  check(vkCreateFence(I.device, &fi, nullptr, &fence), "vkCreateFence");
  fence_ = to_u64(fence);
  VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  check(vkBeginCommandBuffer(cb, &bi), "vkBeginCommandBuffer");
  if (timestamp_slots_) {
    if (ctx_->info().timestamp_period_ns <= 0 || I.timestamp_valid_bits == 0)
      throw Error("device '" + ctx_->info().name + "' has no timestamp queries on its compute queue");
    VkQueryPoolCreateInfo qi{VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO};
    qi.queryType = VK_QUERY_TYPE_TIMESTAMP;
    qi.queryCount = timestamp_slots_;
    VkQueryPool qp = VK_NULL_HANDLE;
    check(vkCreateQueryPool(I.device, &qi, nullptr, &qp), "vkCreateQueryPool");
    query_pool_ = to_u64(qp);
    vkCmdResetQueryPool(cb, qp, 0, timestamp_slots_);
  }
}

Commands::Commands(Commands&& o) noexcept
    : ctx_(o.ctx_), pool_(o.pool_), cmd_(o.cmd_), desc_pool_(o.desc_pool_), query_pool_(o.query_pool_),
      fence_(o.fence_), desc_pools_(std::move(o.desc_pools_)), timestamp_slots_(o.timestamp_slots_),
      sets_in_pool_(o.sets_in_pool_), ended_(o.ended_) {
  o.ctx_ = nullptr;
}

Commands::~Commands() {
  if (!ctx_) return;
  VkDevice dev = ctx_->impl_->device;
  vkWaitForFences(dev, 1, reinterpret_cast<VkFence*>(&fence_), VK_TRUE, 0);  // never blocks on an unsubmitted fence
  for (uint64_t p : desc_pools_) vkDestroyDescriptorPool(dev, from_u64<VkDescriptorPool>(p), nullptr);
  if (query_pool_) vkDestroyQueryPool(dev, from_u64<VkQueryPool>(query_pool_), nullptr);
  if (fence_) vkDestroyFence(dev, from_u64<VkFence>(fence_), nullptr);
  if (pool_) vkDestroyCommandPool(dev, from_u64<VkCommandPool>(pool_), nullptr);
}

uint64_t Commands::allocate_set(uint64_t layout) {
  Context::Impl& I = *ctx_->impl_;
  if (!desc_pool_ || sets_in_pool_ == kSetsPerPool) {
    VkDescriptorPoolSize size{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, kSetsPerPool * kBuffersPerSet};
    VkDescriptorPoolCreateInfo dpi{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
    dpi.maxSets = kSetsPerPool;
    dpi.poolSizeCount = 1;
    dpi.pPoolSizes = &size;
    VkDescriptorPool dp = VK_NULL_HANDLE;
    check(vkCreateDescriptorPool(I.device, &dpi, nullptr, &dp), "vkCreateDescriptorPool");
    desc_pool_ = to_u64(dp);
    desc_pools_.push_back(desc_pool_);
    sets_in_pool_ = 0;
  }
  VkDescriptorSetLayout sl = from_u64<VkDescriptorSetLayout>(layout);
  VkDescriptorSetAllocateInfo ai{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
  ai.descriptorPool = from_u64<VkDescriptorPool>(desc_pool_);
  ai.descriptorSetCount = 1;
  ai.pSetLayouts = &sl;
  VkDescriptorSet set = VK_NULL_HANDLE;
  check(vkAllocateDescriptorSets(I.device, &ai, &set), "vkAllocateDescriptorSets");
  ++sets_in_pool_;
  return to_u64(set);
}

void Commands::dispatch(const Pipeline& p, const std::vector<BufferView>& buffers, const void* push,
                        size_t push_bytes, uint32_t gx, uint32_t gy, uint32_t gz) {
  ensure_recording(p.desc().shader.c_str());
  const DeviceInfo& info = ctx_->info();
  const PipelineDesc& d = p.desc();
  if (buffers.size() != d.num_buffers)
    throw Error(d.shader + ": expects " + std::to_string(d.num_buffers) + " buffers, got " +
                std::to_string(buffers.size()));
  if (d.num_buffers > kBuffersPerSet) throw Error(d.shader + ": too many buffers");
  if (push_bytes != d.push_constant_bytes)
    throw Error(d.shader + ": push constants are " + std::to_string(d.push_constant_bytes) +
                " bytes, got " + std::to_string(push_bytes));
  if (gx == 0 || gy == 0 || gz == 0) return;  // nothing to do
  if (gx > info.max_workgroup_count_x)
    throw Error(d.shader + ": " + std::to_string(gx) + " workgroups exceed maxComputeWorkGroupCount[0]");
  Context::Impl& I = *ctx_->impl_;
  VkDescriptorSet set = from_u64<VkDescriptorSet>(allocate_set(p.set_layout_));
  std::vector<VkDescriptorBufferInfo> infos(buffers.size());
  std::vector<VkWriteDescriptorSet> writes(buffers.size());
  for (size_t i = 0; i < buffers.size(); ++i) {
    const BufferView& v = buffers[i];
    if (!v.buffer || !v.buffer->valid()) throw Error(d.shader + ": binding " + std::to_string(i) + " has no buffer");
    if (v.offset >= v.buffer->size() || v.bytes() > v.buffer->size() - v.offset)
      throw Error(d.shader + ": binding " + std::to_string(i) + " is out of its buffer's bounds");
    if (v.offset % I.storage_alignment)
      throw Error(d.shader + ": binding " + std::to_string(i) + " offset " + std::to_string(v.offset) +
                  " is not a multiple of minStorageBufferOffsetAlignment (" + std::to_string(I.storage_alignment) + ")");
    if (v.bytes() > info.max_storage_buffer_range)
      throw Error(d.shader + ": binding " + std::to_string(i) + " spans " + std::to_string(v.bytes()) +
                  " bytes, more than maxStorageBufferRange (" + std::to_string(info.max_storage_buffer_range) +
                  ") on '" + info.name + "'");
    infos[i] = {from_u64<VkBuffer>(v.buffer->handle_), v.offset, v.bytes()};
    writes[i] = {VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET};
    writes[i].dstSet = set;
    writes[i].dstBinding = static_cast<uint32_t>(i);
    writes[i].descriptorCount = 1;
    writes[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
    writes[i].pBufferInfo = &infos[i];
  }
  vkUpdateDescriptorSets(I.device, static_cast<uint32_t>(writes.size()), writes.data(), 0, nullptr);
  VkCommandBuffer cb = from_u64<VkCommandBuffer>(cmd_);
  VkPipelineLayout layout = from_u64<VkPipelineLayout>(p.layout_);
  vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, from_u64<VkPipeline>(p.pipeline_));
  vkCmdBindDescriptorSets(cb, VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0, 1, &set, 0, nullptr);
  if (push_bytes) vkCmdPushConstants(cb, layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, static_cast<uint32_t>(push_bytes), push);
  vkCmdDispatch(cb, gx, gy, gz);
}

void Commands::ensure_recording(const char* what) const {
  if (ended_) throw Error(std::string(what) + ": cannot record into a command list that has already run");
}

void Commands::barrier() {
  ensure_recording("barrier");
  VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
  mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
  mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                     VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
  const VkPipelineStageFlags st = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
  vkCmdPipelineBarrier(from_u64<VkCommandBuffer>(cmd_), st, st, 0, 1, &mb, 0, nullptr, 0, nullptr);
}

void Commands::copy(const Buffer& src, const Buffer& dst, size_t bytes, size_t src_off, size_t dst_off) {
  ensure_recording("copy");
  check_range(src, bytes, src_off, "copy (source)");
  check_range(dst, bytes, dst_off, "copy (destination)");
  VkBufferCopy region{src_off, dst_off, bytes};
  vkCmdCopyBuffer(from_u64<VkCommandBuffer>(cmd_), from_u64<VkBuffer>(src.handle_),
                  from_u64<VkBuffer>(dst.handle_), 1, &region);
}

void Commands::fill(const Buffer& dst, uint32_t value, size_t bytes, size_t offset) {
  ensure_recording("fill");
  if (bytes == 0) bytes = dst.size() - offset;
  check_range(dst, bytes, offset, "fill");
  if (bytes % 4 || offset % 4) throw Error("fill: offset and size must be multiples of 4");
  vkCmdFillBuffer(from_u64<VkCommandBuffer>(cmd_), from_u64<VkBuffer>(dst.handle_), offset, bytes, value);
}

void Commands::timestamp(uint32_t slot) {
  ensure_recording("timestamp");
  if (slot >= timestamp_slots_) throw Error("timestamp slot " + std::to_string(slot) + " out of range");
  vkCmdWriteTimestamp(from_u64<VkCommandBuffer>(cmd_), VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT,
                      from_u64<VkQueryPool>(query_pool_), slot);
}

void Commands::run() {
  Context::Impl& I = *ctx_->impl_;
  VkCommandBuffer cb = from_u64<VkCommandBuffer>(cmd_);
  if (!ended_) {
    check(vkEndCommandBuffer(cb), "vkEndCommandBuffer");
    ended_ = true;
  }
  VkFence fence = from_u64<VkFence>(fence_);
  check(vkResetFences(I.device, 1, &fence), "vkResetFences");
  VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  si.commandBufferCount = 1;
  si.pCommandBuffers = &cb;
  {
    std::lock_guard<std::mutex> lock(I.queue_mutex);
    check(vkQueueSubmit(I.queue, 1, &si, fence), "vkQueueSubmit");
  }
  check(vkWaitForFences(I.device, 1, &fence, VK_TRUE, UINT64_MAX), "vkWaitForFences");
}

std::vector<double> Commands::timestamps_ns() const {
  if (!timestamp_slots_) return {};
  Context::Impl& I = *ctx_->impl_;
  std::vector<uint64_t> raw(timestamp_slots_);
  check(vkGetQueryPoolResults(I.device, from_u64<VkQueryPool>(query_pool_), 0, timestamp_slots_,
                              raw.size() * 8, raw.data(), 8, VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT),
        "vkGetQueryPoolResults");
  const uint64_t mask = I.timestamp_valid_bits >= 64 ? ~0ull : ((1ull << I.timestamp_valid_bits) - 1);
  std::vector<double> out(timestamp_slots_);
  for (uint32_t i = 0; i < timestamp_slots_; ++i)
    out[i] = static_cast<double>((raw[i] - raw[0]) & mask) * ctx_->info().timestamp_period_ns;
  return out;
}

}  // namespace pqvk::vk
