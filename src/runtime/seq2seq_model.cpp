#include "runtime/seq2seq_model.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <set>

#include "io/fs.h"
#include "io/safetensors.h"
#include "kvrun/error.h"
#include "runtime/signature.h"

namespace kvrun::runtime {
namespace fs = std::filesystem;
using nlohmann::json;

struct Seq2SeqModel::Batch {
  int64_t beams = 1, rows = 0, length = 0, target = 0;  // length: source positions; target: decoded
  int64_t capacity = 0;                                 // shared mode: positions the self buffers hold
  int64_t max_steps = 0;                                // start()'s bound on steps (0: none)
  std::vector<int64_t> live;                            // sentences still running (start() order)
  // per unit: a sentence (kvrun's cross K/V and mask) or a row (the other layouts)
  HostTensor enc_mask, hidden;
  std::vector<HostTensor> cross_k, cross_v;
  std::vector<HostTensor> self_k, self_v;  // per row
};

Seq2SeqModel::~Seq2SeqModel() = default;

namespace {

// Rows of `t` (axis 0) in the order of `idx`.
void gather_rows(HostTensor& t, const std::vector<int64_t>& idx) {
  if (t.shape.empty()) return;
  const size_t row = t.shape[0] ? t.bytes.size() / static_cast<size_t>(t.shape[0]) : 0;
  std::vector<uint8_t> out(idx.size() * row);
  for (size_t i = 0; i < idx.size(); ++i)
    std::memcpy(out.data() + i * row, t.bytes.data() + static_cast<size_t>(idx[i]) * row, row);
  t.bytes = std::move(out);
  t.shape[0] = static_cast<int64_t>(idx.size());
}

std::vector<int64_t> repeat_index(int64_t n, int64_t times) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < times; ++k) v.push_back(i);
  return v;
}

std::string layer_name(const char* prefix, int64_t l, const char* suffix) {
  std::string s = prefix;
  s += std::to_string(l);
  s += suffix;
  return s;
}

// An ONNX file of the folder by name, also under onnx/ (transformers.js) and with a
// _quantized / _fp16 suffix when the plain name is absent.
std::optional<fs::path> find_graph(const fs::path& dir, const std::string& stem) {
  for (const fs::path& d : {dir, dir / "onnx"})
    for (const char* suffix : {"", "_quantized", "_fp16", "_int8", "_q4"}) {
      const fs::path p = d / (stem + suffix + ".onnx");
      if (fs::exists(p)) return p;
    }
  return std::nullopt;
}

int64_t config_int(const json& c, const char* key, int64_t dflt) {
  return c.contains(key) && c[key].is_number_integer() ? c[key].get<int64_t>() : dflt;
}

// Shared buffers [rows, H, cap, D]: rows i of `out` = rows src[i] of `in`, positions [0, n)
// of each head copied (the rest is never read); `cap_out` may differ from the input's.
void copy_heads(const HostTensor& in, HostTensor& out, const std::vector<int64_t>& src, int64_t n, int64_t cap_out) {
  const int64_t H = in.shape[1], cap_in = in.shape[2], D = in.shape[3];
  const size_t es = io::dtype_size(in.dtype), pos = static_cast<size_t>(D) * es;
  out.dtype = in.dtype;
  out.shape = {static_cast<int64_t>(src.size()), H, cap_out, D};
  out.bytes.resize(src.size() * static_cast<size_t>(H * cap_out) * pos);
  for (size_t i = 0; i < src.size(); ++i)
    for (int64_t h = 0; h < H; ++h)
      std::memcpy(out.bytes.data() +
                      ((i * static_cast<size_t>(H) + static_cast<size_t>(h)) * static_cast<size_t>(cap_out)) * pos,
                  in.bytes.data() + ((static_cast<size_t>(src[i] * H + h)) * static_cast<size_t>(cap_in)) * pos,
                  static_cast<size_t>(n) * pos);
}

