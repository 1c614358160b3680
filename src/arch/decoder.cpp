#include "arch/decoder.h"

#include <array>
#include <cmath>
#include <limits>
#include <tuple>

#include "arch/blocks.h"
#include "arch/tensor_names.h"
#include "kvrun/error.h"

namespace kvrun::arch {
namespace fs = std::filesystem;
using graph::Dim;
using graph::GraphBuilder;

KvNames kv_names(Target t) {
  if (t == Target::Ort)  // the ONNX Runtime GenAI / optimum convention
    return {"past_key_values.%d.key", "past_key_values.%d.value", "present.%d.key", "present.%d.value"};
  return {"past_key_%d", "past_value_%d", "present_key_%d", "present_value_%d"};
}

int64_t kv_head_dim(const io::ModelConfig& c, Target t) {
  return t == Target::Ort ? (c.head_dim + 7) / 8 * 8 : c.head_dim;
}

std::string kv_name(const std::string& pattern, int64_t layer) {
  const auto p = pattern.find("%d");
  if (p == std::string::npos) throw Error("KV name pattern '" + pattern + "' has no %d");
  return pattern.substr(0, p) + std::to_string(layer) + pattern.substr(p + 2);
}

namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

// GroupQueryAttention's local_window_size for a sliding window of `window` keys (the
// query's own position included, transformers' convention: key p0 is visible to query p1
// iff p1 - p0 < window). ONNX Runtime 1.30's CPU kernel lets a query see exactly
// local_window_size keys, itself included (older kernels saw local_window_size + 1), so the
// attribute is the window itself; window - 1 misses the goldens by ~7 logits once a
// sequence passes the window (tests: Gemma3/Golden_.*, Gemma3Runtime.*).
int64_t gqa_local_window(int64_t window) { return window; }

std::string layer_scope(int64_t l) { return "/model/layers." + std::to_string(l); }

// Shared state for emitting one decoder graph.
struct DecoderEmitter {
  const io::ModelConfig& c;
  const WeightReader& w;
  const DecoderBuildOptions& opt;
  const EmbeddingTable& table;
  Net n;

  // cos and sin of float(pos) * inv_freq (float32, as transformers computes them), of the
  // graph's dtype, shaped like `pos` plus a last axis of head_dim / 2. Computed per run for
  // the positions it feeds, so the graphs carry no tables (a table of every position the
  // model reaches weighed 16 MB per layer type for Gemma 3 at 32k positions).
  std::pair<std::string, std::string> rotary_cos_sin(const std::string& scope, const std::string& pos, bool local) {
    auto& g = n.g;
    const std::vector<float> f = c.inv_freq(local);
    const std::string inv = g.weight(local ? "model.rotary_local.inv_freq" : "model.rotary.inv_freq", io::DType::F32,
                                     {static_cast<int64_t>(f.size())}, f.data());
    const std::string p =
        g.op("Unsqueeze", scope + "/PositionColumn",
             {g.op("Cast", scope + "/PositionsFloat", {pos}, {{"to", graph::onnx_elem_type(io::DType::F32)}}),
              g.const_i64(scope + "/last_axis", {-1})});
    const std::string angles = g.op("Mul", scope + "/Angles", {p, inv});
    std::string cos = g.op("Cos", scope + "/Cos", {angles}), sin = g.op("Sin", scope + "/Sin", {angles});
    if (n.dt != io::DType::F32) {
      cos = g.op("Cast", scope + "/CosCast", {cos}, {{"to", graph::onnx_elem_type(n.dt)}});
      sin = g.op("Cast", scope + "/SinCast", {sin}, {{"to", graph::onnx_elem_type(n.dt)}});
    }
    return {cos, sin};
  }

  // Rotate-half rotary on [.., D] with cos/sin broadcasting to [.., D/2].
  std::string rope(const std::string& s, const std::string& x, const std::string& cos, const std::string& sin,
                   const std::string& halves) {
    auto& g = n.g;
    const std::string h1 = s + "/Split/output_0", h2 = s + "/Split/output_1";
    g.node("Split", s + "/Split", {x, halves}, {h1, h2}, {{"axis", -1}});
    const std::string o1 =
        g.op("Sub", s + "/Sub", {g.op("Mul", s + "/MulCos1", {h1, cos}), g.op("Mul", s + "/MulSin2", {h2, sin})});
    const std::string o2 =
        g.op("Add", s + "/Add", {g.op("Mul", s + "/MulCos2", {h2, cos}), g.op("Mul", s + "/MulSin1", {h1, sin})});
    return g.op("Concat", s + "/Concat", {o1, o2}, {{"axis", -1}});
  }

  std::string embeds_input() {
    n.g.input("inputs_embeds", n.dt, {Dim{"batch_size"}, Dim{"sequence_length"}, Dim{c.hidden_size}});
    n.g.input("attention_mask", io::DType::I64, {Dim{"batch_size"}, Dim{"total_sequence_length"}});
    return "inputs_embeds";
  }

  // Past KV inputs; with `local_dims`, local layers' sequence axis is named apart (their
  // cache is bounded).
  void past_inputs(const KvNames& kv, bool local_dims = false) {
    for (int64_t l = 0; l < c.num_layers; ++l)
      for (const auto& pat : {kv.past_key, kv.past_value})
        n.g.input(kv_name(pat, l), opt.kv_dtype,
                  {Dim{"batch_size"}, Dim{c.num_kv_heads},
                   Dim{local_dims && c.is_local(l) ? "local_past_sequence_length" : "past_sequence_length"},
                   Dim{kv_head_dim(c, opt.target)}});
  }

