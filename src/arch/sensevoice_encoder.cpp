#include "arch/sensevoice_encoder.h"

#include <cmath>
#include <set>

#include "arch/blocks.h"
#include "graph/builder.h"
#include "graph/onnx_model.h"
#include "kvrun/error.h"

namespace kvrun::arch {
namespace fs = std::filesystem;
using graph::Dim;
using graph::GraphBuilder;
using nlohmann::json;

// int8: DynamicQuantizeMatMul (int8 per-channel weights, uint8 activations quantized per
// tensor at run time), not MatMulNBits 8-bit. Measured with the ONNX Runtime kvrun links
// (npm onnxruntime-node build), 2 intra-op threads, on this project's AMD EPYC (AVX-512
// VNNI) build machine, best of 30, machine shared with other jobs:
//   MatMul 500x512 @ 512x2048   fp32 29.3 ms | MatMulNBits 8-bit (acc. level 4) 11.7 ms,
//                               rms err 0.75% | DynamicQuantizeMatMul 2.7 ms, rms err 1.8%
//   encoder+adaptor at real widths (4+2 SAN-M blocks, 2 adaptor blocks), T = 500, best of 5:
//     fp32 1563 ms | MatMulNBits-8 1249 ms, rms err 1.8% | DynamicQuantizeMatMul 712 ms, 4.5%
//   the full published depth (50 + 20 SAN-M blocks, 512 wide; adaptor 512 -> 2048 -> 1024, 2
//   blocks), T = 167 (10 s of audio), best of 2: fp32 4491 ms | MatMulNBits-8 3285 ms, rms err
//   2.1% | DynamicQuantizeMatMul 1975 ms, 5.2% | int4 (MatMulNBits) 3542 ms, 26%
// (random weights, where errors build up over the depth; against the fp32 C++ reference).
const char* const kEncoderInt8Mode = "int8-dynamic";

namespace {

std::string str(int64_t v) { return std::to_string(v); }

// Score given to keys past a row's length (funasr uses -inf; a finite value keeps a row
// whose length is 0 free of NaN).
constexpr double kMaskedScore = -1e30;

// ---- config ------------------------------------------------------------------------

const std::vector<int64_t>& shape_of(const io::TensorStore& s, const std::string& name) {
  if (!s.has(name))
    throw Error(s.path().string() + ": expected tensor '" + name +
                "' of a FunASR-nano audio encoder/adaptor, found no such tensor");
  return s.get(name).shape;
}

void expect_shape(const io::TensorStore& s, const std::string& name, const std::vector<int64_t>& expected) {
  const auto& found = shape_of(s, name);
  if (found != expected)
    throw Error(s.path().string() + ": tensor '" + name + "' expected shape " + io::shape_str(expected) + ", found " +
                io::shape_str(found));
}

// Number of consecutive indices N with `<prefix>N.<probe>` present (0, 1, ...); refuses gaps.
int64_t count_layers(const io::TensorStore& s, const std::string& prefix, const std::string& probe) {
  std::set<int64_t> seen;
  for (const auto& n : s.names()) {
    if (n.rfind(prefix, 0) != 0) continue;
    const std::string rest = n.substr(prefix.size());
    const auto dot = rest.find('.');
    if (dot == std::string::npos || dot == 0) continue;
    const std::string idx = rest.substr(0, dot);
    if (idx.find_first_not_of("0123456789") != std::string::npos) continue;
    seen.insert(std::stoll(idx));
  }
  int64_t n = 0;
  while (seen.count(n)) ++n;
  if (static_cast<int64_t>(seen.size()) != n)
    throw Error(s.path().string() + ": expected layers " + prefix + "0.." + prefix + str(n - 1) +
                " without gaps, found index " + str(*seen.rbegin()));
  for (int64_t i = 0; i < n; ++i) shape_of(s, prefix + str(i) + "." + probe);
  return n;
}

// An integer from a yaml map (OmegaConf typing: int, or a float with an integral value).
bool yaml_int(const json& m, const std::string& key, const std::string& where, int64_t* out) {
  if (!m.is_object() || !m.contains(key) || m.at(key).is_null()) return false;
  const json& v = m.at(key);
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
    return true;
  }
  if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) {
    *out = static_cast<int64_t>(v.get<double>());
    return true;
  }
  throw Error("config.yaml: " + where + "." + key + " expected an integer, found " + v.dump());
}

void yaml_check(const json& m, const std::string& key, const std::string& where, int64_t from_shapes,
                const std::string& what) {
  int64_t v = 0;
  if (yaml_int(m, key, where, &v) && v != from_shapes)
    throw Error("config.yaml: " + where + "." + key + " is " + str(v) + " but the checkpoint's " + what + " say " +
                str(from_shapes));
}

// ---- graph emission --------------------------------------------------------------------

// Padding masks for a batch of different lengths (empty names: no lengths input).
struct Masks {
  std::string frames;  // float [b, t, 1]: 1 for frames inside the row's length
  std::string keys;    // ort: int32 [b, t] key_padding_mask; portable: float [b, 1, 1, t] additive bias
};

