#include "runtime/decoder.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "kvrun/error.h"

namespace kvrun::runtime {
namespace fs = std::filesystem;

namespace {

const Ort::MemoryInfo& cpu_mem() {
  static const Ort::MemoryInfo m = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  return m;
}

Ort::Value view(void* p, size_t bytes, const std::vector<int64_t>& shape, io::DType dt) {
  static uint8_t empty[16] = {};
  return Ort::Value::CreateTensor(cpu_mem(), bytes ? p : empty, bytes, shape.data(), shape.size(), to_onnx_elem(dt));
}

// An input tensor's bytes; kept alive until the run returns.
struct Buf {
  std::vector<uint8_t> bytes;
  std::vector<int64_t> shape;
  io::DType dtype;
  Ort::Value value() { return view(bytes.data(), bytes.size(), shape, dtype); }
};

Buf index_buf(const std::vector<int64_t>& v, std::vector<int64_t> shape, io::DType dt) {
  Buf b{{}, std::move(shape), dt};
  if (dt == io::DType::I64) {
    b.bytes.resize(v.size() * 8);
    std::memcpy(b.bytes.data(), v.data(), b.bytes.size());
  } else {  // I32
    b.bytes.resize(v.size() * 4);
    for (size_t i = 0; i < v.size(); ++i) {
      const auto x = static_cast<int32_t>(v[i]);
      std::memcpy(b.bytes.data() + i * 4, &x, 4);
    }
  }
  return b;
}

Buf float_buf(const std::vector<float>& v, std::vector<int64_t> shape, io::DType dt) {
  Buf b{{}, std::move(shape), dt};
  if (dt == io::DType::F32) {
    b.bytes.resize(v.size() * 4);
    std::memcpy(b.bytes.data(), v.data(), b.bytes.size());
  } else if (dt == io::DType::F16) {
    b.bytes.resize(v.size() * 2);
    for (size_t i = 0; i < v.size(); ++i) {
      const uint16_t h = io::f32_to_f16(v[i]);
      std::memcpy(b.bytes.data() + i * 2, &h, 2);
    }
  } else if (dt == io::DType::BF16) {
    b.bytes.resize(v.size() * 2);
    for (size_t i = 0; i < v.size(); ++i) {
      const uint16_t h = io::f32_to_bf16(v[i]);
      std::memcpy(b.bytes.data() + i * 2, &h, 2);
    }
  } else {
    throw Error("inputs_embeds of type " + io::dtype_name(dt) + " is not supported");
  }
  return b;
}

SignatureHints hints_of(const ModelSource& s) { return {s.num_layers, s.kv_heads, s.head_dim, s.hidden_size}; }

}  // namespace

Decoder::Decoder(ModelSource src, const SessionConfig& sc) : src_(std::move(src)) {
  step_ = std::make_unique<Session>(src_.step_graph, sc);
  step_sig_ = detect_signature(*step_, hints_of(src_));
  if (!src_.first_graph.empty()) {
    first_ = std::make_unique<Session>(src_.first_graph, sc);
    first_sig_ = detect_signature(*first_, hints_of(src_));
    if (first_sig_.layers.size() != step_sig_.layers.size())
      throw Error(src_.first_graph.string() + " has " + std::to_string(first_sig_.layers.size()) + " KV layers but " +
                  src_.step_graph.string() + " has " + std::to_string(step_sig_.layers.size()));
    if (first_sig_.takes_embeddings() != step_sig_.takes_embeddings())
      throw Error(src_.first_graph.string() + " and " + src_.step_graph.string() +
                  " disagree on the token input (input_ids vs inputs_embeds)");
  }
  if (!step_sig_.has_past)
    throw Error(src_.step_graph.string() + ": the graph has no past KV inputs, so it cannot continue a sequence");

  hidden_ = step_sig_.hidden > 0 ? step_sig_.hidden : src_.hidden_size.value_or(-1);
  if (const IoInfo* lo = step_->find_output(step_sig_.logits_output); lo && lo->shape.back() > 0)
    vocab_ = lo->shape.back();
  else
    vocab_ = src_.vocab_size.value_or(-1);

  if (!src_.embed_table.empty()) {
    table_ = std::make_unique<EmbeddingTable>(src_.embed_table, src_.embed_tensor);
    if (hidden_ > 0 && table_->width() != hidden_)
      throw Error(src_.embed_table.string() + ": embedding table has rows of " + std::to_string(table_->width()) +
                  " values, expected " + std::to_string(hidden_));
    hidden_ = table_->width();
  } else if (!src_.embed_graph.empty() && takes_embeddings()) {
    embed_session_ = std::make_unique<Session>(src_.embed_graph, sc);
    const auto& ei = embed_session_->inputs();
    const auto& eo = embed_session_->outputs();
    if (ei.size() != 1 || (ei[0].dtype != io::DType::I64 && ei[0].dtype != io::DType::I32) || eo.empty() ||
        eo[0].shape.size() != 3)
      throw Error(src_.embed_graph.string() +
                  ": expected one int64 input (token ids [batch, seq]) and a float output "
                  "[batch, seq, hidden]; found " +
                  std::to_string(ei.size()) + " inputs" + (ei.empty() ? "" : ", first " + io_str(ei[0])) +
                  (eo.empty() ? "" : ", output " + io_str(eo[0])));
  }
  if (takes_embeddings() && hidden_ <= 0)
    throw Error(src_.step_graph.string() + ": inputs_embeds has no fixed hidden size and no config.json states it");

  if (kv_delta()) {
    setup_delta();
  } else {
    if (src_.layout == "sherpa-kv-delta") src_.layout = "onnx";  // an llm.onnx of another kind
    const bool gqa_layout = step_sig_.seq_axis == 2 || step_sig_.seq_axis < 0;
    shared_ = src_.share_buffer && gqa_layout;
    if (step_sig_.seq_axis < 0) probe_seq_axis();
    if (shared_ && step_sig_.seq_axis != 2) shared_ = false;
  }
  if (step_sig_.kv_heads <= 0 || step_sig_.head_dim <= 0)
    throw Error(src_.step_graph.string() + ": cannot tell the KV heads / head size (KV shape " +
                io_str(*step_->find_input(step_sig_.layers[0].past_key)) + ") and no config.json states them");
  if (first_) first_sig_.seq_axis = step_sig_.seq_axis, first_sig_.kv_heads = step_sig_.kv_heads;
}

// The KV-delta graph states its cache length (the fixed second axis of cache_key_i, and
// max_total_len in its metadata) and its dimensions; where both say something they must agree.
void Decoder::setup_delta() {
  const std::string file = src_.step_graph.string();
  if (first_)
    throw Error(src_.first_graph.string() + ": a KV-delta graph (" + file +
                ") runs prefill and decode itself; a separate prefill graph is not expected next to it");
  const auto& meta = step_->metadata();
  auto meta_int = [&](const char* key) -> std::optional<int64_t> {
    const auto it = meta.find(key);
    if (it == meta.end()) return std::nullopt;
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(it->second, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != it->second.size())
      throw Error(file + ": metadata " + key + " is '" + it->second + "', expected an integer");
    return v;
  };
  auto agree = [&](const char* key, int64_t in_graph, const std::string& what) {
    const auto v = meta_int(key);
    if (v && in_graph > 0 && *v != in_graph)
      throw Error(file + ": metadata " + key + " is " + std::to_string(*v) + " but the graph has " +
                  std::to_string(in_graph) + " (" + what + ")");
  };
  const IoInfo& cache = *step_->find_input(step_sig_.layers[0].past_key);
  const int64_t rows = cache.shape[1];
  agree("max_total_len", rows, cache.name + " " + io_str(cache));
  const int64_t cap = rows > 0 ? rows : meta_int("max_total_len").value_or(-1);
  if (cap <= 0)
    throw Error(file + ": cannot tell the cache length: " + cache.name + " is " + io_str(cache) +
                " and the metadata has no max_total_len");
  if (step_sig_.kv_heads <= 0) step_sig_.kv_heads = meta_int("num_kv_heads").value_or(-1);
  if (step_sig_.head_dim <= 0) step_sig_.head_dim = meta_int("head_dim").value_or(-1);
  agree("num_layers", static_cast<int64_t>(step_sig_.layers.size()), "KV inputs");
  agree("num_kv_heads", step_sig_.kv_heads, cache.name + " " + io_str(cache));
  agree("head_dim", step_sig_.head_dim, cache.name + " " + io_str(cache));
  agree("hidden_size", hidden_, "inputs_embeds");
  agree("vocab_size", vocab_, "logits");
  src_.layout = "sherpa-kv-delta";
  src_.max_length = cap;
  src_.max_length_from = "max_total_len of " + src_.step_graph.filename().string();
}

std::string Decoder::too_long(int64_t positions) const {
  return "a context of " + std::to_string(positions) + " positions does not fit the model's maximum of " +
         std::to_string(src_.max_length) + " positions (" + src_.max_length_from +
         "); kvrun does not truncate it: shorten the input (e.g. split the audio)";
}

std::vector<std::string> Decoder::graph_files() const {
  std::vector<std::string> f;
  if (embed_session_) f.push_back(src_.embed_graph.filename().string());
  if (first_) f.push_back(src_.first_graph.filename().string());
  f.push_back(src_.step_graph.filename().string());
  return f;
}

// Two fresh prefills of 1 and 2 positions; the present axis that grew is the sequence axis.
void Decoder::probe_seq_axis() {
  Session& s = first_ ? *first_ : *step_;
  const DecoderSignature& sig = first_ ? first_sig_ : step_sig_;
  std::vector<std::vector<int64_t>> shapes;
  for (int64_t n : {1, 2}) {
    std::vector<Buf> bufs;
    std::vector<std::string> names;
    if (sig.takes_embeddings())
      bufs.push_back(
          float_buf(std::vector<float>(static_cast<size_t>(n * hidden_), 0.f), {1, n, hidden_}, sig.embeds_dtype));
    else
      bufs.push_back(index_buf(std::vector<int64_t>(static_cast<size_t>(n), 0), {1, n}, sig.ids_dtype));
    names.push_back(sig.takes_embeddings() ? sig.embeds_input : sig.ids_input);
    if (!sig.mask_input.empty()) {
      bufs.push_back(index_buf(std::vector<int64_t>(static_cast<size_t>(n), 1), {1, n}, sig.mask_dtype));
      names.push_back(sig.mask_input);
    }
    if (!sig.local_mask_input.empty()) {
      bufs.push_back(index_buf(std::vector<int64_t>(static_cast<size_t>(n), 1), {1, n}, sig.local_mask_dtype));
      names.push_back(sig.local_mask_input);
    }
    if (!sig.position_input.empty()) {
      bufs.push_back(
          index_buf(n == 1 ? std::vector<int64_t>{0} : std::vector<int64_t>{0, 1}, {1, n}, sig.position_dtype));
      names.push_back(sig.position_input);
    }
    if (!sig.cache_branch_input.empty()) {
      bufs.push_back(Buf{{0}, {1}, io::DType::BOOL});
      names.push_back(sig.cache_branch_input);
    }
    std::vector<Ort::Value> vals;
    for (auto& b : bufs) vals.push_back(b.value());
    // Past inputs (when this graph has them) start empty on both candidate axes: [1, 0, 0, D]
    // is not valid for a graph with a fixed heads axis, so give the fixed dims their size.
    std::vector<std::vector<int64_t>> past_shapes;
    if (sig.has_past) {
      const IoInfo* pi = s.find_input(sig.layers[0].past_key);
      std::vector<int64_t> shp = pi->shape;
      shp[0] = 1;
      for (int a : {1, 2})
        if (shp[static_cast<size_t>(a)] < 0) shp[static_cast<size_t>(a)] = 0;
      if (shp[3] < 0) shp[3] = src_.head_dim.value_or(1);
      for (const auto& l : sig.layers) {
        names.push_back(l.past_key);
        vals.push_back(view(nullptr, 0, shp, sig.kv_dtype));
        names.push_back(l.past_value);
        vals.push_back(view(nullptr, 0, shp, sig.kv_dtype));
      }
    }
    auto r = s.run(names, vals, {sig.layers[0].present_key});
    shapes.push_back(shape_of(r[0]));
  }
  int axis = -1;
  for (int a : {1, 2})
    if (shapes[1][static_cast<size_t>(a)] == shapes[0][static_cast<size_t>(a)] + 1) axis = a;
  if (axis < 0 || shapes[0].size() != 4)
    throw Error(s.path().string() + ": could not find the KV sequence axis by probing (present shapes " +
                io::shape_str(shapes[0]) + " and " + io::shape_str(shapes[1]) + " for 1 and 2 positions)");
  step_sig_.seq_axis = axis;
  step_sig_.kv_heads = shapes[0][static_cast<size_t>(axis == 1 ? 2 : 1)];
  if (step_sig_.head_dim <= 0) step_sig_.head_dim = shapes[0][3];
}

std::vector<float> Decoder::embed(const std::vector<TokenId>& ids) const {
  if (hidden_ <= 0) throw Error("embed: hidden size unknown");
  const auto H = static_cast<size_t>(hidden_);
  std::vector<float> out(ids.size() * H);
  if (table_) {
    for (size_t i = 0; i < ids.size(); ++i) table_->row_f32(ids[i], out.data() + i * H);
    if (src_.embed_scale != 1.0f)
      for (auto& v : out) v *= src_.embed_scale;
    return out;
  }
  if (!embed_session_)
    throw Error(src_.step_graph.string() +
                ": the graph takes inputs_embeds but no embedding table or embedding graph was found "
                "(looked for kvrun.json's embedding.safetensors and embedding.onnx)");
  if (ids.empty()) return out;
  std::vector<int64_t> v(ids.begin(), ids.end());
  const IoInfo& in = embed_session_->inputs()[0];
  Buf b = index_buf(v, {1, static_cast<int64_t>(v.size())}, in.dtype);
  std::vector<Ort::Value> vals;
  vals.push_back(b.value());
  auto r = embed_session_->run({in.name}, vals, {embed_session_->outputs()[0].name});
  std::vector<float> e = to_f32(r[0]);
  if (e.size() != out.size())
    throw Error(src_.embed_graph.string() + ": returned " + std::to_string(e.size()) + " values for " +
                std::to_string(ids.size()) + " tokens, expected " + std::to_string(out.size()));
  return e;
}

std::vector<int64_t> Decoder::kv_shape(int64_t batch, int64_t seq) const {
  if (step_sig_.seq_axis == 1) return {batch, seq, step_sig_.kv_heads, step_sig_.head_dim};
  return {batch, step_sig_.kv_heads, seq, step_sig_.head_dim};
}

Decoder::State Decoder::new_state(int64_t batch, int64_t capacity) const {
  if (batch < 1) throw Error("batch must be >= 1");
  if (batch > max_batch())
    throw Error(src_.step_graph.string() + ": the graph fixes batch " + std::to_string(max_batch()) + ", asked for " +
                std::to_string(batch));
  State st;
  st.batch = batch;
  st.lengths.assign(static_cast<size_t>(batch), 0);
  st.local_starts.assign(static_cast<size_t>(batch), 0);
  if (shared_) reserve(st, std::max<int64_t>(capacity, 1));
  if (kv_delta()) {
    // The graph fixes the cache length: every buffer has all max_total_len rows.
    st.capacity = src_.max_length;
    const size_t bytes = static_cast<size_t>(batch * st.capacity * step_sig_.kv_heads * step_sig_.head_dim) *
                         io::dtype_size(step_sig_.kv_dtype);
    st.buffers.assign(2 * step_sig_.layers.size(), std::vector<uint8_t>(bytes, 0));
  }
  return st;
}

void Decoder::reserve(State& st, int64_t need) const {
  if (kv_delta() && need > st.capacity) throw Error(too_long(need));
  if (!shared_) return;
  if (need > st.capacity) {
    if (src_.max_length > 0 && need > src_.max_length)
      throw Error("sequence of " + std::to_string(need) + " positions exceeds the model's max length " +
                  std::to_string(src_.max_length));
    int64_t cap = std::max(need, st.capacity * 2);
    if (src_.max_length > 0) cap = std::min(cap, src_.max_length);
    grow(st, false, cap);
    st.capacity = cap;
  }
  if (bounded_local()) {
    // window - 1 rows kept plus a piece of at most one window
    const int64_t limit = 2 * step_sig_.sliding_window - 1;
    const int64_t cap = std::min(std::max(need, st.local_capacity * 2), limit);
    if (cap > st.local_capacity) {
      grow(st, true, cap);
      st.local_capacity = cap;
    }
  }
}

void Decoder::grow(State& st, bool local, int64_t cap) const {
  const int64_t H = step_sig_.kv_heads, D = step_sig_.head_dim, B = st.batch;
  const int64_t old_cap = local ? st.local_capacity : st.capacity;
  const size_t es = io::dtype_size(step_sig_.kv_dtype);
  const size_t old_row = static_cast<size_t>(old_cap * D) * es, new_row = static_cast<size_t>(cap * D) * es;
  st.buffers.resize(2 * step_sig_.layers.size());
  for (size_t i = 0; i < st.buffers.size(); ++i) {
    if (is_local(i / 2) != local) continue;
    std::vector<uint8_t> nb(static_cast<size_t>(B * H) * new_row, 0);
    if (!st.buffers[i].empty())
      for (int64_t r = 0; r < B * H; ++r)
        std::memcpy(nb.data() + static_cast<size_t>(r) * new_row,
                    st.buffers[i].data() + static_cast<size_t>(r) * old_row, old_row);
    st.buffers[i] = std::move(nb);
  }
}

void Decoder::make_local_room(State& st, int64_t row, int64_t seq) const {
  const auto r = static_cast<size_t>(row);
  const int64_t held = st.lengths[r] - st.local_starts[r];
  if (held + seq <= st.local_capacity) return;
  const int64_t keep = std::min(held, step_sig_.sliding_window - 1), drop = held - keep;
  if (keep + seq > st.local_capacity)
    throw Error("internal: " + std::to_string(seq) + " positions do not fit the local cache of " +
                std::to_string(st.local_capacity) + " rows");
  const int64_t H = step_sig_.kv_heads;
  const size_t es = io::dtype_size(step_sig_.kv_dtype), pos_bytes = static_cast<size_t>(step_sig_.head_dim) * es;
  const size_t head_bytes = static_cast<size_t>(st.local_capacity) * pos_bytes;
  for (size_t i = 0; i < st.buffers.size(); ++i) {
    if (!is_local(i / 2)) continue;
    for (int64_t h = 0; h < H; ++h) {
      uint8_t* p = st.buffers[i].data() + static_cast<size_t>(row * H + h) * head_bytes;
      std::memmove(p, p + static_cast<size_t>(drop) * pos_bytes, static_cast<size_t>(keep) * pos_bytes);
    }
  }
  st.local_starts[r] += drop;
}

int64_t Decoder::truncate(State& st, int64_t length, int64_t row) const {
  if (row < 0 || row >= st.batch) throw Error("truncate: no row " + std::to_string(row));
  const auto r = static_cast<size_t>(row);
  if (length >= st.lengths[r]) return st.lengths[r];
  if (shared_ || kv_delta()) {
    // Local layers need the window - 1 positions before `length`; dropped ones cannot return.
    if (bounded_local() && (length == 0 || length - (step_sig_.sliding_window - 1) < st.local_starts[r]))
      length = 0, st.local_starts[r] = 0;
    st.lengths[r] = length;
    return length;
  }
  if (st.batch != 1) throw Error("truncate: batch-1 states only");
  // Chain: copy the first `length` positions of each past into new tensors.
  if (length == 0) {
    State fresh;
    fresh.batch = 1;
    fresh.lengths = {0};
    st = std::move(fresh);
    return 0;
  }
  Ort::AllocatorWithDefaultOptions alloc;
  const int axis = step_sig_.seq_axis;
  for (auto& v : st.past) {
    std::vector<int64_t> shp = shape_of(v);
    const int64_t old_len = shp[static_cast<size_t>(axis)];
    std::vector<int64_t> ns = shp;
    ns[static_cast<size_t>(axis)] = length;
    Ort::Value nv = Ort::Value::CreateTensor(alloc, ns.data(), ns.size(), to_onnx_elem(step_sig_.kv_dtype));
    const size_t es = io::dtype_size(step_sig_.kv_dtype);
    int64_t outer = 1, inner = 1;
    for (int a = 0; a < axis; ++a) outer *= shp[static_cast<size_t>(a)];
    for (size_t a = static_cast<size_t>(axis) + 1; a < shp.size(); ++a) inner *= shp[a];
    const auto* src = static_cast<const uint8_t*>(v.GetTensorRawData());
    auto* dst = static_cast<uint8_t*>(nv.GetTensorMutableRawData());
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(dst + static_cast<size_t>(o * length * inner) * es,
                  src + static_cast<size_t>(o * old_len * inner) * es, static_cast<size_t>(length * inner) * es);
    v = std::move(nv);
  }
  st.mask.resize(static_cast<size_t>(length));
  st.width = length;
  st.lengths[0] = length;
  return length;
}

void Decoder::logits_last(const Ort::Value& logits, int64_t batch, std::vector<float>& out) {
  const std::vector<int64_t> shp = shape_of(logits);
  const int64_t V = shp.back();
  if (vocab_ < 0) vocab_ = V;
  const int64_t rows = shp.size() == 3 ? shp[1] : 1;
  if (shp[0] != batch || V != vocab_)
    throw Error(src_.step_graph.string() + ": logits have shape " + io::shape_str(shp) + ", expected [" +
                std::to_string(batch) + ", seq, " + std::to_string(vocab_) + "]");
  out.resize(static_cast<size_t>(batch * V));
  const auto et = from_onnx_elem(logits.GetTensorTypeAndShapeInfo().GetElementType());
  const size_t es = io::dtype_size(et);
  const auto* base = static_cast<const uint8_t*>(logits.GetTensorRawData());
  for (int64_t b = 0; b < batch; ++b)
    io::to_f32(et, base + static_cast<size_t>((b * rows + rows - 1) * V) * es, out.data() + b * V,
               static_cast<size_t>(V));
}

void Decoder::step(State& st, const StepFeed& feed, std::vector<float>& out) {
  if (feed.batch != st.batch) throw Error("step: feed batch differs from the state's batch");
  if (kv_delta()) return run_delta(st, feed, out);
  if (shared_) {
    if (st.batch == 1 || feed.seq == 1) return run_shared(st, 0, st.batch, feed, out);
    throw Error("step: a shared-buffer batch takes one position per row; prefill rows with step_row");
  }
  run_chain(st, feed, out);
}

void Decoder::step_row(State& st, int64_t row, const StepFeed& feed, std::vector<float>& out) {
  if (!shared_) throw Error("step_row: only for shared-buffer models");
  if (feed.batch != 1 || row < 0 || row >= st.batch) throw Error("step_row: expected a batch-1 feed for a valid row");
  run_shared(st, row, 1, feed, out);
}

void Decoder::step_first_rows(State& st, const StepFeed& feed, std::vector<float>& out) {
  if (!shared_) throw Error("step_first_rows: only for shared-buffer models");
  if (feed.batch < 1 || feed.batch > st.batch || feed.seq != 1)
    throw Error("step_first_rows: expected one position for 1.." + std::to_string(st.batch) + " rows, found " +
                std::to_string(feed.batch) + " x " + std::to_string(feed.seq));
  run_shared(st, 0, feed.batch, feed, out);
}

// Inputs common to both strategies: tokens, mask, positions, branch flag.
namespace {
struct Feeds {
  std::vector<Buf> bufs;
  std::vector<const char*> names;
};

void token_inputs(const DecoderSignature& sig, const StepFeed& f, int64_t hidden, Feeds& fd) {
  if (sig.takes_embeddings()) {
    if (static_cast<int64_t>(f.embeds.size()) != f.batch * f.seq * hidden)
      throw Error("step: expected " + std::to_string(f.batch * f.seq) + " x " + std::to_string(hidden) +
                  " embedding values, found " + std::to_string(f.embeds.size()));
    fd.bufs.push_back(float_buf(f.embeds, {f.batch, f.seq, hidden}, sig.embeds_dtype));
    fd.names.push_back(sig.embeds_input.c_str());
  } else {
    std::vector<int64_t> v(f.ids.begin(), f.ids.end());
    fd.bufs.push_back(index_buf(v, {f.batch, f.seq}, sig.ids_dtype));
    fd.names.push_back(sig.ids_input.c_str());
  }
}

// Tokens plus the optional inputs the graph has: mask [B, W], positions [B, S], cache branch.
void step_inputs(const DecoderSignature& sig, const StepFeed& f, int64_t hidden, const std::vector<int64_t>& mask,
                 int64_t W, const std::vector<int64_t>& pos, bool has_cache, Feeds& fd) {
  token_inputs(sig, f, hidden, fd);
  if (!sig.mask_input.empty()) {
    fd.bufs.push_back(index_buf(mask, {f.batch, W}, sig.mask_dtype));
    fd.names.push_back(sig.mask_input.c_str());
  }
  if (!sig.position_input.empty()) {
    fd.bufs.push_back(index_buf(pos, {f.batch, f.seq}, sig.position_dtype));
    fd.names.push_back(sig.position_input.c_str());
  }
  if (!sig.cache_branch_input.empty()) {
    fd.bufs.push_back(Buf{{static_cast<uint8_t>(has_cache ? 1 : 0)}, {1}, io::DType::BOOL});
    fd.names.push_back(sig.cache_branch_input.c_str());
  }
}
}  // namespace

void Decoder::run_chain(State& st, const StepFeed& f, std::vector<float>& out) {
  const bool first = st.width == 0 && first_;
  Session& s = first ? *first_ : *step_;
  const DecoderSignature& sig = first ? first_sig_ : step_sig_;
  const int64_t B = f.batch, S = f.seq, W = st.width + S;
  if (src_.max_length > 0 && W > src_.max_length)
    throw Error("sequence of " + std::to_string(W) + " positions exceeds the model's max length " +
                std::to_string(src_.max_length));

  // New mask [B, W] and positions [B, S] (left padding: a pad position gets 1, as HF does).
  std::vector<int64_t> mask(static_cast<size_t>(B * W));
  std::vector<int64_t> pos(static_cast<size_t>(B * S));
  for (int64_t b = 0; b < B; ++b) {
    std::copy_n(st.mask.begin() + b * st.width, st.width, mask.begin() + b * W);
    int64_t n = st.lengths[static_cast<size_t>(b)];
    for (int64_t i = 0; i < S; ++i) {
      const bool real = f.real.empty() || f.real[static_cast<size_t>(b * S + i)];
      mask[static_cast<size_t>(b * W + st.width + i)] = real ? 1 : 0;
      pos[static_cast<size_t>(b * S + i)] = real ? n++ : 1;
    }
  }
  Feeds fd;
  step_inputs(sig, f, hidden_, mask, W, pos, st.width > 0, fd);
  if (!sig.local_mask_input.empty()) {  // chain mode: local layers hold every position too
    fd.bufs.push_back(index_buf(mask, {B, W}, sig.local_mask_dtype));
    fd.names.push_back(sig.local_mask_input.c_str());
  }
  std::vector<Ort::Value> vals;
  for (auto& b : fd.bufs) vals.push_back(b.value());
  if (sig.has_past) {
    if (st.past.empty()) {
      const auto shp = kv_shape(B, 0);
      for (size_t i = 0; i < 2 * sig.layers.size(); ++i) st.past.push_back(view(nullptr, 0, shp, sig.kv_dtype));
    }
    for (size_t l = 0; l < sig.layers.size(); ++l) {
      fd.names.push_back(sig.layers[l].past_key.c_str());
      vals.push_back(std::move(st.past[2 * l]));
      fd.names.push_back(sig.layers[l].past_value.c_str());
      vals.push_back(std::move(st.past[2 * l + 1]));
    }
  }
  std::vector<const char*> outs = {sig.logits_output.c_str()};
  for (const auto& l : sig.layers) {
    outs.push_back(l.present_key.c_str());
    outs.push_back(l.present_value.c_str());
  }
  std::vector<Ort::Value> results(outs.size());
  for (auto& r : results) r = Ort::Value{nullptr};
  s.run_into(fd.names, vals, outs, results);

  logits_last(results[0], B, out);
  st.past.clear();
  for (size_t i = 1; i < results.size(); ++i) {
    const auto shp = shape_of(results[i]);
    if (shp.size() != 4 || shp[static_cast<size_t>(step_sig_.seq_axis)] != W)
      throw Error(s.path().string() + ": present '" + outs[i] + "' has shape " + io::shape_str(shp) + ", expected " +
                  std::to_string(W) + " positions on axis " + std::to_string(step_sig_.seq_axis));
    st.past.push_back(std::move(results[i]));
  }
  st.mask = std::move(mask);
  st.width = W;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < S; ++i)
      if (f.real.empty() || f.real[static_cast<size_t>(b * S + i)]) ++st.lengths[static_cast<size_t>(b)];
}