// The encoder runs once per batch over every source position: its intermediates are returned
// to the system after each run instead of staying in the arena while the decoder steps.
SessionConfig encoder_config(SessionConfig sc) {
  sc.shrink_arena = true;
  return sc;
}

}  // namespace

std::unique_ptr<Seq2SeqModel> Seq2SeqModel::open(const fs::path& dir, const SessionConfig& sc) {
  std::unique_ptr<Seq2SeqModel> m(new Seq2SeqModel());
  if (fs::exists(dir / "kvrun.json")) {
    const json man = io::read_json_file(dir / "kvrun.json");
    if (man.value("kind", "") != "seq2seq")
      throw Error((dir / "kvrun.json").string() + ": not a translation (seq2seq) package; use kvrun run / chat");
    try {
      m->layout_ = "kvrun";
      m->encoder_ = std::make_unique<Session>(dir / man.at("graphs").at("encoder").at("file").get<std::string>(),
                                              encoder_config(sc));
      m->step_ = std::make_unique<Session>(dir / man.at("graphs").at("decoder").at("file").get<std::string>(), sc);
      m->max_positions_ = man.at("max_length").get<int64_t>();
      m->pad_id_ = man.at("model").at("pad_token_id").get<int64_t>();
    } catch (const json::exception& e) {
      throw Error((dir / "kvrun.json").string() + ": " + e.what());
    }
    m->cross_from_encoder_ = m->cross_per_sentence_ = true;
    m->shared_ = man.value("kv_cache", json::object()).value("past_present_share_buffer", false);
  } else {
    const auto enc = find_graph(dir, "encoder_model");
    if (!enc)
      throw Error(dir.string() +
                  ": no translation model here (expected kvrun.json of a seq2seq package, or encoder_model.onnx with "
                  "decoder_model_merged.onnx, decoder_model.onnx [+ decoder_with_past_model.onnx])");
    m->encoder_ = std::make_unique<Session>(*enc, encoder_config(sc));
    if (const auto merged = find_graph(dir, "decoder_model_merged")) {
      m->layout_ = "optimum-merged";
      m->step_ = std::make_unique<Session>(*merged, sc);
    } else if (const auto with_past = find_graph(dir, "decoder_with_past_model")) {
      const auto first = find_graph(dir, "decoder_model");
      if (!first)
        throw Error(dir.string() + ": decoder_with_past_model.onnx without decoder_model.onnx for the first step");
      m->layout_ = "optimum-split";
      m->first_ = std::make_unique<Session>(*first, sc);
      m->step_ = std::make_unique<Session>(*with_past, sc);
    } else if (const auto dec = find_graph(dir, "decoder_model")) {
      m->layout_ = "recompute";
      m->step_ = std::make_unique<Session>(*dec, sc);
    } else {
      throw Error(dir.string() + ": " + enc->filename().string() +
                  " has no decoder beside it (decoder_model_merged.onnx, decoder_model.onnx)");
    }
    const json cfg = fs::exists(dir / "config.json") ? io::read_json_file(dir / "config.json") : json::object();
    m->max_positions_ = config_int(cfg, "max_position_embeddings", 0);
    m->pad_id_ = config_int(cfg, "pad_token_id", 0);
  }
  m->read_signature(dir);
  return m;
}

