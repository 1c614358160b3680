#include "arch/marian.h"

#include <cmath>
#include <limits>
#include <map>

#include "arch/blocks.h"
#include "arch/marian_names.h"
#include "kvrun/error.h"

namespace kvrun::arch {
namespace fs = std::filesystem;
using graph::Dim;
using graph::GraphBuilder;

namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

// prefix + the number (built with += : GCC 12's -Wrestrict misfires on literal + to_string)
std::string numbered(const char* prefix, int64_t v, const char* suffix = "") {
  std::string s = prefix;
  s += std::to_string(v);
  s += suffix;
  return s;
}
std::string enc_scope(int64_t l) { return numbered("/model/encoder/layers.", l); }
std::string dec_scope(int64_t l) { return numbered("/model/decoder/layers.", l); }

struct MarianEmitter {
  const io::Seq2SeqConfig& c;
  const io::TensorStore& store;
  const WeightReader& w;
  const MarianEmbeddingNames& emb;
  Net n;
  Target target;
  bool untie_head = false;
  std::map<std::string, std::string> consts;

  int64_t d() const { return c.d_model; }

  // A [rows, d_model] matrix of the checkpoint, declared once per graph (the tied embedding
  // table serves the lookup and the lm_head).
  std::string matrix(const std::string& name, int64_t rows) {
    auto it = consts.find("matrix:" + name);
    if (it != consts.end()) return it->second;
    return consts["matrix:" + name] = n.weight(name, {rows, d()}, [&] { return w.f32(name); });
  }

  // An int64 constant, made once per graph.
  std::string i64(const std::string& key, const std::vector<int64_t>& v, bool scalar = false) {
    auto it = consts.find(key);
    if (it != consts.end()) return it->second;
    return consts[key] = n.g.const_i64("/model/const/" + key, v, scalar);
  }

  std::string layer_norm(const std::string& scope, const std::string& x, const std::string& wn, const std::string& bn) {
    const std::string W = n.weight(wn, {d()}, [&] { return w.f32(wn); });
    const std::string B = n.weight(bn, {d()}, [&] { return w.f32(bn); });
    return n.g.op("LayerNormalization", scope + "/LayerNormalization", {x, W, B},
                  {{"axis", int64_t{-1}}, {"epsilon", c.layer_norm_eps}});
  }

  std::string proj(const std::string& scope, const std::string& x, const std::string& wn, const std::string& bn,
                   int64_t in, int64_t out) {
    return linear(
        n, scope, x, wn, in, out, [&] { return w.transposed_concat({wn}, in); }, [&] { return w.f32(bn); });
  }

  // Several projections of one input fused along out (QKV, cross KV), then split.
  std::vector<std::string> fused(const std::string& scope, const std::string& x, const std::string& name,
                                 const std::vector<std::string>& ws, const std::vector<std::string>& bs) {
    const auto k = static_cast<int64_t>(ws.size());
    const std::string y = linear(
        n, scope, x, name, d(), k * d(), [&] { return w.transposed_concat(ws, d()); }, [&] { return w.concat(bs); });
    return split_last(n, scope, y, std::vector<int64_t>(static_cast<size_t>(k), d()));
  }

  std::string activation(const std::string& s, const std::string& x) {
    auto& g = n.g;
    switch (c.activation) {
      case io::Seq2SeqActivation::Swish:
        return g.op("Mul", s + "/Mul", {x, g.op("Sigmoid", s + "/Sigmoid", {x})});
      case io::Seq2SeqActivation::Relu:
        return g.op("Relu", s + "/Relu", {x});
      case io::Seq2SeqActivation::Gelu: {  // exact (erf) GELU, as torch's default
        const std::string e =
            g.op("Erf", s + "/Erf", {g.op("Div", s + "/Div", {x, g.const_scalar(s + "/sqrt2", n.dt, std::sqrt(2.0))})});
        const std::string one_plus = g.op("Add", s + "/OnePlus", {e, g.const_scalar(s + "/one", n.dt, 1.0)});
        return g.op("Mul", s + "/Mul",
                    {g.op("Mul", s + "/Half", {x, g.const_scalar(s + "/half", n.dt, 0.5)}), one_plus});
      }
    }
    return x;
  }

