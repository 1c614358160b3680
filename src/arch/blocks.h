// Shared graph blocks (norms, projections, rotary, attention, MLP) used by every
// decoder family. Each block names its nodes under a scope such as
// `/model/layers.3/attn`, so a profile or a graph viewer shows where time goes.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "graph/builder.h"
#include "graph/nbits.h"
#include "io/model_config.h"
#include "io/safetensors.h"

namespace kvrun::arch {

// Reads checkpoint tensors as float32 and lays them out the way the graphs want.
class WeightReader {
 public:
  // `norm_offset`: added to every norm weight read by norm() (ModelConfig::norm_weight_offset).
  explicit WeightReader(const io::TensorStore& store, double norm_offset = 0.0)
      : store_(store), norm_offset_(norm_offset) {}
  std::vector<float> f32(const std::string& name) const;  // {} for an empty name
  // An RMSNorm weight as the graphs multiply by it: offset + w in float32.
  std::vector<float> norm(const std::string& name) const;
  // HF linear weights are [out, in]; MatMul wants [in, out]. Concatenates several
  // along `out` (fused QKV, gate+up): result [in, sum(out_i)].
  std::vector<float> transposed_concat(const std::vector<std::string>& names, int64_t in) const;
  // Concatenated biases; {} when the first name is empty.
  std::vector<float> concat(const std::vector<std::string>& names) const;

  // Keep the checkpoint's own quantization (GGUF block types) as MatMulNBits weights.
  bool keep_quantized = false;
  int accuracy_level = 4;  // MatMulNBits accuracy_level for kept weights
  // The MatMulNBits form of HF weights `names` ([out_i, in] each, stacked along out),
  // one entry per run of consecutive names whose layouts can share one node; empty
  // unless keep_quantized and every name is stored in a type with an exact form.
  std::vector<graph::NBitsWeight> nbits(const std::vector<std::string>& names) const;

 private:
  const io::TensorStore& store_;
  double norm_offset_ = 0.0;
};

// Produces a weight's float32 values on demand (only called when the bytes are not
// already in the graph's external data, e.g. when prefill and decode share them).
using Lazy = std::function<std::vector<float>()>;

// The graph under construction plus its compute dtype.
struct Net {
  graph::GraphBuilder& g;
  io::DType dt;              // F32 or F16: weights, activations, KV cache
  bool contrib_ops = false;  // com.microsoft operators allowed (target ort)
  // A weight initializer of dtype `dt`, converted at most once per data file.
  std::string weight(const std::string& name, const std::vector<int64_t>& shape, const Lazy& make);
};

// x[.., in] @ W[in, out] (+ b). `weight_name` names the initializer; make_bias may be null.
std::string linear(Net& n, const std::string& scope, const std::string& x, const std::string& weight_name, int64_t in,
                   int64_t out, const Lazy& make_w, const Lazy& make_bias);

// x[.., in] @ W^T for HF weights `parts` ([out_i, in], stacked along out) under the
// fused initializer name `weight_name`: MatMulNBits nodes (then a Concat) when the
// reader keeps a GGUF file's quantization, else linear() over float weights.
std::string linear_parts(Net& n, const std::string& scope, const std::string& x, const std::string& weight_name,
                         const std::vector<std::string>& parts, int64_t in, int64_t out, const WeightReader& w,
                         const Lazy& make_bias);

// RMSNorm over the last axis from standard ops (Pow/ReduceMean/Add/Sqrt/Div/Mul),
// computed in fp32 like transformers; ORT fuses the pattern into SimplifiedLayerNormalization.
std::string rms_norm(Net& n, const std::string& scope, const std::string& x, const std::string& gamma_name, int64_t dim,
                     const Lazy& gamma, double eps);

// Residual add + RMSNorm. Returns {normed, sum}. `fused` uses com.microsoft
// SkipSimplifiedLayerNormalization, else Add + rms_norm.
std::pair<std::string, std::string> skip_rms_norm(Net& n, const std::string& scope, const std::string& x,
                                                  const std::string& residual, const std::string& gamma_name,
                                                  int64_t dim, const Lazy& gamma, double eps, bool fused);

// Tanh-approximated GELU: com.microsoft FastGelu when n.contrib_ops, else standard ops.
std::string gelu_tanh(Net& n, const std::string& scope, const std::string& x);

// Gated MLP with fused gate+up projection: down(act(gate(x)) * up(x)), act = silu
// (SwiGLU) or tanh-GELU (com.microsoft FastGelu when n.contrib_ops, else standard ops).
std::string mlp(Net& n, const std::string& scope, const std::string& x, const WeightReader& w,
                const io::ModelConfig& cfg, int64_t layer);

// Splits the last axis into pieces of the given sizes (opset-13+ Split with a sizes input).
std::vector<std::string> split_last(Net& n, const std::string& scope, const std::string& x,
                                    const std::vector<int64_t>& sizes);

}  // namespace kvrun::arch
