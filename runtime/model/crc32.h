// CRC-32 as in zlib, gzip and PNG (ISO-HDLC: reflected polynomial 0xEDB88320, initial value
// and final xor 0xFFFFFFFF); crc32("123456789") = 0xCBF43926. Slicing-by-8, ~2 GB/s.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pqvk::model {

// The CRC of data[0..n); pass a previous result as `crc` to continue over several pieces.
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

}  // namespace pqvk::model
