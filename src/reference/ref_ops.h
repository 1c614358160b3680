// Plain fp32 building blocks shared by the reference forward passes (decoder_ref,
// seq2seq_ref): weight loading, dot products, linear layers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace kvrun::reference {

// A tensor of the checkpoint as float32; "" gives an empty vector.
std::vector<float> load(const io::TensorStore& s, const std::string& name);
// sum a[i] * b[i] in float32, eight partial sums (a fixed order).
float dot(const float* a, const float* b, int64_t n);
// y[n, out] = x[n, in] * W[out, in]^T (+ b). Splits output rows over threads when large.
void linear(const float* x, int64_t n, int64_t in, const std::vector<float>& W, const std::vector<float>& b,
            int64_t out, float* y);

}  // namespace kvrun::reference
