#include "reference/ref_ops.h"

#include <algorithm>
#include <thread>

namespace kvrun::reference {

std::vector<float> load(const io::TensorStore& s, const std::string& name) {
  if (name.empty()) return {};
  return s.get(name).to_f32();
}

float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y[n, out] = x[n, in] * W[out, in]^T (+ b). Splits output rows over two threads when large.
void linear(const float* x, int64_t n, int64_t in, const std::vector<float>& W, const std::vector<float>& b,
            int64_t out, float* y) {
  auto work = [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const float* w = W.data() + o * in;
      const float bias = b.empty() ? 0.0f : b[static_cast<size_t>(o)];
      for (int64_t t = 0; t < n; ++t) y[t * out + o] = dot(x + t * in, w, in) + bias;
    }
  };
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  if (hw < 2 || n * in * out < (1 << 20)) {
    work(0, out);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t chunk = (out + hw - 1) / hw;
  for (unsigned t = 1; t < hw; ++t) {
    const int64_t a = std::min<int64_t>(out, t * chunk), z = std::min<int64_t>(out, (t + 1) * chunk);
    if (a < z) pool.emplace_back(work, a, z);
  }
  work(0, std::min<int64_t>(out, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace kvrun::reference
