#include "reference/decoder_ref.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "arch/tensor_names.h"
#include "reference/ref_ops.h"
#include "kvrun/error.h"

namespace kvrun::reference {
namespace {

// A norm weight as the norm multiplies by it: offset + w (Gemma's (1 + w)), in fp32.
std::vector<float> load_norm(const io::TensorStore& s, const std::string& name, double offset) {
  std::vector<float> w = load(s, name);
  if (offset != 0.0)
    for (auto& v : w) v = static_cast<float>(offset) + v;
  return w;
}

// transformers' gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;
  return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}

// transformers' RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, in fp32.
void rms_norm(const float* x, const std::vector<float>& w, int64_t dim, double eps, float* y) {
  float ss = 0;
  for (int64_t i = 0; i < dim; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + static_cast<float>(eps));
  for (int64_t i = 0; i < dim; ++i) y[i] = w[static_cast<size_t>(i)] * (x[i] * inv);
}

// rotate_half rotary: out = x*cos + rotate_half(x)*sin with cos/sin duplicated over both halves.
void rope(float* x, const float* cos, const float* sin, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i] + a * sin[i];
  }
}

}  // namespace

DecoderRef::DecoderRef(const io::ModelConfig& cfg, const io::TensorStore& store) : cfg_(cfg) {
  arch::check_checkpoint(store, cfg);
  const double off = cfg.norm_weight_offset;
  embed_ = load(store, arch::kEmbedTokens);
  final_norm_ = load_norm(store, arch::kFinalNorm, off);
  if (!cfg.tie_word_embeddings) lm_head_ = load(store, arch::kLmHead);
  layers_.resize(static_cast<size_t>(cfg.num_layers));
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const arch::LayerTensorNames n = arch::layer_tensor_names(cfg, l);
    Layer& L = layers_[static_cast<size_t>(l)];
    L.input_norm = load_norm(store, n.input_norm, off);
    L.q = load(store, n.q);
    L.k = load(store, n.k);
    L.v = load(store, n.v);
    L.o = load(store, n.o);
    L.q_bias = load(store, n.q_bias);
    L.k_bias = load(store, n.k_bias);
    L.v_bias = load(store, n.v_bias);
    L.o_bias = load(store, n.o_bias);
    L.q_norm = load_norm(store, n.q_norm, off);
    L.k_norm = load_norm(store, n.k_norm, off);
    L.post_norm = load_norm(store, n.post_norm, off);
    L.attn_out_norm = load_norm(store, n.attn_out_norm, off);
    L.mlp_out_norm = load_norm(store, n.mlp_out_norm, off);
    L.local = cfg.is_local(l);
    L.gate = load(store, n.gate);
    L.up = load(store, n.up);
    L.down = load(store, n.down);
    L.gate_bias = load(store, n.gate_bias);
    L.up_bias = load(store, n.up_bias);
    L.down_bias = load(store, n.down_bias);
  }
}

std::vector<float> DecoderRef::embed(const std::vector<int64_t>& ids) const {
  const int64_t H = cfg_.hidden_size;
  std::vector<float> out(ids.size() * static_cast<size_t>(H));
  for (size_t t = 0; t < ids.size(); ++t) {
    if (ids[t] < 0 || ids[t] >= cfg_.vocab_size)
      throw Error("token id " + std::to_string(ids[t]) + " is outside the vocabulary [0, " +
                  std::to_string(cfg_.vocab_size) + ")");
    std::copy_n(embed_.data() + ids[t] * H, H, out.data() + t * static_cast<size_t>(H));
  }
  const auto scale = static_cast<float>(cfg_.embedding_scale);  // transformers: fp32 rows * fp32 scale
  if (scale != 1.0f)
    for (auto& v : out) v *= scale;
  return out;
}

void DecoderRef::ensure_capacity(int64_t total) {
  if (total > rope_positions_) {
    rope_positions_ = std::max<int64_t>(total, 2 * rope_positions_);
    cfg_.rope_tables(rope_positions_, rope_cos_, rope_sin_);
    if (cfg_.has_local_layers()) cfg_.rope_tables(rope_positions_, rope_cos_local_, rope_sin_local_, /*local=*/true);
  }
  if (total <= capacity_) return;
  const int64_t cap = std::max<int64_t>(total, 2 * capacity_);
  for (auto& L : layers_) {
    L.kcache.resize(static_cast<size_t>(cap * cfg_.kv_dim()));
    L.vcache.resize(static_cast<size_t>(cap * cfg_.kv_dim()));
  }
  capacity_ = cap;
}

std::vector<float> DecoderRef::forward_ids(const std::vector<int64_t>& ids, bool all_logits) {
  const std::vector<float> e = embed(ids);
  return forward(e.data(), static_cast<int64_t>(ids.size()), all_logits);
}

