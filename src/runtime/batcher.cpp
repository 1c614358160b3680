// Continuous batching over one shared-buffer decoder state (see batcher.h).
#include "runtime/batcher.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "runtime/engine.h"

namespace kvrun::runtime {
namespace {
using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
constexpr int kMaxTopLogprobs = 20;
}  // namespace

void BatcherOptions::validate() const {
  if (slots < 1 || slots > 256) throw Error("parallel slots must be in [1, 256], found " + std::to_string(slots));
  if (context < 0) throw Error("context must be >= 0, found " + std::to_string(context));
  if (max_queue < 0) throw Error("max queue must be >= 0, found " + std::to_string(max_queue));
  if (prefill_chunk < 1) throw Error("prefill chunk must be >= 1, found " + std::to_string(prefill_chunk));
}

struct Batcher::Slot {
  int64_t row = 0;
  std::vector<TokenId> cached;  // tokens whose K/V rows are valid: size == the row's length
  std::shared_ptr<Ticket> t;    // null: idle
  Positions prompt;
  int64_t prefilled = 0;  // prompt positions in the cache
  std::optional<RowRun> run;
  bool generating = false;
  TokenId next = 0;  // sampled, to be fed by the next decode step
  GenerationStats stats;
  Clock::time_point admitted, first_token;
};

Batcher::Batcher(Engine& engine, const BatcherOptions& opt) : e_(engine), o_(opt) {
  o_.validate();
  Decoder& dec = e_.decoder();
  batched_ = dec.shared();
  const int64_t model_max = dec.source().max_length;
  context_ = o_.context > 0 ? o_.context : (model_max > 0 ? std::min<int64_t>(model_max, 4096) : 4096);
  if (model_max > 0 && context_ > model_max)
    throw Error("context of " + std::to_string(context_) + " positions exceeds the model's max length " +
                std::to_string(model_max));
  if (context_ < 2) throw Error("context must hold at least 2 positions");
  const int64_t n = batched_ ? o_.slots : 1;
  for (int64_t i = 0; i < n; ++i) {
    slots_.push_back(std::make_unique<Slot>());
    slots_.back()->row = i;
  }
  if (batched_)
    st_ = dec.new_state(n, context_);  // every row's K/V for the whole context, allocated here once
  else
    serial_ = e_.new_sequence();
  thread_ = std::thread([this] { batched_ ? loop() : loop_serial(); });
}

Batcher::~Batcher() { shutdown(); }

void Batcher::shutdown() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<Ticket> Batcher::submit(BatchRequest r) {
  r.opt.validate();
  e_.check_stop_strings(r.opt);
  if (r.prompt.empty()) throw Error("empty prompt");
  if (r.top_logprobs > kMaxTopLogprobs)
    throw Error("top_logprobs must be at most " + std::to_string(kMaxTopLogprobs) + ", found " +
                std::to_string(r.top_logprobs));
  if (r.top_logprobs >= 0 && !batched_)
    throw Error(
        "log-probabilities are available for kvrun packages with a shared KV buffer only (this model's "
        "layout is " +
        e_.info().layout + ")");
  const auto n = static_cast<int64_t>(r.prompt.size());
  if (n + 1 > context_)
    throw Error("the prompt has " + std::to_string(n) + " tokens; the context holds " + std::to_string(context_) +
                " positions per request (--ctx), and at least one must be left to generate");
  e_.resolve(Prompt().ids(r.prompt));  // ids inside the vocabulary
  auto t = std::make_shared<Ticket>();
  t->req_ = std::move(r);
  t->submitted_ = Clock::now();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_) throw Error("the server is shutting down");
    const auto slots = static_cast<int64_t>(slots_.size()), waiting = static_cast<int64_t>(waiting_.size());
    if (waiting + running_ >= slots + o_.max_queue)
      throw QueueFull(std::to_string(running_) + " of " + std::to_string(slots) + " slots are busy and " +
                      std::to_string(waiting) + " requests wait (--max-queue " + std::to_string(o_.max_queue) + ")");
    waiting_.push_back(t);
  }
  cv_.notify_all();
  return t;
}

BatcherStats Batcher::stats() const {
  BatcherStats s;
  s.slots = static_cast<int64_t>(slots_.size());
  s.context = context_;
  s.running = running_;
  s.kv_tokens = kv_tokens_;
  std::lock_guard<std::mutex> lk(mu_);
  s.waiting = static_cast<int64_t>(waiting_.size());
  return s;
}

// ---- batched mode