  void present_outputs(const KvNames& kv, const std::string& seq_dim, bool local_dims = false) {
    std::string local_dim = "local_";
    local_dim += seq_dim;
    for (int64_t l = 0; l < c.num_layers; ++l)
      for (const auto& pat : {kv.present_key, kv.present_value})
        n.g.output(kv_name(pat, l), opt.kv_dtype,
                   {Dim{"batch_size"}, Dim{c.num_kv_heads}, Dim{local_dims && c.is_local(l) ? local_dim : seq_dim},
                    Dim{kv_head_dim(c, opt.target)}});
  }

  std::string input_norm(int64_t l, const std::string& x) {
    const LayerTensorNames nm = layer_tensor_names(c, l);
    return rms_norm(
        n, layer_scope(l) + "/input_layernorm", x, nm.input_norm, c.hidden_size, [&] { return w.norm(nm.input_norm); },
        c.rms_norm_eps);
  }

  // Fused QKV projection: [b, s, Q + 2KV].
  std::string qkv_proj(int64_t l, const std::string& x) {
    const LayerTensorNames nm = layer_tensor_names(c, l);
    Lazy bias;
    if (!nm.q_bias.empty()) bias = [&] { return w.concat({nm.q_bias, nm.k_bias, nm.v_bias}); };
    return linear_parts(n, layer_scope(l) + "/attn/qkv_proj", x,
                        "model.layers." + std::to_string(l) + ".self_attn.qkv_proj.weight", {nm.q, nm.k, nm.v},
                        c.hidden_size, c.q_dim() + 2 * c.kv_dim(), w, bias);
  }

  // Qwen3 per-head RMSNorm on [b, s, heads*D] (reshaped to heads on the way).
  std::string head_norm(int64_t l, const std::string& x, bool is_q, const std::string& heads_shape,
                        const std::string& flat_shape) {
    const LayerTensorNames nm = layer_tensor_names(c, l);
    const std::string scope = layer_scope(l) + (is_q ? "/attn/q_norm" : "/attn/k_norm");
    const std::string& gamma = is_q ? nm.q_norm : nm.k_norm;
    std::string h = n.g.op("Reshape", scope + "/Reshape", {x, heads_shape});
    h = rms_norm(
        n, scope, h, gamma, c.head_dim, [&] { return w.norm(gamma); }, c.rms_norm_eps);
    return flat_shape.empty() ? h : n.g.op("Reshape", scope + "/Flatten", {h, flat_shape});
  }

  std::string o_proj(int64_t l, const std::string& x) {
    const LayerTensorNames nm = layer_tensor_names(c, l);
    Lazy bias;
    if (!nm.o_bias.empty()) bias = [&] { return w.f32(nm.o_bias); };
    return linear_parts(n, layer_scope(l) + "/attn/o_proj", x,
                        "model.layers." + std::to_string(l) + ".self_attn.o_proj.weight", {nm.o}, c.q_dim(),
                        c.hidden_size, w, bias);
  }

  // Post-attention residual + norm + MLP + residual + the next norm. Returns {normed, residual}.
  std::pair<std::string, std::string> finish_layer(int64_t l, const std::string& attn_out, const std::string& residual,
                                                   bool fused) {
    const LayerTensorNames nm = layer_tensor_names(c, l);
    // Sandwich norms (Gemma): the attention and MLP outputs are normed before their residual adds.
    auto out_norm = [&](const std::string& x, const std::string& gamma, const char* name) {
      return rms_norm(
          n, layer_scope(l) + name, x, gamma, c.hidden_size, [&] { return w.norm(gamma); }, c.rms_norm_eps);
    };
    const std::string a =
        nm.attn_out_norm.empty() ? attn_out : out_norm(attn_out, nm.attn_out_norm, "/post_attention_layernorm");
    auto [xn, res] = skip_rms_norm(
        n, layer_scope(l) + (c.sandwich_norms ? "/pre_feedforward_layernorm" : "/post_attention_layernorm"), a,
        residual, nm.post_norm, c.hidden_size, [&] { return w.norm(nm.post_norm); }, c.rms_norm_eps, fused);
    std::string m = mlp(n, layer_scope(l) + "/mlp", xn, w, c, l);
    if (!nm.mlp_out_norm.empty()) m = out_norm(m, nm.mlp_out_norm, "/post_feedforward_layernorm");
    if (l + 1 < c.num_layers) {
      const LayerTensorNames next = layer_tensor_names(c, l + 1);
      return skip_rms_norm(
          n, layer_scope(l + 1) + "/input_layernorm", m, res, next.input_norm, c.hidden_size,
          [&] { return w.norm(next.input_norm); }, c.rms_norm_eps, fused);
    }
    return skip_rms_norm(
        n, "/model/norm", m, res, kFinalNorm, c.hidden_size, [&] { return w.norm(kFinalNorm); }, c.rms_norm_eps, fused);
  }

