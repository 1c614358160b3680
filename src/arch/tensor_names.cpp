#include "arch/tensor_names.h"

#include "kvrun/error.h"

namespace kvrun::arch {

LayerTensorNames layer_tensor_names(const io::ModelConfig& cfg, int64_t layer) {
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  LayerTensorNames n;
  n.input_norm = p + "input_layernorm.weight";
  n.q = p + "self_attn.q_proj.weight";
  n.k = p + "self_attn.k_proj.weight";
  n.v = p + "self_attn.v_proj.weight";
  n.o = p + "self_attn.o_proj.weight";
  if (cfg.qkv_bias) {
    n.q_bias = p + "self_attn.q_proj.bias";
    n.k_bias = p + "self_attn.k_proj.bias";
    n.v_bias = p + "self_attn.v_proj.bias";
  }
  if (cfg.o_bias) n.o_bias = p + "self_attn.o_proj.bias";
  if (cfg.qk_norm) {
    n.q_norm = p + "self_attn.q_norm.weight";
    n.k_norm = p + "self_attn.k_norm.weight";
  }
  if (cfg.sandwich_norms) {
    n.attn_out_norm = p + "post_attention_layernorm.weight";
    n.post_norm = p + "pre_feedforward_layernorm.weight";
    n.mlp_out_norm = p + "post_feedforward_layernorm.weight";
  } else {
    n.post_norm = p + "post_attention_layernorm.weight";
  }
  n.gate = p + "mlp.gate_proj.weight";
  n.up = p + "mlp.up_proj.weight";
  n.down = p + "mlp.down_proj.weight";
  if (cfg.mlp_bias) {
    n.gate_bias = p + "mlp.gate_proj.bias";
    n.up_bias = p + "mlp.up_proj.bias";
    n.down_bias = p + "mlp.down_proj.bias";
  }
  return n;
}

std::vector<TensorSpec> expected_tensors(const io::ModelConfig& c) {
  using I = TensorSpec::Init;
  const int64_t H = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), F = c.intermediate_size;
  // Norm weights start as the identity: w = 1, or w = 0 where the norm multiplies by (1 + w).
  const I norm = c.norm_weight_offset == 1.0 ? I::Zeros : I::Ones;
  std::vector<TensorSpec> out;
  out.push_back({kEmbedTokens, {c.vocab_size, H}, I::Normal});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerTensorNames n = layer_tensor_names(c, l);
    out.push_back({n.input_norm, {H}, norm});
    out.push_back({n.q, {Q, H}, I::Normal});
    out.push_back({n.k, {KV, H}, I::Normal});
    out.push_back({n.v, {KV, H}, I::Normal});
    if (!n.q_bias.empty()) {
      out.push_back({n.q_bias, {Q}, I::Zeros});
      out.push_back({n.k_bias, {KV}, I::Zeros});
      out.push_back({n.v_bias, {KV}, I::Zeros});
    }
    out.push_back({n.o, {H, Q}, I::Normal});
    if (!n.o_bias.empty()) out.push_back({n.o_bias, {H}, I::Zeros});
    if (!n.q_norm.empty()) {
      out.push_back({n.q_norm, {c.head_dim}, norm});
      out.push_back({n.k_norm, {c.head_dim}, norm});
    }
    if (!n.attn_out_norm.empty()) out.push_back({n.attn_out_norm, {H}, norm});
    out.push_back({n.post_norm, {H}, norm});
    if (!n.mlp_out_norm.empty()) out.push_back({n.mlp_out_norm, {H}, norm});
    out.push_back({n.gate, {F, H}, I::Normal});
    out.push_back({n.up, {F, H}, I::Normal});
    out.push_back({n.down, {H, F}, I::Normal});
    if (!n.gate_bias.empty()) {
      out.push_back({n.gate_bias, {F}, I::Zeros});
      out.push_back({n.up_bias, {F}, I::Zeros});
      out.push_back({n.down_bias, {H}, I::Zeros});
    }
  }
  out.push_back({kFinalNorm, {H}, norm});
  if (!c.tie_word_embeddings) out.push_back({kLmHead, {c.vocab_size, H}, I::Normal});
  return out;
}

void check_checkpoint(const io::TensorStore& store, const io::ModelConfig& cfg) {
  for (const TensorSpec& s : expected_tensors(cfg)) {
    if (!store.has(s.name))
      throw Error(store.path().string() + ": tensor '" + s.name + "' is missing (expected shape " +
                  io::shape_str(s.shape) + " for " + cfg.architecture + ")");
    const io::TensorView& v = store.get(s.name);
    if (v.shape != s.shape)
      throw Error(v.file + ": tensor '" + s.name + "' has shape " + io::shape_str(v.shape) + ", expected " +
                  io::shape_str(s.shape) + " (from config.json)");
    if (v.dtype != io::DType::F32 && v.dtype != io::DType::F16 && v.dtype != io::DType::BF16)
      throw Error(v.file + ": tensor '" + s.name + "' has dtype " + std::string(io::dtype_to_safetensors(v.dtype)) +
                  ", expected F32, F16 or BF16");
  }
}

}  // namespace kvrun::arch
