// Row lookups in a package's embedding table (embedding.safetensors): float rows
// (F32/F16/BF16), or MatMulNBits blocks (<name>.qweight, .scales, [.zero_points],
// [.mins]) where a lookup dequantizes just the rows asked for. The same bytes serve a
// tied lm_head in the graphs. Rows are read with pread(), not through the memory map:
// the page cache may hand a mapping whole large folios per fault (a few hundred random
// rows made a 300 MB table resident), while a read copies just the row.
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
  ~EmbeddingTable();
  EmbeddingTable(const EmbeddingTable&) = delete;
  EmbeddingTable& operator=(const EmbeddingTable&) = delete;

  int64_t rows() const { return rows_; }
  int64_t width() const { return width_; }
  bool quantized() const { return nbits_.B != nullptr; }
  // Row r into out (width() floats); throws for r outside [0, rows()).
  void row_f32(TokenId r, float* out) const;

 private:
  // pread() `n` bytes at `offset` into out; throws naming the file on a short read.
  void read_at(uint64_t offset, size_t n, uint8_t* out) const;

  std::unique_ptr<io::SafetensorsFile> store_;
  int fd_ = -1;
  const io::TensorView* dense_ = nullptr;
  uint64_t dense_off_ = 0;
  graph::NBitsRef nbits_;                                   // layout only (pointers unused)
  uint64_t b_off_ = 0, s_off_ = 0, z_off_ = 0, m_off_ = 0;  // file offsets of the parts
  bool has_zp_ = false, has_mins_ = false;
  std::string file_;
  int64_t rows_ = 0, width_ = 0;
};

}  // namespace kvrun::runtime
