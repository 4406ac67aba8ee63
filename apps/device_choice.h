// Where pq-run, pq-chat, pq-perplexity and pq-server run a model: the GPU through Vulkan, or the CPU
// reference. --cpu asks for the CPU. Without it, where every Vulkan device is a CPU
// implementation (Mesa's lavapipe / llvmpipe, SwiftShader) the apps run the CPU reference, which
// is far faster there (the bundled model decodes at 2.8 tokens/s on lavapipe and 166 tokens/s on
// the CPU reference with the same 2 cores), and say so on stderr; --device (or PQVK_DEVICE)
// naming a device runs Vulkan on it anyway.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "vk/context.h"

namespace pqvk::apps {

// True: run the CPU reference. `app` prefixes the note on stderr.
inline bool use_cpu(bool cpu_flag, const std::string& device, const char* app) {
  if (cpu_flag) return true;
  const char* env = std::getenv("PQVK_DEVICE");
  if (!device.empty() || (env && *env)) return false;
  std::vector<vk::DeviceInfo> devices;
  try {
    devices = vk::Context::list_devices();
  } catch (const std::exception&) {
    return false;  // no Vulkan: opening the device reports it
  }
  if (devices.empty()) return false;
  std::string names;
  for (const vk::DeviceInfo& d : devices) {
    if (d.type != "cpu") return false;
    names += (names.empty() ? "" : ", ") + d.name;
  }
  std::fprintf(stderr,
               "%s: the only Vulkan device is a CPU implementation (%s): running the CPU reference instead, which is "
               "faster there (--device 0 runs Vulkan on it anyway)\n",
               app, names.c_str());
  return true;
}

}  // namespace pqvk::apps
