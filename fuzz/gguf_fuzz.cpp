// libFuzzer target: the GGUF reader (io/gguf.h) on arbitrary bytes, then every tensor's
// dequantization (whole and first/last row). GgufFile maps a file, so each input is written
// to a per-process temp file first. Any outcome other than a parsed file or a kvrun::Error
// (a crash, a sanitizer report, another exception, a leak) is a finding.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "kvrun/error.h"

namespace {

const std::filesystem::path& temp_path() {
  static const std::filesystem::path p =
      std::filesystem::temp_directory_path() / ("kvrun-gguf-fuzz-" + std::to_string(::getpid()) + ".gguf");
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& path = temp_path();
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return 0;
    if (size) std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    const kvrun::io::GgufFile g(path);
    for (const auto& [key, v] : g.metadata()) (void)kvrun::io::gguf_type_name(v);
    for (const auto& t : g.tensors()) {
      const auto* tr = kvrun::io::ggml_type_traits(t.type);
      if (!tr || !tr->dequantizable || t.numel() > (1 << 20)) continue;
      const std::vector<float> all = g.to_f32(t);
      std::vector<float> row(static_cast<size_t>(t.row_elems()));
      g.row_f32(t, 0, row.data());
      g.row_f32(t, t.rows() - 1, row.data());
    }
  } catch (const kvrun::Error&) {
  }
  return 0;
}