  // Final hidden [b, s, H] -> logits [b, 1 or s, V] (float32), via Gemm(transB) so a tied
  // lm_head reads the embedding table in place.
  void lm_head(const std::string& hidden) {
    auto& g = n.g;
    std::string x = hidden;
    if (!opt.all_logits)
      x = g.op("Slice", "/lm_head/SliceLast",
               {x, g.const_i64("/lm_head/starts", {-1}), g.const_i64("/lm_head/ends", {kInt64Max}),
                g.const_i64("/lm_head/axes", {1})});
    const std::string shp = g.op("Shape", "/lm_head/Shape", {x});
    const std::string bs = g.op("Slice", "/lm_head/SliceBS",
                                {shp, g.const_i64("/lm_head/bs_starts", {0}), g.const_i64("/lm_head/bs_ends", {2})});
    const std::string out_shape =
        g.op("Concat", "/lm_head/OutShape", {bs, g.const_i64("/lm_head/vocab", {c.vocab_size})}, {{"axis", 0}});
    const std::string x2 = g.op("Reshape", "/lm_head/Flatten", {x, g.const_i64("/lm_head/flat", {-1, c.hidden_size})});
    std::string y;
    const std::vector<graph::NBitsWeight> head =
        c.tie_word_embeddings ? std::vector<graph::NBitsWeight>{} : w.nbits({kLmHead});
    const bool table_as_is = !table.quantized() && table.dtype == n.dt;
    if (c.tie_word_embeddings && table.quantized() && !opt.tied_head_float) {
      const graph::NBitsNames nm = graph::nbits_initializers(g, kEmbedTokens, *table.nbits);
      y = graph::nbits_matmul(g, "/lm_head", x2, *table.nbits, nm, opt.accuracy_level);
    } else if (head.size() == 1 && n.dt == io::DType::F32) {
      const graph::NBitsNames nm = graph::nbits_initializers(g, "lm_head", head[0]);
      y = graph::nbits_matmul(g, "/lm_head", x2, head[0], nm, opt.accuracy_level);
    } else {
      std::string W;
      if (c.tie_word_embeddings && table_as_is && !opt.tied_head_float)
        W = g.external(kEmbedTokens, n.dt, {c.vocab_size, c.hidden_size});
      else if (c.tie_word_embeddings)
        W = n.weight(kLmHead, {c.vocab_size, c.hidden_size}, [&] { return w.f32(kEmbedTokens); });
      else
        W = n.weight(kLmHead, {c.vocab_size, c.hidden_size}, [&] { return w.f32(kLmHead); });
      y = g.op("Gemm", "/lm_head/Gemm", {x2, W}, {{"transB", 1}});
    }
    // final logit soft-capping (float32): logits = tanh(y / c) * c
    const bool cap = c.final_logit_softcap > 0;
    const std::string out = cap ? "/lm_head/Uncapped" : "logits";
    if (n.dt != io::DType::F32) {
      y = g.op("Reshape", "/lm_head/Reshape", {y, out_shape});
      g.node("Cast", "/lm_head/Cast", {y}, {out}, {{"to", graph::onnx_elem_type(io::DType::F32)}});
    } else {
      g.node("Reshape", "/lm_head/Reshape", {y, out_shape}, {out});
    }
    if (cap) {
      const std::string cv = g.const_scalar("/lm_head/softcap", io::DType::F32, c.final_logit_softcap);
      const std::string t = g.op("Tanh", "/lm_head/SoftcapTanh", {g.op("Div", "/lm_head/SoftcapDiv", {out, cv})});
      g.node("Mul", "/lm_head/SoftcapMul", {t, cv}, {"logits"});
    }
    g.output("logits", io::DType::F32,
             {Dim{"batch_size"}, opt.all_logits ? Dim{"sequence_length"} : Dim{int64_t{1}}, Dim{c.vocab_size}});
  }

  // ---- target ort: one graph, com.microsoft fused ops --------------------------------
  // Rotary runs before GroupQueryAttention (com.microsoft RotaryEmbedding on q and k, with
  // cos/sin of this run's positions only), never inside it: the kernel's own rotary wants
  // cos/sin tables of every position the model reaches (16 MB per layer type for Gemma 3)
  // and heads of a multiple of 16 ("head_size shall be a multiple of 16"), and the local
  // layers' bounded cache holds rows that are not positions. Positions are the kernel's own:
  // s for a first prompt (S equal to total_sequence_length, every row from 0: right
  // padding), else sum(mask) - S + s.
  // Heads of no multiple of 8 (GroupQueryAttention's CPU kernel needs one) are padded with
  // zeros to the next one after rotary: zero q/k columns leave q.k unchanged, zero v columns
  // give zero output columns, sliced off before o_proj; the scale attribute keeps the real
  // head_dim's.
  //
  // Local (sliding-window) layers, when the model has them, keep a cache of their own
  // length: local_attention_mask [batch, local_total] gives their seqlens_k and
  // total_sequence_length, so the runtime can drop rows older than the window from their
  // buffers (the graph's metadata names the layers and the window; see runtime/decoder.h).

  // Shape constants of this target, made once.
  std::map<std::string, std::string> ort_consts;
  std::string ort_shape(const std::string& key) {
    auto it = ort_consts.find(key);
    if (it != ort_consts.end()) return it->second;
    const int64_t D = c.head_dim, P = kv_head_dim(c, Target::Ort);
    std::vector<int64_t> v;
    if (key == "q_heads") v = {0, 0, c.num_heads, D};
    if (key == "k_heads") v = {0, 0, c.num_kv_heads, D};
    if (key == "q_flat") v = {0, 0, c.q_dim()};
    if (key == "k_flat") v = {0, 0, c.kv_dim()};
    if (key == "q_flat_padded") v = {0, 0, c.num_heads * P};
    if (key == "k_flat_padded") v = {0, 0, c.num_kv_heads * P};
    if (key == "out_heads") v = {0, 0, c.num_heads, P};
    if (key == "unpad_starts") v = {0};
    if (key == "unpad_ends") v = {D};
    if (key == "unpad_axes") v = {3};
    if (key == "pads") v = {0, 0, 0, 0, 0, 0, 0, P - D};
    if (key == "flat") v = {-1};
    if (v.empty()) throw Error("internal: no shape constant '" + key + "'");
    return ort_consts[key] = n.g.const_i64("/model/const/" + key, v);
  }

