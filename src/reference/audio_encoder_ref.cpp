#include "reference/audio_encoder_ref.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>

#include "kvrun/error.h"

namespace kvrun::reference {
namespace {

constexpr int64_t kPanel = 16;  // output columns per packed panel

// Runs fn(i) for i in [0, n), split over up to `threads` threads in contiguous ranges.
void parallel_for(int64_t n, int threads, int64_t min_per_thread, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, n / std::max<int64_t>(1, min_per_thread)));
  if (nt <= 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t chunk = (n + nt - 1) / nt;
  for (int64_t t = 1; t < nt; ++t) {
    const int64_t a = std::min(n, t * chunk), z = std::min(n, (t + 1) * chunk);
    if (a < z) pool.emplace_back(fn, a, z);
  }
  fn(0, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

// Eight floats (GCC/Clang vector extension; two SSE registers or one AVX register).
typedef float v8f __attribute__((vector_size(32)));

// (A macro: functions taking or returning v8f by value change the ABI without AVX.)
#define KVRUN_LOAD8(v, p) \
  v8f v;                  \
  std::memcpy(&v, (p), sizeof(v8f))

// The hot loops get an x86-64-v3 (AVX2 + FMA) clone chosen at load time where the
// compiler and CPU support it; elsewhere the portable build runs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KVRUN_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define KVRUN_HOT
#endif

// R rows of x (stride ldx) times one packed panel [in][16] -> y (stride ldy), `cols` valid columns.
template <int R>
inline __attribute__((always_inline)) void micro_kernel(const float* x, int64_t ldx, const float* panel, int64_t in,
                                                        float* y, int64_t ldy, int64_t cols, const float* bias) {
  v8f a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = v8f{};
  for (int64_t k = 0; k < in; ++k) {
    KVRUN_LOAD8(w0, panel + k * kPanel);
    KVRUN_LOAD8(w1, panel + k * kPanel + 8);
    for (int r = 0; r < R; ++r) {
      const float a = x[r * ldx + k];
      a0[r] += a * w0;
      a1[r] += a * w1;
    }
  }
  for (int r = 0; r < R; ++r) {
    float out[kPanel];
    std::memcpy(out, &a0[r], sizeof(v8f));
    std::memcpy(out + 8, &a1[r], sizeof(v8f));
    for (int64_t j = 0; j < cols; ++j) y[r * ldy + j] = out[j] + bias[j];
  }
}

// y[t, o] = x[t, :] . W[o, :] + b[o] for the panels [p0, p1) (16 output columns each).
KVRUN_HOT void gemm_panels(const float* x, int64_t T, int64_t in, const float* packed, const float* bias, int64_t out,
                           float* y, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* panel = packed + p * in * kPanel;
    const int64_t o0 = p * kPanel, cols = std::min(kPanel, out - o0);
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) micro_kernel<4>(x + t * in, in, panel, in, y + t * out + o0, out, cols, bias + o0);
    for (; t < T; ++t) micro_kernel<1>(x + t * in, in, panel, in, y + t * out + o0, out, cols, bias + o0);
  }
}

KVRUN_HOT float dot(const float* a, const float* b, int64_t n) {
  v8f acc = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    KVRUN_LOAD8(x, a + i);
    KVRUN_LOAD8(y, b + i);
    acc += x * y;
  }
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// acc[0, n) += w * v[0, n)
KVRUN_HOT void axpy(float w, const float* v, float* acc, int64_t n) {
  for (int64_t j = 0; j < n; ++j) acc[j] += w * v[j];
}

// torch LayerNorm over the last axis (statistics in double).
void layer_norm(const float* x, int64_t T, int64_t dim, const std::vector<float>& g, const std::vector<float>& b,
                double eps, float* y) {
  for (int64_t t = 0; t < T; ++t) {
    const float* r = x + t * dim;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < dim; ++i) mean += r[i];
    mean /= static_cast<double>(dim);
    for (int64_t i = 0; i < dim; ++i) var += (r[i] - mean) * (r[i] - mean);
    var /= static_cast<double>(dim);
    const double inv = 1.0 / std::sqrt(var + eps);
    float* o = y + t * dim;
    for (int64_t i = 0; i < dim; ++i)
      o[i] = static_cast<float>((r[i] - mean) * inv * g[static_cast<size_t>(i)] + b[static_cast<size_t>(i)]);
  }
}

