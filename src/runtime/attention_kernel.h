// kvrun's decode-step attention: one new position per row against a KV cache that is
// read once. It computes what ONNX Runtime's com.microsoft GroupQueryAttention computes
// for sequence_length 1 with past and present sharing one buffer (rotary on q and k at
// position seqlens_k[b], k and v written at that position, softmax(scale q.K^T) V), but
//   - each key/value row is read once for all query heads of its group (ORT's CPU kernel
//     walks the cache once per query head and packs K for an SGEMM on every call),
//   - dot products and the weighted sum of V are fused loops over the cache, no packing.
// At 512 positions this is most of the gap between a decode step and its weights
// (docs/PERFORMANCE.md). Written by hand because no package offers a GQA decode kernel
// for ORT's cache layout; the ORT kernel itself stays in charge of every other case.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvrun::runtime {

struct DecodeAttention {
  int64_t batch = 0, num_heads = 0, kv_num_heads = 0, head_size = 0;
  int64_t capacity = 0;     // positions in the KV buffer ([B, kv_heads, capacity, head_size])
  int64_t rotary_dim = 0;   // 0: no rotary; else 2 * cos/sin columns (<= head_size)
  int64_t rotary_rows = 0;  // rows of the cos/sin tables
  float scale = 0;          // 0: 1/sqrt(head_size)
  // Element type of every tensor below (as GroupQueryAttention's T): float32, or float16
  // held as uint16_t (computed in float32; a float16 cache halves the bytes read).
  bool f16 = false;
  bool portable = false;  // the portable loops even where AVX2 is there (tests compare the two)
  // q/k/v of the new position: row b of head h at q + b*q_row + h*head_size (k, v alike).
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  int64_t q_row = 0, kv_row = 0;
  const int32_t* seqlens_k = nullptr;  // [B]: the new position of row b (total length - 1)
  const void *cos = nullptr, *sin = nullptr;
  void *key_cache = nullptr, *value_cache = nullptr;  // shared past/present buffers
  void* out = nullptr;                                // [B, 1, num_heads * head_size]

  // Throws kvrun::Error when a row's position is outside the buffer or the rotary table.
  void check() const;
  int64_t units() const { return batch * kv_num_heads; }
  // One (row, kv head) unit: rotary, cache write, attention for the heads of its group.
  void run_unit(int64_t unit) const;
};

// sum over i of exp(x[i] - shift) for shift >= max(x) (every argument <= 0), accumulated in
// double: AVX2 lanes (Cephes' expf polynomial, within 2 ulp of std::exp; arguments below
// -87.3, -inf included, count as e^-87.3) where the CPU has them, std::exp elsewhere. The
// beam search's log_softmax runs on it (58,101 exponentials per row and step for Marian).
double sum_exp_shifted(const float* x, int64_t n, float shift);

}  // namespace kvrun::runtime