bool Batcher::admit() {
  std::vector<std::shared_ptr<Ticket>> dropped;
  {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return stop_ || !waiting_.empty() || running_ > 0; });
    if (stop_) return false;
    for (auto it = waiting_.begin(); it != waiting_.end();)
      if ((*it)->cancelled()) {
        dropped.push_back(*it);
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    Decoder& dec = e_.decoder();
    while (!waiting_.empty()) {
      const std::vector<TokenId>& p = waiting_.front()->req_.prompt;
      // The free slot whose cache keeps the longest prefix of the prompt; else the lowest.
      Slot* best = nullptr;
      size_t best_common = 0;
      for (auto& s : slots_) {
        if (s->t) continue;
        const size_t c = reusable_prefix(s->cached, p);
        if (!best || c > best_common) best = s.get(), best_common = c;
      }
      if (!best) break;
      Slot& s = *best;
      s.t = waiting_.front();
      waiting_.pop_front();
      const int64_t kept = dec.truncate(st_, static_cast<int64_t>(best_common), s.row);
      s.cached.resize(static_cast<size_t>(kept));
      s.prompt.ids = p;
      s.prompt.embeds.clear();
      s.prefilled = kept;
      s.run.emplace(e_.new_run(s.t->req_.opt, s.prompt, 0));
      s.generating = false;
      s.stats = GenerationStats();
      s.stats.reused_tokens = kept;
      s.stats.prompt_tokens = static_cast<int64_t>(p.size()) - kept;
      s.admitted = Clock::now();
      ++running_;
    }
  }
  for (auto& t : dropped) t->req_.on_done(GenerationResult{{}, "", "cancelled", {}}, "");
  return true;
}

void Batcher::loop() {
  while (admit()) {
    try {
      for (auto& s : slots_)
        if (s->t && s->t->cancelled()) finish(*s, "cancelled");
      prefill_one();
      decode_step();
    } catch (const std::exception& ex) {
      fail_all(ex.what());
    }
    int64_t kv = 0;
    for (auto& s : slots_)
      if (s->t) kv += st_.lengths[static_cast<size_t>(s->row)];
    kv_tokens_ = kv;
  }
  fail_all("the server is shutting down");
}

void Batcher::prefill_one() {
  // Slots still prefilling take turns: one chunk per step.
  const size_t n = slots_.size();
  for (size_t k = 0; k < n; ++k) {
    Slot& s = *slots_[(next_prefill_ + k) % n];
    if (!s.t || s.generating) continue;
    next_prefill_ = (next_prefill_ + k + 1) % n;
    const auto len = static_cast<int64_t>(s.prompt.ids.size());
    const int64_t a = s.prefilled, b = std::min(len, a + o_.prefill_chunk);
    StepFeed f;
    e_.fill_feed(f, {&s.prompt}, {0}, len, a, b);
    std::vector<float> logits;
    e_.decoder().step_row(st_, s.row, f, logits);
    s.cached.insert(s.cached.end(), s.prompt.ids.begin() + a, s.prompt.ids.begin() + b);
    s.prefilled = b;
    if (b == len) {
      s.stats.prefill_seconds = seconds(s.admitted, Clock::now());
      sample(s, logits.data());
    }
    return;
  }
}

void Batcher::decode_step() {
  int64_t hi = 0;
  for (auto& s : slots_)
    if (s->generating) hi = s->row + 1;
  if (hi == 0) return;
  Decoder& dec = e_.decoder();
  StepFeed f;
  f.batch = hi, f.seq = 1;
  f.ids.assign(static_cast<size_t>(hi), 0);
  f.real.assign(static_cast<size_t>(hi), 1);
  for (int64_t r = 0; r < hi; ++r)
    if (slots_[static_cast<size_t>(r)]->generating)
      f.ids[static_cast<size_t>(r)] = slots_[static_cast<size_t>(r)]->next;
  if (dec.takes_embeddings()) f.embeds = dec.embed(f.ids);
  std::vector<float> logits;
  dec.step_first_rows(st_, f, logits);
  const auto V = static_cast<size_t>(dec.vocab());
  for (int64_t r = 0; r < hi; ++r) {
    Slot& s = *slots_[static_cast<size_t>(r)];
    if (!s.generating) {
      --st_.lengths[static_cast<size_t>(r)];  // the throw-away position is forgotten
      continue;
    }
    s.cached.push_back(s.next);
    sample(s, logits.data() + static_cast<size_t>(r) * V);
  }
}

