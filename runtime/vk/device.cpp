// The Vulkan layer's device half (see context.h, internal.h): errors, the loader, the
// instance with its validation messenger, device enumeration and the capability report
// (DeviceInfo), device selection, device creation and teardown.
#include <volk.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "vk/internal.h"

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
  VkPhysicalDeviceCooperativeMatrixFeaturesNV coopmat_nv{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV};
  void link(bool with_ssc, bool with_idot, bool with_coopmat_nv) {
    f2.pNext = &v11;
    v11.pNext = &v12;
    void** tail = &v12.pNext;
    *tail = nullptr;
    if (with_ssc) { *tail = &ssc; tail = &ssc.pNext; *tail = nullptr; }
    if (with_idot) { *tail = &idot; tail = &idot.pNext; *tail = nullptr; }
    if (with_coopmat_nv) { *tail = &coopmat_nv; tail = &coopmat_nv.pNext; *tail = nullptr; }
  }
};

// ---- cooperative matrices ----

// VK_KHR_cooperative_matrix's properties structure. Vulkan headers before 1.3.255 (Debian
// bookworm's 1.3.239) do not declare it; there it is declared here as the Vulkan registry
// specifies it (its component types and scopes take VK_NV_cooperative_matrix's values).
#ifdef VK_KHR_cooperative_matrix
using CoopMatPropertiesKHR = VkCooperativeMatrixPropertiesKHR;
constexpr VkStructureType kCoopMatPropertiesKHR = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_KHR;
#else
struct CoopMatPropertiesKHR {
  VkStructureType sType;
  void* pNext;
  uint32_t MSize, NSize, KSize;
  VkComponentTypeNV AType, BType, CType, ResultType;
  VkBool32 saturatingAccumulation;
  VkScopeNV scope;
};
constexpr auto kCoopMatPropertiesKHR = static_cast<VkStructureType>(1000506001);
#endif
// vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR, taken through vkGetInstanceProcAddr:
// volk as old as those headers has no pointer for it.
using GetCoopMatPropertiesKHR = VkResult(VKAPI_PTR*)(VkPhysicalDevice, uint32_t*, CoopMatPropertiesKHR*);

CoopMatShape::Type component_type(int t) {
  using T = CoopMatShape::Type;
  switch (t) {
    case VK_COMPONENT_TYPE_FLOAT16_NV: return T::f16;
    case VK_COMPONENT_TYPE_FLOAT32_NV: return T::f32;
    case VK_COMPONENT_TYPE_FLOAT64_NV: return T::f64;
    case VK_COMPONENT_TYPE_SINT8_NV: return T::s8;
    case VK_COMPONENT_TYPE_SINT16_NV: return T::s16;
    case VK_COMPONENT_TYPE_SINT32_NV: return T::s32;
    case VK_COMPONENT_TYPE_SINT64_NV: return T::s64;
    case VK_COMPONENT_TYPE_UINT8_NV: return T::u8;
    case VK_COMPONENT_TYPE_UINT16_NV: return T::u16;
    case VK_COMPONENT_TYPE_UINT32_NV: return T::u32;
    case VK_COMPONENT_TYPE_UINT64_NV: return T::u64;
    default: return T::other;  // types of later extensions (bfloat16, fp8, ...)
  }
}

CoopMatShape::Scope scope_of(int s) {
  using S = CoopMatShape::Scope;
  switch (s) {
    case VK_SCOPE_DEVICE_NV: return S::device;
    case VK_SCOPE_WORKGROUP_NV: return S::workgroup;
    case VK_SCOPE_SUBGROUP_NV: return S::subgroup;
    case VK_SCOPE_QUEUE_FAMILY_NV: return S::queue_family;
    default: return S::other;
  }
}

// The shapes an enumeration of VkCooperativeMatrixProperties{NV,KHR} reports: `get` is the
// two-call query, `result` picks D's type (NV: DType, KHR: ResultType), `saturating` KHR's flag.
template <class Props, class Get, class Result, class Saturating>
std::vector<CoopMatShape> coopmat_shapes(VkPhysicalDevice pd, VkStructureType stype, Get get, const char* what,
                                         Result result, Saturating saturating) {
  uint32_t n = 0;
  check(get(pd, &n, nullptr), what);
  Props init{};
  init.sType = stype;
  std::vector<Props> props(n, init);
  check(get(pd, &n, props.data()), what);
  props.resize(n);
  std::vector<CoopMatShape> out;
  for (const Props& p : props) {
    CoopMatShape s;
    s.m = p.MSize;
    s.n = p.NSize;
    s.k = p.KSize;
    s.a = component_type(p.AType);
    s.b = component_type(p.BType);
    s.c = component_type(p.CType);
    s.d = component_type(result(p));
    s.scope = scope_of(p.scope);
    s.saturating = saturating(p);
    out.push_back(s);
  }
  return out;
}

std::vector<CoopMatShape> coopmat_shapes_nv(VkPhysicalDevice pd) {
  const char* what = "vkGetPhysicalDeviceCooperativeMatrixPropertiesNV";
  if (!vkGetPhysicalDeviceCooperativeMatrixPropertiesNV)
    throw Error(std::string(what) + " is not available although the device has VK_NV_cooperative_matrix");
  return coopmat_shapes<VkCooperativeMatrixPropertiesNV>(
      pd, VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_NV, vkGetPhysicalDeviceCooperativeMatrixPropertiesNV,
      what, [](const VkCooperativeMatrixPropertiesNV& p) { return p.DType; },
      [](const VkCooperativeMatrixPropertiesNV&) { return false; });
}

