// Row lookups in a package's embedding table (embedding.safetensors, memory-mapped):
// float rows (F32/F16/BF16), or MatMulNBits blocks (<name>.qweight, .scales,
// [.zero_points], [.mins]) where a lookup dequantizes just the rows asked for. The
// same bytes serve a tied lm_head in the graphs.
#pragma once
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "graph/nbits.h"
#include "io/safetensors.h"
#include "kvrun/types.h"

namespace kvrun::runtime {

class EmbeddingTable {
 public:
  // Throws kvrun::Error when the file holds neither `tensor` nor `tensor`.qweight, or a
  // part's shape disagrees with the others.
  EmbeddingTable(const std::filesystem::path& file, const std::string& tensor);

  int64_t rows() const { return rows_; }
  int64_t width() const { return width_; }
  bool quantized() const { return nbits_.B != nullptr; }
  // Row r into out (width() floats); throws for r outside [0, rows()).
  void row_f32(TokenId r, float* out) const;
  // "float32", "8-bit block 32 (MatMulNBits)", ... for messages.
  std::string describe() const;

 private:
  std::unique_ptr<io::SafetensorsFile> store_;
  const io::TensorView* dense_ = nullptr;
  graph::NBitsRef nbits_;
  std::string file_;
  int64_t rows_ = 0, width_ = 0;
};

}  // namespace kvrun::runtime
