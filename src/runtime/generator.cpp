// kvrun::Model: model discovery + Decoder + tokenizer + sampling -> generation.
#include <algorithm>
#include <chrono>
#include <optional>
#include <sstream>

#include "kvrun/build.h"
#include "kvrun/chat_template.h"
#include "kvrun/error.h"
#include "kvrun/runtime.h"
#include "kvrun/tokenizer.h"
#include "runtime/engine.h"

namespace kvrun {
namespace fs = std::filesystem;

// ---- Prompt, options, stats

Prompt& Prompt::text(std::string s, bool add_special_tokens) {
  Segment seg;
  seg.kind = Segment::Kind::Text;
  seg.text = std::move(s);
  seg.add_special_tokens = add_special_tokens;
  segments_.push_back(std::move(seg));
  return *this;
}

Prompt& Prompt::ids(std::vector<TokenId> ids) {
  Segment seg;
  seg.kind = Segment::Kind::Ids;
  seg.ids = std::move(ids);
  segments_.push_back(std::move(seg));
  return *this;
}

Prompt& Prompt::embeddings(std::vector<float> values, int64_t rows) {
  if (rows <= 0 || values.empty() || values.size() % static_cast<size_t>(rows) != 0)
    throw Error("Prompt::embeddings: expected rows > 0 and values.size() a multiple of rows, found " +
                std::to_string(values.size()) + " values for " + std::to_string(rows) + " rows");
  Segment seg;
  seg.kind = Segment::Kind::Embeddings;
  seg.embeddings = std::move(values);
  seg.rows = rows;
  segments_.push_back(std::move(seg));
  return *this;
}

void GenerationOptions::validate() const {
  if (max_new_tokens < 0) throw Error("max_new_tokens must be >= 0, found " + std::to_string(max_new_tokens));
  if (prefill_chunk < 0) throw Error("prefill_chunk must be >= 0, found " + std::to_string(prefill_chunk));
  if (max_length < 0) throw Error("max_length must be >= 0, found " + std::to_string(max_length));
  for (const auto& s : stop_strings)
    if (s.empty()) throw Error("stop strings must not be empty");
  sampling.validate();
}

double GenerationStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
}
double GenerationStats::decode_tokens_per_second() const {
  return decode_seconds > 0 && generated_tokens > 1 ? static_cast<double>(generated_tokens - 1) / decode_seconds : 0.0;
}

std::string ModelInfo::to_text() const {
  std::ostringstream o;
  o << "layout       " << layout << " (" << dir.string() << ")\n";
  o << "graphs      ";
  for (const auto& g : graphs) o << " " << g;
  o << "\nkv cache     " << num_layers << " layers x " << num_kv_heads << " heads x " << head_dim << " (" << kv_dtype
    << ", sequence axis " << kv_seq_axis << ", "
    << (kv_delta           ? "fixed buffer + new rows"
        : shared_kv_buffer ? "shared buffer"
                           : "present->past")
    << ")\n";
  o << "token input  " << (takes_embeddings ? "inputs_embeds" : "input_ids") << " (hidden " << hidden_size << ", vocab "
    << vocab_size << ")\n";
  o << "max length   " << (max_length > 0 ? std::to_string(max_length) : std::string("not stated")) << "\n";
  o << "eos ids     ";
  for (auto e : eos_ids) o << " " << e;
  o << "\n";
  return o.str();
}

GenerationResult Model::generate(const Prompt& prompt, const GenerationOptions& opt, const StreamFn& stream) {
  return generate(std::vector<Prompt>{prompt}, opt, stream).at(0);
}

Model::~Model() = default;
Sequence::~Sequence() = default;

namespace runtime {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

class SequenceImpl : public Sequence {
 public:
  explicit SequenceImpl(Engine& e);
  GenerationResult generate(const Prompt& context, const GenerationOptions& opt, const StreamFn& stream) override;
  int64_t cached_tokens() const override { return static_cast<int64_t>(ids_.size()); }
  void reset() override;

