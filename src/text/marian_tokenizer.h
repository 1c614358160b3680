// Marian / OPUS-MT tokenizer, identical to transformers' MarianTokenizer (5.x):
//
//   auto tok = kvrun::text::MarianTokenizer::load("opus-mt-en-fr");
//   std::vector<kvrun::TokenId> ids = tok->encode_source(">>fr<< Hello world");  // ... </s>
//   std::string text = tok->decode(output_ids, /*skip_special_tokens=*/true);
//
// Files: source.spm, target.spm (SentencePiece models: text -> piece strings), vocab.json
// (piece -> id: Marian's vocabulary, not the SentencePiece ids), target_vocab.json when
// separate_vocabs, tokenizer_config.json (optional) and special_tokens_map.json (legacy,
// optional). Encoding: special tokens written in the text (</s>, <unk>, <pad>, extras) are
// split off first; a chunk starting with ">>xx<<" keeps the code as one token; the rest
// goes through the SentencePiece model as pieces, mapped through the vocabulary (a piece
// it lacks -> <unk>); </s> appended. Decoding: special tokens come out as their text plus a
// space, runs of other pieces through SentencePiece's DecodePieces (the source model when
// the vocabulary is shared, as transformers 5 does; target.spm with separate vocabs), then
// "▁" -> " " and Python's str.strip().
//
// Every input failure throws kvrun::Error naming the file and what was expected vs found.
// Const methods are safe to call from several threads at once.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvrun/tokenizer.h"

namespace kvrun::text {

class SpmModel;

// vocab.json / target_vocab.json: each piece once, ids exactly 0..size-1.
struct MarianVocab {
  std::vector<std::string> pieces;  // by id
  std::unordered_map<std::string, TokenId> ids;
  std::optional<TokenId> find(std::string_view piece) const;
  int64_t size() const { return static_cast<int64_t>(pieces.size()); }
};
// Parses a vocab.json document; `name` (the file) starts every error message.
MarianVocab parse_marian_vocab(std::string_view json_text, const std::string& name);

// A token of tokenizer_config.json's added_tokens_decoder (its flags shape how the text
// around it is split, as transformers' slow tokenizers do).
struct MarianAddedToken {
  std::string content;
  TokenId id = -1;
  bool lstrip = false, rstrip = false, single_word = false;
};

struct MarianConfig {
  int64_t model_max_length = 512;
  bool separate_vocabs = false;
  bool clean_up_tokenization_spaces = false;
  std::string eos_token = "</s>", unk_token = "<unk>", pad_token = "<pad>";
  // Other named special tokens (bos_token, sep_token, ..., any "*_token" key) and
  // extra_special_tokens / additional_special_tokens, in transformers' order.
  std::vector<std::string> other_special_tokens;
  std::vector<MarianAddedToken> added_tokens;  // added_tokens_decoder
  std::string source_lang, target_lang;        // "" when not given
};
// Parses tokenizer_config.json (empty text: defaults) and, when non-empty and the config
// has no added_tokens_decoder, the legacy special_tokens_map.json.
MarianConfig parse_marian_config(std::string_view config_json, const std::string& config_name,
                                 std::string_view special_map_json = {}, const std::string& special_map_name = {});

class MarianTokenizer final : public Tokenizer {
 public:
  // A folder with source.spm, target.spm, vocab.json [, target_vocab.json,
  // tokenizer_config.json, special_tokens_map.json].
  static std::unique_ptr<MarianTokenizer> load(const std::filesystem::path& folder);
  // From parsed parts (load() and the fuzz target); checks them as load() does. `where`
  // names the folder in messages.
  MarianTokenizer(MarianConfig config, MarianVocab vocab, std::optional<MarianVocab> target_vocab,
                  std::shared_ptr<const SpmModel> source_spm, std::shared_ptr<const SpmModel> target_spm,
                  const std::filesystem::path& where);
  ~MarianTokenizer() override;

  // tokenizer(text).input_ids: source side, </s> appended. Throws for invalid UTF-8.
  std::vector<TokenId> encode_source(std::string_view text) const;
  // tokenizer(text_target=text).input_ids: target.spm (and target_vocab.json when separate).
  std::vector<TokenId> encode_target(std::string_view text) const;
  // tokenizer.decode(ids, skip_special_tokens). Throws for an id no vocabulary or
  // SentencePiece model knows.
  std::string decode(std::span<const TokenId> ids, bool skip_special_tokens = false) const override;

  TokenId pad_id() const { return pad_id_; }
  TokenId eos_id() const { return eos_id_; }
  TokenId unk_id() const { return unk_id_; }
  // Entries of vocab.json (transformers' vocab_size); the model's embedding rows must match
  // (target_vocab_size() for the decoder side when separate_vocabs).
  int64_t vocab_size() const override { return vocab_.size(); }
  int64_t target_vocab_size() const { return target_vocab_ ? target_vocab_->size() : vocab_.size(); }
  // The token decode() uses for id (convert_ids_to_tokens); throws for an unknown id.
  std::string id_to_piece(TokenId id) const;
  bool separate_vocabs() const { return config_.separate_vocabs; }
  int64_t model_max_length() const { return config_.model_max_length; }
  // ">>xx<<" entries of vocab.json (transformers' supported_language_codes; empty with
  // separate vocabularies, as there).
  const std::vector<std::string>& language_codes() const { return language_codes_; }
  const MarianConfig& config() const { return config_; }

  // kvrun::Tokenizer: encode() is the source side (</s> only with add_special_tokens).
  std::vector<TokenId> encode(std::string_view text, bool add_special_tokens = false) const override;
  std::optional<TokenId> token_to_id(std::string_view token) const override;
  std::string id_to_token(TokenId id) const override { return id_to_piece(id); }
  bool is_special(TokenId id) const override;
  std::string description() const override { return "Marian (SentencePiece pieces + vocab.json)"; }

 private:
  struct Added {
    std::string content;
    TokenId id;
    bool lstrip, rstrip, single_word;
  };
  std::vector<TokenId> encode_side(std::string_view text, bool target, bool add_eos) const;

  MarianConfig config_;
  MarianVocab vocab_;
  std::optional<MarianVocab> target_vocab_;
  std::shared_ptr<const SpmModel> source_spm_, target_spm_;
  std::filesystem::path where_;
  std::vector<Added> added_;                             // every token split off in text
  std::unordered_map<std::string, size_t> added_index_;  // content -> added_
  std::unordered_map<TokenId, size_t> added_by_id_;
  std::vector<std::string> special_tokens_;  // all_special_tokens
  std::vector<TokenId> special_ids_;         // all_special_ids
  std::vector<std::string> language_codes_;
  TokenId eos_id_ = -1, unk_id_ = -1, pad_id_ = -1;
  TokenId target_unk_id_ = -1;
  struct Trie;
  std::unique_ptr<Trie> trie_;
};

// transformers' clean_up_tokenization (" ." -> ".", " n't" -> "n't", ...).
std::string clean_up_tokenization(std::string text);

}  // namespace kvrun::text
