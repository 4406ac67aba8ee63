// The window's raw Vulkan: surface, swapchain, render pass, per-frame sync, ImGui's Vulkan
// backend and the read-back for screenshots. App code (see vulkan_window.h for why this is the
// one other place with raw Vulkan); Vulkan functions come from volk, loaded by vk::Context.
#include "chat/vulkan_window.h"

#include <volk.h>
#define GLFW_INCLUDE_NONE
#include <GLFW/glfw3.h>
#include <imgui.h>
#include <backends/imgui_impl_glfw.h>
#include <backends/imgui_impl_vulkan.h>
#include <png.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace pqvk::chat {

namespace {

void vk_ok(VkResult r, const char* what) { vk::check(static_cast<int>(r), what); }

// ImGui's backend reports failures through this hook; its calls cannot throw through C code
// paths safely, so errors are remembered and raised after the backend call returns.
VkResult g_imgui_error = VK_SUCCESS;
void imgui_check(VkResult r) {
  if (r != VK_SUCCESS && g_imgui_error == VK_SUCCESS) g_imgui_error = r;
}
void raise_imgui_error(const char* what) {
  VkResult r = g_imgui_error;
  g_imgui_error = VK_SUCCESS;
  if (r != VK_SUCCESS) vk_ok(r, what);
}

template <class H> H handle(uint64_t v) { return reinterpret_cast<H>(v); }

}  // namespace

// ---- GLFW -----------------------------------------------------------------------------------

namespace {
std::string g_glfw_error;
void on_glfw_error(int, const char* description) { g_glfw_error = description ? description : "unknown error"; }
}  // namespace

Glfw::Glfw() {
  glfwSetErrorCallback(on_glfw_error);
  if (!glfwInit())
    throw std::runtime_error("cannot open a window (" + g_glfw_error +
                             "): no display? Run in a desktop session, under xvfb-run, or use --cli");
  if (!glfwVulkanSupported()) {
    glfwTerminate();
    throw std::runtime_error("GLFW found no Vulkan loader for windows (" + g_glfw_error +
                             "): install libvulkan1 and mesa-vulkan-drivers, or use --cli");
  }
}

Glfw::~Glfw() { glfwTerminate(); }

vk::ContextOptions::Presentation Glfw::presentation() {
  vk::ContextOptions::Presentation p;
  uint32_t n = 0;
  const char** names = glfwGetRequiredInstanceExtensions(&n);
  if (!names) throw std::runtime_error("GLFW cannot draw with Vulkan here (" + g_glfw_error + ")");
  for (uint32_t i = 0; i < n; ++i) p.instance_extensions.emplace_back(names[i]);
  p.can_present = [](uint64_t instance, uint64_t physical, uint32_t family) {
    return glfwGetPhysicalDevicePresentationSupport(handle<VkInstance>(instance), handle<VkPhysicalDevice>(physical),
                                                    family) == GLFW_TRUE;
  };
  return p;
}

// ---- the window's Vulkan state ------------------------------------------------------------------

struct VulkanWindow::Impl {
  VkInstance instance = VK_NULL_HANDLE;
  VkPhysicalDevice physical = VK_NULL_HANDLE;
  VkDevice device = VK_NULL_HANDLE;
  VkQueue queue = VK_NULL_HANDLE;
  uint32_t family = 0;

  VkSurfaceKHR surface = VK_NULL_HANDLE;
  VkSurfaceFormatKHR format{};
  VkRenderPass render_pass = VK_NULL_HANDLE;
  VkSwapchainKHR swapchain = VK_NULL_HANDLE;
  VkExtent2D extent{};
  bool readable = false;  // swapchain images have TRANSFER_SRC
  std::vector<VkImage> images;
  std::vector<VkImageView> views;
  std::vector<VkFramebuffer> framebuffers;
  std::vector<VkSemaphore> rendered;  // per image: rendering done, presentation may start
  bool rebuild = false;