  // seqlens_k (int32 [B], sum(mask) - 1), total_sequence_length (int32 scalar, the mask's
  // width) and the int64 sum and width they come from.
  std::array<std::string, 4> mask_lengths(const std::string& s, const std::string& mask) {
    auto& g = n.g;
    const auto i32 = graph::onnx_elem_type(io::DType::I32);
    const std::string sum =
        g.op("ReduceSum", s + "/ReduceSum", {mask, g.const_i64(s + "/axes", {1})}, {{"keepdims", 0}});
    const std::string last = g.op("Sub", s + "/Sub", {sum, g.const_scalar(s + "/one", io::DType::I64, 1)});
    const std::string width =
        g.op("Gather", s + "/Gather", {g.op("Shape", s + "/Shape", {mask}), g.const_i64(s + "/index", {1}, true)},
             {{"axis", 0}});
    return {g.op("Cast", s + "/SeqlensK", {last}, {{"to", i32}}),
            g.op("Cast", s + "/TotalSeqLen", {width}, {{"to", i32}}), sum, width};
  }

  // RotaryEmbedding's inputs for this run: ids [B, S] = 0..B*S-1 into cos/sin caches of
  // the B*S rows' positions, global and local.
  struct RotaryInputs {
    std::string ids, cos, sin, cos_local, sin_local;
  };
  RotaryInputs rotary_inputs(const std::string& sum, const std::string& total) {
    auto& g = n.g;
    const std::string R = "/model/rotary";
    const std::string S =
        g.op("Gather", R + "/SeqLen",
             {g.op("Shape", R + "/Shape", {"inputs_embeds"}), g.const_i64(R + "/seq_axis", {1}, true)}, {{"axis", 0}});
    const std::string zero = g.const_scalar(R + "/zero", io::DType::I64, 0);
    const std::string one = g.const_scalar(R + "/one", io::DType::I64, 1);
    const std::string start =
        g.op("Where", R + "/Start",
             {g.op("Equal", R + "/FirstPrompt", {S, total}), zero, g.op("Sub", R + "/PastLength", {sum, S})});  // [B]
    const std::string pos = g.op("Add", R + "/Positions",
                                 {g.op("Unsqueeze", R + "/StartCol", {start, g.const_i64(R + "/ax1", {1})}),
                                  g.op("Range", R + "/Steps", {zero, S, one})});  // [B, S]
    RotaryInputs r;
    r.ids = g.op("Reshape", R + "/Ids",
                 {g.op("Range", R + "/Rows", {zero, g.op("Size", R + "/Count", {pos}), one}),
                  g.op("Shape", R + "/PosShape", {pos})});
    const std::string flat = g.op("Reshape", R + "/FlatPositions", {pos, ort_shape("flat")});
    if (c.has_global_layers()) std::tie(r.cos, r.sin) = rotary_cos_sin(R, flat, false);
    if (c.has_local_layers()) std::tie(r.cos_local, r.sin_local) = rotary_cos_sin("/model/rotary_local", flat, true);
    return r;
  }

  // q, k, v [b, s, heads * size] for GroupQueryAttention from the fused projection
  // [b, s, Q + 2KV]: (q/k norms,) rotary, zero padding to the cache's head size.
  std::vector<std::string> attention_qkv(int64_t l, const std::string& qkv, const std::string& ids,
                                         const std::string& cos, const std::string& sin) {
    auto& g = n.g;
    const std::string scope = layer_scope(l) + "/attn";
    const bool pad = kv_head_dim(c, Target::Ort) != c.head_dim;
    const auto parts = split_last(n, scope + "/qkv_proj", qkv, {c.q_dim(), c.kv_dim(), c.kv_dim()});
    std::vector<std::string> out(3);
    for (int i = 0; i < 3; ++i) {
      const std::string s = scope + (i == 0 ? "/q" : i == 1 ? "/k" : "/v");
      const std::string heads = i == 0 ? "q_heads" : "k_heads";
      std::string x = parts[static_cast<size_t>(i)];
      if (i < 2) {
        if (c.qk_norm) x = head_norm(l, x, i == 0, ort_shape(heads), ort_shape(i == 0 ? "q_flat" : "k_flat"));
        x = g.op("RotaryEmbedding", s + "_rotary/RotaryEmbedding", {x, ids, cos, sin},
                 {{"interleaved", 0}, {"num_heads", i == 0 ? c.num_heads : c.num_kv_heads}}, "com.microsoft");
      }
      if (pad) {
        x = g.op("Pad", s + "/PadHead", {g.op("Reshape", s + "/Heads", {x, ort_shape(heads)}), ort_shape("pads")});
        x = g.op("Reshape", s + "/Flat", {x, ort_shape(i == 0 ? "q_flat_padded" : "k_flat_padded")});
      }
      out[static_cast<size_t>(i)] = x;
    }
    return out;
  }