 private:
  Engine& e_;
  std::optional<Decoder::State> st_;
  std::vector<TokenId> ids_;  // positions in the cache (-1: an embedding row)
};

}  // namespace

Engine::Engine(const fs::path& path, const ModelOptions& opt)
    : dec_(find_model(path), SessionConfig{opt.threads, true}) {
  const ModelSource& s = dec_.source();
  const fs::path dir = s.dir;
  const fs::path tok_dir = s.side_dir.empty() || fs::exists(dir / "tokenizer.json") ? dir : s.side_dir;
  if (fs::exists(tok_dir / "tokenizer.json") || fs::exists(tok_dir / "tokenizer.model") ||
      fs::exists(tok_dir / "tokenizer.gguf")) {
    try {
      tok_ = Tokenizer::load(tok_dir);
    } catch (const std::exception& e) {
      tok_error_ = e.what();
    }
  }
  tpl_ = std::make_unique<ChatTemplate>(ChatTemplate::from_folder(dir));
  info_.chat_template = tpl_->source() != ChatTemplate::chatml().source();
  info_.layout = s.layout;
  info_.dir = dir;
  info_.graphs = dec_.graph_files();
  const DecoderSignature& sig = dec_.signature();
  info_.convention = sig.convention;
  info_.num_layers = static_cast<int64_t>(sig.layers.size());
  info_.num_kv_heads = sig.kv_heads;
  info_.head_dim = sig.head_dim;
  info_.hidden_size = dec_.hidden();
  info_.vocab_size = dec_.vocab();
  info_.kv_seq_axis = sig.seq_axis;
  info_.kv_dtype = io::dtype_name(sig.kv_dtype);
  info_.shared_kv_buffer = dec_.shared();
  info_.kv_delta = dec_.kv_delta();
  info_.takes_embeddings = dec_.takes_embeddings();
  info_.max_length = s.max_length;
  info_.eos_ids = s.eos_ids;
  if (info_.eos_ids.empty() && tok_ && tok_->eos_token()) info_.eos_ids.push_back(tok_->eos_token()->id);
  info_.bos_id = s.bos_id;
  info_.pad_id = s.pad_id;
}

const Tokenizer& Engine::need_tokenizer() const {
  if (tok_) return *tok_;
  if (!tok_error_.empty()) throw Error("the model's tokenizer could not be loaded: " + tok_error_);
  throw Error(
      dec_.source().dir.string() +
      ": no tokenizer.json, tokenizer.model or tokenizer.gguf next to the model; give token ids instead of text");
}

Positions Engine::resolve(const Prompt& p) const {
  Positions r;
  for (const auto& seg : p.segments()) {
    switch (seg.kind) {
      case Prompt::Segment::Kind::Text: {
        auto ids = need_tokenizer().encode(seg.text, seg.add_special_tokens);
        r.ids.insert(r.ids.end(), ids.begin(), ids.end());
        break;
      }
      case Prompt::Segment::Kind::Ids:
        for (TokenId id : seg.ids)
          if (id < 0 || (dec_.vocab() > 0 && id >= dec_.vocab()))
            throw Error("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                        std::to_string(dec_.vocab()) + ")");
        r.ids.insert(r.ids.end(), seg.ids.begin(), seg.ids.end());
        break;
      case Prompt::Segment::Kind::Embeddings: {
        if (!dec_.takes_embeddings())
          throw Error(dec_.source().step_graph.string() +
                      ": the graph takes input_ids, so embeddings cannot be injected (build the model with an "
                      "inputs_embeds entry, e.g. kvrun build)");
        const int64_t width = static_cast<int64_t>(seg.embeddings.size()) / seg.rows;
        if (width != dec_.hidden())
          throw Error("prompt embeddings have " + std::to_string(width) +
                      " values per row, the model's hidden size is " + std::to_string(dec_.hidden()));
        r.ids.insert(r.ids.end(), static_cast<size_t>(seg.rows), -1);
        r.embeds.insert(r.embeds.end(), seg.embeddings.begin(), seg.embeddings.end());
        break;
      }
    }
  }
  return r;
}

