// Weights in ONNX Runtime's com.microsoft MatMulNBits form, and the exact mapping of
// GGUF (ggml) block types onto it.
//
//   W[n, k] = (q[n, k] - zp[n, b]) * scale[n, b] - min[n, b]      (b = k / block)
//
// q is stored as MatMulNBits' B [N, K/block, block*bits/8] (4-bit: element 2i in the low
// nibble of byte i); zp defaults to 2^(bits-1) when absent; `min` is optional and not
// part of MatMulNBits: nbits_matmul() subtracts it as BlockSum(x) . min^T, which is
// exact in the weights and keeps ORT's packed kernels (float zero points would force
// its naive dequantize-everything path). Every GGUF type kvrun maps reproduces ggml's
// dequantized values bit for bit:
//   Q8_0 -> 8-bit/32, B = q + 128             Q5_0 -> 8-bit/32, B = q5 + 112
//   Q4_0 -> 4-bit/32, nibbles repacked        Q6_K -> 8-bit/16, B = q6 + 96, scale = d*sc
//   Q4_1, Q5_1 -> 4/8-bit/32, zp 0, min -m    Q4_K, Q5_K -> 4/8-bit/32, zp 0, scale d*sc, min dmin*m
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "graph/builder.h"
#include "io/gguf.h"

namespace kvrun::graph {

// A non-owning view of MatMulNBits data (e.g. memory-mapped from a package file).
struct NBitsRef {
  int bits = 8;
  int64_t block = 32, N = 0, K = 0;
  const uint8_t* B = nullptr;
  const float* scales = nullptr;
  const uint8_t* zp = nullptr;  // null: 2^(bits-1)
  const float* mins = nullptr;  // null: none
  int64_t kb() const { return (K + block - 1) / block; }
  int64_t blob() const { return block * bits / 8; }
  int64_t zp_row() const { return bits == 4 ? (kb() + 1) / 2 : kb(); }
  // Dequantized row n (K values) into out.
  void row_f32(int64_t n, float* out) const;
};

struct NBitsWeight {
  int bits = 8;
  int64_t block = 32;
  int64_t N = 0, K = 0;
  std::vector<uint8_t> B;     // [N, kb, blob]
  std::vector<float> scales;  // [N, kb]
  std::vector<uint8_t> zp;    // [N, zp_row] packed; empty: 2^(bits-1)
  std::vector<float> mins;    // [N, kb]; empty: none

  int64_t kb() const { return (K + block - 1) / block; }
  int64_t blob() const { return block * bits / 8; }
  int64_t zp_row() const { return bits == 4 ? (kb() + 1) / 2 : kb(); }
  // Same bits, block, K and zero-point / min layout: rows can be concatenated.
  bool compatible(const NBitsWeight& o) const;
  // Appends o's rows (o must be compatible).
  void append_rows(const NBitsWeight& o);
  NBitsRef ref() const {
    return {bits,
            block,
            N,
            K,
            B.data(),
            scales.data(),
            zp.empty() ? nullptr : zp.data(),
            mins.empty() ? nullptr : mins.data()};
  }
  void row_f32(int64_t n, float* out) const { ref().row_f32(n, out); }
  std::vector<float> to_f32() const;  // [N, K]
  std::string describe() const;       // "8-bit block 32" (+ ", zero points", ", mins")
};

// True when `type` has an exact MatMulNBits form (quantized types above; not F32/F16/BF16).
bool ggml_has_nbits(uint32_t type);
// Rows of GGUF blocks (`rows` rows of K elements, K a multiple of the type's block) ->
// MatMulNBits form, exactly.
NBitsWeight nbits_from_ggml(io::GgmlType type, const uint8_t* data, int64_t rows, int64_t K);

// Blockwise quantization of float rows (w[n*sn + k*sk]): symmetric maps the element of
// largest magnitude to code -2^(bits-1) (as MLAS and llama.cpp's Q4_0/Q8_0), asymmetric
// stores a zero point per block.
NBitsWeight nbits_quantize(const float* w, int64_t N, int64_t K, int64_t sn, int64_t sk, int bits, int64_t block,
                           bool symmetric);

// Initializer names of a weight in a graph: <name>.qweight, .scales, [.zero_points], [.mins].
struct NBitsNames {
  std::string B, scales, zp, mins;
};
// Declares the weight's initializers in `g`: those already in the graph's external data
// (aliased from another file, or written by an earlier graph sharing the data) are
// referenced, the others written from w's vectors.
NBitsNames nbits_initializers(GraphBuilder& g, const std::string& name, const NBitsWeight& w);
// y[..., N] = x[..., K] . W^T with MatMulNBits (+ the block-sum min correction).
std::string nbits_matmul(GraphBuilder& g, const std::string& scope, const std::string& x, const NBitsWeight& w,
                         const NBitsNames& names, int accuracy_level);

}  // namespace kvrun::graph
