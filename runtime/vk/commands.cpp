// The Vulkan layer's command lists (see context.h, internal.h): Commands records dispatches
// (a descriptor set per dispatch from its own pools), barriers, copies, fills and timestamps
// into one command buffer, submits it and replays it.
#include <volk.h>

#include <mutex>
#include <string>
#include <vector>

#include "vk/internal.h"

namespace pqvk::vk {

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
      sets_in_pool_(o.sets_in_pool_), dispatches_(o.dispatches_), barriers_(o.barriers_), ended_(o.ended_) {
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
  ++dispatches_;
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
  ++barriers_;
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
  submit_and_wait(I, cb, fence, "");
}

void submit_and_wait(Context::Impl& I, VkCommandBuffer cb, VkFence fence, const char* what) {
  VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  si.commandBufferCount = 1;
  si.pCommandBuffers = &cb;
  VkResult r = VK_SUCCESS;
  {
    std::lock_guard<std::mutex> lock(I.queue_mutex);
    r = vkQueueSubmit(I.queue, 1, &si, fence);
  }
  if (r != VK_SUCCESS) check(r, (std::string("vkQueueSubmit") + what).c_str());  // throws
  r = vkWaitForFences(I.device, 1, &fence, VK_TRUE, UINT64_MAX);
  if (r != VK_SUCCESS) check(r, (std::string("vkWaitForFences") + what).c_str());
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
