// Weight quantization of MatMul/Gemm nodes in any ONNX model (kvrun packages,
// optimum exports with If subgraphs whose weights are outer-scope initializers).
//
// Modes:
//   int8-dynamic  weights int8 per output channel (symmetric); activations quantized
//                 at run time. ORT ops: com.microsoft DynamicQuantizeMatMul (one node).
//                 Standard ops: DynamicQuantizeLinear + MatMulInteger + Cast + Mul.
//   int8, int4    weight-only, blockwise along K (block_size), symmetric or asymmetric.
//                 ORT ops: com.microsoft MatMulNBits (bits 8/4, B [N, k_blocks, blob]).
//                 Standard ops (int8 only): DequantizeLinear(int8 [K, N], per-channel
//                 scale, axis) + MatMul; int4 has no opset-17 form and is refused.
//
// Only MatMul/Gemm whose weight (second input) is a constant rank-2 float initializer
// are rewritten; Gemm needs transA=0 and alpha=1 (transB=1 is MatMulNBits' own
// layout; a C input becomes an Add when beta=1). Everything else is skipped with a reason.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "graph/onnx_model.h"
#include "kvrun/build.h"

namespace kvrun::graph {

// block_size, symmetric, accuracy_level, exclude: kvrun::QuantSettings (kvrun/build.h).
struct QuantizeOptions : QuantSettings {
  std::string mode = "int4";                       // "int8-dynamic" | "int8" | "int4"
  bool standard_ops = false;                       // opset-17 standard ops only (portable graphs)
  std::function<void(int64_t, int64_t)> progress;  // (nodes done, nodes total)

  void validate() const;  // throws kvrun::Error
  nlohmann::json to_json() const;
};

struct QuantizeReport {
  int64_t quantized = 0;
  struct Skip {
    std::string node, reason;
  };
  std::vector<Skip> skipped;
  uint64_t bytes_before = 0, bytes_after = 0;  // all initializers, before and after
  std::map<std::string, int64_t> ops;          // op type -> nodes emitted
  nlohmann::json to_json() const;
  std::string to_text() const;
};

// Rewrites `m` in place. New tensors live in the model's proto until save().
QuantizeReport quantize(OnnxModel& m, const QuantizeOptions& opt);

}  // namespace kvrun::graph
