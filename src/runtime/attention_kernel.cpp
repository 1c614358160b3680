#include "runtime/attention_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "io/dtype.h"
#include "kvrun/error.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KVRUN_X86 1
// The loops that read the cache have AVX2 + FMA + F16C forms (the default x86-64
// target is SSE2 only), used when the CPU has them.
#define KVRUN_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KVRUN_INLINE inline __attribute__((always_inline))
#else
#define KVRUN_X86 0
#define KVRUN_INLINE inline
#endif

namespace kvrun::runtime {
namespace {

// ---- portable loops (any CPU), float32 cache; float16 converts row by row below.

// scores[g * T + t] = scale * <q_g, K_t> for t < T and the G query heads of a group.
void scores_f32_base(const float* q, int64_t G, const float* K, int64_t T, int64_t D, float scale, float* scores) {
  for (int64_t t = 0; t < T; ++t) {
    const float* k = K + t * D;
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = q + g * D;
      float acc[16] = {};
      int64_t i = 0;
      for (; i + 16 <= D; i += 16)
        for (int j = 0; j < 16; ++j) acc[j] += qg[i + j] * k[i + j];
      float s = 0;
      for (int j = 0; j < 16; ++j) s += acc[j];
      for (; i < D; ++i) s += qg[i] * k[i];
      scores[g * T + t] = s * scale;
    }
  }
}

// out_g += sum_t p[g * T + t] V_t for the G heads of a group (out zeroed by the caller).
void wsum_f32_base(const float* p, int64_t G, const float* V, int64_t T, int64_t D, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* v = V + t * D;
    for (int64_t g = 0; g < G; ++g) {
      const float w = p[g * T + t];
      float* o = out + g * D;
      for (int64_t i = 0; i < D; ++i) o[i] += w * v[i];
    }
  }
}

// ---- AVX2 + FMA + F16C (x86-64), picked at run time.
#if KVRUN_X86
// Eight float32 values of a cache row, stored as float32 or float16.
template <bool F16>
KVRUN_AVX2 KVRUN_INLINE __m256 load8(const void* row, int64_t i) {
  if constexpr (F16)
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i)));
  else
    return _mm256_loadu_ps(static_cast<const float*>(row) + i);
}

// The sums of eight vectors' lanes, as one vector.
KVRUN_AVX2 KVRUN_INLINE __m256 reduce8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

// Scores eight cache rows at a time (one accumulator per row, reduced together);
// D % 8 == 0.
template <bool F16>
KVRUN_AVX2 void scores_avx2(const float* q, int64_t G, const void* K, int64_t T, int64_t D, float scale,
                            float* scores) {
  const size_t es = F16 ? 2 : 4;
  const auto* base = static_cast<const char*>(K);
  const __m256 vs = _mm256_set1_ps(scale);
  int64_t t = 0;
  for (; t + 8 <= T; t += 8) {
    const char* rows = base + t * D * es;
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = q + g * D;
      __m256 acc[8];
      for (auto& x : acc) x = _mm256_setzero_ps();
      for (int r = 0; r < 8; ++r)  // row by row: the cache is read in address order
        for (int64_t i = 0; i < D; i += 8)
          acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i), load8<F16>(rows + r * D * es, i), acc[r]);
      _mm256_storeu_ps(scores + g * T + t, _mm256_mul_ps(reduce8(acc), vs));
    }
  }
  for (; t < T; ++t) {
    const char* row = base + t * D * es;
    for (int64_t g = 0; g < G; ++g) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t i = 0; i < D; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + i), load8<F16>(row, i), acc);
      __m128 x = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      x = _mm_add_ps(x, _mm_movehl_ps(x, x));
      x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
      scores[g * T + t] = _mm_cvtss_f32(x) * scale;
    }
  }
}

// out_g += sum_t p[g * T + t] V_t, 32 columns at a time with the accumulators of all G
// heads of the group in registers; D % 32 == 0.
// out_g += sum_t p[g * T + t] V_t for the G heads of a group, reading V in address
// order (two rows per pass over the accumulators in L1); D % 8 == 0.
constexpr int64_t kMaxGroup = 32;  // query heads per KV head