  // The one frame in flight.
  VkCommandPool pool = VK_NULL_HANDLE;
  VkCommandBuffer cmd = VK_NULL_HANDLE;
  VkFence fence = VK_NULL_HANDLE;
  VkSemaphore acquired = VK_NULL_HANDLE;
  VkDescriptorPool descriptors = VK_NULL_HANDLE;
  bool in_flight = false;  // the fence will be signalled by a submission
  bool imgui_vulkan = false, imgui_glfw = false;

  void wait_frame() {
    if (in_flight) vkWaitForFences(device, 1, &fence, VK_TRUE, UINT64_MAX);
    in_flight = false;
  }
  // Submits cmd (waiting for / signalling the given semaphores), then presents when asked.
  VkResult submit(vk::Context& ctx, const VkSubmitInfo& si, const VkPresentInfoKHR* present, VkResult* presented) {
    vk_ok(vkResetFences(device, 1, &fence), "vkResetFences");
    VkResult r = VK_SUCCESS;
    ctx.with_queue([&] {
      r = vkQueueSubmit(queue, 1, &si, fence);
      if (r == VK_SUCCESS && present) *presented = vkQueuePresentKHR(queue, present);
    });
    in_flight = r == VK_SUCCESS;
    return r;
  }
  void destroy_swapchain_parts() {
    for (VkFramebuffer f : framebuffers) vkDestroyFramebuffer(device, f, nullptr);
    for (VkImageView v : views) vkDestroyImageView(device, v, nullptr);
    for (VkSemaphore s : rendered) vkDestroySemaphore(device, s, nullptr);
    framebuffers.clear();
    views.clear();
    rendered.clear();
    images.clear();
  }
  void create_swapchain(int width, int height);
  void record_capture(VkBuffer dst, VkImage image);
};

