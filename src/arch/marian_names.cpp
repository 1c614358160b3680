#include "arch/marian_names.h"

#include "kvrun/error.h"

namespace kvrun::arch {

namespace {

MarianAttentionNames attention_names(const std::string& p) {
  return {p + "q_proj.weight", p + "k_proj.weight", p + "v_proj.weight", p + "out_proj.weight",
          p + "q_proj.bias",   p + "k_proj.bias",   p + "v_proj.bias",   p + "out_proj.bias"};
}

std::string first_present(const io::TensorStore& s, const std::vector<std::string>& names, const char* what) {
  for (const auto& n : names)
    if (s.has(n)) return n;
  std::string list;
  for (const auto& n : names) {
    if (!list.empty()) list += ", ";
    list += n;
  }
  throw Error(s.path().string() + ": no " + what + " (looked for " + list + ")");
}

}  // namespace

MarianLayerNames marian_layer_names(bool decoder, int64_t layer) {
  std::string p = decoder ? "model.decoder.layers." : "model.encoder.layers.";
  p += std::to_string(layer);
  p += '.';
  MarianLayerNames n;
  n.self_attn = attention_names(p + "self_attn.");
  if (decoder) {
    n.cross_attn = attention_names(p + "encoder_attn.");
    n.cross_norm = p + "encoder_attn_layer_norm.weight";
    n.cross_norm_bias = p + "encoder_attn_layer_norm.bias";
  }
  n.self_norm = p + "self_attn_layer_norm.weight";
  n.self_norm_bias = p + "self_attn_layer_norm.bias";
  n.fc1 = p + "fc1.weight";
  n.fc1_bias = p + "fc1.bias";
  n.fc2 = p + "fc2.weight";
  n.fc2_bias = p + "fc2.bias";
  n.final_norm = p + "final_layer_norm.weight";
  n.final_norm_bias = p + "final_layer_norm.bias";
  return n;
}

MarianEmbeddingNames marian_embedding_names(const io::TensorStore& s, const io::Seq2SeqConfig& cfg) {
  MarianEmbeddingNames e;
  const bool shared = cfg.share_encoder_decoder_embeddings;
  e.encoder =
      first_present(s,
                    shared ? std::vector<std::string>{"model.shared.weight", "model.encoder.embed_tokens.weight"}
                           : std::vector<std::string>{"model.encoder.embed_tokens.weight", "model.shared.weight"},
                    "encoder embedding");
  e.decoder = first_present(
      s,
      shared ? std::vector<std::string>{"model.shared.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"}
             : std::vector<std::string>{"model.decoder.embed_tokens.weight", "lm_head.weight"},
      "decoder embedding");
  e.lm_head = first_present(s, {"lm_head.weight", e.decoder}, "lm_head");
  return e;
}

void check_marian_checkpoint(const io::TensorStore& s, const io::Seq2SeqConfig& c) {
  auto expect = [&](const std::string& name, const std::vector<int64_t>& shape) {
    if (!s.has(name))
      throw Error(s.path().string() + ": tensor '" + name + "' is missing (expected shape " + io::shape_str(shape) +
                  " for MarianMTModel)");
    const io::TensorView& t = s.get(name);
    if (t.shape != shape)
      throw Error(t.file + ": tensor '" + name + "' has shape " + io::shape_str(t.shape) + ", expected " +
                  io::shape_str(shape) + " (from config.json)");
    if (t.dtype != io::DType::F32 && t.dtype != io::DType::F16 && t.dtype != io::DType::BF16)
      throw Error(t.file + ": tensor '" + name + "' has dtype " + std::string(io::dtype_to_safetensors(t.dtype)) +
                  ", expected F32, F16 or BF16");
  };
  const int64_t d = c.d_model;
  const MarianEmbeddingNames e = marian_embedding_names(s, c);
  expect(e.encoder, {c.vocab_size, d});
  expect(e.decoder, {c.decoder_vocab_size, d});
  expect(e.lm_head, {c.decoder_vocab_size, d});
  if (s.has(kMarianFinalLogitsBias)) expect(kMarianFinalLogitsBias, {1, c.decoder_vocab_size});
  for (int dec = 0; dec < 2; ++dec) {
    const int64_t layers = dec ? c.decoder_layers : c.encoder_layers, ffn = dec ? c.decoder_ffn_dim : c.encoder_ffn_dim;
    for (int64_t l = 0; l < layers; ++l) {
      const MarianLayerNames n = marian_layer_names(dec != 0, l);
      std::vector<const MarianAttentionNames*> atts = {&n.self_attn};
      if (dec) atts.push_back(&n.cross_attn);
      for (const auto* a : atts) {
        for (const auto* w : {&a->q, &a->k, &a->v, &a->o}) expect(*w, {d, d});
        for (const auto* b : {&a->q_bias, &a->k_bias, &a->v_bias, &a->o_bias}) expect(*b, {d});
      }
      for (const auto* v : {&n.self_norm, &n.self_norm_bias, &n.final_norm, &n.final_norm_bias, &n.fc2_bias})
        expect(*v, {d});
      if (dec) {
        expect(n.cross_norm, {d});
        expect(n.cross_norm_bias, {d});
      }
      expect(n.fc1, {ffn, d});
      expect(n.fc1_bias, {ffn});
      expect(n.fc2, {d, ffn});
    }
  }
}

}  // namespace kvrun::arch
