// Tokenizers from a GGUF file's own vocabulary (tokenizer.ggml.*), so that a .gguf alone
// is a complete model.
//
//   "llama" (SentencePiece-style, e.g. Gemma 3): llama.cpp's llm_tokenizer_spm. CONTROL,
//     USER_DEFINED and UNKNOWN tokens written in the text are split out first (leftmost
//     longest, as `tokenizers` matches added tokens); in the other pieces ' ' becomes '▁'
//     (with a '▁' prefix after a special token when add_space_prefix), adjacent symbols
//     (UTF-8 characters at first) are merged greedily, the pair whose concatenation is
//     the highest-scoring token first (leftmost on ties), and what is left without a token
//     becomes <0xXX> byte tokens. add_special_tokens prepends bos / appends eos per
//     add_bos_token / add_eos_token.
//   "gpt2" (byte-level BPE, e.g. Qwen2/3, Llama 3): the tokenizer.json BPE of
//     text/bpe_tokenizer.cpp built from the vocabulary, merges ranks and the pre-tokenizer
//     that tokenizer.ggml.pre names; CONTROL tokens are special added tokens and
//     USER_DEFINED ones non-special added tokens.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvrun/tokenizer.h"

namespace kvrun::io {
class GgufFile;
}

namespace kvrun::text {

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum class GgufTokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct GgufVocab {
  std::string model;                // tokenizer.ggml.model: "llama" or "gpt2"
  std::string pre = "default";      // tokenizer.ggml.pre
  std::vector<std::string> tokens;  // by id
  std::vector<float> scores;        // empty (all 0) or one per token
  std::vector<int32_t> token_type;  // empty (all NORMAL) or one per token (GgufTokenType)
  std::vector<std::string> merges;  // "left right", gpt2 only
  std::optional<TokenId> bos, eos, unk, pad, eot;
  // Absent: llama.cpp's defaults (llama: add_bos true, add_space_prefix true; gpt2: false).
  std::optional<bool> add_bos, add_eos, add_space_prefix;
  std::string chat_template;               // tokenizer.chat_template, "" when absent
  std::string source = "GGUF vocabulary";  // names the vocabulary in messages
};

// The tokenizer keys of a GGUF file. Throws kvrun::Error naming the file and key for a
// missing or wrongly typed key, arrays of different lengths, an unknown model type or an
// out-of-range special token id.
GgufVocab read_gguf_vocab(const io::GgufFile& file);

// Throws kvrun::Error for an unknown model type or pre-tokenizer (listing the known ones)
// and for inconsistent data (array lengths, ids, merges).
std::unique_ptr<Tokenizer> make_gguf_tokenizer(GgufVocab vocab);

// The pre-tokenizer names make_gguf_tokenizer knows for "gpt2" vocabularies.
std::vector<std::string> gguf_known_pre_tokenizers();

}  // namespace kvrun::text
