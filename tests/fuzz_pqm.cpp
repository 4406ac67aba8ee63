// libFuzzer target for the .pqm reader (built with PQVK_FUZZ=ON, run by tools/run-fuzz.sh).
// Every input is read twice: as it is (header checks, index CRC), and with the header's file
// size and index CRC patched to match, so that mutations of the index JSON reach the JSON
// validation, the tensor table checks and the model checks instead of stopping at the CRC.
// The only acceptable outcome of bad bytes is a pqvk::ModelError; anything else (a crash, a
// sanitizer report, another exception escaping) is a finding.
#include <cstdint>
#include <cstring>
#include <vector>

#include "model/crc32.h"
#include "model/error.h"
#include "model/pqm.h"

namespace {

using pqvk::model::PqmFile;
using pqvk::model::TensorKind;

void read_everything(const PqmFile& f) {
  for (const auto& t : f.tensors()) {
    if (t.kind == TensorKind::blob) {
      volatile uint8_t sink = f.bytes(t).empty() ? 0 : f.bytes(t)[0];
      (void)sink;
      continue;
    }
    if (t.kind == TensorKind::pq) f.read_quant(t);
    f.read_floats(t);
  }
  f.verify_checksums();
}

void try_open(const std::vector<uint8_t>& bytes, bool verify) {
  try {
    read_everything(PqmFile::from_memory(bytes, "fuzz.pqm", {.verify_checksums = verify}));
  } catch (const pqvk::ModelError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> bytes(data, data + size);
  try_open(bytes, true);
  if (size < 64) return 0;
  uint64_t index_offset = 0, index_size = 0;
  std::memcpy(&index_offset, bytes.data() + 16, 8);
  index_offset = std::max<uint64_t>(64, std::min<uint64_t>(index_offset, size));
  index_size = size - index_offset;
  const uint64_t file_size = size;
  const uint32_t crc = pqvk::model::crc32(bytes.data() + index_offset, index_size);
  std::memcpy(bytes.data() + 16, &index_offset, 8);
  std::memcpy(bytes.data() + 24, &index_size, 8);
  std::memcpy(bytes.data() + 32, &file_size, 8);
  std::memcpy(bytes.data() + 40, &crc, 4);
  try_open(bytes, false);
  return 0;
}