void Engine::fill_feed(StepFeed& f, const std::vector<const Positions*>& rows, const std::vector<int64_t>& emb_offset,
                       int64_t width, int64_t a, int64_t b) const {
  f.batch = static_cast<int64_t>(rows.size());
  f.seq = b - a;
  f.ids.assign(static_cast<size_t>(f.batch * f.seq), 0);
  f.real.assign(static_cast<size_t>(f.batch * f.seq), 0);
  const bool emb = dec_.takes_embeddings();
  const auto H = static_cast<size_t>(dec_.hidden());
  if (emb) f.embeds.assign(static_cast<size_t>(f.batch * f.seq) * H, 0.f);
  for (size_t r = 0; r < rows.size(); ++r) {
    const Positions& p = *rows[r];
    const int64_t pad = width - static_cast<int64_t>(p.ids.size());
    std::vector<TokenId> lookup;
    std::vector<size_t> lookup_at;
    for (int64_t i = a; i < b; ++i) {
      const int64_t k = i - pad;  // index into the row's positions
      const size_t at = r * static_cast<size_t>(f.seq) + static_cast<size_t>(i - a);
      if (k < 0) continue;
      f.real[at] = 1;
      const TokenId id = p.ids[static_cast<size_t>(k)];
      f.ids[at] = id < 0 ? 0 : id;
      if (!emb) continue;
      if (id >= 0) {
        lookup.push_back(id);
        lookup_at.push_back(at);
      } else {
        // the j-th embedding row of this prompt: count -1 entries before k
        const int64_t j = emb_offset[r] + std::count(p.ids.begin(), p.ids.begin() + k, -1);
        std::copy_n(p.embeds.begin() + j * static_cast<int64_t>(H), H, f.embeds.begin() + static_cast<int64_t>(at * H));
      }
    }
    if (!lookup.empty()) {
      const std::vector<float> e = dec_.embed(lookup);
      for (size_t i = 0; i < lookup_at.size(); ++i)
        std::copy_n(e.begin() + static_cast<int64_t>(i * H), H,
                    f.embeds.begin() + static_cast<int64_t>(lookup_at[i] * H));
    }
  }
}

std::vector<TokenId> Engine::choose(std::vector<RowRun>& runs, std::vector<float>& logits, const GenerationOptions& opt,
                                    const StreamFn& stream, int64_t room) {
  const auto V = static_cast<size_t>(dec_.vocab());
  std::vector<TokenId> next(runs.size(), 0);
  std::vector<float> row(V);
  for (size_t r = 0; r < runs.size(); ++r) {
    RowRun& rr = runs[r];
    if (rr.done) {
      next[r] = rr.tokens.empty() ? 0 : rr.tokens.back();
      continue;
    }
    std::copy_n(logits.begin() + static_cast<int64_t>(r * V), V, row.begin());
    next[r] = rr.sampler.sample(row);
    take(rr, r, next[r], opt, stream, room);
  }
  return next;
}