  // LN(h + fc2(act(fc1(h)))): the feed-forward half of every layer.
  std::string ffn_block(const std::string& s, const std::string& h, const MarianLayerNames& nm, int64_t ffn_dim) {
    const std::string a = proj(s + "/mlp/fc1", h, nm.fc1, nm.fc1_bias, d(), ffn_dim);
    const std::string f = proj(s + "/mlp/fc2", activation(s + "/mlp/act", a), nm.fc2, nm.fc2_bias, ffn_dim, d());
    return layer_norm(s + "/final_layer_norm", n.g.op("Add", s + "/mlp/Residual", {h, f}), nm.final_norm,
                      nm.final_norm_bias);
  }

  // The fused self-attention projection of a layer, split into q, k, v [b, s, d].
  std::vector<std::string> self_qkv(const std::string& s, const std::string& h, const MarianLayerNames& nm,
                                    bool decoder, int64_t l) {
    return fused(s + "/self_attn/qkv_proj", h,
                 numbered(decoder ? "model.decoder.layers." : "model.encoder.layers.", l, ".self_attn.qkv_proj.weight"),
                 {nm.self_attn.q, nm.self_attn.k, nm.self_attn.v},
                 {nm.self_attn.q_bias, nm.self_attn.k_bias, nm.self_attn.v_bias});
  }

  // [b, s, d] -> [b, heads, s, head_dim]
  std::string to_heads(const std::string& s, const std::string& x, int64_t heads) {
    const std::string r =
        n.g.op("Reshape", s + "/Reshape", {x, i64(numbered("heads", heads), {0, 0, heads, d() / heads})});
    return n.g.op("Transpose", s + "/Transpose", {r}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
  }
  // [b, heads, s, head_dim] -> [b, s, d]
  std::string from_heads(const std::string& s, const std::string& x) {
    const std::string t = n.g.op("Transpose", s + "/Transpose", {x}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
    return n.g.op("Reshape", s + "/Reshape", {t, i64("flat", {0, 0, d()})});
  }
  // softmax(q k^T / sqrt(head_dim) + bias) v on [b, heads, s, head_dim] tensors.
  std::string sdpa(const std::string& s, const std::string& q, const std::string& k, const std::string& v,
                   const std::string& bias, int64_t heads) {
    auto& g = n.g;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d() / heads));
    const std::string kt = g.op("Transpose", s + "/k/TransposeT", {k}, {{"perm", std::vector<int64_t>{0, 1, 3, 2}}});
    std::string sc = g.op("Mul", s + "/Scale",
                          {g.op("MatMul", s + "/QK/MatMul", {q, kt}), g.const_scalar(s + "/scale", n.dt, scale)});
    if (!bias.empty()) sc = g.op("Add", s + "/MaskAdd", {sc, bias});
    const std::string p = g.op("Softmax", s + "/Softmax", {sc}, {{"axis", int64_t{-1}}});
    return g.op("MatMul", s + "/PV/MatMul", {p, v});
  }

  // 0 where mask == 1, the lowest float elsewhere: [b, L] -> [b, 1, 1, L]
  std::string key_bias(const std::string& s, const std::string& mask) {
    auto& g = n.g;
    const std::string keep = g.op("Cast", s + "/Keep", {mask}, {{"to", graph::onnx_elem_type(io::DType::BOOL)}});
    const std::string b = g.op("Where", s + "/Bias",
                               {keep, g.const_scalar(s + "/zero", n.dt, 0.0),
                                g.const_scalar(s + "/lowest", n.dt, std::numeric_limits<float>::lowest())});
    return g.op("Unsqueeze", s + "/Unsqueeze", {b, i64("axes12", {1, 2})});
  }

