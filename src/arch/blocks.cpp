#include "arch/blocks.h"

#include "arch/tensor_names.h"
#include "kvrun/error.h"

namespace kvrun::arch {

std::vector<float> WeightReader::f32(const std::string& name) const {
  if (name.empty()) return {};
  return store_.get(name).to_f32();
}

std::vector<float> WeightReader::norm(const std::string& name) const {
  std::vector<float> w = f32(name);
  if (norm_offset_ != 0.0)
    for (auto& v : w) v = static_cast<float>(norm_offset_) + v;  // fp32, as transformers' (1.0 + w.float())
  return w;
}

std::vector<float> WeightReader::transposed_concat(const std::vector<std::string>& names, int64_t in) const {
  std::vector<std::vector<float>> parts;
  int64_t total_out = 0;
  for (const auto& nm : names) {
    parts.push_back(f32(nm));
    total_out += static_cast<int64_t>(parts.back().size()) / in;
  }
  std::vector<float> out(static_cast<size_t>(in * total_out));
  int64_t col = 0;
  for (const auto& p : parts) {
    const int64_t rows = static_cast<int64_t>(p.size()) / in;  // HF [out, in]
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < in; ++c)
        out[static_cast<size_t>(c * total_out + col + r)] = p[static_cast<size_t>(r * in + c)];
    col += rows;
  }
  return out;
}

