// Tokenizer implementations behind kvrun::Tokenizer::load().
#pragma once
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "kvrun/tokenizer.h"

namespace kvrun::text {

// tokenizer.json (Hugging Face `tokenizers` format). config: tokenizer_config.json or null.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& file, const nlohmann::json& config);
// The same from a tokenizer.json document built in memory (e.g. from a GGUF vocabulary):
// `source` names it in messages; a non-empty `description` replaces description()'s text.
std::unique_ptr<Tokenizer> make_hf_tokenizer(const std::filesystem::path& source, const nlohmann::json& tokenizer_json,
                                             const nlohmann::json& config, std::string description = "");
// SentencePiece model (*.model).
std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& file, const nlohmann::json& config);

// A GGUF file (llama.cpp): its tokenizer.ggml.* vocabulary (text/gguf_tokenizer.h).
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const std::filesystem::path& file);

// The token a tokenizer_config.json key names ("bos_token": "<s>" or {"content": "<s>", ...}),
// when it is in the vocabulary.
std::optional<SpecialToken> config_token(const nlohmann::json& config, const char* key, const Tokenizer& tok);

}  // namespace kvrun::text
