// Reads a decoder graph's real signature and says which convention it follows:
// which input carries the tokens (input_ids or inputs_embeds), whether it takes an
// attention mask, position ids or optimum's use_cache_branch, how its KV inputs and
// outputs are named and laid out. Every input must have a provider and every past
// a matching present; when they do not, the error shows the expected and the found
// signature side by side.
//
// Conventions known (KV names; the layer index replaces %d):
//   past_key_values.%d.key/value -> present.%d.key/value   optimum, ONNX Runtime GenAI, kvrun ort
//   past_key_%d / past_value_%d  -> present_key_%d / ...    kvrun portable, split prefill/decode exports
//   cache_key_%d / cache_value_%d -> key_delta_%d / ...      sherpa-onnx "KV delta": the past is a fixed
//        [batch, max_total_len, kv_heads, head_dim] buffer and the graph returns only the new rows
//        (it also takes cache_position [seq], the positions of the new rows)
// Encoder-decoder decoders (past_key_values.%d.decoder.key, encoder_hidden_states)
// are recognised and reported as not supported yet; the role table has room for them.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "runtime/ort_session.h"

namespace kvrun::runtime {

struct KvConvention {
  std::string label;
  std::string past_key, past_value, present_key, present_value;  // printf-style patterns
  bool delta = false;  // presents are only the new rows; the past is a fixed buffer the host updates
};
const std::vector<KvConvention>& kv_conventions();

// Layer index when `name` matches `pattern` ("present.%d.key"), else nullopt.
std::optional<int64_t> match_layer(const std::string& name, const std::string& pattern);

struct KvLayer {
  std::string past_key, past_value;  // empty in a graph without past inputs (a prefill graph)
  std::string present_key, present_value;
};

struct DecoderSignature {
  std::string file;
  std::string convention;  // KvConvention::label
  std::string ids_input, embeds_input, mask_input, position_input, cache_branch_input, cache_position_input;
  std::string logits_output;
  std::vector<KvLayer> layers;
  bool has_past = false;
  bool kv_delta = false;  // KvConvention::delta
  io::DType kv_dtype = io::DType::F32;
  io::DType embeds_dtype = io::DType::F32, ids_dtype = io::DType::I64, mask_dtype = io::DType::I64,
            position_dtype = io::DType::I64, cache_position_dtype = io::DType::I64;
  int64_t kv_heads = -1, head_dim = -1;  // -1: not fixed in the graph
  int seq_axis = -1;                     // KV sequence axis (1 or 2); -1: ambiguous, must be probed
  int64_t fixed_batch = -1;              // batch dim when the graph fixes it
  int64_t hidden = -1;                   // inputs_embeds last dim when fixed
  int64_t logits_rank = 3;
  // Sliding-window layers with a cache of their own length (kvrun ort graphs of models with
  // local layers): local_attention_mask [batch, local_total] gives their lengths; metadata
  // kvrun.local_layers (comma-separated indices) and kvrun.sliding_window name them.
  std::string local_mask_input;
  io::DType local_mask_dtype = io::DType::I64;
  std::vector<bool> local_layer;  // per layer; empty without local_mask_input
  int64_t sliding_window = 0;

  bool takes_embeddings() const { return !embeds_input.empty(); }
};

struct SignatureHints {
  std::optional<int64_t> num_layers, kv_heads, head_dim, hidden_size;
};

// Reads and validates the signature. Throws kvrun::Error with the side-by-side table.
DecoderSignature detect_signature(const Session& s, const SignatureHints& hints = {});

// "int64 [batch, seq]" for messages.
std::string io_str(const IoInfo& io);

}  // namespace kvrun::runtime
