#include "reference/seq2seq_ref.h"

#include <algorithm>
#include <cmath>

#include "arch/marian_names.h"
#include "kvrun/error.h"
#include "reference/ref_ops.h"

namespace kvrun::reference {
namespace {

// nn.LayerNorm over rows of `dim`: (x - mean) / sqrt(var + eps) * w + b (statistics in double).
void layer_norm(float* x, int64_t n, int64_t dim, const std::vector<float>& w, const std::vector<float>& b,
                double eps) {
  for (int64_t r = 0; r < n; ++r) {
    float* row = x + r * dim;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < dim; ++i) mean += row[i];
    mean /= static_cast<double>(dim);
    for (int64_t i = 0; i < dim; ++i) var += (row[i] - mean) * (row[i] - mean);
    var /= static_cast<double>(dim);
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t i = 0; i < dim; ++i)
      row[i] = static_cast<float>((row[i] - mean) * inv) * w[static_cast<size_t>(i)] + b[static_cast<size_t>(i)];
  }
}

float activate(io::Seq2SeqActivation a, float x) {
  switch (a) {
    case io::Seq2SeqActivation::Swish:
      return x / (1.0f + std::exp(-x));
    case io::Seq2SeqActivation::Gelu:
      return static_cast<float>(0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))));
    case io::Seq2SeqActivation::Relu:
      return std::max(x, 0.0f);
  }
  return x;
}

// Multi-head attention of q [nq, d] over k, v [nk, d] (already projected), heads of
// d / heads; query i sees keys j < visible(i). Output [nq, d] (before out_proj).
template <typename Visible>
void attend(const float* q, int64_t nq, const float* k, const float* v, int64_t nk, int64_t d, int64_t heads,
            const Visible& visible, float* out) {
  const int64_t hd = d / heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  std::vector<double> p(static_cast<size_t>(nk));
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t n = visible(i);
      double m = -1e300;
      for (int64_t j = 0; j < n; ++j) {
        p[static_cast<size_t>(j)] = static_cast<double>(dot(q + i * d + h * hd, k + j * d + h * hd, hd) * scale);
        m = std::max(m, p[static_cast<size_t>(j)]);
      }
      double z = 0;
      for (int64_t j = 0; j < n; ++j) z += (p[static_cast<size_t>(j)] = std::exp(p[static_cast<size_t>(j)] - m));
      for (int64_t c = 0; c < hd; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += p[static_cast<size_t>(j)] * v[j * d + h * hd + c];
        out[i * d + h * hd + c] = static_cast<float>(acc / z);
      }
    }
}

}  // namespace

Seq2SeqRef::Seq2SeqRef(const io::Seq2SeqConfig& cfg, const io::TensorStore& s) : cfg_(cfg) {
  arch::check_marian_checkpoint(s, cfg);
  const arch::MarianEmbeddingNames e = arch::marian_embedding_names(s, cfg);
  enc_embed_ = load(s, e.encoder);
  dec_embed_ = load(s, e.decoder);
  lm_head_ = load(s, e.lm_head);
  logits_bias_ = s.has(arch::kMarianFinalLogitsBias) ? load(s, arch::kMarianFinalLogitsBias)
                                                     : std::vector<float>(static_cast<size_t>(cfg.decoder_vocab_size));
  positions_ = cfg.positions(cfg.max_position_embeddings);
  auto attention = [&](const arch::MarianAttentionNames& n) {
    return Attention{load(s, n.q),      load(s, n.k),      load(s, n.v),      load(s, n.o),
                     load(s, n.q_bias), load(s, n.k_bias), load(s, n.v_bias), load(s, n.o_bias)};
  };
  for (int dec = 0; dec < 2; ++dec) {
    auto& layers = dec ? dec_ : enc_;
    for (int64_t l = 0; l < (dec ? cfg.decoder_layers : cfg.encoder_layers); ++l) {
      const arch::MarianLayerNames n = arch::marian_layer_names(dec != 0, l);
      Layer L;
      L.self = attention(n.self_attn);
      if (dec) {
        L.cross = attention(n.cross_attn);
        L.cross_norm = load(s, n.cross_norm);
        L.cross_norm_b = load(s, n.cross_norm_bias);
      }
      L.self_norm = load(s, n.self_norm);
      L.self_norm_b = load(s, n.self_norm_bias);
      L.fc1 = load(s, n.fc1);
      L.fc1_b = load(s, n.fc1_bias);
      L.fc2 = load(s, n.fc2);
      L.fc2_b = load(s, n.fc2_bias);
      L.final_norm = load(s, n.final_norm);
      L.final_norm_b = load(s, n.final_norm_bias);
      layers.push_back(std::move(L));
    }
  }
}

// h = LN(h + fc2(act(fc1(h))))
void Seq2SeqRef::ffn(const Layer& L, int64_t ffn_dim, std::vector<float>& h, int64_t n) const {
  const int64_t d = cfg_.d_model;
  std::vector<float> a(static_cast<size_t>(n * ffn_dim)), f(static_cast<size_t>(n * d));
  linear(h.data(), n, d, L.fc1, L.fc1_b, ffn_dim, a.data());
  for (auto& x : a) x = activate(cfg_.activation, x);
  linear(a.data(), n, ffn_dim, L.fc2, L.fc2_b, d, f.data());
  for (size_t i = 0; i < h.size(); ++i) h[i] += f[i];
  layer_norm(h.data(), n, d, L.final_norm, L.final_norm_b, cfg_.layer_norm_eps);
}

