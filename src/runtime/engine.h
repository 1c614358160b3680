// kvrun::Model's implementation: model discovery + Decoder + tokenizer + chat template, and
// the pieces of generation that one row needs whoever schedules it (Model::generate,
// Sequence, and the continuous batcher of runtime/batcher.h): prompt resolution, feeds,
// and the per-token rules (stop ids, stop strings, streaming text, length).
#pragma once
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvrun/chat_template.h"
#include "kvrun/runtime.h"
#include "kvrun/tokenizer.h"
#include "runtime/decoder.h"
#include "runtime/sampler.h"

namespace kvrun::runtime {

// A prompt resolved to positions: ids (-1 where an embedding row enters) and the rows.
struct Positions {
  std::vector<TokenId> ids;
  std::vector<float> embeds;  // [count(-1), hidden]
};

// How many leading positions of `prompt` a cache holding `cached` can keep: the longest common
// prefix (embedding rows, -1, never match), less one when it is the whole prompt -- at least one
// position runs, for fresh logits.
size_t reusable_prefix(const std::vector<TokenId>& cached, const std::vector<TokenId>& prompt);

// One row's generation: sampling state, output tokens, streamed text.
struct RowRun {
  Sampler sampler;
  std::vector<TokenId> tokens;
  std::optional<TextStreamer> streamer;
  std::string text;
  size_t emitted = 0;
  bool done = false;
  std::string reason;
  RowRun(const SamplingOptions& o, uint64_t stream) : sampler(o, stream) {}
};

class Engine : public Model {
 public:
  Engine(const std::filesystem::path& path, const ModelOptions& opt);

  const ModelInfo& info() const override { return info_; }
  const Tokenizer* tokenizer() const override { return tok_.get(); }
  const ChatTemplate& chat_template() const override { return *tpl_; }
  Decoder& decoder() { return dec_; }
  const Tokenizer& need_tokenizer() const;

  Positions resolve(const Prompt& p) const;
  std::vector<TokenId> prompt_ids(const Prompt& p) const override { return resolve(p).ids; }

  // Feed for positions [a, b) of several rows, left-padded to the same width
  // (rows shorter than `width` start with padding).
  void fill_feed(StepFeed& f, const std::vector<const Positions*>& rows, const std::vector<int64_t>& emb_offset,
                 int64_t width, int64_t a, int64_t b) const;

  // A new row's run: its sampler seeded with `stream`, the prompt as penalty context.
  RowRun new_run(const GenerationOptions& opt, const Positions& prompt, uint64_t stream) const;
  // Applies one chosen token to a row: EOS / stop ids end it ("stop"), the text grows and is
  // streamed (a tail that may start a stop string held back), a stop string cuts it, a false
  // from `stream` ends it ("callback"), max_new_tokens or no room left (room < 0) ends it
  // ("length"). `r` is the row index given to `stream`.
  void take(RowRun& rr, size_t r, TokenId t, const GenerationOptions& opt, const StreamFn& stream, int64_t room) const;
  // Ends a row: the rest of the text (held back or incomplete UTF-8) goes out with token -1.
  static void finish(RowRun& rr, size_t r, const std::string& reason, const StreamFn& stream);

  void check_stop_strings(const GenerationOptions& opt) const;
  // KV capacity for a prompt of `prompt_len` positions; throws when it does not fit.
  int64_t capacity(int64_t prompt_len, const GenerationOptions& opt) const;

  std::vector<GenerationResult> generate(const std::vector<Prompt>& prompts, const GenerationOptions& opt,
                                         const StreamFn& stream) override;
  std::unique_ptr<Sequence> new_sequence() override;

  // Samples the first token from prefill logits, then steps until every row is done.
  void decode_loop(Decoder::State& st, std::vector<RowRun>& runs, std::vector<float>& logits,
                   const GenerationOptions& opt, const StreamFn& stream, int64_t cap,
                   std::chrono::steady_clock::time_point t0, double prefill_s, std::vector<GenerationResult>& out);

 private:
  std::vector<TokenId> choose(std::vector<RowRun>& runs, std::vector<float>& logits, const GenerationOptions& opt,
                              const StreamFn& stream, int64_t room);
  static bool emit(RowRun& rr, size_t r, TokenId t, size_t upto, const StreamFn& stream);

  Decoder dec_;
  std::unique_ptr<Tokenizer> tok_;
  std::string tok_error_;
  std::unique_ptr<ChatTemplate> tpl_;
  ModelInfo info_;
};

}  // namespace kvrun::runtime
