// pq-info: what the Vulkan devices here can do (and, later, what a .pqm model holds).
//   pq-info                 every device, with the one pqvk would pick marked
//   pq-info --device H100   only the matching device, as the runtime opens it
//   pq-info --json          the same as JSON
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "vk/context.h"
#include "vk/shader_registry.h"

namespace {

std::string mib(uint64_t b) { return std::to_string(b >> 20) + " MiB"; }

nlohmann::json to_json(const pqvk::vk::DeviceInfo& d) {
  nlohmann::json heaps = nlohmann::json::array();
  for (const auto& h : d.heaps)
    heaps.push_back({{"size", h.size}, {"budget", h.budget}, {"usage", h.usage}, {"device_local", h.device_local}});
  return {{"index", d.index}, {"name", d.name}, {"type", d.type}, {"driver", d.driver}, {"api_version", d.api_version},
          {"vendor_id", d.vendor_id}, {"device_id", d.device_id},
          {"subgroup_size", d.subgroup_size}, {"min_subgroup_size", d.min_subgroup_size},
          {"max_subgroup_size", d.max_subgroup_size}, {"subgroup_size_control", d.subgroup_size_control},
          {"subgroup_arithmetic", d.subgroup_arithmetic}, {"subgroup_shuffle", d.subgroup_shuffle},
          {"fp16", d.fp16}, {"int8", d.int8}, {"storage_8bit", d.storage_8bit}, {"storage_16bit", d.storage_16bit},
          {"cooperative_matrix_khr", d.cooperative_matrix_khr}, {"cooperative_matrix_nv", d.cooperative_matrix_nv},
          {"cooperative_matrix2_nv", d.cooperative_matrix2_nv}, {"integer_dot_product", d.integer_dot_product},
          {"max_storage_buffer_range", d.max_storage_buffer_range}, {"max_allocation_size", d.max_allocation_size},
          {"max_shared_memory", d.max_shared_memory}, {"max_workgroup_invocations", d.max_workgroup_invocations},
          {"timestamp_period_ns", d.timestamp_period_ns}, {"memory_budget", d.memory_budget}, {"heaps", heaps}};
}

void print(const pqvk::vk::DeviceInfo& d, bool chosen) {
  auto yn = [](bool b) { return b ? "yes" : "no"; };
  std::printf("%s%u: %s (%s, Vulkan %s)\n", chosen ? "* " : "  ", d.index, d.name.c_str(), d.type.c_str(),
              d.api_version.c_str());
  std::printf("    driver                 %s\n", d.driver.c_str());
  std::printf("    subgroup size          %u (range %u..%u, size control: %s, arithmetic: %s, shuffle: %s)\n",
              d.subgroup_size, d.min_subgroup_size, d.max_subgroup_size, yn(d.subgroup_size_control),
              yn(d.subgroup_arithmetic), yn(d.subgroup_shuffle));
  std::printf("    fp16 / int8 arithmetic %s / %s\n", yn(d.fp16), yn(d.int8));
  std::printf("    8 / 16-bit storage     %s / %s\n", yn(d.storage_8bit), yn(d.storage_16bit));
  std::printf("    cooperative matrix     KHR: %s, NV: %s, NV2: %s\n", yn(d.cooperative_matrix_khr),
              yn(d.cooperative_matrix_nv), yn(d.cooperative_matrix2_nv));
  std::printf("    integer dot product    %s\n", yn(d.integer_dot_product));
  std::printf("    max storage buffer     %s per binding\n", mib(d.max_storage_buffer_range).c_str());
  std::printf("    max allocation         %s\n", mib(d.max_allocation_size).c_str());
  std::printf("    shared memory          %u KiB per workgroup, %u invocations max\n", d.max_shared_memory / 1024,
              d.max_workgroup_invocations);
  std::printf("    timestamps             %s\n", d.timestamp_period_ns > 0 ? "yes" : "no");
  for (size_t i = 0; i < d.heaps.size(); ++i) {
    const auto& h = d.heaps[i];
    std::printf("    heap %zu                 %s%s", i, mib(h.size).c_str(), h.device_local ? " device-local" : "");
    if (d.memory_budget) std::printf(", budget %s, used %s", mib(h.budget).c_str(), mib(h.usage).c_str());
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pq-info: the Vulkan devices pqvk sees and what they can do"};
  std::string device;
  bool json = false;
  app.add_option("-d,--device", device, "Device index or name substring (default: $PQVK_DEVICE, else the best GPU)");
  app.add_flag("--json", json, "Print JSON");
  CLI11_PARSE(app, argc, argv);
  try {
    auto all = pqvk::vk::Context::list_devices();
    pqvk::vk::ContextOptions opts;
    opts.device = device;
    opts.pipeline_cache = "off";
    pqvk::vk::Context ctx(opts);  // the device the runtime would pick
    if (json) {
      nlohmann::json out = {{"selected", ctx.info().index}, {"devices", nlohmann::json::array()},
                            {"shaders", pqvk::shaders::names()}};
      for (const auto& d : all) out["devices"].push_back(to_json(d));
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::printf("Vulkan devices (* = the one pqvk uses; choose with --device or PQVK_DEVICE):\n");
      for (const auto& d : all)
        if (device.empty() || d.index == ctx.info().index) print(d, d.index == ctx.info().index);
      std::printf("embedded shaders: %zu\n", pqvk::shaders::names().size());
    }
    if (ctx.validation_messages()) {
      std::fprintf(stderr, "pq-info: %u Vulkan validation messages\n", ctx.validation_messages());
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pq-info: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