void VulkanWindow::Impl::create_swapchain(int width, int height) {
  VkSurfaceCapabilitiesKHR caps{};
  vk_ok(vkGetPhysicalDeviceSurfaceCapabilitiesKHR(physical, surface, &caps), "vkGetPhysicalDeviceSurfaceCapabilitiesKHR");
  VkExtent2D want = caps.currentExtent;
  if (want.width == UINT32_MAX) {
    want.width = std::clamp(static_cast<uint32_t>(width), caps.minImageExtent.width, caps.maxImageExtent.width);
    want.height = std::clamp(static_cast<uint32_t>(height), caps.minImageExtent.height, caps.maxImageExtent.height);
  }
  if (want.width == 0 || want.height == 0) return;  // minimised: nothing to draw to
  uint32_t count = std::max(caps.minImageCount + 1, 2u);
  if (caps.maxImageCount) count = std::min(count, caps.maxImageCount);
  readable = (caps.supportedUsageFlags & VK_IMAGE_USAGE_TRANSFER_SRC_BIT) != 0;
  VkCompositeAlphaFlagBitsKHR alpha = VK_COMPOSITE_ALPHA_OPAQUE_BIT_KHR;
  for (VkCompositeAlphaFlagBitsKHR a : {VK_COMPOSITE_ALPHA_OPAQUE_BIT_KHR, VK_COMPOSITE_ALPHA_INHERIT_BIT_KHR,
                                        VK_COMPOSITE_ALPHA_PRE_MULTIPLIED_BIT_KHR, VK_COMPOSITE_ALPHA_POST_MULTIPLIED_BIT_KHR})
    if (caps.supportedCompositeAlpha & a) {
      alpha = a;
      break;
    }

  VkSwapchainCreateInfoKHR ci{VK_STRUCTURE_TYPE_SWAPCHAIN_CREATE_INFO_KHR};
  ci.surface = surface;
  ci.minImageCount = count;
  ci.imageFormat = format.format;
  ci.imageColorSpace = format.colorSpace;
  ci.imageExtent = want;
  ci.imageArrayLayers = 1;
  ci.imageUsage = VK_IMAGE_USAGE_COLOR_ATTACHMENT_BIT | (readable ? VK_IMAGE_USAGE_TRANSFER_SRC_BIT : 0);
  ci.imageSharingMode = VK_SHARING_MODE_EXCLUSIVE;
  ci.preTransform = caps.currentTransform;
  ci.compositeAlpha = alpha;
  ci.presentMode = VK_PRESENT_MODE_FIFO_KHR;  // always supported; paces frames to the display
  ci.clipped = VK_TRUE;
  ci.oldSwapchain = swapchain;
  VkSwapchainKHR fresh = VK_NULL_HANDLE;
  vk_ok(vkCreateSwapchainKHR(device, &ci, nullptr, &fresh), "vkCreateSwapchainKHR");
  destroy_swapchain_parts();
  if (swapchain) vkDestroySwapchainKHR(device, swapchain, nullptr);
  swapchain = fresh;
  extent = want;

  uint32_t n = 0;
  vk_ok(vkGetSwapchainImagesKHR(device, swapchain, &n, nullptr), "vkGetSwapchainImagesKHR");
  images.resize(n);
  vk_ok(vkGetSwapchainImagesKHR(device, swapchain, &n, images.data()), "vkGetSwapchainImagesKHR");
  for (VkImage img : images) {
    VkImageViewCreateInfo vi{VK_STRUCTURE_TYPE_IMAGE_VIEW_CREATE_INFO};
    vi.image = img;
    vi.viewType = VK_IMAGE_VIEW_TYPE_2D;
    vi.format = format.format;
    vi.subresourceRange = {VK_IMAGE_ASPECT_COLOR_BIT, 0, 1, 0, 1};
    VkImageView view = VK_NULL_HANDLE;
    vk_ok(vkCreateImageView(device, &vi, nullptr, &view), "vkCreateImageView");
    views.push_back(view);
    VkFramebufferCreateInfo fi{VK_STRUCTURE_TYPE_FRAMEBUFFER_CREATE_INFO};
    fi.renderPass = render_pass;
    fi.attachmentCount = 1;
    fi.pAttachments = &view;
    fi.width = extent.width;
    fi.height = extent.height;
    fi.layers = 1;
    VkFramebuffer fb = VK_NULL_HANDLE;
    vk_ok(vkCreateFramebuffer(device, &fi, nullptr, &fb), "vkCreateFramebuffer");
    framebuffers.push_back(fb);
    VkSemaphoreCreateInfo si{VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO};
    VkSemaphore s = VK_NULL_HANDLE;
    vk_ok(vkCreateSemaphore(device, &si, nullptr, &s), "vkCreateSemaphore");
    rendered.push_back(s);
  }
  rebuild = false;
}

void VulkanWindow::Impl::record_capture(VkBuffer dst, VkImage image) {
  VkImageMemoryBarrier b{VK_STRUCTURE_TYPE_IMAGE_MEMORY_BARRIER};
  b.srcAccessMask = VK_ACCESS_COLOR_ATTACHMENT_WRITE_BIT;
  b.dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT;
  b.oldLayout = VK_IMAGE_LAYOUT_PRESENT_SRC_KHR;
  b.newLayout = VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL;
  b.srcQueueFamilyIndex = b.dstQueueFamilyIndex = VK_QUEUE_FAMILY_IGNORED;
  b.image = image;
  b.subresourceRange = {VK_IMAGE_ASPECT_COLOR_BIT, 0, 1, 0, 1};
  vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_COLOR_ATTACHMENT_OUTPUT_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 0,
                       nullptr, 0, nullptr, 1, &b);
  VkBufferImageCopy region{};
  region.imageSubresource = {VK_IMAGE_ASPECT_COLOR_BIT, 0, 0, 1};
  region.imageExtent = {extent.width, extent.height, 1};
  vkCmdCopyImageToBuffer(cmd, image, VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL, dst, 1, &region);
  b.srcAccessMask = VK_ACCESS_TRANSFER_READ_BIT;
  b.dstAccessMask = 0;
  b.oldLayout = VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL;
  b.newLayout = VK_IMAGE_LAYOUT_PRESENT_SRC_KHR;
  VkBufferMemoryBarrier hb{VK_STRUCTURE_TYPE_BUFFER_MEMORY_BARRIER};
  hb.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
  hb.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
  hb.srcQueueFamilyIndex = hb.dstQueueFamilyIndex = VK_QUEUE_FAMILY_IGNORED;
  hb.buffer = dst;
  hb.size = VK_WHOLE_SIZE;
  vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT | VK_PIPELINE_STAGE_HOST_BIT,
                       0, 0, nullptr, 1, &hb, 1, &b);
}