  void emit_ort() {
    auto& g = n.g;
    const KvNames kv = kv_names(Target::Ort);
    const std::string embeds = embeds_input();
    const bool bounded = c.has_local_layers();
    if (bounded) {
      g.input("local_attention_mask", io::DType::I64, {Dim{"batch_size"}, Dim{"local_total_sequence_length"}});
      std::string layers;
      for (int64_t l = 0; l < c.num_layers; ++l)
        if (c.is_local(l)) {
          if (!layers.empty()) layers += ',';
          layers += std::to_string(l);
        }
      g.metadata("kvrun.local_layers", layers);
      g.metadata("kvrun.sliding_window", std::to_string(c.sliding_window));
    }
    past_inputs(kv, bounded);
    const auto [seqlens, total, sum, width] = mask_lengths("/model/attn_mask", "attention_mask");
    std::string seqlens_l, total_l;
    if (bounded) {
      const auto m = mask_lengths("/model/local_attn_mask", "local_attention_mask");
      seqlens_l = m[0], total_l = m[1];
    }
    const RotaryInputs rot = rotary_inputs(sum, width);
    // GroupQueryAttention computes in its cache's dtype: with a float16 cache under float32
    // weights, q/k/v go in through Casts and the output comes back through one.
    const io::DType kv_t = opt.kv_dtype;
    const bool cast_kv = kv_t != n.dt;
    auto to_kv = [&](const std::string& x, const std::string& name) {
      return !cast_kv ? x : g.op("Cast", name, {x}, {{"to", graph::onnx_elem_type(kv_t)}});
    };
    std::string residual = embeds;
    std::string x = input_norm(0, embeds);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const std::string scope = layer_scope(l) + "/attn";
      const bool local = c.is_local(l);
      std::vector<std::string> in =
          attention_qkv(l, qkv_proj(l, x), rot.ids, local ? rot.cos_local : rot.cos, local ? rot.sin_local : rot.sin);
      for (size_t i = 0; i < 3; ++i) in[i] = to_kv(in[i], scope + "/CastKv_" + "qkv"[i]);
      in.insert(in.end(), {kv_name(kv.past_key, l), kv_name(kv.past_value, l), local && bounded ? seqlens_l : seqlens,
                           local && bounded ? total_l : total});
      const std::string gqa = scope + "/GroupQueryAttention";
      std::vector<graph::Attr> attrs = {{"num_heads", c.num_heads},
                                        {"kv_num_heads", c.num_kv_heads},
                                        {"do_rotary", 0},
                                        {"scale", c.attention_scale()}};
      if (local) attrs.push_back({"local_window_size", gqa_local_window(c.sliding_window)});
      const auto outs =
          g.node("GroupQueryAttention", gqa, in,
                 {gqa + "/output_0", kv_name(kv.present_key, l), kv_name(kv.present_value, l)}, attrs, "com.microsoft");
      std::string attn =
          cast_kv ? g.op("Cast", scope + "/CastBack", {outs[0]}, {{"to", graph::onnx_elem_type(n.dt)}}) : outs[0];
      // With local_window_size set, ONNX Runtime 1.30's shape inference gives GroupQueryAttention's
      // output a last dimension o_proj's MatMul rejects at load time (layers after the first);
      // a Reshape to [b, s, heads * head_dim] restates the true shape.
      if (kv_head_dim(c, Target::Ort) != c.head_dim) {  // padded heads: their zero columns dropped
        const std::string heads = g.op("Reshape", scope + "/OutputHeads", {attn, ort_shape("out_heads")});
        attn = g.op("Slice", scope + "/OutputUnpad",
                    {heads, ort_shape("unpad_starts"), ort_shape("unpad_ends"), ort_shape("unpad_axes")});
        attn = g.op("Reshape", scope + "/OutputShape", {attn, ort_shape("q_flat")});
      } else if (local) {
        attn = g.op("Reshape", scope + "/OutputShape", {attn, ort_shape("q_flat")});
      }
      const std::string o = o_proj(l, attn);
      std::tie(x, residual) = finish_layer(l, o, residual, /*fused=*/true);
      if (progress) progress(l + 1);
    }
    lm_head(x);
    present_outputs(kv, "present_sequence_length", bounded);
  }