void Batcher::sample(Slot& s, const float* logits) {
  const BatchRequest& rq = s.t->req_;
  const auto V = static_cast<size_t>(e_.decoder().vocab());
  std::vector<float> row(logits, logits + V);
  // Log-probabilities of the model's distribution, before penalties and sampling rules.
  float lse = 0;
  if (rq.top_logprobs >= 0) {
    const float mx = *std::max_element(row.begin(), row.end());
    double sum = 0;
    for (float x : row) sum += std::exp(static_cast<double>(x - mx));
    lse = mx + static_cast<float>(std::log(sum));
  }
  std::vector<std::pair<TokenId, float>> top;
  if (rq.top_logprobs > 0) {
    std::vector<TokenId> idx(V);
    for (size_t i = 0; i < V; ++i) idx[i] = static_cast<TokenId>(i);
    const auto k = static_cast<size_t>(std::min<int64_t>(rq.top_logprobs, static_cast<int64_t>(V)));
    std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(), [&](TokenId a, TokenId b) {
      return row[static_cast<size_t>(a)] > row[static_cast<size_t>(b)] ||
             (row[static_cast<size_t>(a)] == row[static_cast<size_t>(b)] && a < b);
    });
    for (size_t i = 0; i < k; ++i) top.emplace_back(idx[i], row[static_cast<size_t>(idx[i])] - lse);
  }
  std::vector<float> raw;
  if (rq.top_logprobs >= 0) raw = row;
  const TokenId t = s.run->sampler.sample(row);
  if (s.run->tokens.empty() && !s.generating) {
    s.first_token = Clock::now();
    s.stats.time_to_first_token = seconds(s.t->submitted_, s.first_token);
  }
  const int64_t room = context_ - st_.lengths[static_cast<size_t>(s.row)] - 1;
  Ticket& ticket = *s.t;
  const StreamFn stream = [&](size_t, TokenId tok, const std::string& text) {
    TokenEvent ev;
    ev.token = tok;
    ev.text = text;
    if (tok == t && !raw.empty()) {
      ev.logprob = raw[static_cast<size_t>(t)] - lse;
      ev.top = top;
    }
    return rq.on_token(ev) && !ticket.cancelled();
  };
  e_.take(*s.run, 0, t, rq.opt, stream, room);
  if (s.run->done) {
    finish(s, s.run->reason == "callback" ? "cancelled" : s.run->reason);
    return;
  }
  s.next = t;
  s.generating = true;
}

void Batcher::finish(Slot& s, const std::string& reason, const std::string& error) {
  std::shared_ptr<Ticket> t = std::move(s.t);
  s.t.reset();
  GenerationResult res;
  if (s.run) {
    res.tokens = s.run->tokens;
    res.text = s.run->text;
  }
  res.finish_reason = reason;
  res.stats = s.stats;
  res.stats.generated_tokens = static_cast<int64_t>(res.tokens.size());
  if (!res.tokens.empty()) res.stats.decode_seconds = seconds(s.first_token, Clock::now());
  s.run.reset();
  s.generating = false;
  auto& len = st_.lengths[static_cast<size_t>(s.row)];
  if (!error.empty()) {
    len = 0;  // a failed run leaves nothing trustworthy in the row
    s.cached.clear();
  } else if (len > context_ - 1) {  // an idle row needs one free position for throw-away steps
    s.cached.resize(static_cast<size_t>(e_.decoder().truncate(st_, context_ - 1, s.row)));
  }
  --running_;
  if (t) t->req_.on_done(res, error);
}

void Batcher::fail_all(const std::string& error) {
  for (auto& s : slots_)
    if (s->t) finish(*s, "error", error);
  std::deque<std::shared_ptr<Ticket>> left;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_) left.swap(waiting_);
  }
  for (auto& t : left) t->req_.on_done(GenerationResult{{}, "", "error", {}}, error);
}

// ---- serial mode: one request at a time on a kept Sequence

void Batcher::loop_serial() {
  for (;;) {
    std::shared_ptr<Ticket> t;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !waiting_.empty(); });
      if (stop_) break;
      t = waiting_.front();
      waiting_.pop_front();
    }
    if (t->cancelled()) {
      t->req_.on_done(GenerationResult{{}, "", "cancelled", {}}, "");
      continue;
    }
    ++running_;
    const Clock::time_point started = Clock::now();
    const BatchRequest& rq = t->req_;
    GenerationResult res;
    std::string error;
    try {
      res = serial_->generate(Prompt().ids(rq.prompt), rq.opt, [&](size_t, TokenId tok, const std::string& text) {
        TokenEvent ev;
        ev.token = tok;
        ev.text = text;
        return rq.on_token(ev) && !t->cancelled();
      });
      if (res.finish_reason == "callback") res.finish_reason = "cancelled";
      res.stats.time_to_first_token += seconds(t->submitted_, started);  // + the wait in the queue
    } catch (const std::exception& ex) {
      serial_->reset();
      res.finish_reason = "error";
      error = ex.what();
    }
    --running_;
    rq.on_done(res, error);
  }
  std::deque<std::shared_ptr<Ticket>> left;
  {
    std::lock_guard<std::mutex> lk(mu_);
    left.swap(waiting_);
  }
  for (auto& t : left) t->req_.on_done(GenerationResult{{}, "", "error", {}}, "the server is shutting down");
}

}  // namespace kvrun::runtime