std::vector<float> WeightReader::concat(const std::vector<std::string>& names) const {
  if (names.empty() || names[0].empty()) return {};
  std::vector<float> out;
  for (const auto& nm : names) {
    auto v = f32(nm);
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

std::vector<graph::NBitsWeight> WeightReader::nbits(const std::vector<std::string>& names) const {
  if (!keep_quantized) return {};
  for (const auto& nm : names) {
    const io::TensorView& v = store_.get(nm);
    if (!v.quantized() || !graph::ggml_has_nbits(static_cast<uint32_t>(v.ggml_type)) || v.shape.size() != 2) return {};
  }
  std::vector<graph::NBitsWeight> groups;
  for (const auto& nm : names) {
    const io::TensorView& v = store_.get(nm);
    graph::NBitsWeight q =
        graph::nbits_from_ggml(static_cast<io::GgmlType>(v.ggml_type), v.data, v.shape[0], v.shape[1]);
    if (!groups.empty() && groups.back().compatible(q))
      groups.back().append_rows(q);
    else
      groups.push_back(std::move(q));
  }
  return groups;
}

std::string Net::weight(const std::string& name, const std::vector<int64_t>& shape, const Lazy& make) {
  if (g.has_external(name)) return g.external(name, dt, shape);
  const std::vector<float> v = make();
  int64_t numel = 1;
  for (auto d : shape) numel *= d;
  if (static_cast<int64_t>(v.size()) != numel)
    throw Error("weight '" + name + "': expected " + std::to_string(numel) + " values, found " +
                std::to_string(v.size()));
  return g.weight(name, dt, shape, v.data());
}

std::string linear(Net& n, const std::string& scope, const std::string& x, const std::string& weight_name, int64_t in,
                   int64_t out, const Lazy& make_w, const Lazy& make_bias) {
  const std::string W = n.weight(weight_name, {in, out}, make_w);
  std::string y = n.g.op("MatMul", scope + "/MatMul", {x, W});
  if (make_bias) {
    const std::string b = n.weight(weight_name + ".bias", {out}, make_bias);
    y = n.g.op("Add", scope + "/Add", {y, b});
  }
  return y;
}

std::string linear_parts(Net& n, const std::string& scope, const std::string& x, const std::string& weight_name,
                         const std::vector<std::string>& parts, int64_t in, int64_t out, const WeightReader& w,
                         const Lazy& make_bias) {
  const std::vector<graph::NBitsWeight> groups =
      n.dt == io::DType::F32 ? w.nbits(parts) : std::vector<graph::NBitsWeight>{};
  if (groups.empty())
    return linear(
        n, scope, x, weight_name, in, out, [&] { return w.transposed_concat(parts, in); }, make_bias);
  std::string base = weight_name;
  if (base.ends_with(".weight")) base.erase(base.size() - 7);
  std::vector<std::string> ys;
  for (size_t i = 0; i < groups.size(); ++i) {
    std::string sfx;
    if (groups.size() > 1) sfx = std::to_string(i).insert(0, 1, '_');
    const graph::NBitsNames names = graph::nbits_initializers(n.g, base + sfx, groups[i]);
    ys.push_back(graph::nbits_matmul(n.g, scope + sfx, x, groups[i], names, w.accuracy_level));
  }
  std::string y = ys.size() == 1 ? ys[0] : n.g.op("Concat", scope + "/Concat", ys, {{"axis", -1}});
  if (make_bias) {
    const std::string b = n.weight(weight_name + ".bias", {out}, make_bias);
    y = n.g.op("Add", scope + "/Add", {y, b});
  }
  return y;
}

std::string rms_norm(Net& n, const std::string& scope, const std::string& x, const std::string& gamma_name, int64_t dim,
                     const Lazy& gamma, double eps) {
  auto& g = n.g;
  std::string h = x;
  if (n.dt != io::DType::F32) h = g.op("Cast", scope + "/CastUp", {x}, {{"to", graph::onnx_elem_type(io::DType::F32)}});
  const std::string two = g.const_scalar(scope + "/two", io::DType::F32, 2.0);
  const std::string e = g.const_scalar(scope + "/eps", io::DType::F32, eps);
  const std::string sq = g.op("Pow", scope + "/Pow", {h, two});
  const std::string mean =
      g.op("ReduceMean", scope + "/ReduceMean", {sq}, {{"axes", std::vector<int64_t>{-1}}, {"keepdims", 1}});
  const std::string var = g.op("Add", scope + "/Add", {mean, e});
  const std::string rt = g.op("Sqrt", scope + "/Sqrt", {var});
  std::string y = g.op("Div", scope + "/Div", {h, rt});
  if (n.dt != io::DType::F32) y = g.op("Cast", scope + "/CastDown", {y}, {{"to", graph::onnx_elem_type(n.dt)}});
  const std::string w = n.weight(gamma_name, {dim}, gamma);
  return g.op("Mul", scope + "/Mul", {y, w});
}

std::pair<std::string, std::string> skip_rms_norm(Net& n, const std::string& scope, const std::string& x,
                                                  const std::string& residual, const std::string& gamma_name,
                                                  int64_t dim, const Lazy& gamma, double eps, bool fused) {
  if (!fused) {
    const std::string sum = n.g.op("Add", scope + "/ResidualAdd", {residual, x});
    return {rms_norm(n, scope, sum, gamma_name, dim, gamma, eps), sum};
  }
  const std::string w = n.weight(gamma_name, {dim}, gamma);
  const std::string base = scope + "/SkipSimplifiedLayerNorm";
  auto outs = n.g.node("SkipSimplifiedLayerNormalization", base, {x, residual, w},
                       {base + "/output_0", "", "", base + "/output_3"}, {{"epsilon", eps}}, "com.microsoft");
  return {outs[0], outs[3]};
}

std::vector<std::string> split_last(Net& n, const std::string& scope, const std::string& x,
                                    const std::vector<int64_t>& sizes) {
  const std::string s = n.g.const_i64(scope + "/split_sizes", sizes);
  std::vector<std::string> outs;
  for (size_t i = 0; i < sizes.size(); ++i) outs.push_back(scope + "/Split/output_" + std::to_string(i));
  return n.g.node("Split", scope + "/Split", {x, s}, outs, {{"axis", -1}});
}

std::string gelu_tanh(Net& n, const std::string& scope, const std::string& x) {
  auto& g = n.g;
  if (n.contrib_ops) return g.op("FastGelu", scope + "/FastGelu", {x}, {}, "com.microsoft");
  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  const std::string x3 = g.op("Mul", scope + "/Cube", {g.op("Mul", scope + "/Square", {x, x}), x});
  const std::string inner =
      g.op("Add", scope + "/Inner",
           {x, g.op("Mul", scope + "/MulCoef", {x3, g.const_scalar(scope + "/coef", n.dt, 0.044715)})});
  const std::string t = g.op("Tanh", scope + "/Tanh",
                             {g.op("Mul", scope + "/MulSqrt2Pi",
                                   {inner, g.const_scalar(scope + "/sqrt_2_over_pi", n.dt, 0.7978845608028654)})});
  const std::string one_plus = g.op("Add", scope + "/OnePlus", {t, g.const_scalar(scope + "/one", n.dt, 1.0)});
  return g.op("Mul", scope + "/Mul",
              {g.op("Mul", scope + "/Half", {x, g.const_scalar(scope + "/half", n.dt, 0.5)}), one_plus});
}

std::string mlp(Net& n, const std::string& scope, const std::string& x, const WeightReader& w,
                const io::ModelConfig& cfg, int64_t layer) {
  const LayerTensorNames nm = layer_tensor_names(cfg, layer);
  const int64_t H = cfg.hidden_size, F = cfg.intermediate_size;
  const std::string pre = "model.layers." + std::to_string(layer) + ".mlp.";
  Lazy gu_bias, down_bias;
  if (!nm.gate_bias.empty()) {
    gu_bias = [&] { return w.concat({nm.gate_bias, nm.up_bias}); };
    down_bias = [&] { return w.f32(nm.down_bias); };
  }
  const std::string gu =
      linear_parts(n, scope + "/gate_up_proj", x, pre + "gate_up_proj.weight", {nm.gate, nm.up}, H, 2 * F, w, gu_bias);
  const auto parts = split_last(n, scope + "/gate_up_proj", gu, {F, F});
  std::string act;
  if (cfg.hidden_act == io::Activation::GeluTanh) {
    act = gelu_tanh(n, scope + "/act", parts[0]);
  } else {
    const std::string sig = n.g.op("Sigmoid", scope + "/act/Sigmoid", {parts[0]});
    act = n.g.op("Mul", scope + "/act/Mul", {parts[0], sig});
  }
  const std::string prod = n.g.op("Mul", scope + "/Mul", {act, parts[1]});
  return linear_parts(n, scope + "/down_proj", prod, pre + "down_proj.weight", {nm.down}, F, H, w, down_bias);
}

}  // namespace kvrun::arch