std::vector<CoopMatShape> coopmat_shapes_khr(VkInstance inst, VkPhysicalDevice pd) {
  const char* what = "vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR";
  auto get = reinterpret_cast<GetCoopMatPropertiesKHR>(vkGetInstanceProcAddr(inst, what));
  if (!get) throw Error(std::string(what) + " is not available although the device has VK_KHR_cooperative_matrix");
  return coopmat_shapes<CoopMatPropertiesKHR>(
      pd, kCoopMatPropertiesKHR, get, what, [](const CoopMatPropertiesKHR& p) { return p.ResultType; },
      [](const CoopMatPropertiesKHR& p) { return p.saturatingAccumulation == VK_TRUE; });
}

struct Candidate {
  VkPhysicalDevice pd = VK_NULL_HANDLE;
  DeviceInfo info;
  VkPhysicalDeviceType vk_type{};
  bool has_ssc_ext = false, has_idot = false, full_subgroups = false;
  bool coopmat_nv = false;  // VK_NV_cooperative_matrix + its feature in compute: enabled with the device
  uint32_t api = 0;
};

Candidate describe(VkInstance inst, VkPhysicalDevice pd, uint32_t index) {
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
  VkPhysicalDeviceCooperativeMatrixPropertiesNV cmp{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_PROPERTIES_NV};
  const bool has_coopmat_nv = has_ext(exts, VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME);
  void** tail = &drv.pNext;
  if (c.has_ssc_ext) { *tail = &sscp; tail = &sscp.pNext; }
  if (has_coopmat_nv) { *tail = &cmp; tail = &cmp.pNext; }
  vkGetPhysicalDeviceProperties2(pd, &p2);
  const VkPhysicalDeviceLimits& lim = base.limits;

  FeatureChain fc;
  fc.link(c.has_ssc_ext, c.has_idot, has_coopmat_nv);
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
  d.vulkan_memory_model = fc.v12.vulkanMemoryModel && fc.v12.vulkanMemoryModelDeviceScope;
  d.cooperative_matrix_khr = has_ext(exts, "VK_KHR_cooperative_matrix");
  d.cooperative_matrix_nv = has_coopmat_nv;
  d.cooperative_matrix2_nv = has_ext(exts, "VK_NV_cooperative_matrix2");
  c.coopmat_nv = has_coopmat_nv && fc.coopmat_nv.cooperativeMatrix &&
                 (cmp.cooperativeMatrixSupportedStages & VK_SHADER_STAGE_COMPUTE_BIT);
  if (c.coopmat_nv) d.coopmat_nv = coopmat_shapes_nv(pd);
  if (d.cooperative_matrix_khr) d.coopmat_khr = coopmat_shapes_khr(inst, pd);
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
  for (uint32_t i = 0; i < n; ++i) out.push_back(describe(inst, pds[i], i));
  return out;
}

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

}  // namespace

// ---- the capability report ------------------------------------------------------------------

const char* CoopMatShape::name(Type t) {
  switch (t) {
    case Type::f16: return "f16";
    case Type::f32: return "f32";
    case Type::f64: return "f64";
    case Type::s8: return "s8";
    case Type::s16: return "s16";
    case Type::s32: return "s32";
    case Type::s64: return "s64";
    case Type::u8: return "u8";
    case Type::u16: return "u16";
    case Type::u32: return "u32";
    case Type::u64: return "u64";
    case Type::other: break;
  }
  return "other";
}

const char* CoopMatShape::name(Scope s) {
  switch (s) {
    case Scope::device: return "device";
    case Scope::workgroup: return "workgroup";
    case Scope::subgroup: return "subgroup";
    case Scope::queue_family: return "queue family";
    case Scope::other: break;
  }
  return "other";
}

std::string CoopMatShape::str() const {
  return std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) + " " + name(a) + "*" + name(b) +
         "+" + name(c) + "->" + name(d) + " " + name(scope) + (saturating ? " saturating" : "");
}

bool DeviceInfo::has_coopmat_nv_f16(uint32_t m, uint32_t n, uint32_t k) const {
  using T = CoopMatShape::Type;
  return std::any_of(coopmat_nv.begin(), coopmat_nv.end(), [&](const CoopMatShape& s) {
    return s.m == m && s.n == n && s.k == k && s.a == T::f16 && s.b == T::f16 && s.c == T::f32 && s.d == T::f32 &&
           s.scope == CoopMatShape::Scope::subgroup;
  });
}

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
    have.link(chosen->has_ssc_ext, chosen->has_idot, false);
    vkGetPhysicalDeviceFeatures2(I.physical, &have.f2);
    FeatureChain on;
    on.link(chosen->has_ssc_ext && info_.subgroup_size_control, false, chosen->coopmat_nv);
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
    if (chosen->coopmat_nv) on.coopmat_nv.cooperativeMatrix = VK_TRUE;  // for a tensor-core GEMM
    if (chosen->coopmat_nv && info_.vulkan_memory_model)  // which its SPIR-V declares (context.h)
      on.v12.vulkanMemoryModel = on.v12.vulkanMemoryModelDeviceScope = VK_TRUE;
    auto exts = device_extensions(I.physical);
    std::vector<const char*> enable;
    const bool v13 = VK_API_VERSION_MINOR(chosen->api) >= 3;
    if (info_.subgroup_size_control && !v13) enable.push_back(VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME);
    if (info_.memory_budget) enable.push_back(VK_EXT_MEMORY_BUDGET_EXTENSION_NAME);
    if (presentation_) enable.push_back(VK_KHR_SWAPCHAIN_EXTENSION_NAME);
    if (chosen->coopmat_nv) enable.push_back(VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME);

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
    cache_path_ = pipeline_cache_file(opts.pipeline_cache, props);
    open_pipeline_cache(I, cache_path_, props);
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
    if (I.cache) close_pipeline_cache(I, cache_path_, reinterpret_cast<uintptr_t>(this));
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

}  // namespace pqvk::vk