struct Emitter {
  const AudioEncoderConfig& c;
  const io::TensorStore& store;
  GraphBuilder& g;
  Target target;
  WeightReader w{store};
  std::map<std::string, std::string> consts;
  const Masks* mask = nullptr;  // the masks of the stage being emitted

  bool ort() const { return target == Target::Ort; }

  std::string ints(const std::string& name, const std::vector<int64_t>& v) {
    auto it = consts.find(name);
    if (it != consts.end()) return it->second;
    return consts[name] = g.const_i64("/const/" + name, v);
  }

  // A checkpoint tensor as is (norm gammas, FSMN kernel).
  std::string raw(const std::string& name, const std::vector<int64_t>& shape) {
    const std::vector<float> v = w.f32(name);
    return g.weight(name, io::DType::F32, shape, v.data());
  }

  // x[.., in] @ concat(W_i^T) + concat(b_i); weights HF [out_i, in]. `init` names the
  // (transposed) initializer; biases go to `<init minus .weight>.bias`.
  std::string linear(const std::string& scope, const std::string& x, const std::vector<std::string>& weights,
                     const std::vector<std::string>& biases, int64_t in, int64_t out, const std::string& init) {
    const std::vector<float> wt = w.transposed_concat(weights, in);
    if (static_cast<int64_t>(wt.size()) != in * out)
      throw Error("weight '" + init + "': expected " + str(in * out) + " values, found " + str(wt.size()));
    const std::string W = g.weight(init, io::DType::F32, {in, out}, wt.data());
    std::string y = g.op("MatMul", scope + "/MatMul", {x, W});
    const std::vector<float> b = w.concat(biases);
    if (static_cast<int64_t>(b.size()) != out)
      throw Error("bias of '" + init + "': expected " + str(out) + " values, found " + str(b.size()));
    const std::string base = init.size() > 7 && init.ends_with(".weight") ? init.substr(0, init.size() - 7) : init;
    const std::string B = g.weight(base + ".bias", io::DType::F32, {out}, b.data());
    return g.op("Add", scope + "/Add", {y, B});
  }

  std::string linear1(const std::string& scope, const std::string& x, const std::string& module, int64_t in,
                      int64_t out) {
    return linear(scope, x, {module + ".weight"}, {module + ".bias"}, in, out, module + ".weight");
  }

  std::string layer_norm(const std::string& scope, const std::string& x, const std::string& module, int64_t dim,
                         double eps) {
    const std::string gm = raw(module + ".weight", {dim}), bt = raw(module + ".bias", {dim});
    return g.op("LayerNormalization", scope + "/LayerNormalization", {x, gm, bt},
                {{"axis", -1}, {"epsilon", eps}, {"stash_type", 1}});
  }

  // residual + delta, then LayerNorm. Returns {normed, sum}.
  std::pair<std::string, std::string> add_norm(const std::string& scope, const std::string& delta,
                                               const std::string& residual, const std::string& module, int64_t dim,
                                               double eps) {
    if (!ort()) {
      const std::string sum = g.op("Add", scope + "/ResidualAdd", {residual, delta});
      return {layer_norm(scope, sum, module, dim, eps), sum};
    }
    const std::string gm = raw(module + ".weight", {dim}), bt = raw(module + ".bias", {dim});
    const std::string base = scope + "/SkipLayerNormalization";
    auto outs = g.node("SkipLayerNormalization", base, {delta, residual, gm, bt},
                       {base + "/output_0", "", "", base + "/output_3"}, {{"epsilon", eps}}, "com.microsoft");
    return {outs[0], outs[3]};
  }

  // Masks for `lengths` (int64 [b]) over the frames of `like` ([b, t, ...]).
  Masks make_masks(const std::string& scope, const std::string& like, const std::string& lengths) {
    const std::string T =
        g.op("Gather", scope + "/Frames",
             {g.op("Shape", scope + "/Shape", {like}), g.const_i64(scope + "/idx1", {1}, true)}, {{"axis", 0}});
    const std::string r = g.op(
        "Range", scope + "/FrameIndex",
        {g.const_scalar(scope + "/zero", io::DType::I64, 0), T, g.const_scalar(scope + "/one", io::DType::I64, 1)});
    const std::string valid =
        g.op("Less", scope + "/Valid",
             {g.op("Unsqueeze", scope + "/FrameRow", {r, g.const_i64(scope + "/ax0", {0})}),
              g.op("Unsqueeze", scope + "/LengthColumn", {lengths, g.const_i64(scope + "/ax1", {1})})});
    Masks m;
    m.frames = g.op("Unsqueeze", scope + "/FrameMask",
                    {g.op("Cast", scope + "/ValidFloat", {valid}, {{"to", graph::onnx_elem_type(io::DType::F32)}}),
                     g.const_i64(scope + "/ax2", {2})});
    if (ort())
      m.keys = g.op("Cast", scope + "/KeyPaddingMask", {valid}, {{"to", graph::onnx_elem_type(io::DType::I32)}});
    else
      m.keys = g.op("Where", scope + "/KeyBias",
                    {g.op("Unsqueeze", scope + "/ValidKeys", {valid, g.const_i64(scope + "/ax12", {1, 2})}),
                     g.const_scalar(scope + "/keep", io::DType::F32, 0.0),
                     g.const_scalar(scope + "/drop", io::DType::F32, kMaskedScore)});
    return m;
  }