void relu(std::vector<float>& v) {
  for (float& x : v) x = x > 0 ? x : 0;
}

void add_into(std::vector<float>& x, const std::vector<float>& d) {
  for (size_t i = 0; i < x.size(); ++i) x[i] += d[i];
}

}  // namespace

AudioEncoderRef::Linear AudioEncoderRef::load_linear(const io::TensorStore& s, const std::string& module, int64_t in,
                                                     int64_t out) const {
  const io::TensorView& wv = s.get(module + ".weight");
  const io::TensorView& bv = s.get(module + ".bias");
  if (wv.shape != std::vector<int64_t>{out, in} || bv.shape != std::vector<int64_t>{out})
    throw Error(s.path().string() + ": '" + module + "' expected weight " + io::shape_str({out, in}) + " and bias " +
                io::shape_str({out}) + ", found " + io::shape_str(wv.shape) + " and " + io::shape_str(bv.shape));
  const std::vector<float> w = wv.to_f32();
  Linear L;
  L.in = in;
  L.out = out;
  L.bias = bv.to_f32();
  const int64_t panels = (out + kPanel - 1) / kPanel;
  L.packed.assign(static_cast<size_t>(panels * in * kPanel), 0.0f);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t k = 0; k < in; ++k)
      L.packed[static_cast<size_t>(((o / kPanel) * in + k) * kPanel + o % kPanel)] = w[static_cast<size_t>(o * in + k)];
  return L;
}

AudioEncoderRef::Norm AudioEncoderRef::load_norm(const io::TensorStore& s, const std::string& module,
                                                 int64_t dim) const {
  Norm n;
  for (auto [suffix, dst] : {std::pair{".weight", &n.gamma}, std::pair{".bias", &n.beta}}) {
    const io::TensorView& v = s.get(module + suffix);
    if (v.shape != std::vector<int64_t>{dim})
      throw Error(s.path().string() + ": '" + module + suffix + "' expected shape " + io::shape_str({dim}) +
                  ", found " + io::shape_str(v.shape));
    *dst = v.to_f32();
  }
  return n;
}

AudioEncoderRef::AudioEncoderRef(const arch::AudioEncoderConfig& cfg, const io::TensorStore& s) : cfg_(cfg) {
  cfg_.validate();
  threads_ = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int64_t d = cfg.d_model;
  for (int64_t i = 0; i < cfg.blocks + cfg.tp_blocks; ++i) {
    const std::string M = cfg.enc(cfg.encoder_layer(i));
    SanmLayer L;
    L.in = i == 0 ? cfg.input_size : d;
    L.norm1 = load_norm(s, M + ".norm1", L.in);
    L.norm2 = load_norm(s, M + ".norm2", d);
    L.qkv = load_linear(s, M + ".self_attn.linear_q_k_v", L.in, 3 * d);
    L.out = load_linear(s, M + ".self_attn.linear_out", d, d);
    L.w1 = load_linear(s, M + ".feed_forward.w_1", d, cfg.ffn);
    L.w2 = load_linear(s, M + ".feed_forward.w_2", cfg.ffn, d);
    const io::TensorView& f = s.get(M + ".self_attn.fsmn_block.weight");
    if (f.shape != std::vector<int64_t>{d, 1, cfg.kernel})
      throw Error(s.path().string() + ": '" + M + ".self_attn.fsmn_block.weight' expected shape " +
                  io::shape_str({d, 1, cfg.kernel}) + ", found " + io::shape_str(f.shape));
    L.fsmn = f.to_f32();
    enc_.push_back(std::move(L));
  }
  after_norm_ = load_norm(s, cfg.enc("after_norm"), d);
  tp_norm_ = load_norm(s, cfg.enc("tp_norm"), d);
  linear1_ = load_linear(s, cfg.adp("linear1"), d * cfg.downsample, cfg.adaptor_ffn);
  linear2_ = load_linear(s, cfg.adp("linear2"), cfg.adaptor_ffn, cfg.llm_dim);
  const int64_t D = cfg.llm_dim;
  for (int64_t b = 0; b < cfg.adaptor_layers; ++b) {
    const std::string M = cfg.adp("blocks." + std::to_string(b));
    Block B;
    B.norm1 = load_norm(s, M + ".norm1", D);
    B.norm2 = load_norm(s, M + ".norm2", D);
    B.q = load_linear(s, M + ".self_attn.linear_q", D, D);
    B.k = load_linear(s, M + ".self_attn.linear_k", D, D);
    B.v = load_linear(s, M + ".self_attn.linear_v", D, D);
    B.out = load_linear(s, M + ".self_attn.linear_out", D, D);
    B.w1 = load_linear(s, M + ".feed_forward.w_1", D, cfg.adaptor_block_ffn);
    B.w2 = load_linear(s, M + ".feed_forward.w_2", cfg.adaptor_block_ffn, D);
    blocks_.push_back(std::move(B));
  }
}

