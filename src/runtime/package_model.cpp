#include "runtime/package_model.h"

#include <cstring>

#include "kvrun/error.h"

namespace kvrun::runtime {
namespace fs = std::filesystem;

using arch::kv_name;

PackageModel::PackageModel(const fs::path& dir, const SessionConfig& sc) : m_(build::load_manifest(dir)) {
  embedding_ = std::make_unique<EmbeddingTable>(dir / m_.embedding_file, m_.embedding_tensor);
  if (embedding_->rows() != m_.vocab_size || embedding_->width() != m_.hidden_size)
    throw Error((dir / m_.embedding_file).string() + ": embedding table has shape [" +
                std::to_string(embedding_->rows()) + ", " + std::to_string(embedding_->width()) + "], expected [" +
                std::to_string(m_.vocab_size) + ", " + std::to_string(m_.hidden_size) + "]");
  if (m_.target == "ort") {
    decoder_ = std::make_unique<Session>(dir / m_.graph("decoder").file, sc);
  } else if (m_.target == "portable") {
    prefill_ = std::make_unique<Session>(dir / m_.graph("prefill").file, sc);
    decode_ = std::make_unique<Session>(dir / m_.graph("decode").file, sc);
  } else {
    throw Error((dir / "kvrun.json").string() + ": unknown target '" + m_.target + "'");
  }
}

PackageModel::State PackageModel::new_state() const {
  State s;
  for (int64_t l = 0; l < m_.num_layers; ++l) {
    s.keys.push_back(HostTensor::zeros(m_.kv_dtype, {1, m_.num_kv_heads, 0, m_.head_dim}));
    s.values.push_back(HostTensor::zeros(m_.kv_dtype, {1, m_.num_kv_heads, 0, m_.head_dim}));
  }
  return s;
}

std::vector<float> PackageModel::embed(const std::vector<int64_t>& ids) const {
  const auto H = static_cast<size_t>(m_.hidden_size);
  std::vector<float> out(ids.size() * H);
  for (size_t i = 0; i < ids.size(); ++i) embedding_->row_f32(ids[i], out.data() + i * H);
  const auto scale = static_cast<float>(m_.embedding_scale);
  if (scale != 1.0f)
    for (auto& v : out) v *= scale;
  return out;
}

std::vector<float> PackageModel::forward(State& st, const std::vector<float>& embeds, int64_t n) {
  if (n <= 0 || static_cast<int64_t>(embeds.size()) != n * m_.hidden_size)
    throw Error("forward: expected " + std::to_string(n) + " x " + std::to_string(m_.hidden_size) +
                " embedding values, found " + std::to_string(embeds.size()));
  const int64_t total = st.length + n;
  if (total > m_.max_length)
    throw Error("sequence of " + std::to_string(total) + " positions exceeds the package's max_length " +
                std::to_string(m_.max_length) + " (rebuild with a larger --max-length)");
  const bool use_past = m_.target == "ort" || st.length > 0;
  Session& s = m_.target == "ort" ? *decoder_ : (st.length > 0 ? *decode_ : *prefill_);
  HostTensor emb = HostTensor::from_f32(embeds, {1, n, m_.hidden_size}, m_.dtype);
  HostTensor mask = HostTensor::from_i64(std::vector<int64_t>(static_cast<size_t>(total), 1), {1, total});
  std::vector<std::string> names = {"inputs_embeds", "attention_mask"};
  std::vector<Ort::Value> values;
  values.push_back(emb.view());
  values.push_back(mask.view());
  if (s.find_input("local_attention_mask")) {  // local layers keep every position here too
    names.push_back("local_attention_mask");
    values.push_back(mask.view());
  }
  if (use_past)
    for (int64_t l = 0; l < m_.num_layers; ++l) {
      names.push_back(kv_name(m_.kv.past_key, l));
      values.push_back(st.keys[static_cast<size_t>(l)].view());
      names.push_back(kv_name(m_.kv.past_value, l));
      values.push_back(st.values[static_cast<size_t>(l)].view());
    }
  std::vector<std::string> outs = {"logits"};
  for (int64_t l = 0; l < m_.num_layers; ++l) {
    outs.push_back(kv_name(m_.kv.present_key, l));
    outs.push_back(kv_name(m_.kv.present_value, l));
  }
  std::vector<Ort::Value> r = s.run(names, values, outs);
  std::vector<float> logits = to_f32(r[0]);
  for (int64_t l = 0; l < m_.num_layers; ++l) {
    st.keys[static_cast<size_t>(l)] = to_host(r[static_cast<size_t>(1 + 2 * l)]);
    st.values[static_cast<size_t>(l)] = to_host(r[static_cast<size_t>(2 + 2 * l)]);
  }
  st.length = total;
  return logits;
}

}  // namespace kvrun::runtime