// Classifies the step decoder's inputs and outputs; anything it cannot feed is an error with
// the expected and found signature side by side.
void Seq2SeqModel::read_signature(const fs::path& dir) {
  const Session& s = *step_;
  std::set<int64_t> self_layers;
  std::vector<std::string> problems;
  for (const auto& i : s.inputs()) {
    if (i.name == "input_ids" || i.name == "encoder_attention_mask") continue;
    if (i.name == "encoder_hidden_states") {
      takes_hidden_ = true;
    } else if (i.name == "use_cache_branch") {
      has_cache_branch_ = true;
    } else if (i.name == "attention_mask" && layout_ == "kvrun") {
      takes_self_mask_ = true;
    } else if (i.name.starts_with("past_key_values.")) {
      const std::string rest = i.name.substr(16);
      const size_t dot = rest.find('.');
      const std::string kind = dot == std::string::npos ? "" : rest.substr(dot + 1);
      int64_t l = -1;
      try {
        l = std::stoll(rest.substr(0, dot));
      } catch (const std::exception&) {
      }
      if (l < 0 ||
          (kind != "decoder.key" && kind != "decoder.value" && kind != "encoder.key" && kind != "encoder.value"))
        problems.push_back("unexpected input '" + i.name + "' " + io_str(i));
      if (kind.starts_with("decoder")) self_layers.insert(l);
      if (kind.starts_with("encoder")) cross_inputs_ = true;
    } else {
      problems.push_back("unexpected input '" + i.name + "' " + io_str(i) +
                         ": kvrun feeds input_ids, encoder_attention_mask, encoder_hidden_states, use_cache_branch, "
                         "past_key_values.{i}.decoder/encoder.key/value" +
                         std::string(layout_ == "kvrun" ? ", attention_mask" : ""));
    }
  }
  layers_ = static_cast<int64_t>(self_layers.size());
  if (!s.find_input("input_ids")) problems.push_back("missing input 'input_ids' [batch, decoder_sequence_length]");
  if (!s.find_input("encoder_attention_mask"))
    problems.push_back("missing input 'encoder_attention_mask' [batch, encoder_sequence_length]");
  if (layers_ == 0)
    problems.push_back(
        "no past_key_values.{i}.decoder.key/value inputs: a decoder without a self-attention cache "
        "would recompute the whole prefix every step");
  if (!cross_inputs_ && !takes_hidden_)
    problems.push_back(
        "neither encoder_hidden_states nor past_key_values.{i}.encoder.* inputs: the decoder cannot "
        "see the source");
  const IoInfo* lo = s.find_output("logits");
  if (!lo) problems.push_back("missing output 'logits' [batch, decoder_sequence_length, vocab]");
  for (int64_t l = 0; l < layers_; ++l)
    for (const char* kv : {".decoder.key", ".decoder.value"}) {
      if (!s.find_input(layer_name("past_key_values.", l, kv)))
        problems.push_back("missing input '" + layer_name("past_key_values.", l, kv) + "' (layer " + std::to_string(l) +
                           " of " + std::to_string(layers_) + ")");
      if (!s.find_output(layer_name("present.", l, kv)))
        problems.push_back("missing output '" + layer_name("present.", l, kv) + "'");
    }
  if (layout_ == "optimum-merged" && !has_cache_branch_)
    problems.push_back("decoder_model_merged.onnx has no use_cache_branch input");
  if (!problems.empty()) {
    std::string found = "  inputs:";
    for (const auto& i : s.inputs()) found += "\n    " + i.name + "  " + io_str(i);
    found += "\n  outputs:";
    for (const auto& o : s.outputs()) found += "\n    " + o.name + "  " + io_str(o);
    std::string msg = s.path().string() + ": the decoder does not match a signature kvrun can feed (" + layout_ +
                      " layout)\n  expected: input_ids, encoder_attention_mask, encoder_hidden_states and/or "
                      "past_key_values.{i}.encoder.key/value, past_key_values.{i}.decoder.key/value -> logits, "
                      "present.{i}.decoder.key/value\n" +
                      found + "\n  problems:";
    for (const auto& p : problems) msg += "\n   - " + p;
    throw Error(msg);
  }
  vocab_ = lo->shape.back();
  if (vocab_ <= 0) {
    const json cfg = fs::exists(dir / "config.json") ? io::read_json_file(dir / "config.json") : json::object();
    vocab_ = config_int(cfg, "decoder_vocab_size", config_int(cfg, "vocab_size", -1));
  }
  if (vocab_ <= 0) throw Error(s.path().string() + ": cannot tell the vocabulary size (logits " + io_str(*lo) + ")");
}