// ---- VulkanWindow ---------------------------------------------------------------------------------

namespace {
struct LoaderHandles {
  VkInstance instance;
  VkDevice device;
};
PFN_vkVoidFunction load_vulkan_function(const char* name, void* user) {
  auto* h = static_cast<LoaderHandles*>(user);
  if (PFN_vkVoidFunction f = vkGetDeviceProcAddr(h->device, name)) return f;
  return vkGetInstanceProcAddr(h->instance, name);
}
}  // namespace

VulkanWindow::VulkanWindow(vk::Context& ctx, const std::string& title, int width, int height, float font_px)
    : ctx_(ctx), impl_(std::make_unique<Impl>()) {
  if (!ctx.presentation_enabled())
    throw std::runtime_error("VulkanWindow needs a vk::Context created with ContextOptions::presentation");
  Impl& I = *impl_;
  const vk::Context::Native n = ctx.native();
  I.instance = handle<VkInstance>(n.instance);
  I.physical = handle<VkPhysicalDevice>(n.physical_device);
  I.device = handle<VkDevice>(n.device);
  I.queue = handle<VkQueue>(n.queue);
  I.family = n.queue_family;
  try {
    glfwWindowHint(GLFW_CLIENT_API, GLFW_NO_API);
    window_ = glfwCreateWindow(width, height, title.c_str(), nullptr, nullptr);
    if (!window_) throw std::runtime_error("cannot create a window (" + g_glfw_error + ")");
    vk_ok(glfwCreateWindowSurface(I.instance, window_, nullptr, &I.surface), "glfwCreateWindowSurface");
    VkBool32 supported = VK_FALSE;
    vk_ok(vkGetPhysicalDeviceSurfaceSupportKHR(I.physical, I.family, I.surface, &supported),
          "vkGetPhysicalDeviceSurfaceSupportKHR");
    if (!supported) throw std::runtime_error("the device '" + ctx.info().name + "' cannot present to this window");

    // An 8-bit UNORM format: ImGui's colours are already in display space.
    uint32_t nf = 0;
    vk_ok(vkGetPhysicalDeviceSurfaceFormatsKHR(I.physical, I.surface, &nf, nullptr), "vkGetPhysicalDeviceSurfaceFormatsKHR");
    std::vector<VkSurfaceFormatKHR> formats(nf);
    vk_ok(vkGetPhysicalDeviceSurfaceFormatsKHR(I.physical, I.surface, &nf, formats.data()),
          "vkGetPhysicalDeviceSurfaceFormatsKHR");
    if (formats.empty()) throw std::runtime_error("the window surface offers no image format");
    I.format = formats[0];
    for (VkFormat want : {VK_FORMAT_B8G8R8A8_UNORM, VK_FORMAT_R8G8B8A8_UNORM}) {
      auto it = std::find_if(formats.begin(), formats.end(), [&](const VkSurfaceFormatKHR& f) {
        return f.format == want && f.colorSpace == VK_COLOR_SPACE_SRGB_NONLINEAR_KHR;
      });
      if (it != formats.end()) {
        I.format = *it;
        break;
      }
    }

    VkAttachmentDescription color{};
    color.format = I.format.format;
    color.samples = VK_SAMPLE_COUNT_1_BIT;
    color.loadOp = VK_ATTACHMENT_LOAD_OP_CLEAR;
    color.storeOp = VK_ATTACHMENT_STORE_OP_STORE;
    color.stencilLoadOp = VK_ATTACHMENT_LOAD_OP_DONT_CARE;
    color.stencilStoreOp = VK_ATTACHMENT_STORE_OP_DONT_CARE;
    color.initialLayout = VK_IMAGE_LAYOUT_UNDEFINED;
    color.finalLayout = VK_IMAGE_LAYOUT_PRESENT_SRC_KHR;
    VkAttachmentReference ref{0, VK_IMAGE_LAYOUT_COLOR_ATTACHMENT_OPTIMAL};
    VkSubpassDescription sub{};
    sub.pipelineBindPoint = VK_PIPELINE_BIND_POINT_GRAPHICS;
    sub.colorAttachmentCount = 1;
    sub.pColorAttachments = &ref;
    VkSubpassDependency dep{};
    dep.srcSubpass = VK_SUBPASS_EXTERNAL;
    dep.dstSubpass = 0;
    dep.srcStageMask = VK_PIPELINE_STAGE_COLOR_ATTACHMENT_OUTPUT_BIT;
    dep.dstStageMask = VK_PIPELINE_STAGE_COLOR_ATTACHMENT_OUTPUT_BIT;
    dep.dstAccessMask = VK_ACCESS_COLOR_ATTACHMENT_WRITE_BIT;
    VkRenderPassCreateInfo rpi{VK_STRUCTURE_TYPE_RENDER_PASS_CREATE_INFO};
    rpi.attachmentCount = 1;
    rpi.pAttachments = &color;
    rpi.subpassCount = 1;
    rpi.pSubpasses = &sub;
    rpi.dependencyCount = 1;
    rpi.pDependencies = &dep;
    vk_ok(vkCreateRenderPass(I.device, &rpi, nullptr, &I.render_pass), "vkCreateRenderPass");

    int fw = 0, fh = 0;
    glfwGetFramebufferSize(window_, &fw, &fh);
    I.create_swapchain(fw, fh);

    VkCommandPoolCreateInfo pci{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
    pci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    pci.queueFamilyIndex = I.family;
    vk_ok(vkCreateCommandPool(I.device, &pci, nullptr, &I.pool), "vkCreateCommandPool");
    VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    ai.commandPool = I.pool;
    ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ai.commandBufferCount = 1;
    vk_ok(vkAllocateCommandBuffers(I.device, &ai, &I.cmd), "vkAllocateCommandBuffers");
    VkFenceCreateInfo fi{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    vk_ok(vkCreateFence(I.device, &fi, nullptr, &I.fence), "vkCreateFence");
    VkSemaphoreCreateInfo si{VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO};
    vk_ok(vkCreateSemaphore(I.device, &si, nullptr, &I.acquired), "vkCreateSemaphore");
    VkDescriptorPoolSize ps{VK_DESCRIPTOR_TYPE_COMBINED_IMAGE_SAMPLER, 16};
    VkDescriptorPoolCreateInfo dpi{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
    dpi.flags = VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT;
    dpi.maxSets = 16;
    dpi.poolSizeCount = 1;
    dpi.pPoolSizes = &ps;
    vk_ok(vkCreateDescriptorPool(I.device, &dpi, nullptr, &I.descriptors), "vkCreateDescriptorPool");

    // Dear ImGui.
    IMGUI_CHECKVERSION();
    ImGui::CreateContext();
    ImGuiIO& io = ImGui::GetIO();
    io.IniFilename = nullptr;  // no imgui.ini in the working directory
    ImGui::StyleColorsDark();
    static const ImWchar ranges[] = {0x0020, 0x00FF, 0x0100, 0x017F, 0x2000, 0x206F, 0x20AC, 0x20AC, 0x2190, 0x21FF,
                                     0x2500, 0x259F, 0xFFFD, 0xFFFD, 0};
    const char* font = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    std::error_code ec;
    if (!std::filesystem::exists(font, ec) || !io.Fonts->AddFontFromFileTTF(font, font_px, nullptr, ranges))
      io.Fonts->AddFontDefault();
    I.imgui_glfw = ImGui_ImplGlfw_InitForVulkan(window_, true);
    if (!I.imgui_glfw) throw std::runtime_error("ImGui_ImplGlfw_InitForVulkan failed");
    LoaderHandles lh{I.instance, I.device};
    if (!ImGui_ImplVulkan_LoadFunctions(load_vulkan_function, &lh))
      throw std::runtime_error("Dear ImGui's Vulkan backend could not load its Vulkan functions");
    ImGui_ImplVulkan_InitInfo ii{};
    ii.Instance = I.instance;
    ii.PhysicalDevice = I.physical;
    ii.Device = I.device;
    ii.QueueFamily = I.family;
    ii.Queue = I.queue;
    ii.DescriptorPool = I.descriptors;
    ii.MinImageCount = 2;
    ii.ImageCount = static_cast<uint32_t>(std::max<size_t>(I.images.size(), 2));
    ii.MSAASamples = VK_SAMPLE_COUNT_1_BIT;
    ii.CheckVkResultFn = imgui_check;
    I.imgui_vulkan = ImGui_ImplVulkan_Init(&ii, I.render_pass);
    raise_imgui_error("ImGui_ImplVulkan_Init");
    if (!I.imgui_vulkan) throw std::runtime_error("ImGui_ImplVulkan_Init failed");

    // The font atlas, uploaded once.
    VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    vk_ok(vkBeginCommandBuffer(I.cmd, &bi), "vkBeginCommandBuffer");
    ImGui_ImplVulkan_CreateFontsTexture(I.cmd);
    raise_imgui_error("ImGui_ImplVulkan_CreateFontsTexture");
    vk_ok(vkEndCommandBuffer(I.cmd), "vkEndCommandBuffer");
    VkSubmitInfo sub_info{VK_STRUCTURE_TYPE_SUBMIT_INFO};
    sub_info.commandBufferCount = 1;
    sub_info.pCommandBuffers = &I.cmd;
    vk_ok(I.submit(ctx, sub_info, nullptr, nullptr), "vkQueueSubmit (font atlas)");
    I.wait_frame();
    ImGui_ImplVulkan_DestroyFontUploadObjects();
  } catch (...) {
    destroy();
    throw;
  }
}

VulkanWindow::~VulkanWindow() { destroy(); }

void VulkanWindow::destroy() {
  if (!impl_) return;
  Impl& I = *impl_;
  if (I.device) {
    I.wait_frame();
    ctx_.with_queue([&] { vkQueueWaitIdle(I.queue); });  // presentations too
  }
  if (I.imgui_vulkan) ImGui_ImplVulkan_Shutdown();
  if (I.imgui_glfw) ImGui_ImplGlfw_Shutdown();
  if (ImGui::GetCurrentContext()) ImGui::DestroyContext();
  I.destroy_swapchain_parts();
  if (I.swapchain) vkDestroySwapchainKHR(I.device, I.swapchain, nullptr);
  if (I.descriptors) vkDestroyDescriptorPool(I.device, I.descriptors, nullptr);
  if (I.acquired) vkDestroySemaphore(I.device, I.acquired, nullptr);
  if (I.fence) vkDestroyFence(I.device, I.fence, nullptr);
  if (I.pool) vkDestroyCommandPool(I.device, I.pool, nullptr);
  if (I.render_pass) vkDestroyRenderPass(I.device, I.render_pass, nullptr);
  if (I.surface) vkDestroySurfaceKHR(I.instance, I.surface, nullptr);
  if (window_) glfwDestroyWindow(window_);
  window_ = nullptr;
  impl_.reset();
}

bool VulkanWindow::should_close() const { return glfwWindowShouldClose(window_); }

void VulkanWindow::begin_frame() {
  Impl& I = *impl_;
  int fw = 0, fh = 0;
  glfwGetFramebufferSize(window_, &fw, &fh);
  const bool resized = fw > 0 && fh > 0 && (static_cast<uint32_t>(fw) != I.extent.width ||
                                            static_cast<uint32_t>(fh) != I.extent.height);
  if ((I.rebuild || resized || !I.swapchain) && fw > 0 && fh > 0) {
    I.wait_frame();
    ctx_.with_queue([&] { vkQueueWaitIdle(I.queue); });
    I.create_swapchain(fw, fh);
  }
  ImGui_ImplVulkan_NewFrame();
  ImGui_ImplGlfw_NewFrame();
  ImGui::NewFrame();
}

bool VulkanWindow::end_frame(Image* capture) {
  Impl& I = *impl_;
  ImGui::Render();
  ImDrawData* draw = ImGui::GetDrawData();
  if (!I.swapchain || I.images.empty() || draw->DisplaySize.x <= 0 || draw->DisplaySize.y <= 0) return false;
  if (capture && (!I.readable || (I.format.format != VK_FORMAT_B8G8R8A8_UNORM && I.format.format != VK_FORMAT_B8G8R8A8_SRGB &&
                                   I.format.format != VK_FORMAT_R8G8B8A8_UNORM && I.format.format != VK_FORMAT_R8G8B8A8_SRGB)))
    throw std::runtime_error("this device's swapchain images cannot be read back (no transfer usage or not 8-bit "
                             "RGBA), so no screenshot can be taken");

  // The previous frame still running means the shared queue is busy with the model's work
  // (a long prefill on a slow device): skip drawing rather than wait, so the event loop keeps
  // going. A capture waits.
  if (!capture && I.in_flight && vkGetFenceStatus(I.device, I.fence) == VK_NOT_READY) return false;
  I.wait_frame();  // the previous frame is done: its command buffer and semaphores are free
  uint32_t index = 0;
  VkResult r = vkAcquireNextImageKHR(I.device, I.swapchain, 1000000000ull, I.acquired, VK_NULL_HANDLE, &index);
  if (r == VK_ERROR_OUT_OF_DATE_KHR || r == VK_TIMEOUT || r == VK_NOT_READY) {
    if (r == VK_ERROR_OUT_OF_DATE_KHR) I.rebuild = true;
    return false;
  }
  if (r == VK_SUBOPTIMAL_KHR) I.rebuild = true;
  else vk_ok(r, "vkAcquireNextImageKHR");

  // Read-back buffer for a capture.
  VkBuffer readback = VK_NULL_HANDLE;
  VkDeviceMemory readback_mem = VK_NULL_HANDLE;
  const VkDeviceSize bytes = VkDeviceSize(I.extent.width) * I.extent.height * 4;
  auto free_readback = [&] {
    if (readback) vkDestroyBuffer(I.device, readback, nullptr);
    if (readback_mem) vkFreeMemory(I.device, readback_mem, nullptr);
  };
  try {
    if (capture) {
      VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
      bci.size = bytes;
      bci.usage = VK_BUFFER_USAGE_TRANSFER_DST_BIT;
      vk_ok(vkCreateBuffer(I.device, &bci, nullptr, &readback), "vkCreateBuffer (screenshot)");
      VkMemoryRequirements req;
      vkGetBufferMemoryRequirements(I.device, readback, &req);
      VkPhysicalDeviceMemoryProperties mp;
      vkGetPhysicalDeviceMemoryProperties(I.physical, &mp);
      const VkMemoryPropertyFlags want = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
      uint32_t type = UINT32_MAX;
      for (uint32_t i = 0; i < mp.memoryTypeCount && type == UINT32_MAX; ++i)
        if ((req.memoryTypeBits & (1u << i)) && (mp.memoryTypes[i].propertyFlags & want) == want) type = i;
      if (type == UINT32_MAX) throw std::runtime_error("screenshot: no host-visible memory type");
      VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
      mai.allocationSize = req.size;
      mai.memoryTypeIndex = type;
      vk_ok(vkAllocateMemory(I.device, &mai, nullptr, &readback_mem), "vkAllocateMemory (screenshot)");
      vk_ok(vkBindBufferMemory(I.device, readback, readback_mem, 0), "vkBindBufferMemory (screenshot)");
    }

    vk_ok(vkResetCommandBuffer(I.cmd, 0), "vkResetCommandBuffer");
    VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    vk_ok(vkBeginCommandBuffer(I.cmd, &bi), "vkBeginCommandBuffer");
    VkClearValue clear{};
    clear.color = {{0.09f, 0.09f, 0.10f, 1.0f}};
    VkRenderPassBeginInfo rbi{VK_STRUCTURE_TYPE_RENDER_PASS_BEGIN_INFO};
    rbi.renderPass = I.render_pass;
    rbi.framebuffer = I.framebuffers[index];
    rbi.renderArea.extent = I.extent;
    rbi.clearValueCount = 1;
    rbi.pClearValues = &clear;
    vkCmdBeginRenderPass(I.cmd, &rbi, VK_SUBPASS_CONTENTS_INLINE);
    ImGui_ImplVulkan_RenderDrawData(draw, I.cmd);
    vkCmdEndRenderPass(I.cmd);
    if (capture) I.record_capture(readback, I.images[index]);
    vk_ok(vkEndCommandBuffer(I.cmd), "vkEndCommandBuffer");
    raise_imgui_error("ImGui_ImplVulkan_RenderDrawData");

    const VkPipelineStageFlags wait_stage = VK_PIPELINE_STAGE_COLOR_ATTACHMENT_OUTPUT_BIT;
    VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
    si.waitSemaphoreCount = 1;
    si.pWaitSemaphores = &I.acquired;
    si.pWaitDstStageMask = &wait_stage;
    si.commandBufferCount = 1;
    si.pCommandBuffers = &I.cmd;
    si.signalSemaphoreCount = 1;
    si.pSignalSemaphores = &I.rendered[index];
    VkPresentInfoKHR pi{VK_STRUCTURE_TYPE_PRESENT_INFO_KHR};
    pi.waitSemaphoreCount = 1;
    pi.pWaitSemaphores = &I.rendered[index];
    pi.swapchainCount = 1;
    pi.pSwapchains = &I.swapchain;
    pi.pImageIndices = &index;
    VkResult presented = VK_SUCCESS;
    vk_ok(I.submit(ctx_, si, &pi, &presented), "vkQueueSubmit (window)");
    if (presented == VK_ERROR_OUT_OF_DATE_KHR || presented == VK_SUBOPTIMAL_KHR) I.rebuild = true;
    else vk_ok(presented, "vkQueuePresentKHR");

    if (capture) {
      I.wait_frame();
      void* p = nullptr;
      vk_ok(vkMapMemory(I.device, readback_mem, 0, bytes, 0, &p), "vkMapMemory (screenshot)");
      const auto* px = static_cast<const uint8_t*>(p);
      const bool bgr = I.format.format == VK_FORMAT_B8G8R8A8_UNORM || I.format.format == VK_FORMAT_B8G8R8A8_SRGB;
      capture->width = static_cast<int>(I.extent.width);
      capture->height = static_cast<int>(I.extent.height);
      capture->rgb.resize(size_t(I.extent.width) * I.extent.height * 3);
      for (size_t i = 0, n = size_t(I.extent.width) * I.extent.height; i < n; ++i) {
        capture->rgb[3 * i + 0] = px[4 * i + (bgr ? 2 : 0)];
        capture->rgb[3 * i + 1] = px[4 * i + 1];
        capture->rgb[3 * i + 2] = px[4 * i + (bgr ? 0 : 2)];
      }
      vkUnmapMemory(I.device, readback_mem);
    }
  } catch (...) {
    I.wait_frame();
    free_readback();
    throw;
  }
  free_readback();
  return true;
}

// ---- PNG -------------------------------------------------------------------------------------

void write_png(const std::string& path, const Image& image) {
  if (image.width <= 0 || image.height <= 0 || image.rgb.size() != size_t(image.width) * image.height * 3)
    throw std::runtime_error("screenshot: no image to write to " + path);
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(image.width);
  png.height = static_cast<png_uint_32>(image.height);
  png.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&png, path.c_str(), 0, image.rgb.data(), image.width * 3, nullptr)) {
    std::string why = png.message;
    png_image_free(&png);
    throw std::runtime_error("cannot write the PNG " + path + ": " + why);
  }
}

}  // namespace pqvk::chat