  // Multi-head scaled dot-product attention over q, k, v [b, t, d] -> [b, t, d]; keys outside
  // a row's length are left out when `mask` is set.
  std::string attention(const std::string& scope, const std::string& q, const std::string& k, const std::string& v,
                        int64_t heads, int64_t d) {
    const int64_t dk = d / heads;
    if (ort()) {
      std::vector<std::string> in = {q, k, v};
      std::vector<graph::Attr> attrs = {{"num_heads", heads}};
      if (mask) {
        in.insert(in.end(), {"", mask->keys});
        attrs.emplace_back("mask_filter_value", static_cast<float>(kMaskedScore));
      }
      return g.op("MultiHeadAttention", scope + "/MultiHeadAttention", in, attrs, "com.microsoft");
    }
    const std::string split = ints("heads_" + str(heads) + "x" + str(dk), {0, 0, heads, dk});
    const std::string merge = ints("merge_" + str(d), {0, 0, d});
    auto perm = [](std::vector<int64_t> p) { return graph::Attr("perm", std::move(p)); };
    const std::string qh = g.op("Transpose", scope + "/q/Transpose",
                                {g.op("Reshape", scope + "/q/Reshape", {q, split})}, {perm({0, 2, 1, 3})});
    const std::string kt = g.op("Transpose", scope + "/k/Transpose",
                                {g.op("Reshape", scope + "/k/Reshape", {k, split})}, {perm({0, 2, 3, 1})});
    const std::string vh = g.op("Transpose", scope + "/v/Transpose",
                                {g.op("Reshape", scope + "/v/Reshape", {v, split})}, {perm({0, 2, 1, 3})});
    const std::string scale =
        g.const_scalar(scope + "/scale", io::DType::F32, 1.0 / std::sqrt(static_cast<double>(dk)));
    const std::string qs = g.op("Mul", scope + "/q/Scale", {qh, scale});
    std::string scores = g.op("MatMul", scope + "/QK/MatMul", {qs, kt});
    if (mask) scores = g.op("Add", scope + "/MaskAdd", {scores, mask->keys});
    const std::string p = g.op("Softmax", scope + "/Softmax", {scores}, {{"axis", -1}});
    const std::string o = g.op("MatMul", scope + "/PV/MatMul", {p, vh});
    return g.op("Reshape", scope + "/o/Reshape",
                {g.op("Transpose", scope + "/o/Transpose", {o}, {perm({0, 2, 1, 3})}), merge});
  }

  // Input scaling and sinusoidal positions (SinusoidalPositionEncoder, positions from 1).
  std::string embed(const std::string& speech) {
    const std::string S = "/audio_encoder/embed";
    const int64_t D = c.input_size, half = D / 2;
    // As torch in float32: log(1e4) / (D/2 - 1), exp(-i * inc).
    const float inc = std::log(10000.0f) / static_cast<float>(half - 1);
    std::vector<float> inv(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) inv[static_cast<size_t>(i)] = std::exp(static_cast<float>(i) * -inc);
    const std::string inv_t = g.tensor("/audio_encoder/embed/inv_timescales", io::DType::F32, {1, half}, inv.data());
    const std::string T =
        g.op("Gather", S + "/Frames", {g.op("Shape", S + "/Shape", {speech}), g.const_i64(S + "/idx1", {1}, true)},
             {{"axis", 0}});
    const std::string one = g.const_scalar(S + "/one", io::DType::F32, 1.0);
    const std::string Tf = g.op("Cast", S + "/FramesFloat", {T}, {{"to", graph::onnx_elem_type(io::DType::F32)}});
    const std::string pos = g.op("Range", S + "/Positions", {one, g.op("Add", S + "/End", {Tf, one}), one});
    const std::string col = g.op("Unsqueeze", S + "/PositionsColumn", {pos, g.const_i64(S + "/ax1", {1})});
    const std::string st = g.op("Mul", S + "/ScaledTime", {col, inv_t});
    const std::string pe =
        g.op("Concat", S + "/Encoding", {g.op("Sin", S + "/Sin", {st}), g.op("Cos", S + "/Cos", {st})}, {{"axis", 1}});
    const std::string scale =
        g.const_scalar(S + "/scale", io::DType::F32, static_cast<float>(std::sqrt(static_cast<double>(c.d_model))));
    return g.op("Add", S + "/Add", {g.op("Mul", S + "/Scale", {speech, scale}), pe});
  }