std::shared_ptr<Seq2SeqModel::Batch> Seq2SeqModel::start(const std::vector<std::vector<int64_t>>& sources,
                                                         int64_t beams, int64_t max_steps) {
  if (sources.empty()) throw Error("translate: no sentences");
  auto b = std::make_shared<Batch>();
  const auto S = static_cast<int64_t>(sources.size());
  b->beams = beams;
  b->rows = S * beams;
  b->max_steps = max_steps;
  for (int64_t i = 0; i < S; ++i) {
    if (sources[static_cast<size_t>(i)].empty()) throw Error("translate: an empty source (no </s>)");
    b->length = std::max(b->length, static_cast<int64_t>(sources[static_cast<size_t>(i)].size()));
    b->live.push_back(i);
  }
  if (max_positions_ > 0 && b->length > max_positions_)
    throw Error("a source of " + std::to_string(b->length) + " tokens exceeds the model's " +
                std::to_string(max_positions_) + " positions: split it");
  // right padding with pad ids, masked
  std::vector<int64_t> ids(static_cast<size_t>(S * b->length), pad_id_), mask(ids.size(), 0);
  for (int64_t i = 0; i < S; ++i)
    for (size_t t = 0; t < sources[static_cast<size_t>(i)].size(); ++t) {
      ids[static_cast<size_t>(i * b->length) + t] = sources[static_cast<size_t>(i)][t];
      mask[static_cast<size_t>(i * b->length) + t] = 1;
    }
  HostTensor in = HostTensor::from_i64(ids, {S, b->length});
  b->enc_mask = HostTensor::from_i64(mask, {S, b->length});
  std::vector<std::string> names = {"input_ids", "attention_mask"};
  std::vector<Ort::Value> vals;
  vals.push_back(in.view());
  vals.push_back(b->enc_mask.view());
  std::vector<std::string> outs = {"last_hidden_state"};
  if (cross_from_encoder_)
    for (int64_t l = 0; l < layers_; ++l) {
      outs.push_back(layer_name("present.", l, ".encoder.key"));
      outs.push_back(layer_name("present.", l, ".encoder.value"));
    }
  std::vector<Ort::Value> r = encoder_->run(names, vals, outs);
  b->hidden = to_host(r[0]);
  for (int64_t l = 0; l < (cross_from_encoder_ ? layers_ : 0); ++l) {
    b->cross_k.push_back(to_host(r[static_cast<size_t>(1 + 2 * l)]));
    b->cross_v.push_back(to_host(r[static_cast<size_t>(2 + 2 * l)]));
  }
  if (!cross_per_sentence_) {  // the other layouts want every input batch-sized: a copy per beam
    const auto idx = repeat_index(S, beams);
    gather_rows(b->enc_mask, idx);
    gather_rows(b->hidden, idx);
  }
  const IoInfo* pk = step_->find_input(layer_name("past_key_values.", 0, ".decoder.key"));
  for (int64_t l = 0; l < layers_; ++l) {
    const IoInfo* p = step_->find_input(layer_name("past_key_values.", l, ".decoder.key"));
    std::vector<int64_t> shp = p->shape;
    shp[0] = b->rows, shp[2] = 0;
    if (shared_) shp[2] = b->capacity = max_steps > 0 ? std::min<int64_t>(16, max_steps) : 16;
    if (shp[1] < 0 || shp[3] < 0) shp[1] = shp[1] < 0 ? 1 : shp[1], shp[3] = shp[3] < 0 ? 1 : shp[3];
    b->self_k.push_back(HostTensor::zeros(pk->dtype, shp));
    b->self_v.push_back(HostTensor::zeros(pk->dtype, shp));
  }
  return b;
}

