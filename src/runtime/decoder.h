// Runs a decoder model's graphs step by step over a batch, whatever convention the
// graphs follow (see signature.h), with one of two KV cache strategies:
//
//   shared:  one buffer per layer and K/V, [batch, kv_heads, capacity, head_dim],
//            bound as both past and present; GroupQueryAttention writes the new
//            rows in place (no allocation or copy per step). Rows are right-padded:
//            each row's valid length is its mask sum. Prompts are prefilled row by
//            row into their slice of the buffer; decode runs all rows at once.
//   chain:   the present outputs ORT allocates become the next step's past inputs
//            as they are (moved, never copied). Rows are left-padded; positions
//            come from the mask.
//
// Capacity of the shared buffer grows on demand (doubling, copying once) up to
// the model's max length.
//
// Sliding-window layers of a graph that takes local_attention_mask (kvrun ort graphs of
// Gemma 3) keep buffers of their own, bounded at 2 * window - 1 rows in shared mode: before
// a run that would not fit, each row's oldest local rows are dropped (memmove of the last
// window - 1, once per window of new positions), and local_attention_mask gives the
// local layers the lengths that remain. Runs longer than the window go in pieces of one
// window. Chain mode gives local layers the full mask (their cache grows like the others).
//
//   delta:   (sherpa-onnx KV-delta graphs) one fixed buffer per layer and K/V,
//            [batch, max_total_len, kv_heads, head_dim], passed as the cache; the
//            graph returns only the new rows, which are written into rows
//            [past, past + seq) (in place for batch 1, copied otherwise). All rows
//            share one position (cache_position), so a batch holds rows of equal length.
#pragma once
#include <memory>
#include <vector>

#include "io/safetensors.h"
#include "runtime/embedding_table.h"
#include "runtime/model_source.h"
#include "runtime/ort_session.h"
#include "runtime/signature.h"

namespace kvrun::runtime {

// S positions for each of B rows. Embeddings are float32 [B*S, hidden] (only for
// graphs that take inputs_embeds); `real` marks non-padding positions.
struct StepFeed {
  int64_t batch = 0, seq = 0;
  std::vector<TokenId> ids;
  std::vector<float> embeds;
  std::vector<uint8_t> real;
};

class Decoder {
 public:
  Decoder(ModelSource src, const SessionConfig& sc);

  const ModelSource& source() const { return src_; }
  const DecoderSignature& signature() const { return step_sig_; }
  bool shared() const { return shared_; }
  bool kv_delta() const { return step_sig_.kv_delta; }
  // Shared mode with local layers on bounded buffers (see above).
  bool bounded_local() const { return shared_ && !step_sig_.local_mask_input.empty(); }
  bool takes_embeddings() const { return step_sig_.takes_embeddings(); }
  bool can_embed() const { return table_ || embed_session_; }
  int64_t hidden() const { return hidden_; }
  int64_t vocab() const { return vocab_; }
  int64_t max_batch() const { return step_sig_.fixed_batch > 0 ? step_sig_.fixed_batch : 1 << 20; }
  std::vector<std::string> graph_files() const;

  // float32 rows [n, hidden] of the embedding table (or embedding graph).
  std::vector<float> embed(const std::vector<TokenId>& ids) const;

  struct State {
    int64_t batch = 0;
    std::vector<int64_t> lengths;  // valid positions per row
    // shared, delta
    int64_t capacity = 0;
    std::vector<std::vector<uint8_t>> buffers;  // 2 per layer: key, value
    // shared, bounded local layers: their buffers' rows, and per row the first position
    // they hold (earlier ones were dropped)
    int64_t local_capacity = 0;
    std::vector<int64_t> local_starts;
    // chain
    int64_t width = 0;             // physical positions (valid + left padding)
    std::vector<int64_t> mask;     // [batch, width], 1 = valid
    std::vector<Ort::Value> past;  // 2 per layer; empty before the first step
  };
  State new_state(int64_t batch, int64_t capacity) const;
  // Shared: grows every row to hold `need` positions. Chain: nothing to do.
  void reserve(State& st, int64_t need) const;
  // Forgets positions of row `row` from `length` on (chain states: batch 1 only); returns the
  // length kept, which is 0 when local layers have dropped rows that `length` would need
  // again (run it all anew).
  int64_t truncate(State& st, int64_t length, int64_t row = 0) const;

  // Appends feed.seq positions to every row; logits of each row's last position
  // -> out [batch, vocab]. Shared mode: seq must be 1 unless the batch is 1.
  void step(State& st, const StepFeed& feed, std::vector<float>& out);
  // Shared mode: appends positions to one row of a batched state; logits -> out [vocab].
  void step_row(State& st, int64_t row, const StepFeed& feed, std::vector<float>& out);
  // Shared mode: one position for each of rows [0, feed.batch) of a larger state (continuous
  // batching runs only the rows up to the last busy one); logits -> out [feed.batch, vocab].
  void step_first_rows(State& st, const StepFeed& feed, std::vector<float>& out);

 private:
  void probe_seq_axis();
  void run_chain(State& st, const StepFeed& feed, std::vector<float>& out);
  // Rows [first, first + count) of the state.
  void run_shared(State& st, int64_t first, int64_t count, const StepFeed& feed, std::vector<float>& out);
  void run_delta(State& st, const StepFeed& feed, std::vector<float>& out);
  void setup_delta();
  std::string too_long(int64_t positions) const;
  void logits_last(const Ort::Value& logits, int64_t batch, std::vector<float>& out);
  std::vector<int64_t> kv_shape(int64_t batch, int64_t seq) const;
  bool is_local(size_t layer) const { return bounded_local() && step_sig_.local_layer[layer]; }
  // Buffers of the local (or the other) layers grow to `cap` rows, keeping theirs.
  void grow(State& st, bool local, int64_t cap) const;
  // Drops row `row`'s oldest local rows, keeping window - 1, when `seq` more would not fit.
  void make_local_room(State& st, int64_t row, int64_t seq) const;

  ModelSource src_;
  std::unique_ptr<Session> step_, first_, embed_session_;
  DecoderSignature step_sig_, first_sig_;
  std::unique_ptr<EmbeddingTable> table_;
  bool shared_ = false;
  int64_t hidden_ = -1, vocab_ = -1;
};

}  // namespace kvrun::runtime
