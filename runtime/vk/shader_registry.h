// Lookup of the SPIR-V embedded at build time (cmake/EmbedShaders.cmake generates the table).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pqvk::shaders {
// The SPIR-V of shaders/<name>.comp; false if there is no such shader.
bool find(const char* name, const uint32_t** words, size_t* count);
std::vector<std::string> names();
}  // namespace pqvk::shaders