  // FSMN memory: depthwise Conv1d over v (zero padded) + v; with a mask, v is zeroed outside
  // the row's length first and the result after (funasr forward_fsmn).
  std::string fsmn(const std::string& scope, std::string v, const std::string& module) {
    if (mask) v = g.op("Mul", scope + "/MaskInput", {v, mask->frames});
    const int64_t d = c.d_model, K = c.kernel;
    const int64_t left = (K - 1) / 2 + (c.sanm_shift > 0 ? c.sanm_shift : 0), right = K - 1 - left;
    const std::string W = raw(module + ".fsmn_block.weight", {d, 1, K});
    const std::string vt = g.op("Transpose", scope + "/Transpose", {v}, {{"perm", std::vector<int64_t>{0, 2, 1}}});
    const std::string conv = g.op("Conv", scope + "/Conv", {vt, W},
                                  {{"group", d},
                                   {"kernel_shape", std::vector<int64_t>{K}},
                                   {"pads", std::vector<int64_t>{left, right}},
                                   {"strides", std::vector<int64_t>{1}},
                                   {"dilations", std::vector<int64_t>{1}}});
    const std::string back =
        g.op("Transpose", scope + "/TransposeBack", {conv}, {{"perm", std::vector<int64_t>{0, 2, 1}}});
    const std::string sum = g.op("Add", scope + "/Add", {back, v});
    return mask ? g.op("Mul", scope + "/MaskOutput", {sum, mask->frames}) : sum;
  }

  std::string feed_forward(const std::string& scope, const std::string& x, const std::string& module, int64_t dim,
                           int64_t hidden) {
    const std::string h = linear1(scope + "/w_1", x, module + ".w_1", dim, hidden);
    const std::string r = g.op("Relu", scope + "/Relu", {h});
    return linear1(scope + "/w_2", r, module + ".w_2", hidden, dim);
  }