void AudioEncoderRef::linear(const Linear& L, const float* x, int64_t T, float* y) const {
  const int64_t panels = (L.out + kPanel - 1) / kPanel;
  const bool small = T * L.in * L.out < (int64_t{1} << 18);  // not worth a thread
  parallel_for(panels, threads_, small ? panels : 1, [&](int64_t p0, int64_t p1) {
    gemm_panels(x, T, L.in, L.packed.data(), L.bias.data(), L.out, y, p0, p1);
  });
}

// q/k/v rows of stride `ld`; out [T, d] (stride d).
void AudioEncoderRef::attention(const float* q, const float* k, const float* v, int64_t ld, int64_t T, int64_t heads,
                                int64_t d, float* out) const {
  const int64_t dk = d / heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dk)));
  parallel_for(heads * T, threads_, 16, [&](int64_t i0, int64_t i1) {
    std::vector<double> p(static_cast<size_t>(T));
    std::vector<float> acc(static_cast<size_t>(dk));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t h = i / T, t = i % T;
      const float* qt = q + t * ld + h * dk;
      double mx = -INFINITY;
      for (int64_t s = 0; s < T; ++s) {
        p[static_cast<size_t>(s)] = static_cast<double>(dot(qt, k + s * ld + h * dk, dk) * scale);
        mx = std::max(mx, p[static_cast<size_t>(s)]);
      }
      double sum = 0;
      for (int64_t s = 0; s < T; ++s) sum += p[static_cast<size_t>(s)] = std::exp(p[static_cast<size_t>(s)] - mx);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t s = 0; s < T; ++s)
        axpy(static_cast<float>(p[static_cast<size_t>(s)] / sum), v + s * ld + h * dk, acc.data(), dk);
      std::copy(acc.begin(), acc.end(), out + t * d + h * dk);
    }
  });
}

