// kvrun — text <-> token ids, identical to Hugging Face `tokenizers` / SentencePiece.
//
//   auto tok = kvrun::Tokenizer::load("pkg");            // folder or file
//   std::vector<kvrun::TokenId> ids = tok->encode("<|im_start|>user\nhi<|im_end|>");
//   std::string text = tok->decode(ids);
//
// Supported: Hugging Face tokenizer.json with a BPE model (byte-level BPE as in
// Qwen2/3 and Llama 3, SentencePiece-style BPE with byte fallback as in Gemma 3),
// SentencePiece *.model files, and GGUF files' own vocabularies (llama.cpp's "llama" SPM
// and "gpt2" byte-level BPE tokenizers). Every failure on bad input (missing or invalid
// file, unsupported component, invalid UTF-8, unknown id) throws kvrun::Error.
// All const methods are safe to call from several threads at once.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvrun/error.h"
#include "kvrun/types.h"

namespace kvrun {

// A special token known from tokenizer_config.json or the model: its text and id.
struct SpecialToken {
  std::string text;
  TokenId id = -1;
};

class Tokenizer {
 public:
  // Loads a folder (tokenizer.json [+ tokenizer_config.json], else tokenizer.model or
  // one *.model SentencePiece file; a kvrun package folder qualifies) or a single file
  // (*.json: tokenizer.json format; a GGUF file (magic "GGUF"): its own tokenizer.ggml.*
  // vocabulary, bos/eos/pad from its ids; other: SentencePiece model). tokenizer_config.json
  // next to a tokenizer.json or SentencePiece file, when present, supplies bos/eos/pad tokens.
  // A Marian / OPUS-MT folder (source.spm + vocab.json, no tokenizer.json) loads as the
  // MarianTokenizer of transformers (source side; src/text/marian_tokenizer.h).
  static std::unique_ptr<Tokenizer> load(const std::filesystem::path& path);
  virtual ~Tokenizer() = default;

  // Text (UTF-8) -> ids. Added/special tokens written in the text ("<|im_end|>") are
  // recognised as such. add_special_tokens applies the post-processor (e.g. Llama 3.1
  // prepends <|begin_of_text|>; SentencePiece prepends bos).
  virtual std::vector<TokenId> encode(std::string_view text, bool add_special_tokens = false) const = 0;
  // Ids -> text. Bytes that do not form valid UTF-8 come out as U+FFFD.
  virtual std::string decode(std::span<const TokenId> ids, bool skip_special_tokens = false) const = 0;

  virtual std::optional<TokenId> token_to_id(std::string_view token) const = 0;
  // The token's vocabulary string (e.g. "Ġhello" for byte-level BPE); throws for an unknown id.
  virtual std::string id_to_token(TokenId id) const = 0;
  // One past the largest id (added tokens included).
  virtual int64_t vocab_size() const = 0;
  // Special tokens (skipped by decode(..., skip_special_tokens=true)).
  virtual bool is_special(TokenId id) const = 0;
  // "tokenizer.json BPE (byte-level)", "SentencePiece unigram", ... for messages.
  virtual std::string description() const = 0;

  // From tokenizer_config.json, else the model, when known.
  const std::optional<SpecialToken>& bos_token() const { return bos_; }
  const std::optional<SpecialToken>& eos_token() const { return eos_; }
  const std::optional<SpecialToken>& pad_token() const { return pad_; }

 protected:
  std::optional<SpecialToken> bos_, eos_, pad_;
};

// Incremental detokenizer for streaming generation. put() returns the text that the
// new token completes: never a partial UTF-8 character (a character split across
// byte tokens is held back until its last byte arrives), and decoding context such
// as SentencePiece's leading-space rule is respected. flush() returns what is left
// (incomplete bytes as U+FFFD) and starts a new stream.
class TextStreamer {
 public:
  explicit TextStreamer(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  std::string put(TokenId id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<TokenId> ids_;
  size_t prefix_ = 0;  // ids_[prefix_, read_) were emitted and are decoded again as context
  size_t read_ = 0;    // ids_[read_, end) are not emitted yet
};

}  // namespace kvrun