  std::string run(const ProgressFn& progress, bool lengths) {
    const int64_t d = c.d_model;
    const int64_t n_enc = c.blocks + c.tp_blocks, total = n_enc + c.adaptor_layers + 1;
    int64_t done = 0;
    auto tick = [&] {
      if (progress) progress("audio encoder", ++done, total);
    };
    g.input("speech", io::DType::F32, {Dim{"batch_size"}, Dim{"frames"}, Dim{c.input_size}});
    Masks enc_masks, adp_masks;
    if (lengths) {
      g.input("speech_lengths", io::DType::I64, {Dim{"batch_size"}});
      enc_masks = make_masks("/audio_encoder/mask", "speech", "speech_lengths");
      mask = &enc_masks;
    }
    std::string x = embed("speech");
    auto norm1 = [&](int64_t i) { return c.enc(c.encoder_layer(i) + ".norm1"); };
    std::string h = layer_norm("/audio_encoder/" + c.encoder_layer(0) + "/norm1", x, norm1(0), c.input_size, c.enc_eps);
    for (int64_t i = 0; i < n_enc; ++i) {
      const std::string L = c.encoder_layer(i), S = "/audio_encoder/" + L, M = c.enc(L);
      const int64_t in = i == 0 ? c.input_size : d;
      const std::string qkv = linear1(S + "/self_attn/linear_q_k_v", h, M + ".self_attn.linear_q_k_v", in, 3 * d);
      const std::string sizes = ints("qkv_" + str(d), {d, d, d});
      const std::string sb = S + "/self_attn/linear_q_k_v/Split";
      const auto parts =
          g.node("Split", sb, {qkv, sizes}, {sb + "/output_0", sb + "/output_1", sb + "/output_2"}, {{"axis", -1}});
      const std::string mem = fsmn(S + "/self_attn/fsmn", parts[2], M + ".self_attn");
      const std::string att = attention(S + "/self_attn", parts[0], parts[1], parts[2], c.heads, d);
      const std::string o = linear1(S + "/self_attn/linear_out", att, M + ".self_attn.linear_out", d, d);
      const std::string sa = g.op("Add", S + "/self_attn/AddFsmn", {o, mem});
      std::string h2;
      if (in == d) {
        std::tie(h2, x) = add_norm(S + "/norm2", sa, x, M + ".norm2", d, c.enc_eps);
      } else {  // encoders0 (input_size -> d): no residual around attention
        x = sa;
        h2 = layer_norm(S + "/norm2", x, M + ".norm2", d, c.enc_eps);
      }
      const std::string ff = feed_forward(S + "/feed_forward", h2, M + ".feed_forward", d, c.ffn);
      if (i + 1 < c.blocks || (i >= c.blocks && i + 1 < n_enc)) {  // next layer's norm1
        std::tie(h, x) =
            add_norm("/audio_encoder/" + c.encoder_layer(i + 1) + "/norm1", ff, x, norm1(i + 1), d, c.enc_eps);
      } else if (i + 1 == c.blocks) {  // after_norm, then the tp stack starts on its output
        x = add_norm("/audio_encoder/after_norm", ff, x, c.enc("after_norm"), d, c.enc_eps).first;
        if (c.tp_blocks > 0)
          h = layer_norm("/audio_encoder/" + c.encoder_layer(i + 1) + "/norm1", x, norm1(i + 1), d, c.enc_eps);
        else
          x = layer_norm("/audio_encoder/tp_norm", x, c.enc("tp_norm"), d, c.enc_eps);
      } else {  // last tp block
        x = add_norm("/audio_encoder/tp_norm", ff, x, c.enc("tp_norm"), d, c.enc_eps).first;
      }
      tick();
    }
    // ---- adaptor
    const std::string A = "/audio_adaptor";
    std::string out_lengths = "speech_lengths";
    if (c.downsample > 1) {  // pad frames to a multiple of k with zeros, then stack k frames
      // frames past a row's length are zeroed, so a padded row stacks as it would alone
      if (mask) x = g.op("Mul", A + "/MaskFrames", {x, mask->frames});
      const std::string T =
          g.op("Gather", A + "/Frames", {g.op("Shape", A + "/Shape", {x}), g.const_i64(A + "/idx1", {1}, true)},
               {{"axis", 0}});
      const std::string k = g.const_scalar(A + "/k", io::DType::I64, static_cast<double>(c.downsample));
      const std::string pad =
          g.op("Mod", A + "/PadFrames", {g.op("Sub", A + "/KMinusRem", {k, g.op("Mod", A + "/Rem", {T, k})}), k});
      const std::string pads = g.op(
          "Concat", A + "/Pads",
          {g.const_i64(A + "/pads_head", {0, 0, 0, 0}),
           g.op("Unsqueeze", A + "/PadEnd", {pad, g.const_i64(A + "/ax0", {0})}), g.const_i64(A + "/pads_tail", {0})},
          {{"axis", 0}});
      x = g.op("Pad", A + "/Pad", {x, pads});
      x = g.op("Reshape", A + "/Stack", {x, g.const_i64(A + "/stack_shape", {0, -1, d * c.downsample})});
      if (mask) {  // (len - 1) // k + 1
        const std::string one = g.const_scalar(A + "/one", io::DType::I64, 1);
        out_lengths =
            g.op("Add", A + "/OutputLengths",
                 {g.op("Div", A + "/Chunks", {g.op("Sub", A + "/LenMinusOne", {"speech_lengths", one}), k}), one});
        adp_masks = make_masks(A + "/mask", x, out_lengths);
        mask = &adp_masks;
      }
    }
    std::string y = linear1(A + "/linear1", x, c.adp("linear1"), d * c.downsample, c.adaptor_ffn);
    y = g.op("Relu", A + "/Relu", {y});
    y = linear1(A + "/linear2", y, c.adp("linear2"), c.adaptor_ffn, c.llm_dim);
    const int64_t D = c.llm_dim;
    if (c.adaptor_layers > 0) h = layer_norm(A + "/blocks.0/norm1", y, c.adp("blocks.0.norm1"), D, c.adaptor_eps);
    for (int64_t b = 0; b < c.adaptor_layers; ++b) {
      const std::string S = A + "/blocks." + str(b), M = c.adp("blocks." + str(b));
      const std::string at = M + ".self_attn.linear_";
      const std::string qkv =
          linear(S + "/self_attn/linear_qkv", h, {at + "q.weight", at + "k.weight", at + "v.weight"},
                 {at + "q.bias", at + "k.bias", at + "v.bias"}, D, 3 * D, at + "qkv.weight");
      const std::string sizes = ints("qkv_" + str(D), {D, D, D});
      const std::string sb = S + "/self_attn/linear_qkv/Split";
      const auto parts =
          g.node("Split", sb, {qkv, sizes}, {sb + "/output_0", sb + "/output_1", sb + "/output_2"}, {{"axis", -1}});
      const std::string att = attention(S + "/self_attn", parts[0], parts[1], parts[2], c.adaptor_heads, D);
      const std::string o = linear1(S + "/self_attn/linear_out", att, M + ".self_attn.linear_out", D, D);
      std::string h2;
      std::tie(h2, y) = add_norm(S + "/norm2", o, y, M + ".norm2", D, c.adaptor_eps);
      const std::string ff = feed_forward(S + "/feed_forward", h2, M + ".feed_forward", D, c.adaptor_block_ffn);
      if (b + 1 < c.adaptor_layers)
        std::tie(h, y) = add_norm(A + "/blocks." + str(b + 1) + "/norm1", ff, y,
                                  c.adp("blocks." + str(b + 1) + ".norm1"), D, c.adaptor_eps);
      else
        y = g.op("Add", S + "/ResidualAdd", {y, ff});
      tick();
    }
    g.node("Identity", A + "/Output", {y}, {"encoder_out"});
    g.output("encoder_out", io::DType::F32,
             {Dim{"batch_size"}, Dim{c.downsample > 1 ? "adaptor_frames" : "frames"}, Dim{c.llm_dim}});
    if (lengths) {
      g.node("Identity", A + "/OutputLengths/Identity", {out_lengths}, {"encoder_out_lengths"});
      g.output("encoder_out_lengths", io::DType::I64, {Dim{"batch_size"}});
    }
    tick();
    return "encoder_out";
  }
};

}  // namespace

std::string AudioEncoderConfig::encoder_layer(int64_t i) const {
  if (i == 0) return "encoders0.0";
  if (i < blocks) return "encoders." + str(i - 1);
  return "tp_encoders." + str(i - blocks);
}

