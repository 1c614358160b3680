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
  const std::string gu = linear(
      n, scope + "/gate_up_proj", x, pre + "gate_up_proj.weight", H, 2 * F,
      [&] {
        return w.transposed_concat({nm.gate, nm.up}, H);
      },
      gu_bias);
  const auto parts = split_last(n, scope + "/gate_up_proj", gu, {F, F});
  std::string act;
  if (cfg.hidden_act == io::Activation::GeluTanh) {
    act = gelu_tanh(n, scope + "/act", parts[0]);
  } else {
    const std::string sig = n.g.op("Sigmoid", scope + "/act/Sigmoid", {parts[0]});
    act = n.g.op("Mul", scope + "/act/Mul", {parts[0], sig});
  }
  const std::string prod = n.g.op("Mul", scope + "/Mul", {act, parts[1]});
  return linear(
      n, scope + "/down_proj", prod, pre + "down_proj.weight", F, H, [&] { return w.transposed_concat({nm.down}, F); },
      down_bias);
}

}  // namespace kvrun::arch
