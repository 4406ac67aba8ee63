// The Vulkan layer's pipelines (see context.h, internal.h): the embedded shader looked up by
// name, descriptor set and pipeline layouts, specialization constants, required subgroup
// sizes, and the on-disk pipeline cache the pipelines are compiled through.
#include <volk.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "vk/internal.h"
#include "vk/shader_registry.h"

namespace pqvk::vk {

namespace {

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

// ---- pipeline cache --------------------------------------------------------------------------

std::string pipeline_cache_file(const std::string& option, const VkPhysicalDeviceProperties& props) {
  std::string path = option;
  if (path.empty()) {
    std::string dir = default_cache_dir();
    if (!dir.empty()) path = dir + "/pipelines-" + hex(props.pipelineCacheUUID, VK_UUID_SIZE) + ".bin";
  }
  if (path == "off") path.clear();
  return path;
}

void open_pipeline_cache(Context::Impl& I, const std::string& file, const VkPhysicalDeviceProperties& props) {
  std::vector<char> blob;
  if (!file.empty()) {
    std::ifstream f(file, std::ios::binary);
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
}

void close_pipeline_cache(Context::Impl& I, const std::string& file, uintptr_t unique) {
  if (!file.empty()) {
    size_t n = 0;
    if (vkGetPipelineCacheData(I.device, I.cache, &n, nullptr) == VK_SUCCESS && n) {
      std::vector<char> data(n);
      if (vkGetPipelineCacheData(I.device, I.cache, &n, data.data()) == VK_SUCCESS) {
        std::error_code ec;
        std::filesystem::create_directories(std::filesystem::path(file).parent_path(), ec);
        std::string tmp = file + ".tmp" + std::to_string(unique);
        std::ofstream f(tmp, std::ios::binary);
        if (f && f.write(data.data(), static_cast<std::streamsize>(n))) {
          f.close();
          std::filesystem::rename(tmp, file, ec);
        }
        std::filesystem::remove(tmp, ec);
      }
    }
  }
  vkDestroyPipelineCache(I.device, I.cache, nullptr);
  I.cache = VK_NULL_HANDLE;
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

}  // namespace pqvk::vk