  // Scaled token embeddings plus the positions rows [start, start + S) of the table.
  std::string embed(const std::string& s, const std::string& ids, const std::string& table, int64_t vocab,
                    const std::string& start, const std::string& end) {
    auto& g = n.g;
    const std::string E = matrix(table, vocab);
    std::string x = g.op("Gather", s + "/Gather", {E, ids}, {{"axis", int64_t{0}}});
    if (c.embedding_scale() != 1.0)
      x = g.op("Mul", s + "/Scale", {x, g.const_scalar(s + "/scale", n.dt, c.embedding_scale())});
    const std::string P = n.weight("model.positions", {c.max_position_embeddings, d()},
                                   [&] { return c.positions(c.max_position_embeddings); });
    const std::string rows = g.op("Slice", s + "/Positions", {P, start, end, i64("axis0", {0})});
    return g.op("Add", s + "/AddPositions", {x, rows});
  }

  // 1-D [1] int64 of a tensor's dim
  std::string dim_of(const std::string& s, const std::string& x, int64_t axis) {
    return n.g.op("Slice", s,
                  {n.g.op("Shape", s + "/Shape", {x}), i64(numbered("a", axis), {axis}),
                   i64(numbered("a", axis + 1), {axis + 1})});
  }

  void emit_encoder() {
    auto& g = n.g;
    g.input("input_ids", io::DType::I64, {Dim{"batch_size"}, Dim{"encoder_sequence_length"}});
    g.input("attention_mask", io::DType::I64, {Dim{"batch_size"}, Dim{"encoder_sequence_length"}});
    const std::string S = dim_of("/model/encoder/SeqLen", "input_ids", 1);
    std::string h = embed("/model/encoder/embed_tokens", "input_ids", emb.encoder, c.vocab_size, i64("zero1", {0}), S);
    const std::string bias = key_bias("/model/encoder/mask", "attention_mask");
    const int64_t H = c.encoder_heads;
    for (int64_t l = 0; l < c.encoder_layers; ++l) {
      const std::string s = enc_scope(l);
      const MarianLayerNames nm = marian_layer_names(false, l);
      const auto qkv = self_qkv(s, h, nm, false, l);
      const std::string a =
          sdpa(s + "/self_attn", to_heads(s + "/self_attn/q", qkv[0], H), to_heads(s + "/self_attn/k", qkv[1], H),
               to_heads(s + "/self_attn/v", qkv[2], H), bias, H);
      const std::string o = proj(s + "/self_attn/out_proj", from_heads(s + "/self_attn/o", a), nm.self_attn.o,
                                 nm.self_attn.o_bias, d(), d());
      h = layer_norm(s + "/self_attn_layer_norm", g.op("Add", s + "/self_attn/Residual", {h, o}), nm.self_norm,
                     nm.self_norm_bias);
      h = ffn_block(s, h, nm, c.encoder_ffn_dim);
      if (progress) progress(l + 1);
    }
    g.node("Identity", "/model/encoder/Output", {h}, {"last_hidden_state"});
    g.output("last_hidden_state", n.dt, {Dim{"batch_size"}, Dim{"encoder_sequence_length"}, Dim{d()}});
    // every decoder layer's cross-attention K/V, once per sentence
    const int64_t DH = c.decoder_heads;
    for (int64_t l = 0; l < c.decoder_layers; ++l) {
      const std::string s = dec_scope(l) + "/encoder_attn";
      const MarianLayerNames nm = marian_layer_names(true, l);
      const auto kv = fused(s + "/kv_proj", h, numbered("model.decoder.layers.", l, ".encoder_attn.kv_proj.weight"),
                            {nm.cross_attn.k, nm.cross_attn.v}, {nm.cross_attn.k_bias, nm.cross_attn.v_bias});
      for (int i = 0; i < 2; ++i) {
        const std::string t = to_heads(s + (i ? "/v" : "/k"), kv[static_cast<size_t>(i)], DH);
        const std::string out = kv_name(i ? kCrossPresentValue : kCrossPresentKey, l);
        g.node("Identity", s + (i ? "/PresentValue" : "/PresentKey"), {t}, {out});
        g.output(out, n.dt, {Dim{"batch_size"}, Dim{DH}, Dim{"encoder_sequence_length"}, Dim{d() / DH}});
      }
    }
  }

