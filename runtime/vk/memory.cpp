// The Vulkan layer's memory (see context.h, internal.h): Buffer, memory types and
// allocation, staged copies between host memory and buffers.
#include <volk.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <string>

#include "vk/internal.h"

namespace pqvk::vk {

namespace {

uint32_t find_memory_type(const VkPhysicalDeviceMemoryProperties& mem, uint32_t type_bits,
                          std::initializer_list<VkMemoryPropertyFlags> preferences) {
  for (VkMemoryPropertyFlags want : preferences)
    for (uint32_t i = 0; i < mem.memoryTypeCount; ++i)
      if ((type_bits & (1u << i)) && (mem.memoryTypes[i].propertyFlags & want) == want) return i;
  return UINT32_MAX;
}

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
    submit_and_wait(I, cb, fence, " (transfer)");
  } catch (...) {
    if (fence) vkDestroyFence(I.device, fence, nullptr);
    vkFreeCommandBuffers(I.device, I.transfer_pool, 1, &cb);
    throw;
  }
  vkDestroyFence(I.device, fence, nullptr);
  vkFreeCommandBuffers(I.device, I.transfer_pool, 1, &cb);
}

constexpr size_t kStagingBytes = 64u << 20;

}  // namespace

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

// ---- staged transfers ------------------------------------------------------------------------

void check_range(const Buffer& b, size_t bytes, size_t offset, const char* op) {
  if (offset > b.size() || bytes > b.size() - offset)
    throw Error(std::string(op) + ": " + std::to_string(bytes) + " bytes at offset " +
                std::to_string(offset) + " run past the end of a " + std::to_string(b.size()) +
                "-byte buffer");
}

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

}  // namespace pqvk::vk