  // ---- target portable: opset-17 standard ops -----------------------------------------
  void emit_portable(bool has_past) {
    auto& g = n.g;
    const KvNames kv = kv_names(Target::Portable);
    const std::string embeds = embeds_input();
    if (has_past) past_inputs(kv);
    const std::string P = "/model/pos";
    const std::string one = g.const_scalar(P + "/one", io::DType::I64, 1);
    const std::string zero = g.const_scalar(P + "/zero", io::DType::I64, 0);
    const std::string idx1 = g.const_i64(P + "/idx1", {1}, true);
    const std::string seq =
        g.op("Gather", P + "/SeqLen", {g.op("Shape", P + "/EmbedsShape", {embeds}), idx1}, {{"axis", 0}});
    const std::string tot =
        g.op("Gather", P + "/TotalLen", {g.op("Shape", P + "/MaskShape", {"attention_mask"}), idx1}, {{"axis", 0}});
    const std::string past = g.op("Sub", P + "/PastLen", {tot, seq});
    // positions from the mask (left padding aware): cumsum(mask) - 1, clamped at 0, last `seq` columns
    const std::string cs = g.op("CumSum", P + "/CumSum", {"attention_mask", g.const_i64(P + "/axis1", {1}, true)});
    const std::string pm = g.op("Max", P + "/Clamp", {g.op("Sub", P + "/Sub", {cs, one}), zero});
    const std::string neg_seq =
        g.op("Unsqueeze", P + "/NegSeq", {g.op("Neg", P + "/Neg", {seq}), g.const_i64(P + "/ax0", {0})});
    const std::string pos = g.op("Slice", P + "/PositionIds",
                                 {pm, neg_seq, g.const_i64(P + "/end", {kInt64Max}), g.const_i64(P + "/axes1", {1})});
    const std::string unsq1 = g.const_i64(P + "/unsq1", {1});
    // cos/sin [b, 1, s, D/2] by layer type (local layers: their own base, no scaling)
    std::string cos_g, sin_g, cos_l, sin_l;
    auto rotary = [&](const std::string& scope, bool local) {
      auto [cs, sn] = rotary_cos_sin(scope, pos, local);
      return std::pair{g.op("Unsqueeze", scope + "/CosHeads", {cs, unsq1}),
                       g.op("Unsqueeze", scope + "/SinHeads", {sn, unsq1})};
    };
    if (c.has_global_layers()) std::tie(cos_g, sin_g) = rotary("/model/rotary", false);
    if (c.has_local_layers()) std::tie(cos_l, sin_l) = rotary("/model/rotary_local", true);
    std::string cos, sin;  // the current layer's
    // additive mask [b, 1, 1, s, T] (fp32): key j visible to query i iff j <= past + i and mask[j] == 1
    const std::string M = "/model/mask";
    const std::string jr = g.op("Range", M + "/KeyRange", {zero, tot, one});
    const std::string ir = g.op("Range", M + "/QueryRange", {past, tot, one});
    const std::string causal = g.op("LessOrEqual", M + "/Causal",
                                    {g.op("Unsqueeze", M + "/KeyRow", {jr, g.const_i64(M + "/ax0", {0})}),
                                     g.op("Unsqueeze", M + "/QueryCol", {ir, unsq1})});
    const std::string padb =
        g.op("Unsqueeze", M + "/Pad",
             {g.op("Cast", M + "/PadBool", {"attention_mask"}, {{"to", graph::onnx_elem_type(io::DType::BOOL)}}),
              g.const_i64(M + "/ax123", {1, 2, 3})});
    const std::string allowed = g.op("And", M + "/Allowed", {causal, padb});
    const std::string mzero = g.const_scalar(M + "/zero", io::DType::F32, 0.0);
    const std::string mmin = g.const_scalar(M + "/min", io::DType::F32, std::numeric_limits<float>::lowest());
    std::string mask_g, mask_l;
    if (c.has_global_layers()) mask_g = g.op("Where", M + "/Bias", {allowed, mzero, mmin});
    if (c.has_local_layers()) {
      // local layers also need i - j < sliding_window (HF: key j > query i - window)
      const std::string L = "/model/local_mask";
      const std::string dist = g.op("Sub", L + "/Distance",
                                    {g.op("Unsqueeze", L + "/QueryCol", {ir, unsq1}),
                                     g.op("Unsqueeze", L + "/KeyRow", {jr, g.const_i64(L + "/ax0", {0})})});
      const std::string near =
          g.op("Less", L + "/InWindow", {dist, g.const_scalar(L + "/window", io::DType::I64, c.sliding_window)});
      mask_l = g.op("Where", L + "/Bias", {g.op("And", L + "/Allowed", {allowed, near}), mzero, mmin});
    }
    std::string mask;  // the current layer's
    const int64_t G = c.num_heads / c.num_kv_heads, half = c.head_dim / 2;
    const std::string C = "/model/const";
    const std::string q_heads = g.const_i64(C + "/q_heads", {0, 0, c.num_heads, c.head_dim});
    const std::string k_heads = g.const_i64(C + "/k_heads", {0, 0, c.num_kv_heads, c.head_dim});
    const std::string q5_shape = g.const_i64(C + "/q5", {0, c.num_kv_heads, G, -1, c.head_dim});
    const std::string o_shape = g.const_i64(C + "/o_heads", {0, c.num_heads, -1, c.head_dim});
    const std::string flat = g.const_i64(C + "/flat", {0, 0, c.q_dim()});
    const std::string ax2 = g.const_i64(C + "/ax2", {2});
    const std::string halves = g.const_i64(C + "/halves", {half, half});
    const std::string scale = g.const_scalar(C + "/scale", n.dt, c.attention_scale());
    auto bnsh = [&](const std::string& s, const std::string& x) {
      return g.op("Transpose", s + "/Transpose", {x}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
    };
    auto rope = [&](const std::string& s, const std::string& x) { return this->rope(s, x, cos, sin, halves); };
    std::string residual = embeds;
    std::string x = input_norm(0, embeds);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const std::string s = layer_scope(l) + "/attn";
      const bool local = c.is_local(l);
      cos = local ? cos_l : cos_g, sin = local ? sin_l : sin_g, mask = local ? mask_l : mask_g;
      const auto parts = split_last(n, s + "/qkv_proj", qkv_proj(l, x), {c.q_dim(), c.kv_dim(), c.kv_dim()});
      std::string q = c.qk_norm ? head_norm(l, parts[0], true, q_heads, "")
                                : g.op("Reshape", s + "/q/Reshape", {parts[0], q_heads});
      std::string k = c.qk_norm ? head_norm(l, parts[1], false, k_heads, "")
                                : g.op("Reshape", s + "/k/Reshape", {parts[1], k_heads});
      q = rope(s + "/q_rotary", bnsh(s + "/q", q));
      k = rope(s + "/k_rotary", bnsh(s + "/k", k));
      const std::string v = bnsh(s + "/v", g.op("Reshape", s + "/v/Reshape", {parts[2], k_heads}));
      const std::string pk = kv_name(kv.present_key, l), pv = kv_name(kv.present_value, l);
      if (has_past) {
        g.node("Concat", s + "/ConcatPastKey", {kv_name(kv.past_key, l), k}, {pk}, {{"axis", 2}});
        g.node("Concat", s + "/ConcatPastValue", {kv_name(kv.past_value, l), v}, {pv}, {{"axis", 2}});
      } else {
        g.node("Identity", s + "/PresentKey", {k}, {pk});
        g.node("Identity", s + "/PresentValue", {v}, {pv});
      }
      // grouped attention without repeating K/V: q [b, kv, G, s, D] x k [b, kv, 1, D, T]
      const std::string q5 = g.op("Reshape", s + "/q/Group", {q, q5_shape});
      const std::string kt = g.op("Transpose", s + "/k/TransposeT", {g.op("Unsqueeze", s + "/k/Unsqueeze", {pk, ax2})},
                                  {{"perm", std::vector<int64_t>{0, 1, 2, 4, 3}}});
      std::string sc = g.op("Mul", s + "/Scale", {g.op("MatMul", s + "/QK/MatMul", {q5, kt}), scale});
      if (n.dt != io::DType::F32)
        sc = g.op("Cast", s + "/ScoresUp", {sc}, {{"to", graph::onnx_elem_type(io::DType::F32)}});
      std::string p = g.op("Softmax", s + "/Softmax", {g.op("Add", s + "/MaskAdd", {sc, mask})}, {{"axis", -1}});
      if (n.dt != io::DType::F32) p = g.op("Cast", s + "/ProbsDown", {p}, {{"to", graph::onnx_elem_type(n.dt)}});
      const std::string av = g.op("MatMul", s + "/PV/MatMul", {p, g.op("Unsqueeze", s + "/v/Unsqueeze", {pv, ax2})});
      const std::string heads = g.op("Reshape", s + "/o/Heads", {av, o_shape});
      const std::string merged = g.op("Reshape", s + "/o/Merge", {bnsh(s + "/o", heads), flat});
      std::tie(x, residual) = finish_layer(l, o_proj(l, merged), residual, /*fused=*/false);
      if (progress) progress(l + 1);
    }
    lm_head(x);
    present_outputs(kv, "total_sequence_length");
  }