  void emit_decoder() {
    auto& g = n.g;
    const int64_t H = c.decoder_heads, hd = d() / H;
    g.input("input_ids", io::DType::I64, {Dim{"batch_size"}, Dim{"sequence_length"}});
    g.input("attention_mask", io::DType::I64, {Dim{"batch_size"}, Dim{"total_sequence_length"}});
    g.input("encoder_attention_mask", io::DType::I64, {Dim{"encoder_batch_size"}, Dim{"encoder_sequence_length"}});
    for (int64_t l = 0; l < c.decoder_layers; ++l) {
      for (const char* pat : {kSelfPastKey, kSelfPastValue})
        g.input(kv_name(pat, l), n.dt, {Dim{"batch_size"}, Dim{H}, Dim{"past_sequence_length"}, Dim{hd}});
      for (const char* pat : {kCrossPastKey, kCrossPastValue})
        g.input(kv_name(pat, l), n.dt, {Dim{"encoder_batch_size"}, Dim{H}, Dim{"encoder_sequence_length"}, Dim{hd}});
    }
    const std::string P = "/model/decoder/pos";
    const std::string S = dim_of(P + "/SeqLen", "input_ids", 1);
    const std::string T = dim_of(P + "/TotalLen", "attention_mask", 1);
    const std::string past = g.op("Sub", P + "/PastLen", {T, S});  // [1]
    std::string h = embed("/model/decoder/embed_tokens", "input_ids", emb.decoder, c.decoder_vocab_size, past, T);
    const std::string cross_bias = key_bias("/model/decoder/encoder_mask", "encoder_attention_mask");
    // self-attention: GroupQueryAttention's lengths (ort), or a causal bias (portable)
    std::string seqlens, total, causal;
    if (target == Target::Ort) {
      const auto i32 = graph::onnx_elem_type(io::DType::I32);
      const std::string M = "/model/decoder/attn_mask";
      const std::string sum =
          g.op("ReduceSum", M + "/ReduceSum", {"attention_mask", i64("axes1", {1})}, {{"keepdims", int64_t{0}}});
      seqlens = g.op("Cast", M + "/SeqlensK", {g.op("Sub", M + "/Sub", {sum, i64("one", {1}, true)})}, {{"to", i32}});
      total = g.op("Cast", M + "/TotalSeqLen", {g.op("Squeeze", M + "/Total", {T, i64("axes0", {0})})}, {{"to", i32}});
    } else {
      const std::string M = "/model/decoder/causal_mask";
      const std::string zero = i64("zero", {0}, true), one = i64("one", {1}, true);
      const std::string Ts = g.op("Squeeze", M + "/Total", {T, i64("axes0", {0})});
      const std::string ps = g.op("Squeeze", M + "/Past", {past, i64("axes0", {0})});
      const std::string keys =
          g.op("Unsqueeze", M + "/KeyRow", {g.op("Range", M + "/Keys", {zero, Ts, one}), i64("axes0", {0})});
      const std::string queries =
          g.op("Unsqueeze", M + "/QueryCol", {g.op("Range", M + "/Queries", {ps, Ts, one}), i64("axes1", {1})});
      causal = g.op("Where", M + "/Bias",
                    {g.op("LessOrEqual", M + "/Causal", {keys, queries}), g.const_scalar(M + "/zero", n.dt, 0.0),
                     g.const_scalar(M + "/lowest", n.dt, std::numeric_limits<float>::lowest())});
    }
    // cross-attention: the rows' queries grouped by sentence, [batch_src, -1, heads, hd]
    const std::string C = "/model/decoder/cross";
    const std::string enc_batch = dim_of(C + "/EncoderBatch", kv_name(kCrossPastKey, 0), 0);
    const std::string grouped =
        g.op("Concat", C + "/GroupedShape", {enc_batch, i64("group_rest", {-1, H, hd})}, {{"axis", int64_t{0}}});
    for (int64_t l = 0; l < c.decoder_layers; ++l) {
      const std::string s = dec_scope(l);
      const MarianLayerNames nm = marian_layer_names(true, l);
      const auto qkv = self_qkv(s, h, nm, true, l);
      const std::string pk = kv_name(kSelfPastKey, l), pv = kv_name(kSelfPastValue, l);
      const std::string ok = kv_name(kSelfPresentKey, l), ov = kv_name(kSelfPresentValue, l);
      std::string a;
      if (target == Target::Ort) {
        const std::string gqa = s + "/self_attn/GroupQueryAttention";
        const auto outs = g.node(
            "GroupQueryAttention", gqa, {qkv[0], qkv[1], qkv[2], pk, pv, seqlens, total}, {gqa + "/output_0", ok, ov},
            {{"num_heads", H}, {"kv_num_heads", H}, {"scale", 1.0 / std::sqrt(static_cast<double>(hd))}},
            "com.microsoft");
        a = g.op("Reshape", s + "/self_attn/OutputShape", {outs[0], i64("flat", {0, 0, d()})});
      } else {
        g.node("Concat", s + "/self_attn/ConcatPastKey", {pk, to_heads(s + "/self_attn/k", qkv[1], H)}, {ok},
               {{"axis", int64_t{2}}});
        g.node("Concat", s + "/self_attn/ConcatPastValue", {pv, to_heads(s + "/self_attn/v", qkv[2], H)}, {ov},
               {{"axis", int64_t{2}}});
        a = from_heads(s + "/self_attn/o",
                       sdpa(s + "/self_attn", to_heads(s + "/self_attn/q", qkv[0], H), ok, ov, causal, H));
      }
      std::string o = proj(s + "/self_attn/out_proj", a, nm.self_attn.o, nm.self_attn.o_bias, d(), d());
      h = layer_norm(s + "/self_attn_layer_norm", g.op("Add", s + "/self_attn/Residual", {h, o}), nm.self_norm,
                     nm.self_norm_bias);
      // cross-attention over the sentence's encoder K/V, shared by its beams
      const std::string x = s + "/encoder_attn";
      const std::string q = proj(x + "/q_proj", h, nm.cross_attn.q, nm.cross_attn.q_bias, d(), d());
      const std::string qg = g.op("Transpose", x + "/q/Transpose", {g.op("Reshape", x + "/q/Group", {q, grouped})},
                                  {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
      const std::string ag = sdpa(x, qg, kv_name(kCrossPastKey, l), kv_name(kCrossPastValue, l), cross_bias, H);
      const std::string at = g.op("Transpose", x + "/o/Transpose", {ag}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
      const std::string back = g.op("Reshape", x + "/o/Rows", {at, g.op("Shape", x + "/o/RowsShape", {h})});
      o = proj(x + "/out_proj", back, nm.cross_attn.o, nm.cross_attn.o_bias, d(), d());
      h = layer_norm(s + "/encoder_attn_layer_norm", g.op("Add", x + "/Residual", {h, o}), nm.cross_norm,
                     nm.cross_norm_bias);
      h = ffn_block(s, h, nm, c.decoder_ffn_dim);
      if (progress) progress(c.encoder_layers + l + 1);
    }
    // logits = h @ lm_head^T + final_logits_bias (Gemm reads the tied table in place)
    const int64_t V = c.decoder_vocab_size;
    const std::string L = "/lm_head";
    const std::string E =
        untie_head ? n.weight("lm_head.weight", {V, d()}, [&] { return w.f32(emb.lm_head); }) : matrix(emb.lm_head, V);
    const std::string bias = n.weight(kMarianFinalLogitsBias, {V}, [&] {
      return store.has(kMarianFinalLogitsBias) ? w.f32(kMarianFinalLogitsBias)
                                               : std::vector<float>(static_cast<size_t>(V));
    });
    const std::string x2 = g.op("Reshape", L + "/Flatten", {h, i64("rows", {-1, d()})});
    const std::string y = g.op("Gemm", L + "/Gemm", {x2, E, bias}, {{"transB", int64_t{1}}});
    const std::string bs =
        g.op("Slice", L + "/SliceBS", {g.op("Shape", L + "/Shape", {h}), i64("zero1", {0}), i64("two1", {2})});
    const std::string out_shape = g.op("Concat", L + "/OutShape", {bs, i64("vocab", {V})}, {{"axis", int64_t{0}}});
    g.node("Reshape", L + "/Reshape", {y, out_shape}, {"logits"});
    g.output("logits", io::DType::F32, {Dim{"batch_size"}, Dim{"sequence_length"}, Dim{V}});
    for (int64_t l = 0; l < c.decoder_layers; ++l)
      for (const char* pat : {kSelfPresentKey, kSelfPresentValue})
        g.output(kv_name(pat, l), n.dt,
                 {Dim{"batch_size"}, Dim{H},
                  Dim{target == Target::Ort ? "present_sequence_length" : "total_sequence_length"}, Dim{hd}});
  }

  std::function<void(int64_t)> progress;
};

}  // namespace

std::vector<GraphSignature> build_marian(const io::Seq2SeqConfig& cfg, const io::TensorStore& store,
                                         const Seq2SeqBuildOptions& opt, const fs::path& dir,
                                         const std::function<void(int64_t, int64_t)>& progress) {
  check_marian_checkpoint(store, cfg);
  if (opt.target == Target::Ort && cfg.decoder_head_dim() % 8 != 0)
    throw Error("target ort: the decoder's head size " + std::to_string(cfg.decoder_head_dim()) +
                " is not a multiple of 8 (ONNX Runtime's GroupQueryAttention needs one); build --target portable");
  const MarianEmbeddingNames emb = marian_embedding_names(store, cfg);
  WeightReader w(store);
  auto data = std::make_shared<graph::ExternalData>(dir / "model.onnx.data");
  std::vector<GraphSignature> sigs;
  const int64_t total = cfg.encoder_layers + cfg.decoder_layers;
  auto emit = [&](const std::string& role, const std::string& file, std::map<std::string, int64_t> opsets,
                  const std::function<void(MarianEmitter&)>& body) {
    GraphBuilder g(dir / file, "kvrun_marian_" + role, std::move(opsets), data);
    g.metadata("kvrun.role", role);
    g.metadata("kvrun.architecture", cfg.architecture);
    MarianEmitter e{cfg,        store,          w,  emb, Net{g, io::DType::F32, opt.target == Target::Ort},
                    opt.target, opt.untie_head, {}, {}};
    e.progress = [&](int64_t done) {
      if (progress) progress(done, total);
    };
    body(e);
    GraphSignature sig{role, file, g.input_names(), g.output_names()};
    g.finish();
    sigs.push_back(std::move(sig));
  };
  emit("encoder", "encoder.onnx", {{"", 17}}, [](MarianEmitter& e) { e.emit_encoder(); });
  std::map<std::string, int64_t> dec_opsets = {{"", 17}};
  if (opt.target == Target::Ort) dec_opsets["com.microsoft"] = 1;
  emit("decoder", "decoder.onnx", dec_opsets, [](MarianEmitter& e) { e.emit_decoder(); });
  data->commit();
  for (const auto& s : sigs) graph::check_model_file(dir / s.file);
  return sigs;
}

}  // namespace kvrun::arch