std::vector<float> DecoderRef::forward(const float* embeds, int64_t n, bool all_logits) {
  if (n <= 0) throw Error("reference forward: expected at least one position, found " + std::to_string(n));
  const io::ModelConfig& c = cfg_;
  const int64_t H = c.hidden_size, D = c.head_dim, NH = c.num_heads, NKV = c.num_kv_heads;
  const int64_t Q = c.q_dim(), KV = c.kv_dim(), F = c.intermediate_size, half = D / 2;
  const int64_t past = cache_len_, total = past + n, group = NH / NKV;
  ensure_capacity(total);

  std::vector<float> h(embeds, embeds + n * H), x(static_cast<size_t>(n * H));
  std::vector<float> q(static_cast<size_t>(n * Q)), k(static_cast<size_t>(n * KV)), v(static_cast<size_t>(n * KV));
  std::vector<float> attn(static_cast<size_t>(n * Q)), tmp(static_cast<size_t>(n * H));
  std::vector<float> g(static_cast<size_t>(n * F)), u(static_cast<size_t>(n * F)), scores(static_cast<size_t>(total));
  // query_pre_attn_scalar^-0.5 (Gemma), else head_dim^-0.5 computed in float as before
  const float scale =
      c.query_pre_attn_scalar > 0 ? static_cast<float>(c.attention_scale()) : 1.0f / std::sqrt(static_cast<float>(D));

  for (auto& L : layers_) {
    for (int64_t t = 0; t < n; ++t) rms_norm(&h[t * H], L.input_norm, H, c.rms_norm_eps, &x[t * H]);
    linear(x.data(), n, H, L.q, L.q_bias, Q, q.data());
    linear(x.data(), n, H, L.k, L.k_bias, KV, k.data());
    linear(x.data(), n, H, L.v, L.v_bias, KV, v.data());
    const std::vector<float>& cos_tab = L.local ? rope_cos_local_ : rope_cos_;
    const std::vector<float>& sin_tab = L.local ? rope_sin_local_ : rope_sin_;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = past + t;
      const float* cs = &cos_tab[pos * half];
      const float* sn = &sin_tab[pos * half];
      for (int64_t hh = 0; hh < NH; ++hh) {
        float* qh = &q[t * Q + hh * D];
        if (!L.q_norm.empty()) rms_norm(qh, L.q_norm, D, c.rms_norm_eps, qh);
        rope(qh, cs, sn, D);
      }
      for (int64_t hh = 0; hh < NKV; ++hh) {
        float* kh = &k[t * KV + hh * D];
        if (!L.k_norm.empty()) rms_norm(kh, L.k_norm, D, c.rms_norm_eps, kh);
        rope(kh, cs, sn, D);
      }
      std::copy_n(&k[t * KV], KV, &L.kcache[pos * KV]);
      std::copy_n(&v[t * KV], KV, &L.vcache[pos * KV]);
    }
    for (int64_t t = 0; t < n; ++t) {
      const int64_t visible = past + t + 1;  // causal
      // local layers: key j is visible to query i iff i - j < sliding_window
      const int64_t first = L.local ? std::max<int64_t>(0, visible - c.sliding_window) : 0;
      for (int64_t hh = 0; hh < NH; ++hh) {
        const int64_t kvh = hh / group;
        const float* qh = &q[t * Q + hh * D];
        float mx = -INFINITY;
        for (int64_t j = first; j < visible; ++j) {
          scores[j] = dot(qh, &L.kcache[j * KV + kvh * D], D) * scale;
          mx = std::max(mx, scores[j]);
        }
        float sum = 0;
        for (int64_t j = first; j < visible; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
        float* out = &attn[t * Q + hh * D];
        std::fill_n(out, D, 0.0f);
        for (int64_t j = first; j < visible; ++j) {
          const float p = scores[j] / sum;
          const float* vj = &L.vcache[j * KV + kvh * D];
          for (int64_t d = 0; d < D; ++d) out[d] += p * vj[d];
        }
      }
    }
    linear(attn.data(), n, Q, L.o, L.o_bias, H, tmp.data());
    if (!L.attn_out_norm.empty())  // Gemma: the attention output is normed before the residual add
      for (int64_t t = 0; t < n; ++t) rms_norm(&tmp[t * H], L.attn_out_norm, H, c.rms_norm_eps, &tmp[t * H]);
    for (size_t i = 0; i < h.size(); ++i) h[i] += tmp[i];
    for (int64_t t = 0; t < n; ++t) rms_norm(&h[t * H], L.post_norm, H, c.rms_norm_eps, &x[t * H]);
    linear(x.data(), n, H, L.gate, L.gate_bias, F, g.data());
    linear(x.data(), n, H, L.up, L.up_bias, F, u.data());
    if (c.hidden_act == io::Activation::GeluTanh)
      for (size_t i = 0; i < g.size(); ++i) g[i] = gelu_tanh(g[i]) * u[i];
    else
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    linear(g.data(), n, F, L.down, L.down_bias, H, tmp.data());
    if (!L.mlp_out_norm.empty())  // Gemma: the MLP output too
      for (int64_t t = 0; t < n; ++t) rms_norm(&tmp[t * H], L.mlp_out_norm, H, c.rms_norm_eps, &tmp[t * H]);
    for (size_t i = 0; i < h.size(); ++i) h[i] += tmp[i];
  }
  cache_len_ = total;

  const int64_t first = all_logits ? 0 : n - 1, rows = n - first;
  for (int64_t t = first; t < n; ++t) rms_norm(&h[t * H], final_norm_, H, c.rms_norm_eps, &x[(t - first) * H]);
  std::vector<float> logits(static_cast<size_t>(rows * c.vocab_size));
  linear(x.data(), rows, H, lm_head_.empty() ? embed_ : lm_head_, {}, c.vocab_size, logits.data());
  if (c.final_logit_softcap > 0) {
    const auto cap = static_cast<float>(c.final_logit_softcap);
    for (auto& v : logits) v = std::tanh(v / cap) * cap;
  }
  return logits;
}

}  // namespace kvrun::reference