namespace {
// Positions [a, b) of a batch-1 feed.
StepFeed feed_slice(const StepFeed& f, int64_t a, int64_t b, int64_t hidden) {
  StepFeed p;
  p.batch = 1, p.seq = b - a;
  if (!f.ids.empty()) p.ids.assign(f.ids.begin() + a, f.ids.begin() + b);
  if (!f.embeds.empty()) p.embeds.assign(f.embeds.begin() + a * hidden, f.embeds.begin() + b * hidden);
  if (!f.real.empty()) p.real.assign(f.real.begin() + a, f.real.begin() + b);
  return p;
}
}  // namespace

void Decoder::run_shared(State& st, int64_t first, int64_t count, const StepFeed& f, std::vector<float>& out) {
  const DecoderSignature& sig = step_sig_;
  const int64_t B = count, S = f.seq;
  const int64_t window = sig.sliding_window;
  if (bounded_local() && S > window) {  // pieces of one window keep local buffers within 2 * window - 1 rows
    for (int64_t a = 0; a < S; a += window)
      run_shared(st, first, count, feed_slice(f, a, std::min(S, a + window), hidden_), out);
    return;
  }
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) longest = std::max(longest, st.lengths[static_cast<size_t>(first + b)] + S);
  reserve(st, longest);

  // Right padding: row b's mask has length_b + S ones; the mask width is the longest row.
  // Local layers: the same over the positions their buffers hold.
  const int64_t W = longest;
  std::vector<int64_t> mask(static_cast<size_t>(B * W), 0), pos(static_cast<size_t>(B * S)), local_mask;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = st.lengths[static_cast<size_t>(first + b)];
    std::fill_n(mask.begin() + b * W, len + S, 1);
    for (int64_t i = 0; i < S; ++i) pos[static_cast<size_t>(b * S + i)] = len + i;
  }
  int64_t LW = 0;
  if (bounded_local()) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t r = first + b;
      make_local_room(st, r, S);
      LW = std::max(LW, st.lengths[static_cast<size_t>(r)] - st.local_starts[static_cast<size_t>(r)] + S);
    }
    local_mask.assign(static_cast<size_t>(B * LW), 0);
    for (int64_t b = 0; b < B; ++b) {
      const auto r = static_cast<size_t>(first + b);
      std::fill_n(local_mask.begin() + b * LW, st.lengths[r] - st.local_starts[r] + S, 1);
    }
  }
  Feeds fd;
  step_inputs(sig, f, hidden_, mask, W, pos, true, fd);
  if (bounded_local()) {
    fd.bufs.push_back(index_buf(local_mask, {B, LW}, sig.local_mask_dtype));
    fd.names.push_back(sig.local_mask_input.c_str());
  }
  std::vector<Ort::Value> vals;
  for (auto& b : fd.bufs) vals.push_back(b.value());

  const size_t es = io::dtype_size(sig.kv_dtype);
  std::vector<const char*> outs = {sig.logits_output.c_str()};
  std::vector<Ort::Value> results;
  results.emplace_back(nullptr);
  for (size_t l = 0; l < sig.layers.size(); ++l) {
    const int64_t cap = is_local(l) ? st.local_capacity : st.capacity;
    const std::vector<int64_t> shp = kv_shape(B, cap);
    const size_t row_bytes = static_cast<size_t>(sig.kv_heads * cap * sig.head_dim) * es;
    const size_t off = static_cast<size_t>(first) * row_bytes;
    const size_t bytes = static_cast<size_t>(B) * row_bytes;
    for (int kv = 0; kv < 2; ++kv) {
      uint8_t* p = st.buffers[2 * l + static_cast<size_t>(kv)].data() + off;
      fd.names.push_back(kv == 0 ? sig.layers[l].past_key.c_str() : sig.layers[l].past_value.c_str());
      vals.push_back(view(p, bytes, shp, sig.kv_dtype));
      outs.push_back(kv == 0 ? sig.layers[l].present_key.c_str() : sig.layers[l].present_value.c_str());
      results.push_back(view(p, bytes, shp, sig.kv_dtype));
    }
  }
  step_->run_into(fd.names, vals, outs, results);
  logits_last(results[0], B, out);
  for (int64_t b = 0; b < B; ++b) st.lengths[static_cast<size_t>(first + b)] += S;
}