std::vector<float> AudioEncoderRef::encode(const float* feats, int64_t T) const {
  if (T <= 0) throw Error("audio encoder reference: expected at least one feature frame, found " + std::to_string(T));
  const auto& c = cfg_;
  const int64_t D0 = c.input_size, d = c.d_model, half = D0 / 2;
  const auto sz = [](int64_t n) { return static_cast<size_t>(n); };
  // input * sqrt(d) + sinusoidal positions from 1, in float32 like torch
  std::vector<float> x(sz(T * D0));
  const float scale = static_cast<float>(std::sqrt(static_cast<double>(d)));
  const float inc = std::log(10000.0f) / static_cast<float>(half - 1);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float st = static_cast<float>(t + 1) * std::exp(static_cast<float>(i) * -inc);
      x[sz(t * D0 + i)] = feats[t * D0 + i] * scale + static_cast<float>(std::sin(static_cast<double>(st)));
      x[sz(t * D0 + half + i)] =
          feats[t * D0 + half + i] * scale + static_cast<float>(std::cos(static_cast<double>(st)));
    }
  std::vector<float> h, qkv(sz(T * 3 * d)), att(sz(T * d)), o(sz(T * d)), ff1(sz(T * c.ffn)), ff2(sz(T * d));
  const int64_t left = (c.kernel - 1) / 2 + c.sanm_shift;
  for (size_t li = 0; li < enc_.size(); ++li) {
    const SanmLayer& L = enc_[li];
    h.resize(sz(T * L.in));
    layer_norm(x.data(), T, L.in, L.norm1.gamma, L.norm1.beta, c.enc_eps, h.data());
    linear(L.qkv, h.data(), T, qkv.data());
    const float* qp = qkv.data();
    const float* kp = qp + d;
    const float* vp = qp + 2 * d;
    attention(qp, kp, vp, 3 * d, T, c.heads, d, att.data());
    linear(L.out, att.data(), T, o.data());
    // FSMN memory: depthwise conv over v (zero padded) + v, added to the attention output
    for (int64_t t = 0; t < T; ++t)
      for (int64_t ch = 0; ch < d; ++ch) {
        double m = vp[t * 3 * d + ch];
        const float* wk = L.fsmn.data() + ch * c.kernel;
        for (int64_t j = 0; j < c.kernel; ++j) {
          const int64_t s = t + j - left;
          if (s >= 0 && s < T) m += static_cast<double>(wk[j]) * vp[s * 3 * d + ch];
        }
        o[sz(t * d + ch)] += static_cast<float>(m);
      }
    if (L.in == d)
      add_into(x, o);
    else
      x = o;  // encoders0: no residual around attention
    h.resize(sz(T * d));
    layer_norm(x.data(), T, d, L.norm2.gamma, L.norm2.beta, c.enc_eps, h.data());
    linear(L.w1, h.data(), T, ff1.data());
    relu(ff1);
    linear(L.w2, ff1.data(), T, ff2.data());
    add_into(x, ff2);
    if (static_cast<int64_t>(li) + 1 == c.blocks) {
      layer_norm(x.data(), T, d, after_norm_.gamma, after_norm_.beta, c.enc_eps, h.data());
      x = h;
    }
  }
  layer_norm(x.data(), T, d, tp_norm_.gamma, tp_norm_.beta, c.enc_eps, h.data());
  return h;
}

std::vector<float> AudioEncoderRef::adapt(const float* enc, int64_t T) const {
  const auto& c = cfg_;
  const auto sz = [](int64_t n) { return static_cast<size_t>(n); };
  const int64_t d = c.d_model, k = c.downsample, N = c.output_frames(T), D = c.llm_dim;
  std::vector<float> x(sz(N * k * d), 0.0f);  // zero padded to a multiple of k, then k frames per row
  std::copy_n(enc, T * d, x.data());
  std::vector<float> hid(sz(N * c.adaptor_ffn)), y(sz(N * D));
  linear(linear1_, x.data(), N, hid.data());
  relu(hid);
  linear(linear2_, hid.data(), N, y.data());
  std::vector<float> h(sz(N * D)), q(sz(N * D)), kk(sz(N * D)), v(sz(N * D)), att(sz(N * D)), o(sz(N * D));
  std::vector<float> f1(sz(N * c.adaptor_block_ffn)), f2(sz(N * D));
  for (const Block& B : blocks_) {
    layer_norm(y.data(), N, D, B.norm1.gamma, B.norm1.beta, c.adaptor_eps, h.data());
    linear(B.q, h.data(), N, q.data());
    linear(B.k, h.data(), N, kk.data());
    linear(B.v, h.data(), N, v.data());
    attention(q.data(), kk.data(), v.data(), D, N, c.adaptor_heads, D, att.data());
    linear(B.out, att.data(), N, o.data());
    add_into(y, o);
    layer_norm(y.data(), N, D, B.norm2.gamma, B.norm2.beta, c.adaptor_eps, h.data());
    linear(B.w1, h.data(), N, f1.data());
    relu(f1);
    linear(B.w2, f1.data(), N, f2.data());
    add_into(y, f2);
  }
  return y;
}

std::vector<float> AudioEncoderRef::forward(const float* feats, int64_t T) const {
  const std::vector<float> e = encode(feats, T);
  return adapt(e.data(), T);
}

}  // namespace kvrun::reference
