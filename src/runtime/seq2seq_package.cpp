#include "runtime/seq2seq_package.h"

#include "arch/decoder.h"
#include "arch/marian.h"
#include "io/fs.h"
#include "kvrun/error.h"

namespace kvrun::runtime {
namespace fs = std::filesystem;
using arch::kv_name;

Seq2SeqPackage::Seq2SeqPackage(const fs::path& dir, const SessionConfig& sc) {
  const fs::path mf = dir / "kvrun.json";
  if (!fs::exists(mf)) throw Error(dir.string() + ": not a kvrun package (no kvrun.json)");
  manifest_ = io::read_json_file(mf);
  if (manifest_.value("kind", "") != "seq2seq")
    throw Error(mf.string() + ": not a translation (seq2seq) package (kind '" + manifest_.value("kind", "") + "')");
  try {
    const auto& kv = manifest_.at("kv_cache");
    layers_ = kv.at("decoder_layers").get<int64_t>();
    heads_ = kv.at("heads").get<int64_t>();
    head_dim_ = kv.at("head_dim").get<int64_t>();
    vocab_ = manifest_.at("model").at("decoder_vocab_size").get<int64_t>();
    encoder_ = std::make_unique<Session>(dir / manifest_.at("graphs").at("encoder").at("file").get<std::string>(), sc);
    decoder_ = std::make_unique<Session>(dir / manifest_.at("graphs").at("decoder").at("file").get<std::string>(), sc);
  } catch (const nlohmann::json::exception& e) {
    throw Error(mf.string() + ": " + e.what());
  }
}

Seq2SeqPackage::Encoded Seq2SeqPackage::encode(const std::vector<int64_t>& ids) {
  const auto n = static_cast<int64_t>(ids.size());
  if (n == 0) throw Error("encode: empty source");
  HostTensor in = HostTensor::from_i64(ids, {1, n});
  HostTensor mask = HostTensor::from_i64(std::vector<int64_t>(ids.size(), 1), {1, n});
  std::vector<std::string> names = {"input_ids", "attention_mask"};
  std::vector<Ort::Value> vals;
  vals.push_back(in.view());
  vals.push_back(mask.view());
  std::vector<std::string> outs = {"last_hidden_state"};
  for (int64_t l = 0; l < layers_; ++l) {
    outs.push_back(kv_name(arch::kCrossPresentKey, l));
    outs.push_back(kv_name(arch::kCrossPresentValue, l));
  }
  std::vector<Ort::Value> r = encoder_->run(names, vals, outs);
  Encoded e;
  e.length = n;
  e.hidden = to_f32(r[0]);
  for (int64_t l = 0; l < layers_; ++l) {
    e.cross_k.push_back(to_host(r[static_cast<size_t>(1 + 2 * l)]));
    e.cross_v.push_back(to_host(r[static_cast<size_t>(2 + 2 * l)]));
  }
  return e;
}

Seq2SeqPackage::State Seq2SeqPackage::new_state(int64_t rows) const {
  State s;
  s.rows = rows;
  for (int64_t l = 0; l < layers_; ++l) {
    s.k.push_back(HostTensor::zeros(io::DType::F32, {rows, heads_, 0, head_dim_}));
    s.v.push_back(HostTensor::zeros(io::DType::F32, {rows, heads_, 0, head_dim_}));
  }
  return s;
}

std::vector<float> Seq2SeqPackage::decode(const Encoded& e, State& st, const std::vector<int64_t>& tokens, int64_t n) {
  if (n <= 0 || static_cast<int64_t>(tokens.size()) != st.rows * n)
    throw Error("decode: expected " + std::to_string(st.rows) + " x " + std::to_string(n) + " tokens, found " +
                std::to_string(tokens.size()));
  const int64_t total = st.length + n;
  HostTensor ids = HostTensor::from_i64(tokens, {st.rows, n});
  HostTensor mask =
      HostTensor::from_i64(std::vector<int64_t>(static_cast<size_t>(st.rows * total), 1), {st.rows, total});
  HostTensor enc_mask = HostTensor::from_i64(std::vector<int64_t>(static_cast<size_t>(e.length), 1), {1, e.length});
  std::vector<std::string> names = {"input_ids", "attention_mask", "encoder_attention_mask"};
  std::vector<Ort::Value> vals;
  vals.push_back(ids.view());
  vals.push_back(mask.view());
  vals.push_back(enc_mask.view());
  for (int64_t l = 0; l < layers_; ++l) {
    const auto i = static_cast<size_t>(l);
    names.push_back(kv_name(arch::kSelfPastKey, l));
    vals.push_back(st.k[i].view());
    names.push_back(kv_name(arch::kSelfPastValue, l));
    vals.push_back(st.v[i].view());
    names.push_back(kv_name(arch::kCrossPastKey, l));
    vals.push_back(const_cast<HostTensor&>(e.cross_k[i]).view());
    names.push_back(kv_name(arch::kCrossPastValue, l));
    vals.push_back(const_cast<HostTensor&>(e.cross_v[i]).view());
  }
  std::vector<std::string> outs = {"logits"};
  for (int64_t l = 0; l < layers_; ++l) {
    outs.push_back(kv_name(arch::kSelfPresentKey, l));
    outs.push_back(kv_name(arch::kSelfPresentValue, l));
  }
  std::vector<Ort::Value> r = decoder_->run(names, vals, outs);
  std::vector<float> logits = to_f32(r[0]);
  for (int64_t l = 0; l < layers_; ++l) {
    st.k[static_cast<size_t>(l)] = to_host(r[static_cast<size_t>(1 + 2 * l)]);
    st.v[static_cast<size_t>(l)] = to_host(r[static_cast<size_t>(2 + 2 * l)]);
  }
  st.length = total;
  return logits;
}

}  // namespace kvrun::runtime