  std::function<void(int64_t)> progress;
};

}  // namespace

std::vector<GraphSignature> build_decoder(const io::ModelConfig& cfg, const io::TensorStore& store,
                                          const DecoderBuildOptions& opt, const fs::path& dir,
                                          const EmbeddingTable& table,
                                          const std::function<void(int64_t, int64_t)>& progress) {
  if (opt.dtype != io::DType::F32 && opt.dtype != io::DType::F16)
    throw Error("decoder graphs are built in F32 or F16 (quantization is a separate pass)");
  if (opt.kv_dtype != opt.dtype && (opt.target != Target::Ort || opt.kv_dtype != io::DType::F16))
    throw Error("a KV cache dtype other than the weights' is float16 under float32 weights, target ort only");
  WeightReader w(store, cfg.norm_weight_offset);
  w.keep_quantized = opt.keep_quantized;
  w.accuracy_level = opt.accuracy_level;
  auto data = std::make_shared<graph::ExternalData>(dir / "decoder.onnx.data");
  table.alias_into(*data);
  std::vector<GraphSignature> sigs;
  const int64_t passes = opt.target == Target::Ort ? 1 : 2;
  auto emit = [&](const std::string& role, const std::string& file, std::map<std::string, int64_t> opsets, int pass,
                  const std::function<void(DecoderEmitter&)>& body) {
    GraphBuilder g(dir / file, "kvrun_" + role, std::move(opsets), data);
    g.metadata("kvrun.role", role);
    g.metadata("kvrun.architecture", cfg.architecture);
    DecoderEmitter e{cfg, w, opt, table, Net{g, opt.dtype, opt.target == Target::Ort}, {}, {}};
    e.progress = [&](int64_t l) {
      if (progress) progress(pass * cfg.num_layers + l, passes * cfg.num_layers);
    };
    body(e);
    GraphSignature sig{role, file, g.input_names(), g.output_names()};
    g.finish();
    sigs.push_back(std::move(sig));
  };
  if (opt.target == Target::Ort) {
    emit("decoder", "decoder.onnx", {{"", 17}, {"com.microsoft", 1}}, 0, [](DecoderEmitter& e) { e.emit_ort(); });
  } else {
    emit("prefill", "prefill.onnx", {{"", 17}}, 0, [](DecoderEmitter& e) { e.emit_portable(false); });
    emit("decode", "decode.onnx", {{"", 17}}, 1, [](DecoderEmitter& e) { e.emit_portable(true); });
  }
  data->commit();
  for (const auto& s : sigs) graph::check_model_file(dir / s.file);
  return sigs;
}

void EmbeddingTable::alias_into(graph::ExternalData& d) const {
  if (!quantized()) {
    d.alias(kEmbedTokens, entry);
    return;
  }
  for (const auto& [name, e] : nbits_entries) d.alias(name, e);
}