template <bool F16>
KVRUN_AVX2 void wsum_avx2(const float* p, int64_t G, const void* V, int64_t T, int64_t D, float* out) {
  const size_t es = F16 ? 2 : 4;
  const auto* base = static_cast<const char*>(V);
  int64_t t = 0;
  for (; t + 2 <= T; t += 2) {
    const char* r0 = base + t * D * es;
    const char* r1 = r0 + D * es;
    __m256 w0[kMaxGroup], w1[kMaxGroup];
    for (int64_t g = 0; g < G; ++g)
      w0[g] = _mm256_broadcast_ss(p + g * T + t), w1[g] = _mm256_broadcast_ss(p + g * T + t + 1);
    for (int64_t i = 0; i < D; i += 8) {
      const __m256 v0 = load8<F16>(r0, i), v1 = load8<F16>(r1, i);
      for (int64_t g = 0; g < G; ++g) {
        float* o = out + g * D + i;
        _mm256_storeu_ps(o, _mm256_fmadd_ps(w1[g], v1, _mm256_fmadd_ps(w0[g], v0, _mm256_loadu_ps(o))));
      }
    }
  }
  for (; t < T; ++t) {
    const char* row = base + t * D * es;
    for (int64_t i = 0; i < D; i += 8) {
      const __m256 v = load8<F16>(row, i);
      for (int64_t g = 0; g < G; ++g) {
        float* o = out + g * D + i;
        _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_broadcast_ss(p + g * T + t), v, _mm256_loadu_ps(o)));
      }
    }
  }
}

// exp(x) for x <= 0 (softmax after subtracting the max): Cephes' expf polynomial,
// within 2 ulp of std::exp; below -87.3 it returns 0.
KVRUN_AVX2 KVRUN_INLINE __m256 exp_le0(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  for (float c : {1.3981999507E-3f, 8.3334519073E-3f, 4.1665795894E-2f, 1.6666665459E-1f, 5.0000001201E-1f})
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

KVRUN_AVX2 void softmax_avx2(float* x, int64_t n) {
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  const __m256 vm = _mm256_set1_ps(m);
  __m256 vsum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_le0(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vsum);
  float sum = 0;
  for (float l : lanes) sum += l;
  for (; i < n; ++i) sum += (x[i] = std::exp(x[i] - m));
  const __m256 inv = _mm256_set1_ps(1.f / sum);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  for (; i < n; ++i) x[i] *= 1.f / sum;
}

bool has_avx2() {
  static const bool yes =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return yes;
}

KVRUN_AVX2 double sum_exp_avx2(const float* x, int64_t n, float shift) {
  const __m256 vs = _mm256_set1_ps(shift);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_le0(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(lo, hi));
  double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) sum += static_cast<double>(std::exp(x[i] - shift));
  return sum;
}
#endif

void scores_any([[maybe_unused]] bool simd, const float* q, int64_t G, const void* K, bool f16, int64_t T, int64_t D,
                float scale, float* scores) {
#if KVRUN_X86
  if (simd && D % 8 == 0)
    return f16 ? scores_avx2<true>(q, G, K, T, D, scale, scores) : scores_avx2<false>(q, G, K, T, D, scale, scores);
#endif
  if (!f16) return scores_f32_base(q, G, static_cast<const float*>(K), T, D, scale, scores);
  const auto* k = static_cast<const uint16_t*>(K);
  std::vector<float> row(static_cast<size_t>(D));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < D; ++i) row[i] = io::f16_to_f32(k[t * D + i]);
    for (int64_t g = 0; g < G; ++g) {
      float s = 0;
      for (int64_t i = 0; i < D; ++i) s += q[g * D + i] * row[i];
      scores[g * T + t] = s * scale;
    }
  }
}

void wsum_any([[maybe_unused]] bool simd, const float* p, int64_t G, const void* V, bool f16, int64_t T, int64_t D,
              float* out) {
#if KVRUN_X86
  if (simd && D % 8 == 0 && G <= kMaxGroup)
    return f16 ? wsum_avx2<true>(p, G, V, T, D, out) : wsum_avx2<false>(p, G, V, T, D, out);
#endif
  if (!f16) return wsum_f32_base(p, G, static_cast<const float*>(V), T, D, out);
  const auto* v = static_cast<const uint16_t*>(V);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t i = 0; i < D; ++i) out[g * D + i] += p[g * T + t] * io::f16_to_f32(v[t * D + i]);
}

void softmax([[maybe_unused]] bool simd, float* x, int64_t n) {
#if KVRUN_X86
  if (simd) return softmax_avx2(x, n);
#endif
  const float m = *std::max_element(x, x + n);
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - m));
  const float inv = 1.f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

