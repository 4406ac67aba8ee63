// pq-chat's window: GLFW, a Vulkan swapchain and Dear ImGui's GLFW + Vulkan backends (compiled
// from Debian's libimgui-dev sources, see apps/chat/PqChat.cmake).
//
// This is app code and, besides runtime/vk, the one place in pqvk allowed raw Vulkan: a UI
// renderer needs a surface, a swapchain, a render pass and ImGui's backend, none of which the
// model's Vulkan layer should know about. It draws with the model's own vk::Context (the same
// device and queue, through Context::native()); that context is created with
// ContextOptions::presentation (Glfw::presentation()). Every vkQueueSubmit /
// vkQueuePresentKHR / vkQueueWaitIdle here runs inside Context::with_queue(), the lock the
// model's submissions on the generation thread take too. One frame is in flight at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vk/context.h"

struct GLFWwindow;

namespace pqvk::chat {

// GLFW initialised for Vulkan windows. Throws std::runtime_error when there is no display (no
// X11 / Wayland session: use --cli) or GLFW finds no Vulkan loader.
class Glfw {
 public:
  Glfw();
  ~Glfw();
  Glfw(const Glfw&) = delete;
  Glfw& operator=(const Glfw&) = delete;
  // What vk::Context needs to create a device that can draw to GLFW's windows.
  static vk::ContextOptions::Presentation presentation();
};

// A frame read back: width x height RGB pixels, rows top to bottom.
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
};

class VulkanWindow {
 public:
  // Creates the window (width x height screen coordinates), the swapchain and ImGui (with
  // DejaVu Sans at font_px when fonts-dejavu-core is installed, else ImGui's own font).
  VulkanWindow(vk::Context& ctx, const std::string& title, int width, int height, float font_px);
  ~VulkanWindow();
  VulkanWindow(const VulkanWindow&) = delete;
  VulkanWindow& operator=(const VulkanWindow&) = delete;

  GLFWwindow* glfw() const { return window_; }
  bool should_close() const;

  // Starts an ImGui frame (events are polled by the caller).
  void begin_frame();
  // Renders the ImGui frame and presents it. With `capture`, the rendered image is also copied
  // back (waiting for it); throws if the swapchain images cannot be read on this device.
  // Returns false when no image was drawn: window minimised, swapchain being recreated, or the
  // previous frame not finished yet (the queue it shares with the model is busy): the frame is
  // skipped instead of waited for, so a long model submission never stalls the event loop.
  bool end_frame(Image* capture = nullptr);

  struct Impl;

 private:
  void destroy();
  vk::Context& ctx_;
  GLFWwindow* window_ = nullptr;
  std::unique_ptr<Impl> impl_;
};

// Writes an RGB image as a PNG (libpng). Throws std::runtime_error naming the path on failure.
void write_png(const std::string& path, const Image& image);

}  // namespace pqvk::chat