std::vector<float> Seq2SeqRef::encode(const std::vector<int64_t>& ids) const {
  const int64_t d = cfg_.d_model, n = static_cast<int64_t>(ids.size());
  if (n > cfg_.max_position_embeddings)
    throw Error("a source of " + std::to_string(n) + " tokens exceeds max_position_embeddings " +
                std::to_string(cfg_.max_position_embeddings));
  const auto scale = static_cast<float>(cfg_.embedding_scale());
  std::vector<float> h(static_cast<size_t>(n * d));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t id = ids[static_cast<size_t>(t)];
    if (id < 0 || id >= cfg_.vocab_size)
      throw Error("source token id " + std::to_string(id) + " is outside [0, " + std::to_string(cfg_.vocab_size) + ")");
    for (int64_t i = 0; i < d; ++i)
      h[static_cast<size_t>(t * d + i)] =
          enc_embed_[static_cast<size_t>(id * d + i)] * scale + positions_[static_cast<size_t>(t * d + i)];
  }
  std::vector<float> q(h.size()), k(h.size()), v(h.size()), a(h.size()), o(h.size());
  for (const Layer& L : enc_) {
    linear(h.data(), n, d, L.self.q, L.self.qb, d, q.data());
    linear(h.data(), n, d, L.self.k, L.self.kb, d, k.data());
    linear(h.data(), n, d, L.self.v, L.self.vb, d, v.data());
    attend(
        q.data(), n, k.data(), v.data(), n, d, cfg_.encoder_heads, [&](int64_t) { return n; }, a.data());
    linear(a.data(), n, d, L.self.o, L.self.ob, d, o.data());
    for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
    layer_norm(h.data(), n, d, L.self_norm, L.self_norm_b, cfg_.layer_norm_eps);
    ffn(L, cfg_.encoder_ffn_dim, h, n);
  }
  return h;
}

Seq2SeqRef::State Seq2SeqRef::start(const std::vector<float>& enc, int64_t source_len) const {
  const int64_t d = cfg_.d_model;
  if (static_cast<int64_t>(enc.size()) != source_len * d)
    throw Error("encoder output has " + std::to_string(enc.size()) + " values, expected " + std::to_string(source_len) +
                " x " + std::to_string(d));
  State st;
  st.source_len = source_len;
  for (const Layer& L : dec_) {
    std::vector<float> k(enc.size()), v(enc.size());
    linear(enc.data(), source_len, d, L.cross.k, L.cross.kb, d, k.data());
    linear(enc.data(), source_len, d, L.cross.v, L.cross.vb, d, v.data());
    st.cross_k.push_back(std::move(k));
    st.cross_v.push_back(std::move(v));
    st.self_k.emplace_back();
    st.self_v.emplace_back();
  }
  return st;
}

std::vector<float> Seq2SeqRef::decode(State& st, const std::vector<int64_t>& tokens) const {
  const int64_t d = cfg_.d_model, n = static_cast<int64_t>(tokens.size()), past = st.length;
  if (past + n > cfg_.max_position_embeddings)
    throw Error("a target of " + std::to_string(past + n) + " positions exceeds max_position_embeddings " +
                std::to_string(cfg_.max_position_embeddings));
  const auto scale = static_cast<float>(cfg_.embedding_scale());
  std::vector<float> h(static_cast<size_t>(n * d));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t id = tokens[static_cast<size_t>(t)];
    if (id < 0 || id >= cfg_.decoder_vocab_size)
      throw Error("target token id " + std::to_string(id) + " is outside [0, " +
                  std::to_string(cfg_.decoder_vocab_size) + ")");
    for (int64_t i = 0; i < d; ++i)
      h[static_cast<size_t>(t * d + i)] =
          dec_embed_[static_cast<size_t>(id * d + i)] * scale + positions_[static_cast<size_t>((past + t) * d + i)];
  }
  std::vector<float> q(h.size()), k(h.size()), v(h.size()), a(h.size()), o(h.size());
  for (size_t l = 0; l < dec_.size(); ++l) {
    const Layer& L = dec_[l];
    linear(h.data(), n, d, L.self.q, L.self.qb, d, q.data());
    linear(h.data(), n, d, L.self.k, L.self.kb, d, k.data());
    linear(h.data(), n, d, L.self.v, L.self.vb, d, v.data());
    st.self_k[l].insert(st.self_k[l].end(), k.begin(), k.end());
    st.self_v[l].insert(st.self_v[l].end(), v.begin(), v.end());
    attend(
        q.data(), n, st.self_k[l].data(), st.self_v[l].data(), past + n, d, cfg_.decoder_heads,
        [&](int64_t i) { return past + i + 1; }, a.data());
    linear(a.data(), n, d, L.self.o, L.self.ob, d, o.data());
    for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
    layer_norm(h.data(), n, d, L.self_norm, L.self_norm_b, cfg_.layer_norm_eps);
    linear(h.data(), n, d, L.cross.q, L.cross.qb, d, q.data());
    attend(
        q.data(), n, st.cross_k[l].data(), st.cross_v[l].data(), st.source_len, d, cfg_.decoder_heads,
        [&](int64_t) { return st.source_len; }, a.data());
    linear(a.data(), n, d, L.cross.o, L.cross.ob, d, o.data());
    for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
    layer_norm(h.data(), n, d, L.cross_norm, L.cross_norm_b, cfg_.layer_norm_eps);
    ffn(L, cfg_.decoder_ffn_dim, h, n);
  }
  st.length += n;
  const int64_t V = cfg_.decoder_vocab_size;
  std::vector<float> logits(static_cast<size_t>(n * V));
  linear(h.data(), n, d, lm_head_, logits_bias_, V, logits.data());
  return logits;
}

}  // namespace kvrun::reference
