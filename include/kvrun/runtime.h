// The generation runtime: load a decoder model (a kvrun package or a third-party
// export), build prompts from text, token ids and embeddings, and generate with a
// KV cache.
//
//   auto model = kvrun::Model::load("out/qwen3");
//   kvrun::GenerationOptions opt;
//   opt.max_new_tokens = 64;
//   auto r = model->generate(kvrun::Prompt().text("Hello"), opt);
//
// Layouts read (detected from the folder's files and the graphs' own I/O names):
// kvrun packages (kvrun.json), ONNX Runtime GenAI folders (genai_config.json),
// Hugging Face optimum decoder exports (model.onnx, decoder_model_merged.onnx) and
// split prefill/decode exports (llm_prefill.onnx + llm_decode.onnx [+ embedding.onnx]) and
// sherpa-onnx's FunASR-nano export (llm.onnx, a "KV-delta" graph with a fixed
// max_total_len cache, + embedding.onnx; config / tokenizer in a subfolder such as Qwen3-0.6B/).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvrun/types.h"

namespace kvrun {

class Tokenizer;
class ChatTemplate;

struct ModelOptions {
  int threads = 0;  // ONNX Runtime intra-op threads; 0: one per core
  // Model::load given a GGUF file: progress of its first-use build into the package cache
  // (kvrun::ensure_package, include/kvrun/build.h).
  ProgressFn build_progress;
};

struct SamplingOptions {
  float temperature = 0.f;         // 0: greedy (argmax after penalties)
  int top_k = 0;                   // 0: off
  float top_p = 1.f;               // 1: off
  float min_p = 0.f;               // 0: off; keeps tokens with p >= min_p * p_max
  float repetition_penalty = 1.f;  // HF/CTRL style over prompt + generated tokens; 1: off
  float presence_penalty = 0.f;    // OpenAI style over generated tokens; 0: off
  float frequency_penalty = 0.f;   // OpenAI style over generated tokens; 0: off
  uint64_t seed = 0;               // same seed, same options, same prompt -> same output

  // Throws kvrun::Error naming the field that is out of range.
  void validate() const;
};

struct GenerationOptions {
  int64_t max_new_tokens = 256;
  SamplingOptions sampling;
  bool stop_at_eos = true;                // stop on the model's EOS ids (config / generation_config)
  std::vector<TokenId> stop_ids;          // more stop ids
  std::vector<std::string> stop_strings;  // stop when the text contains one (needs a tokenizer); not returned
  int64_t prefill_chunk = 0;              // > 0: feed the prompt in chunks of this many positions
  int64_t max_length = 0;                 // KV capacity cap; 0: longest prompt + max_new_tokens

  void validate() const;
};

// A prompt made of segments. Text is tokenized by the model's tokenizer (special
// tokens in the text are recognised); embeddings (float32 [rows, hidden]) enter the
// model at their position, e.g. audio or image features at placeholder positions.
class Prompt {
 public:
  struct Segment {
    enum class Kind { Text, Ids, Embeddings } kind = Kind::Ids;
    std::string text;
    bool add_special_tokens = false;  // text: as Hugging Face tokenizer(text) does (e.g. <bos>)
    std::vector<TokenId> ids;
    std::vector<float> embeddings;
    int64_t rows = 0;
  };

  Prompt() = default;
  // Text to encode; add_special_tokens applies the tokenizer's post-processor (Gemma and
  // Llama 3 prepend their BOS) as transformers' tokenizer(text) does: for raw prompts to a
  // base model. Chat templates write their own special tokens.
  Prompt& text(std::string s, bool add_special_tokens = false);
  Prompt& ids(std::vector<TokenId> ids);
  Prompt& embeddings(std::vector<float> values, int64_t rows);
  const std::vector<Segment>& segments() const { return segments_; }
  bool empty() const { return segments_.empty(); }

 private:
  std::vector<Segment> segments_;
};

struct GenerationStats {
  int64_t prompt_tokens = 0;     // positions prefilled in this call
  int64_t reused_tokens = 0;     // positions taken from the cache (Sequence)
  int64_t generated_tokens = 0;  // new tokens sampled
  double prefill_seconds = 0, decode_seconds = 0, time_to_first_token = 0;
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;  // tokens after the first / decode time
};

struct GenerationResult {
  std::vector<TokenId> tokens;  // generated ids (the stop id or stop string excluded)
  std::string text;             // decoded tokens (empty without a tokenizer)
  std::string finish_reason;    // "stop" (EOS, stop id, stop string), "length", "callback"
  GenerationStats stats;
};

// Streaming: called once per generated token of each prompt (row), with the text it
// completes (UTF-8 safe, may be empty). Return false to stop that row.
using StreamFn = std::function<bool(size_t row, TokenId token, const std::string& text)>;

struct ModelInfo {
  std::string layout;  // "kvrun-ort", "kvrun-portable", "genai", "optimum", "optimum-merged", "split",
                       // "sherpa-kv-delta"
  std::filesystem::path dir;
  std::vector<std::string> graphs;  // graph files used
  std::string convention;           // KV naming convention
  int64_t num_layers = 0, num_kv_heads = -1, head_dim = -1, hidden_size = -1, vocab_size = -1;
  int kv_seq_axis = 2;            // of [batch, ., ., head_dim]
  std::string kv_dtype;           // "float32" / "float16"
  bool shared_kv_buffer = false;  // one preallocated buffer per layer bound as past and present
  bool kv_delta = false;          // fixed max_length buffers; the graph returns only the new rows
  bool takes_embeddings = false;  // graph input is inputs_embeds (embeddings can be injected)
  int64_t max_length = 0;         // longest sequence the graphs support (0: not stated); never truncated
  std::vector<TokenId> eos_ids;
  std::optional<TokenId> bos_id, pad_id;
  bool chat_template = false;  // the model ships a chat template (else ChatML is the fallback)
  std::string to_text() const;
};

class Sequence;

class Model {
 public:
  // `path`: a model folder or a single decoder .onnx file.
  static std::unique_ptr<Model> load(const std::filesystem::path& path, const ModelOptions& opt = {});
  virtual ~Model();

  virtual const ModelInfo& info() const = 0;
  // The tokenizer found next to the model (tokenizer.json / tokenizer.model), or null.
  virtual const Tokenizer* tokenizer() const = 0;
  // The chat template (tokenizer_config.json, chat_template.jinja, kvrun.json), ChatML when none.
  virtual const ChatTemplate& chat_template() const = 0;

  // Token ids of a prompt (text segments tokenized); embeddings count as -1.
  virtual std::vector<TokenId> prompt_ids(const Prompt& p) const = 0;

  // Generates for several prompts as one batch (when the graph allows it).
  virtual std::vector<GenerationResult> generate(const std::vector<Prompt>& prompts, const GenerationOptions& opt,
                                                 const StreamFn& stream = {}) = 0;
  GenerationResult generate(const Prompt& prompt, const GenerationOptions& opt, const StreamFn& stream = {});

  // A single sequence whose KV cache lives between calls (chat).
  virtual std::unique_ptr<Sequence> new_sequence() = 0;
};

class Sequence {
 public:
  virtual ~Sequence();
  // Makes the model's context equal to `context` -- the whole conversation so far --
  // reusing the cached positions of the longest common token prefix, then generates.
  // The generated tokens stay in the cache for the next call.
  virtual GenerationResult generate(const Prompt& context, const GenerationOptions& opt,
                                    const StreamFn& stream = {}) = 0;
  virtual int64_t cached_tokens() const = 0;
  virtual void reset() = 0;
};

}  // namespace kvrun