void Seq2SeqModel::step(Batch& b, const std::vector<TokenId>& tokens, std::vector<float>& logits) {
  if (static_cast<int64_t>(tokens.size()) != b.rows)
    throw Error("step: " + std::to_string(tokens.size()) + " tokens for " + std::to_string(b.rows) + " rows");
  const bool first = b.target == 0;
  Session& s = first && first_ ? *first_ : *step_;
  if (shared_ && b.target + 1 > b.capacity) {  // double the self buffers, keeping their rows
    std::vector<int64_t> same(static_cast<size_t>(b.rows));
    for (int64_t i = 0; i < b.rows; ++i) same[static_cast<size_t>(i)] = i;
    int64_t cap = 2 * b.capacity;
    if (b.max_steps > 0) cap = std::min(cap, b.max_steps);
    cap = std::max<int64_t>(cap, b.target + 1);
    for (auto* set : {&b.self_k, &b.self_v})
      for (auto& t : *set) {
        HostTensor grown;
        copy_heads(t, grown, same, b.target, cap);
        t = std::move(grown);
      }
    b.capacity = cap;
  }
  std::vector<HostTensor> own;  // inputs made for this call
  own.reserve(8);
  own.push_back(HostTensor::from_i64(std::vector<int64_t>(tokens.begin(), tokens.end()), {b.rows, 1}));
  std::vector<std::string> names = {"input_ids", "encoder_attention_mask"};
  std::vector<Ort::Value> vals;
  vals.push_back(own.back().view());
  vals.push_back(b.enc_mask.view());
  if (s.find_input("encoder_hidden_states")) names.push_back("encoder_hidden_states"), vals.push_back(b.hidden.view());
  if (takes_self_mask_) {
    own.push_back(HostTensor::from_i64(std::vector<int64_t>(static_cast<size_t>(b.rows * (b.target + 1)), 1),
                                       {b.rows, b.target + 1}));
    names.push_back("attention_mask");
    vals.push_back(own.back().view());
  }
  if (s.find_input("use_cache_branch")) {
    HostTensor flag;
    flag.dtype = io::DType::BOOL, flag.shape = {1}, flag.bytes = {static_cast<uint8_t>(first ? 0 : 1)};
    own.push_back(std::move(flag));
    names.push_back("use_cache_branch");
    vals.push_back(own.back().view());
  }
  const bool with_cross = s.find_input(layer_name("past_key_values.", 0, ".encoder.key")) != nullptr;
  for (int64_t l = 0; l < layers_; ++l) {
    if (!s.find_input(layer_name("past_key_values.", l, ".decoder.key"))) break;  // optimum's first-step graph
    names.push_back(layer_name("past_key_values.", l, ".decoder.key"));
    vals.push_back(b.self_k[static_cast<size_t>(l)].view());
    names.push_back(layer_name("past_key_values.", l, ".decoder.value"));
    vals.push_back(b.self_v[static_cast<size_t>(l)].view());
    if (!with_cross) continue;
    if (b.cross_k.empty()) {  // merged graph, first step: the no-cache branch ignores them
      std::vector<int64_t> shp = b.self_k[static_cast<size_t>(l)].shape;
      own.push_back(HostTensor::zeros(b.self_k[static_cast<size_t>(l)].dtype, shp));
      names.push_back(layer_name("past_key_values.", l, ".encoder.key"));
      vals.push_back(own.back().view());
      names.push_back(layer_name("past_key_values.", l, ".encoder.value"));
      vals.push_back(own.back().view());
    } else {
      names.push_back(layer_name("past_key_values.", l, ".encoder.key"));
      vals.push_back(b.cross_k[static_cast<size_t>(l)].view());
      names.push_back(layer_name("past_key_values.", l, ".encoder.value"));
      vals.push_back(b.cross_v[static_cast<size_t>(l)].view());
    }
  }
  std::vector<std::string> outs = {"logits"};
  for (int64_t l = 0; l < layers_; ++l) {
    outs.push_back(layer_name("present.", l, ".decoder.key"));
    outs.push_back(layer_name("present.", l, ".decoder.value"));
  }
  const bool take_cross = b.cross_k.empty() && s.find_output(layer_name("present.", 0, ".encoder.key"));
  if (take_cross)
    for (int64_t l = 0; l < layers_; ++l) {
      outs.push_back(layer_name("present.", l, ".encoder.key"));
      outs.push_back(layer_name("present.", l, ".encoder.value"));
    }
  std::vector<Ort::Value> r;
  bool logits_in_place = false;
  if (shared_) {  // presents are the past buffers themselves; logits written into `logits`
    std::vector<const char*> in_names, out_names;
    for (const auto& n : names) in_names.push_back(n.c_str());
    for (const auto& n : outs) out_names.push_back(n.c_str());
    logits.resize(static_cast<size_t>(b.rows * vocab_));
    const std::vector<int64_t> lshape = {b.rows, 1, vocab_};
    r.push_back(Ort::Value::CreateTensor<float>(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault),
                                                logits.data(), logits.size(), lshape.data(), lshape.size()));
    logits_in_place = true;
    for (int64_t l = 0; l < layers_; ++l) {
      r.push_back(b.self_k[static_cast<size_t>(l)].view());
      r.push_back(b.self_v[static_cast<size_t>(l)].view());
    }
    for (size_t i = r.size(); i < outs.size(); ++i) r.emplace_back(nullptr);
    s.run_into(in_names, vals, out_names, r);
  } else {
    r = s.run(names, vals, outs);
  }
  const std::vector<int64_t> ls = shape_of(r[0]);
  const int64_t V = ls.back(), seq = ls.size() == 3 ? ls[1] : 1;
  if (ls[0] != b.rows || V != vocab_)
    throw Error(s.path().string() + ": logits have shape " + io::shape_str(ls) + ", expected [" +
                std::to_string(b.rows) + ", 1, " + std::to_string(vocab_) + "]");
  if (!logits_in_place) {
    const std::vector<float> all = to_f32(r[0]);
    logits.resize(static_cast<size_t>(b.rows * V));
    for (int64_t i = 0; i < b.rows; ++i)
      std::memcpy(logits.data() + i * V, all.data() + (i * seq + seq - 1) * V, static_cast<size_t>(V) * 4);
  }
  for (int64_t l = 0; l < layers_ && !shared_; ++l) {
    b.self_k[static_cast<size_t>(l)] = to_host(r[static_cast<size_t>(1 + 2 * l)]);
    b.self_v[static_cast<size_t>(l)] = to_host(r[static_cast<size_t>(2 + 2 * l)]);
  }
  if (take_cross)
    for (int64_t l = 0; l < layers_; ++l) {
      b.cross_k.push_back(to_host(r[static_cast<size_t>(1 + 2 * layers_ + 2 * l)]));
      b.cross_v.push_back(to_host(r[static_cast<size_t>(2 + 2 * layers_ + 2 * l)]));
    }
  ++b.target;
}

