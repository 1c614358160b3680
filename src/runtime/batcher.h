// Continuous batching (kvrun serve): concurrent requests share decode steps.
//
// One Decoder::State of `slots` rows x `context` positions is allocated once. A request
// takes a free slot -- the one whose cached tokens share the longest prefix with its prompt,
// whose rows are kept -- and is prefilled in chunks of `prefill_chunk` positions, one chunk
// between two decode steps, so running requests never wait for a whole long prompt. Each
// decode step runs one position for every slot up to the last generating one (rows at their
// own positions and lengths; a slot that is idle or still prefilling in that range runs a
// throw-away position that is forgotten right after). A finished request leaves its tokens
// cached in its slot for the next request with the same prefix.
//
// Requests beyond the slots wait in a bounded queue (QueueFull beyond it). A cancelled
// request (Ticket::cancel, e.g. its client went away) leaves the queue, or stops at the next
// step and frees its slot.
//
// Decoders without a shared KV buffer (chain or KV-delta layouts of third-party exports)
// run one request at a time on a kept Sequence (slots = 1).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kvrun/error.h"
#include "kvrun/runtime.h"
#include "runtime/decoder.h"

namespace kvrun::runtime {

class Engine;

struct BatcherOptions {
  int64_t slots = 4;            // sequences decoded together
  int64_t context = 0;          // positions per slot; 0: the model's max length, at most 4096
  int64_t max_queue = 64;       // requests waiting for a slot when every slot is busy
  int64_t prefill_chunk = 256;  // prompt positions run between two decode steps
  void validate() const;
};

// One generated token as a request sees it (on the batcher's thread: keep it short).
struct TokenEvent {
  TokenId token = -1;                          // -1: the final piece of text (held back or incomplete UTF-8), no token
  std::string text;                            // text this token completes (may be empty)
  float logprob = 0;                           // log-probability of `token` under the model (before sampling rules)
  std::vector<std::pair<TokenId, float>> top;  // the most likely tokens, when asked for
};

struct BatchRequest {
  std::vector<TokenId> prompt;
  GenerationOptions opt;
  int top_logprobs = -1;  // -1: no log-probabilities; 0..20: the token's and this many alternatives
  // false: stop generating (finish_reason "cancelled")
  std::function<bool(const TokenEvent&)> on_token;
  // Called once, last. On a failure finish_reason is "error" and `error` says why.
  std::function<void(const GenerationResult&, const std::string& error)> on_done;
};

class QueueFull : public Error {
 public:
  using Error::Error;
};

class Ticket {
 public:
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  friend class Batcher;
  std::atomic<bool> cancelled_{false};
  BatchRequest req_;
  std::chrono::steady_clock::time_point submitted_;
};

struct BatcherStats {
  int64_t slots = 0, context = 0;
  int64_t running = 0, waiting = 0;
  int64_t kv_tokens = 0;  // positions held by running requests (batched mode; 0 in serial mode)
  double kv_usage() const { return slots * context > 0 ? static_cast<double>(kv_tokens) / (slots * context) : 0; }
};

class Batcher {
 public:
  Batcher(Engine& engine, const BatcherOptions& opt);
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Throws QueueFull when max_queue requests already wait, Error when the prompt cannot fit
  // (numbers in the message) or the options are invalid.
  std::shared_ptr<Ticket> submit(BatchRequest r);
  BatcherStats stats() const;
  // Stops the scheduler: running and waiting requests end with an error, later submits throw.
  // The destructor calls it.
  void shutdown();
  int64_t context() const { return context_; }
  int64_t slots() const { return static_cast<int64_t>(slots_.size()); }
  bool batched() const { return batched_; }

 private:
  struct Slot;
  void loop();
  void loop_serial();
  bool admit();  // moves waiting requests into free slots; false when nothing runs
  void prefill_one();
  void decode_step();
  // Chooses the next token from a row of logits and applies it (streams, stops, finishes).
  void sample(Slot& s, const float* logits);
  void finish(Slot& s, const std::string& reason, const std::string& error = "");
  void fail_all(const std::string& error);

  Engine& e_;
  BatcherOptions o_;
  int64_t context_ = 0;
  bool batched_ = true;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Ticket>> waiting_;
  std::vector<std::unique_ptr<Slot>> slots_;
  Decoder::State st_;                 // batched mode: slots x context
  std::unique_ptr<Sequence> serial_;  // serial mode
  std::atomic<int64_t> running_{0}, kv_tokens_{0};
  bool stop_ = false;
  size_t next_prefill_ = 0;
  std::thread thread_;
};

}  // namespace kvrun::runtime