AudioEncoderConfig AudioEncoderConfig::from(const io::TensorStore& s, const json& yaml_config,
                                            const std::string& encoder_prefix, const std::string& adaptor_prefix) {
  AudioEncoderConfig c;
  c.encoder_prefix = encoder_prefix;
  c.adaptor_prefix = adaptor_prefix;
  const json none = json::object();
  const bool has_yaml = yaml_config.is_object();
  const json& ec =
      has_yaml && yaml_config.contains("audio_encoder_conf") && yaml_config.at("audio_encoder_conf").is_object()
          ? yaml_config.at("audio_encoder_conf")
          : none;
  const json& ac =
      has_yaml && yaml_config.contains("audio_adaptor_conf") && yaml_config.at("audio_adaptor_conf").is_object()
          ? yaml_config.at("audio_adaptor_conf")
          : none;
  // encoder shapes
  const auto& qkv0 = shape_of(s, c.enc("encoders0.0.self_attn.linear_q_k_v.weight"));
  const auto& out0 = shape_of(s, c.enc("encoders0.0.self_attn.linear_out.weight"));
  if (qkv0.size() != 2 || out0.size() != 2)
    throw Error(s.path().string() + ": '" + c.enc("encoders0.0.self_attn.linear_q_k_v.weight") +
                "' and linear_out expected rank 2, found " + io::shape_str(qkv0) + " and " + io::shape_str(out0));
  c.input_size = qkv0[1];
  c.d_model = out0[0];
  const auto& w1 = shape_of(s, c.enc("encoders0.0.feed_forward.w_1.weight"));
  const auto& fs = shape_of(s, c.enc("encoders0.0.self_attn.fsmn_block.weight"));
  if (w1.size() != 2 || fs.size() != 3)
    throw Error(s.path().string() + ": encoders0.0 feed_forward.w_1 / fsmn_block expected rank 2 / 3, found " +
                io::shape_str(w1) + " / " + io::shape_str(fs));
  c.ffn = w1[0];
  c.kernel = fs[2];
  c.blocks = 1 + count_layers(s, c.enc("encoders."), "self_attn.linear_out.weight");
  if (s.has(c.enc("encoders0.1.self_attn.linear_out.weight")))
    throw Error(s.path().string() + ": expected one encoders0 layer, found " + c.enc("encoders0.1"));
  c.tp_blocks = count_layers(s, c.enc("tp_encoders."), "self_attn.linear_out.weight");
  // adaptor shapes
  const auto& l1 = shape_of(s, c.adp("linear1.weight"));
  const auto& l2 = shape_of(s, c.adp("linear2.weight"));
  if (l1.size() != 2 || l2.size() != 2)
    throw Error(s.path().string() + ": adaptor linear1/linear2 expected rank 2, found " + io::shape_str(l1) + " / " +
                io::shape_str(l2));
  c.adaptor_ffn = l1[0];
  if (c.d_model <= 0 || l1[1] % c.d_model != 0)
    throw Error(s.path().string() + ": '" + c.adp("linear1.weight") +
                "' expected an input width that is a multiple of " + "the encoder width " + str(c.d_model) +
                ", found " + io::shape_str(l1));
  c.downsample = l1[1] / c.d_model;
  c.llm_dim = l2[0];
  c.adaptor_layers = count_layers(s, c.adp("blocks."), "self_attn.linear_out.weight");
  if (c.adaptor_layers > 0) {
    const auto& bw1 = shape_of(s, c.adp("blocks.0.feed_forward.w_1.weight"));
    if (bw1.size() != 2)
      throw Error(s.path().string() + ": adaptor blocks.0.feed_forward.w_1 expected rank 2, found " +
                  io::shape_str(bw1));
    c.adaptor_block_ffn = bw1[0];
  } else {
    c.adaptor_block_ffn = c.llm_dim / 4;
  }
  // what shapes cannot tell, and consistency with config.yaml
  yaml_int(ec, "attention_heads", "audio_encoder_conf", &c.heads);
  yaml_int(ec, "sanm_shfit", "audio_encoder_conf", &c.sanm_shift);
  yaml_check(ec, "output_size", "audio_encoder_conf", c.d_model, "linear_out shapes");
  yaml_check(ec, "linear_units", "audio_encoder_conf", c.ffn, "feed_forward.w_1 shapes");
  yaml_check(ec, "num_blocks", "audio_encoder_conf", c.blocks, "encoders0 + encoders.N tensors");
  yaml_check(ec, "tp_blocks", "audio_encoder_conf", c.tp_blocks, "tp_encoders.N tensors");
  yaml_check(ec, "kernel_size", "audio_encoder_conf", c.kernel, "fsmn_block shapes");
  if (has_yaml) yaml_check(yaml_config, "input_size", "(top level)", c.input_size, "linear_q_k_v shapes");
  for (const char* key : {"normalize_before", "concat_after"}) {
    if (!ec.contains(key) || ec.at(key).is_null()) continue;
    const bool want = std::string(key) == "normalize_before";
    if (!ec.at(key).is_boolean() || ec.at(key).get<bool>() != want)
      throw Error(std::string("config.yaml: audio_encoder_conf.") + key + " expected " + (want ? "true" : "false") +
                  " (the only form kvrun builds), found " + ec.at(key).dump());
  }
  yaml_int(ac, "attention_heads", "audio_adaptor_conf", &c.adaptor_heads);
  yaml_check(ac, "downsample_rate", "audio_adaptor_conf", c.downsample, "linear1 input width / encoder width");
  yaml_check(ac, "ffn_dim", "audio_adaptor_conf", c.adaptor_ffn, "linear1 shapes");
  yaml_check(ac, "n_layer", "audio_adaptor_conf", c.adaptor_layers, "blocks.N tensors");
  yaml_check(ac, "llm_dim", "audio_adaptor_conf", c.llm_dim, "linear2 shapes");
  yaml_check(ac, "encoder_dim", "audio_adaptor_conf", c.d_model, "encoder shapes");
  c.validate();
  // every tensor's shape
  for (int64_t i = 0; i < c.blocks + c.tp_blocks; ++i) {
    const std::string M = c.enc(c.encoder_layer(i));
    const int64_t in = i == 0 ? c.input_size : c.d_model, d = c.d_model;
    expect_shape(s, M + ".self_attn.linear_q_k_v.weight", {3 * d, in});
    expect_shape(s, M + ".self_attn.linear_q_k_v.bias", {3 * d});
    expect_shape(s, M + ".self_attn.linear_out.weight", {d, d});
    expect_shape(s, M + ".self_attn.linear_out.bias", {d});
    expect_shape(s, M + ".self_attn.fsmn_block.weight", {d, 1, c.kernel});
    expect_shape(s, M + ".feed_forward.w_1.weight", {c.ffn, d});
    expect_shape(s, M + ".feed_forward.w_1.bias", {c.ffn});
    expect_shape(s, M + ".feed_forward.w_2.weight", {d, c.ffn});
    expect_shape(s, M + ".feed_forward.w_2.bias", {d});
    for (const char* p : {".weight", ".bias"}) {
      expect_shape(s, M + ".norm1" + p, {in});
      expect_shape(s, M + ".norm2" + p, {d});
    }
  }
  for (const char* p : {".weight", ".bias"}) {
    expect_shape(s, c.enc("after_norm") + p, {c.d_model});
    expect_shape(s, c.enc("tp_norm") + p, {c.d_model});
  }
  expect_shape(s, c.adp("linear1.bias"), {c.adaptor_ffn});
  expect_shape(s, c.adp("linear2.weight"), {c.llm_dim, c.adaptor_ffn});
  expect_shape(s, c.adp("linear2.bias"), {c.llm_dim});
  for (int64_t b = 0; b < c.adaptor_layers; ++b) {
    const std::string M = c.adp("blocks." + str(b));
    const int64_t D = c.llm_dim;
    for (const char* l : {"q", "k", "v", "out"}) {
      expect_shape(s, M + ".self_attn.linear_" + l + ".weight", {D, D});
      expect_shape(s, M + ".self_attn.linear_" + l + ".bias", {D});
    }
    expect_shape(s, M + ".feed_forward.w_1.weight", {c.adaptor_block_ffn, D});
    expect_shape(s, M + ".feed_forward.w_1.bias", {c.adaptor_block_ffn});
    expect_shape(s, M + ".feed_forward.w_2.weight", {D, c.adaptor_block_ffn});
    expect_shape(s, M + ".feed_forward.w_2.bias", {D});
    for (const char* p : {".weight", ".bias"}) {
      expect_shape(s, M + ".norm1" + p, {D});
      expect_shape(s, M + ".norm2" + p, {D});
    }
  }
  return c;
}