// Element i of a float32 or float16 tensor.
float at(const void* p, bool f16, int64_t i) {
  return f16 ? io::f16_to_f32(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}
void put(void* p, bool f16, int64_t i, float x) {
  if (f16)
    static_cast<uint16_t*>(p)[i] = io::f32_to_f16(x);
  else
    static_cast<float*>(p)[i] = x;
}

// y = x (D values from element offset `off` of src) with the first rotary_dim values
// rotated (half-split layout, as GroupQueryAttention with rotary_interleaved = 0).
void load_rotated(const void* src, bool f16, int64_t off, float* y, int64_t D, int64_t rotary_dim, const void* cos,
                  const void* sin, int64_t cs_off) {
  for (int64_t i = 0; i < D; ++i) y[i] = at(src, f16, off + i);
  const int64_t half = rotary_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = y[i], b = y[i + half], c = at(cos, f16, cs_off + i), s = at(sin, f16, cs_off + i);
    y[i] = a * c - b * s;
    y[i + half] = b * c + a * s;
  }
}

}  // namespace

void DecodeAttention::check() const {
  if (batch <= 0 || num_heads <= 0 || kv_num_heads <= 0 || num_heads % kv_num_heads || head_size <= 0 ||
      rotary_dim < 0 || rotary_dim > head_size || rotary_dim % 2)
    throw Error("decode attention: bad shape (heads " + std::to_string(num_heads) + "/" + std::to_string(kv_num_heads) +
                ", head size " + std::to_string(head_size) + ", rotary dim " + std::to_string(rotary_dim) + ")");
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t pos = seqlens_k[b];
    if (pos < 0 || pos >= capacity || (rotary_dim && pos >= rotary_rows))
      throw Error("decode attention: row " + std::to_string(b) + " writes position " + std::to_string(pos) +
                  ", expected 0.." + std::to_string(std::min(capacity, rotary_dim ? rotary_rows : capacity) - 1));
  }
}

void DecodeAttention::run_unit(int64_t unit) const {
  const int64_t b = unit / kv_num_heads, h = unit % kv_num_heads;
  const int64_t G = num_heads / kv_num_heads, D = head_size;
  const int64_t pos = seqlens_k[b], T = pos + 1;
  const int64_t cs_off = pos * (rotary_dim / 2);
  const size_t es = f16 ? 2 : 4;

  thread_local std::vector<float> qbuf, kvbuf, scores, acc;
  qbuf.resize(static_cast<size_t>(G * D));
  kvbuf.resize(static_cast<size_t>(D));
  for (int64_t g = 0; g < G; ++g)
    load_rotated(q, f16, b * q_row + (h * G + g) * D, qbuf.data() + g * D, D, rotary_dim, cos, sin, cs_off);

  // the new key (rotated) and value at `pos` of this head's cache
  const int64_t head = (b * kv_num_heads + h) * capacity * D;
  auto* K = static_cast<char*>(key_cache) + head * es;
  auto* V = static_cast<char*>(value_cache) + head * es;
  load_rotated(k, f16, b * kv_row + h * D, kvbuf.data(), D, rotary_dim, cos, sin, cs_off);
  for (int64_t i = 0; i < D; ++i) put(K, f16, pos * D + i, kvbuf[i]);
  std::memcpy(V + pos * D * es, static_cast<const char*>(v) + (b * kv_row + h * D) * es, static_cast<size_t>(D) * es);

#if KVRUN_X86
  const bool simd = !portable && has_avx2();
#else
  const bool simd = false;
#endif
  const float sc = scale == 0.f ? 1.f / std::sqrt(static_cast<float>(D)) : scale;
  scores.resize(static_cast<size_t>(G * T));
  scores_any(simd, qbuf.data(), G, K, f16, T, D, sc, scores.data());
  for (int64_t g = 0; g < G; ++g) softmax(simd, scores.data() + g * T, T);
  acc.assign(static_cast<size_t>(G * D), 0.f);
  wsum_any(simd, scores.data(), G, V, f16, T, D, acc.data());
  const int64_t o = b * num_heads * D + h * G * D;
  for (int64_t i = 0; i < G * D; ++i) put(out, f16, o + i, acc[i]);
}

double sum_exp_shifted(const float* x, int64_t n, float shift) {
#if KVRUN_X86
  if (has_avx2()) return sum_exp_avx2(x, n, shift);
#endif
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(std::exp(x[i] - shift));
  return sum;
}

}  // namespace kvrun::runtime
