// Deterministic random tensors shared by the synth-checkpoint writers (synth.cpp for
// Hugging Face folders, synth_funasr.cpp for FunASR-nano folders).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "arch/tensor_names.h"
#include "io/dtype.h"

namespace kvrun::synth {

// "f32" | "f16" | "bf16" -> dtype; throws kvrun::Error otherwise.
io::DType dtype_of(const std::string& name);
// Normal(0, std) samples from a splitmix64 stream seeded by (seed, name).
void fill_normal(float* out, size_t n, uint64_t seed, const std::string& name, double std_dev);
// Fills `buf` (numel * dtype size bytes) with the spec's initial values in `dt`;
// `seed_name` seeds Normal tensors; `scratch` is reused between calls.
void fill_tensor(const arch::TensorSpec& spec, const std::string& seed_name, io::DType dt, uint64_t seed,
                 double std_dev, std::vector<float>& scratch, std::vector<uint8_t>& buf);

}  // namespace kvrun::synth