void AudioEncoderConfig::validate() const {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw Error("audio encoder config: " + what);
  };
  need(input_size >= 4 && input_size % 2 == 0,
       "input_size (sinusoidal positions need an even width >= 4) expected even and >= 4, found " + str(input_size));
  need(d_model > 0 && heads > 0 && d_model % heads == 0,
       "attention_heads expected to divide the encoder width " + str(d_model) + ", found " + str(heads));
  need(ffn > 0, "linear_units expected > 0, found " + str(ffn));
  need(blocks >= 1, "num_blocks expected >= 1, found " + str(blocks));
  need(tp_blocks >= 0, "tp_blocks expected >= 0, found " + str(tp_blocks));
  need(kernel >= 1, "kernel_size expected >= 1, found " + str(kernel));
  need(sanm_shift >= 0 && (kernel - 1) / 2 + sanm_shift <= kernel - 1,
       "sanm_shfit expected in [0, " + str(kernel - 1 - (kernel - 1) / 2) + "] for kernel " + str(kernel) + ", found " +
           str(sanm_shift));
  need(downsample >= 1, "downsample_rate expected >= 1, found " + str(downsample));
  need(adaptor_ffn > 0 && llm_dim > 0,
       "adaptor widths expected > 0, found ffn_dim " + str(adaptor_ffn) + ", llm_dim " + str(llm_dim));
  need(adaptor_layers >= 0, "n_layer expected >= 0, found " + str(adaptor_layers));
  need(adaptor_layers == 0 || (adaptor_heads > 0 && llm_dim % adaptor_heads == 0),
       "adaptor attention_heads expected to divide llm_dim " + str(llm_dim) + ", found " + str(adaptor_heads));
  need(adaptor_layers == 0 || adaptor_block_ffn > 0,
       "adaptor block FFN width expected > 0, found " + str(adaptor_block_ffn));
  need(enc_eps > 0 && adaptor_eps > 0, "LayerNorm epsilons expected > 0");
}

