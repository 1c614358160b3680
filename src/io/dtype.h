// Element types shared by the readers, writers and graph builders.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvrun::io {

enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType t);
// Safetensors spelling ("F32", "BF16", ...). Throws kvrun::Error for unknown names.
DType dtype_from_safetensors(std::string_view s);
std::string_view dtype_to_safetensors(DType t);
// Lower-case NumPy-style name for messages ("float32", "int64", "bool").
std::string dtype_name(DType t);

// Scalar conversions (round-to-nearest-even for the narrowing ones).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t b);
uint16_t f32_to_bf16(float f);

// Converts n elements of `src` (of type `t`, F32/F16/BF16/F64) to float.
void to_f32(DType t, const void* src, float* dst, size_t n);

}  // namespace kvrun::io
