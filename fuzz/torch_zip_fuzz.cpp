// libFuzzer target: a whole torch.save archive held in memory (zip central directory,
// local headers, data.pkl, storages, strides) through io::TorchCheckpoint. Every tensor it
// accepts is read end to end so out-of-bounds views show up under AddressSanitizer.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "io/torch_checkpoint.h"
#include "io/zip_archive.h"
#include "kvrun/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto zip = std::make_unique<kvrun::io::ZipArchive>(data, size, "fuzz.pt");
    kvrun::io::TorchCheckpoint ck(std::move(zip));
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : ck.tensors())
      for (size_t i = 0; i < t.nbytes; ++i) sink = sink ^ t.data[i];
  } catch (const kvrun::Error&) {
  }
  return 0;
}
