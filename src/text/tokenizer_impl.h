// Tokenizer implementations behind kvrun::Tokenizer::load().
#pragma once
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "kvrun/tokenizer.h"

namespace kvrun::text {

// tokenizer.json (Hugging Face `tokenizers` format). config: tokenizer_config.json or null.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& file, const nlohmann::json& config);
// SentencePiece model (*.model).
std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& file, const nlohmann::json& config);

// The token a tokenizer_config.json key names ("bos_token": "<s>" or {"content": "<s>", ...}),
// when it is in the vocabulary.
std::optional<SpecialToken> config_token(const nlohmann::json& config, const char* key, const Tokenizer& tok);

}  // namespace kvrun::text