json AudioEncoderConfig::to_json() const {
  return json{{"encoder",
               {{"type", "SenseVoiceEncoderSmall"},
                {"prefix", encoder_prefix},
                {"input_size", input_size},
                {"output_size", d_model},
                {"attention_heads", heads},
                {"linear_units", ffn},
                {"num_blocks", blocks},
                {"tp_blocks", tp_blocks},
                {"kernel_size", kernel},
                {"sanm_shfit", sanm_shift},
                {"layer_norm_eps", enc_eps}}},
              {"adaptor",
               {{"type", "Transformer"},
                {"prefix", adaptor_prefix},
                {"downsample_rate", downsample},
                {"ffn_dim", adaptor_ffn},
                {"llm_dim", llm_dim},
                {"attention_heads", adaptor_heads},
                {"n_layer", adaptor_layers},
                {"block_ffn_dim", adaptor_block_ffn},
                {"layer_norm_eps", adaptor_eps}}}};
}

AudioEncoderConfig AudioEncoderConfig::from_json(const json& j) {
  AudioEncoderConfig c;
  try {
    const json& e = j.at("encoder");
    const json& a = j.at("adaptor");
    c.encoder_prefix = e.value("prefix", c.encoder_prefix);
    c.input_size = e.at("input_size").get<int64_t>();
    c.d_model = e.at("output_size").get<int64_t>();
    c.heads = e.at("attention_heads").get<int64_t>();
    c.ffn = e.at("linear_units").get<int64_t>();
    c.blocks = e.at("num_blocks").get<int64_t>();
    c.tp_blocks = e.at("tp_blocks").get<int64_t>();
    c.kernel = e.at("kernel_size").get<int64_t>();
    c.sanm_shift = e.at("sanm_shfit").get<int64_t>();
    c.enc_eps = e.at("layer_norm_eps").get<double>();
    c.adaptor_prefix = a.value("prefix", c.adaptor_prefix);
    c.downsample = a.at("downsample_rate").get<int64_t>();
    c.adaptor_ffn = a.at("ffn_dim").get<int64_t>();
    c.llm_dim = a.at("llm_dim").get<int64_t>();
    c.adaptor_heads = a.at("attention_heads").get<int64_t>();
    c.adaptor_layers = a.at("n_layer").get<int64_t>();
    c.adaptor_block_ffn = a.at("block_ffn_dim").get<int64_t>();
    c.adaptor_eps = a.at("layer_norm_eps").get<double>();
  } catch (const json::exception& ex) {
    throw Error(
        std::string("audio encoder config (kvrun.json): expected the keys AudioEncoderConfig::to_json writes, ") +
        "found " + ex.what());
  }
  c.validate();
  return c;
}

GraphSignature build_audio_encoder(const AudioEncoderConfig& cfg, const io::TensorStore& store,
                                   const fs::path& onnx_path, Target target, const ProgressFn& progress,
                                   bool lengths_input) {
  cfg.validate();
  std::map<std::string, int64_t> opsets = {{"", 17}};
  if (target == Target::Ort) opsets["com.microsoft"] = 1;
  GraphBuilder g(onnx_path, "kvrun_encoder_adaptor", opsets);
  g.metadata("kvrun.role", "encoder_adaptor");
  g.metadata("kvrun.architecture", "SenseVoiceEncoderSmall+Transformer");
  g.metadata("kvrun.target", target == Target::Ort ? "ort" : "portable");
  g.metadata("kvrun.audio_encoder", cfg.to_json().dump());
  Emitter e{cfg, store, g, target, WeightReader(store), {}};
  e.run(progress, lengths_input);
  GraphSignature sig{"encoder_adaptor", onnx_path.filename().string(), g.input_names(), g.output_names()};
  g.finish();
  return sig;
}

graph::QuantizeReport quantize_audio_encoder(const fs::path& src, const fs::path& dst, const std::string& precision,
                                             Target target, const QuantSettings& settings,
                                             graph::QuantizeOptions* used) {
  graph::QuantizeOptions q;
  static_cast<QuantSettings&>(q) = settings;
  q.standard_ops = target == Target::Portable;
  if (precision == "int8")
    q.mode = kEncoderInt8Mode;
  else if (precision == "int8-weight-only")
    q.mode = "int8";
  else if (precision == "int4")
    q.mode = "int4";
  else
    throw Error("audio encoder quantization: precision expected int8, int8-weight-only or int4, found '" + precision +
                "'");
  if (q.mode == "int8-dynamic") q.symmetric = true;
  q.validate();
  auto m = graph::OnnxModel::load(src);
  graph::QuantizeReport r = graph::quantize(*m, q);
  if (r.quantized == 0)
    throw Error("audio encoder quantization: " + src.string() +
                " expected MatMul nodes with constant weights, found none to quantize");
  m->save(dst);
  if (used) *used = q;
  return r;
}

}  // namespace kvrun::arch