namespace {

// Rows of a quantized table, dequantized with standard ops: [b, s] ids -> [b, s, K] float32.
std::string gather_nbits_rows(GraphBuilder& g, const std::string& ids, const graph::NBitsWeight& w,
                              const graph::NBitsNames& nm) {
  const std::string S = "/model/embed_tokens";
  const io::DType u8 = io::DType::U8;
  const auto f32 = graph::onnx_elem_type(io::DType::F32);
  // 4-bit bytes -> [.., 2 * bytes] codes: element 2i is the low nibble of byte i.
  auto unpack4 = [&](const std::string& x, const std::string& s) {
    const std::string four = g.const_scalar(s + "/four", u8, 4);
    const std::string hi = g.op("BitShift", s + "/High", {x, four}, {{"direction", "RIGHT"}});
    const std::string lo =
        g.op("Sub", s + "/Low", {x, g.op("BitShift", s + "/HighBack", {hi, four}, {{"direction", "LEFT"}})});
    const std::string last = g.const_i64(s + "/last", {-1});
    const std::string pair =
        g.op("Concat", s + "/Pair",
             {g.op("Unsqueeze", s + "/LowU", {lo, last}), g.op("Unsqueeze", s + "/HighU", {hi, last})}, {{"axis", -1}});
    return g.op("Reshape", s + "/Codes", {pair, g.const_i64(s + "/codes_shape", {0, 0, 0, -1})});
  };
  std::string q = g.op("Gather", S + "/GatherCodes", {nm.B, ids}, {{"axis", 0}});  // [b, s, kb, blob]
  if (w.bits == 4) q = unpack4(q, S + "/codes");
  std::string codes = g.op("Cast", S + "/CodesFloat", {q}, {{"to", f32}});
  const std::string last = g.const_i64(S + "/last_axis", {-1});
  std::string zp;
  if (nm.zp.empty()) {
    zp = g.const_scalar(S + "/zero_point", io::DType::F32, static_cast<double>(1 << (w.bits - 1)));
  } else {
    std::string z = g.op("Gather", S + "/GatherZeroPoints", {nm.zp, ids}, {{"axis", 0}});  // [b, s, zp_row]
    if (w.bits == 4) {
      z = g.op("Unsqueeze", S + "/zp/Unsqueeze", {z, last});
      z = unpack4(z, S + "/zp");  // [b, s, zp_row, 2]
      z = g.op("Reshape", S + "/zp/Flat", {z, g.const_i64(S + "/zp/flat_shape", {0, 0, -1})});
      z = g.op("Slice", S + "/zp/Slice",
               {z, g.const_i64(S + "/zp/start", {0}), g.const_i64(S + "/zp/end", {w.kb()}), last});
    }
    zp = g.op("Unsqueeze", S + "/zp/PerBlock", {g.op("Cast", S + "/zp/Float", {z}, {{"to", f32}}), last});
  }
  const std::string scale = g.op("Unsqueeze", S + "/scales/PerBlock",
                                 {g.op("Gather", S + "/GatherScales", {nm.scales, ids}, {{"axis", 0}}), last});
  std::string v = g.op("Mul", S + "/BlockScale", {g.op("Sub", S + "/SubZeroPoint", {codes, zp}), scale});
  if (!nm.mins.empty()) {
    const std::string mins = g.op("Unsqueeze", S + "/mins/PerBlock",
                                  {g.op("Gather", S + "/GatherMins", {nm.mins, ids}, {{"axis", 0}}), last});
    v = g.op("Sub", S + "/SubMin", {v, mins});
  }
  v = g.op("Reshape", S + "/Rows", {v, g.const_i64(S + "/rows_shape", {0, 0, -1})});
  if (w.kb() * w.block == w.K) return v;
  return g.op("Slice", S + "/Trim",
              {v, g.const_i64(S + "/trim_start", {0}), g.const_i64(S + "/trim_end", {w.K}), last});
}

}  // namespace

GraphSignature build_embedding_graph(const io::ModelConfig& cfg, io::DType dt, const fs::path& dir,
                                     const EmbeddingTable& table) {
  auto data = std::make_shared<graph::ExternalData>(dir / "embedding.onnx.data");
  table.alias_into(*data);
  GraphBuilder g(dir / "embedding.onnx", "kvrun_embedding", {{"", 17}}, data);
  g.metadata("kvrun.role", "embedding");
  g.input("input_ids", io::DType::I64, {Dim{"batch_size"}, Dim{"sequence_length"}});
  const std::string S = "/model/embed_tokens";
  std::string rows;  // float rows of the table's dtype (float32 for a quantized table)
  io::DType rows_dt = table.dtype;
  if (table.quantized()) {
    const graph::NBitsNames nm = graph::nbits_initializers(g, kEmbedTokens, *table.nbits);
    rows = gather_nbits_rows(g, "input_ids", *table.nbits, nm);
    rows_dt = io::DType::F32;
  } else {
    const std::string t = g.external(kEmbedTokens, table.dtype, {cfg.vocab_size, cfg.hidden_size});
    rows = g.op("Gather", S + "/Gather", {t, "input_ids"}, {{"axis", 0}});
  }
  if (cfg.embedding_scale != 1.0) {  // rows times the scale in float32, as the runtime's table lookup does
    if (rows_dt != io::DType::F32)
      rows = g.op("Cast", S + "/CastUp", {rows}, {{"to", graph::onnx_elem_type(io::DType::F32)}});
    rows = g.op("Mul", S + "/Scale", {rows, g.const_scalar(S + "/scale", io::DType::F32, cfg.embedding_scale)});
    rows_dt = io::DType::F32;
  }
  if (rows_dt != dt)
    g.node("Cast", S + "/Cast", {rows}, {"inputs_embeds"}, {{"to", graph::onnx_elem_type(dt)}});
  else
    g.node("Identity", S + "/Output", {rows}, {"inputs_embeds"});
  g.output("inputs_embeds", dt, {Dim{"batch_size"}, Dim{"sequence_length"}, Dim{cfg.hidden_size}});
  GraphSignature sig{"embedding", "embedding.onnx", g.input_names(), g.output_names()};
  g.finish();
  data->commit();  // nothing written: the table lives in embedding.safetensors
  graph::check_model_file(dir / sig.file);
  return sig;
}

}  // namespace kvrun::arch