void Decoder::run_delta(State& st, const StepFeed& f, std::vector<float>& out) {
  const DecoderSignature& sig = step_sig_;
  const int64_t B = f.batch, S = f.seq, past = st.lengths[0];
  if (std::any_of(st.lengths.begin(), st.lengths.end(), [&](int64_t n) { return n != past; }))
    throw Error(src_.step_graph.string() +
                ": a KV-delta graph takes one cache_position for the whole batch; the rows hold different lengths");
  if (std::find(f.real.begin(), f.real.end(), uint8_t{0}) != f.real.end())
    throw Error(src_.step_graph.string() +
                ": a KV-delta graph cannot take padded rows (its cache rows are never masked)");
  if (past + S > st.capacity) throw Error(too_long(past + S));

  std::vector<int64_t> pos(static_cast<size_t>(S)), row_pos(static_cast<size_t>(B * S));
  for (int64_t i = 0; i < S; ++i) pos[static_cast<size_t>(i)] = past + i;
  for (int64_t b = 0; b < B; ++b) std::copy(pos.begin(), pos.end(), row_pos.begin() + b * S);
  Feeds fd;
  step_inputs(sig, f, hidden_, std::vector<int64_t>(static_cast<size_t>(B * (past + S)), 1), past + S, row_pos, true,
              fd);
  fd.bufs.push_back(index_buf(pos, {S}, sig.cache_position_dtype));
  fd.names.push_back(sig.cache_position_input.c_str());
  std::vector<Ort::Value> vals;
  for (auto& b : fd.bufs) vals.push_back(b.value());

  // Cache inputs: the whole buffers. Delta outputs: for batch 1 the rows [past, past + S)
  // of the buffers themselves (contiguous), else ORT's tensors, copied below.
  const size_t es = io::dtype_size(sig.kv_dtype);
  const size_t row = static_cast<size_t>(sig.kv_heads * sig.head_dim) * es;
  const size_t per_batch = static_cast<size_t>(st.capacity) * row;
  const std::vector<int64_t> cache_shape = kv_shape(B, st.capacity), delta_shape = kv_shape(B, S);
  std::vector<const char*> outs = {sig.logits_output.c_str()};
  std::vector<Ort::Value> results;
  results.emplace_back(nullptr);
  for (size_t l = 0; l < sig.layers.size(); ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      uint8_t* p = st.buffers[2 * l + static_cast<size_t>(kv)].data();
      fd.names.push_back(kv == 0 ? sig.layers[l].past_key.c_str() : sig.layers[l].past_value.c_str());
      vals.push_back(view(p, static_cast<size_t>(B) * per_batch, cache_shape, sig.kv_dtype));
      outs.push_back(kv == 0 ? sig.layers[l].present_key.c_str() : sig.layers[l].present_value.c_str());
      if (B == 1)
        results.push_back(
            view(p + static_cast<size_t>(past) * row, static_cast<size_t>(S) * row, delta_shape, sig.kv_dtype));
      else
        results.emplace_back(nullptr);
    }
  }
  step_->run_into(fd.names, vals, outs, results);
  for (size_t i = 1; i < results.size(); ++i) {
    const auto shp = shape_of(results[i]);
    if (shp != delta_shape)
      throw Error(src_.step_graph.string() + ": '" + outs[i] + "' has shape " + io::shape_str(shp) + ", expected " +
                  io::shape_str(delta_shape));
    if (B == 1) continue;
    const auto* src = static_cast<const uint8_t*>(results[i].GetTensorRawData());
    uint8_t* dst = st.buffers[i - 1].data();
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(dst + static_cast<size_t>(b) * per_batch + static_cast<size_t>(past) * row,
                  src + static_cast<size_t>(b * S) * row, static_cast<size_t>(S) * row);
  }
  logits_last(results[0], B, out);
  for (auto& n : st.lengths) n += S;
}

}  // namespace kvrun::runtime