void Engine::take(RowRun& rr, size_t r, TokenId t, const GenerationOptions& opt, const StreamFn& stream,
                  int64_t room) const {
  const bool eos = opt.stop_at_eos && std::find(info_.eos_ids.begin(), info_.eos_ids.end(), t) != info_.eos_ids.end();
  if (eos || std::find(opt.stop_ids.begin(), opt.stop_ids.end(), t) != opt.stop_ids.end()) {
    finish(rr, r, "stop", stream);
    return;
  }
  rr.tokens.push_back(t);
  std::string piece = rr.streamer ? rr.streamer->put(t) : std::string();
  rr.text += piece;
  // Stop strings: cut at the first match; hold back a tail that may start one.
  size_t cut = std::string::npos, hold = 0;
  for (const auto& s : opt.stop_strings) {
    const size_t from = rr.emitted > s.size() ? rr.emitted - s.size() : 0;
    const size_t at = rr.text.find(s, from);
    if (at != std::string::npos) cut = std::min(cut, at);
    for (size_t k = std::min(s.size() - 1, rr.text.size()); k > hold; --k)
      if (rr.text.compare(rr.text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  }
  bool keep_going = true;
  if (cut != std::string::npos) {
    rr.text.resize(std::max(cut, rr.emitted));
    emit(rr, r, t, rr.text.size(), stream);
    rr.done = true, rr.reason = "stop";
    return;
  }
  keep_going = emit(rr, r, t, rr.text.size() - hold, stream);
  if (!keep_going) {
    finish(rr, r, "callback", stream);
  } else if (static_cast<int64_t>(rr.tokens.size()) >= opt.max_new_tokens || room < 0) {
    finish(rr, r, "length", stream);
  }
}

bool Engine::emit(RowRun& rr, size_t r, TokenId t, size_t upto, const StreamFn& stream) {
  std::string piece;
  if (upto > rr.emitted) piece = rr.text.substr(rr.emitted, upto - rr.emitted), rr.emitted = upto;
  return stream ? stream(r, t, piece) : true;
}

void Engine::finish(RowRun& rr, size_t r, const std::string& reason, const StreamFn& stream) {
  if (rr.streamer) rr.text += rr.streamer->flush();
  if (rr.text.size() > rr.emitted && stream) stream(r, -1, rr.text.substr(rr.emitted));
  rr.emitted = rr.text.size();
  rr.done = true;
  rr.reason = reason;
}

RowRun Engine::new_run(const GenerationOptions& opt, const Positions& prompt, uint64_t stream) const {
  RowRun run(opt.sampling, stream);
  run.sampler.add_context(prompt.ids);
  if (tok_) run.streamer.emplace(*tok_, true);
  return run;
}

void Engine::check_stop_strings(const GenerationOptions& opt) const {
  if (!opt.stop_strings.empty()) need_tokenizer();
}

std::vector<GenerationResult> Engine::generate(const std::vector<Prompt>& prompts, const GenerationOptions& opt,
                                               const StreamFn& stream) {
  opt.validate();
  check_stop_strings(opt);
  if (prompts.empty()) return {};
  // Rows go together when the graph allows a batch; otherwise one after another.
  // Shared-buffer models batch right-padded rows; others need a mask for left padding, and
  // graphs that read lengths from a right-padded mask without a shared buffer run row by row.
  // KV-delta graphs share one position across the batch: rows of equal length only.
  bool batchable =
      dec_.max_batch() > 1 && (dec_.shared() || (!dec_.signature().mask_input.empty() && !dec_.source().right_padding));
  if (dec_.kv_delta()) {
    batchable = dec_.max_batch() > 1;
    const size_t n0 = prompt_ids(prompts[0]).size();
    for (size_t r = 1; r < prompts.size() && batchable; ++r) batchable = prompt_ids(prompts[r]).size() == n0;
  }
  if (prompts.size() > 1 && !batchable) {
    std::vector<GenerationResult> out;
    for (size_t r = 0; r < prompts.size(); ++r)
      out.push_back(generate(std::vector<Prompt>{prompts[r]}, opt,
                             stream
                                 ? StreamFn([&, r](size_t, TokenId t, const std::string& s) { return stream(r, t, s); })
                                 : StreamFn())[0]);
    return out;
  }
  const auto t0 = Clock::now();
  std::vector<Positions> ps;
  int64_t longest = 0;
  for (const auto& p : prompts) {
    ps.push_back(resolve(p));
    if (ps.back().ids.empty()) throw Error("empty prompt: give text, token ids or embeddings");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(ps.back().ids.size()));
  }
  const int64_t cap = capacity(longest, opt);
  const auto B = static_cast<int64_t>(prompts.size());
  Decoder::State st = dec_.new_state(B, cap);
  std::vector<RowRun> runs;
  for (size_t r = 0; r < ps.size(); ++r) runs.push_back(new_run(opt, ps[r], r));
  std::vector<float> logits;
  const int64_t chunk = opt.prefill_chunk > 0 ? opt.prefill_chunk : longest;
  std::vector<int64_t> zero(static_cast<size_t>(B), 0);
  StepFeed f;
  if (dec_.shared() && B > 1) {
    std::vector<float> row_logits;
    for (int64_t r = 0; r < B; ++r) {
      const Positions& p = ps[static_cast<size_t>(r)];
      const auto n = static_cast<int64_t>(p.ids.size());
      for (int64_t a = 0; a < n; a += chunk) {
        fill_feed(f, {&p}, {0}, n, a, std::min(n, a + chunk));
        dec_.step_row(st, r, f, row_logits);
      }
      if (r == 0) logits.assign(static_cast<size_t>(B) * row_logits.size(), 0.f);
      std::copy(row_logits.begin(), row_logits.end(), logits.begin() + r * static_cast<int64_t>(row_logits.size()));
    }
  } else {
    std::vector<const Positions*> rows;
    for (const auto& p : ps) rows.push_back(&p);
    for (int64_t a = 0; a < longest; a += chunk) {
      fill_feed(f, rows, zero, longest, a, std::min(longest, a + chunk));
      dec_.step(st, f, logits);
    }
  }
  const double prefill_s = since(t0);
  std::vector<GenerationResult> out(prompts.size());
  decode_loop(st, runs, logits, opt, stream, cap, t0, prefill_s, out);
  for (size_t r = 0; r < out.size(); ++r) out[r].stats.prompt_tokens = static_cast<int64_t>(ps[r].ids.size());
  return out;
}

int64_t Engine::capacity(int64_t prompt_len, const GenerationOptions& opt) const {
  int64_t cap = opt.max_length > 0 ? opt.max_length : prompt_len + opt.max_new_tokens;
  const int64_t model_max = dec_.source().max_length;
  if (model_max > 0) cap = std::min(cap, model_max);
  if (prompt_len > cap) {
    const std::string& from = dec_.source().max_length_from;
    throw Error("prompt of " + std::to_string(prompt_len) + " positions does not fit the maximum length " +
                std::to_string(cap) +
                (model_max > 0 && cap == model_max
                     ? " of the model" + (from.empty() ? std::string() : " (" + from + ")") + "; it is not truncated"
                     : " (--max-length)"));
  }
  return cap;
}

void Engine::decode_loop(Decoder::State& st, std::vector<RowRun>& runs, std::vector<float>& logits,
                         const GenerationOptions& opt, const StreamFn& stream, int64_t cap, Clock::time_point t0,
                         double prefill_s, std::vector<GenerationResult>& out) {
  const auto B = static_cast<int64_t>(runs.size());
  auto longest_row = [&] { return *std::max_element(st.lengths.begin(), st.lengths.end()); };
  if (opt.max_new_tokens == 0)
    for (size_t r = 0; r < runs.size(); ++r) finish(runs[r], r, "length", stream);
  double ttft = 0;
  Clock::time_point td = Clock::now();
  StepFeed f;
  f.batch = B, f.seq = 1;
  f.real.assign(static_cast<size_t>(B), 1);
  for (bool first = true;; first = false) {
    const bool all_done = std::all_of(runs.begin(), runs.end(), [](const RowRun& r) { return r.done; });
    if (all_done) break;
    const std::vector<TokenId> next = choose(runs, logits, opt, stream, cap - longest_row() - 1);
    if (first) ttft = since(t0), td = Clock::now();
    if (std::all_of(runs.begin(), runs.end(), [](const RowRun& r) { return r.done; })) break;
    f.ids = next;
    if (dec_.takes_embeddings()) f.embeds = dec_.embed(next);
    dec_.step(st, f, logits);
  }
  const double decode_s = since(td);
  for (size_t r = 0; r < runs.size(); ++r) {
    GenerationResult& g = out[r];
    g.tokens = runs[r].tokens;
    g.text = runs[r].text;
    g.finish_reason = runs[r].reason;
    g.stats.generated_tokens = static_cast<int64_t>(runs[r].tokens.size());
    g.stats.prefill_seconds = prefill_s;
    g.stats.time_to_first_token = ttft;
    g.stats.decode_seconds = decode_s;
  }
}

size_t reusable_prefix(const std::vector<TokenId>& cached, const std::vector<TokenId>& prompt) {
  size_t n = 0;
  while (n < cached.size() && n < prompt.size() && cached[n] >= 0 && cached[n] == prompt[n]) ++n;
  return n == prompt.size() && n > 0 ? n - 1 : n;
}

std::unique_ptr<Sequence> Engine::new_sequence() { return std::make_unique<SequenceImpl>(*this); }

SequenceImpl::SequenceImpl(Engine& e) : e_(e) {}

void SequenceImpl::reset() {
  st_.reset();
  ids_.clear();
}

GenerationResult SequenceImpl::generate(const Prompt& context, const GenerationOptions& opt, const StreamFn& stream) {
  opt.validate();
  e_.check_stop_strings(opt);
  const auto t0 = Clock::now();
  Positions p = e_.resolve(context);
  if (p.ids.empty()) throw Error("empty prompt: give text, token ids or embeddings");
  Decoder& dec = e_.decoder();
  size_t common = reusable_prefix(ids_, p.ids);
  const auto n = static_cast<int64_t>(p.ids.size());
  const int64_t cap = e_.capacity(n, opt);
  if (!st_) st_ = dec.new_state(1, cap);
  common = static_cast<size_t>(dec.truncate(*st_, static_cast<int64_t>(common)));
  ids_.resize(common);
  dec.reserve(*st_, cap);
  // Embedding rows before `common` were consumed: offset into p.embeds.
  const int64_t emb_before = std::count(p.ids.begin(), p.ids.begin() + static_cast<int64_t>(common), -1);
  Positions rest;
  rest.ids.assign(p.ids.begin() + static_cast<int64_t>(common), p.ids.end());
  rest.embeds.assign(p.embeds.begin() + emb_before * dec.hidden(), p.embeds.end());
  const auto m = static_cast<int64_t>(rest.ids.size());
  const int64_t chunk = opt.prefill_chunk > 0 ? opt.prefill_chunk : m;
  std::vector<float> logits;
  StepFeed f;
  for (int64_t a = 0; a < m; a += chunk) {
    e_.fill_feed(f, {&rest}, {0}, m, a, std::min(m, a + chunk));
    dec.step(*st_, f, logits);
  }
  ids_.insert(ids_.end(), rest.ids.begin(), rest.ids.end());
  const double prefill_s = since(t0);
  std::vector<RowRun> runs;
  runs.push_back(e_.new_run(opt, p, 0));
  std::vector<GenerationResult> out(1);
  const int64_t before = st_->lengths[0];
  e_.decode_loop(*st_, runs, logits, opt, stream, cap, t0, prefill_s, out);
  // Tokens fed during decode stay in the cache.
  const int64_t fed = st_->lengths[0] - before;
  ids_.insert(ids_.end(), runs[0].tokens.begin(),
              runs[0].tokens.begin() + std::min<int64_t>(fed, static_cast<int64_t>(runs[0].tokens.size())));
  if (static_cast<int64_t>(ids_.size()) < st_->lengths[0])
    ids_.resize(static_cast<size_t>(dec.truncate(*st_, static_cast<int64_t>(ids_.size()))));
  out[0].stats.prompt_tokens = m;
  out[0].stats.reused_tokens = static_cast<int64_t>(common);
  return out[0];
}

}  // namespace runtime

std::unique_ptr<Model> Model::load(const fs::path& path, const ModelOptions& opt) {
  return std::make_unique<runtime::Engine>(ensure_package(path, opt.build_progress), opt);
}

}  // namespace kvrun