void Seq2SeqModel::reorder(Batch& b, const std::vector<int64_t>& src, const std::vector<int64_t>& sentences) {
  if (shared_) {
    HostTensor scratch;
    for (auto* set : {&b.self_k, &b.self_v})
      for (auto& t : *set) {
        copy_heads(t, scratch, src, b.target, b.capacity);
        std::swap(t, scratch);
      }
  } else {
    for (auto& t : b.self_k) gather_rows(t, src);
    for (auto& t : b.self_v) gather_rows(t, src);
  }
  if (cross_per_sentence_) {
    if (sentences != b.live) {  // positions in the current live list of the sentences kept
      std::vector<int64_t> keep;
      for (int64_t s : sentences) keep.push_back(std::find(b.live.begin(), b.live.end(), s) - b.live.begin());
      gather_rows(b.enc_mask, keep);
      gather_rows(b.hidden, keep);
      for (auto& t : b.cross_k) gather_rows(t, keep);
      for (auto& t : b.cross_v) gather_rows(t, keep);
    }
  } else {
    gather_rows(b.enc_mask, src);
    gather_rows(b.hidden, src);
    for (auto& t : b.cross_k) gather_rows(t, src);
    for (auto& t : b.cross_v) gather_rows(t, src);
  }
  b.live = sentences;
  b.rows = static_cast<int64_t>(src.size());
}

}  // namespace kvrun::runtime
