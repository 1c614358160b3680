// libFuzzer target: the Marian tokenizer's file parsing (vocab.json, tokenizer_config.json,
// special_tokens_map.json) and its encode/decode paths on arbitrary bytes.
//
// Input: byte 0 = flags, then up to four parts separated by "\n@@\n":
//   vocab.json | tokenizer_config.json | special_tokens_map.json | text
// An empty vocab part uses the marian-tok fixture's vocab.json (so that the encode path is
// reached with fuzzed configs and text); the SentencePiece models are the fixture's (flags
// bit 0 swaps them). Decoded ids come from the text bytes, in and out of range.
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvrun/error.h"
#include "text/marian_tokenizer.h"
#include "text/spm_api.h"

namespace {
namespace fs = std::filesystem;
using kvrun::text::MarianTokenizer;
using kvrun::text::MarianVocab;
using kvrun::text::SpmModel;

const fs::path kFixture = fs::path(KVRUN_SOURCE_DIR) / "tests" / "fixtures" / "marian-tok";

struct Fixed {
  std::shared_ptr<const SpmModel> source, target;
  MarianVocab vocab;
  Fixed() {
    source = std::make_shared<const SpmModel>(kFixture / "source.spm");
    target = std::make_shared<const SpmModel>(kFixture / "target.spm");
    std::ifstream in(kFixture / "vocab.json", std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    vocab = kvrun::text::parse_marian_vocab(text, "vocab.json");
  }
};

const Fixed& fixed() {
  static const Fixed f;
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Fixed& fx = fixed();
  const uint8_t flags = data[0];
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<std::string_view> parts;
  for (int i = 0; i < 3; ++i) {
    const size_t cut = rest.find("\n@@\n");
    if (cut == std::string_view::npos) break;
    parts.push_back(rest.substr(0, cut));
    rest.remove_prefix(cut + 4);
  }
  parts.push_back(rest);
  while (parts.size() < 4) parts.insert(parts.begin(), std::string_view());
  try {
    MarianVocab vocab = parts[0].empty() ? fx.vocab : kvrun::text::parse_marian_vocab(parts[0], "vocab.json");
    auto config =
        kvrun::text::parse_marian_config(parts[1], "tokenizer_config.json", parts[2], "special_tokens_map.json");
    std::optional<MarianVocab> target;
    if (config.separate_vocabs) target = vocab;
    const bool swap = flags & 1;
    MarianTokenizer tok(std::move(config), std::move(vocab), std::move(target), swap ? fx.target : fx.source,
                        swap ? fx.source : fx.target, "fuzz");
    const std::string_view text = parts[3];
    try {
      (void)tok.encode_source(text);
      (void)tok.encode_target(text);
      (void)tok.encode(text, flags & 2);
    } catch (const kvrun::Error&) {  // invalid UTF-8
    }
    std::vector<kvrun::TokenId> ids;
    const int64_t n = tok.target_vocab_size() + 8;
    for (size_t i = 0; i + 1 < text.size() && ids.size() < 64; i += 2) {
      const auto v = static_cast<int64_t>(static_cast<uint8_t>(text[i]) | (static_cast<uint8_t>(text[i + 1]) << 8));
      ids.push_back(static_cast<kvrun::TokenId>(v % (n + 4) - 4));
    }
    try {
      (void)tok.decode(ids, flags & 4);
    } catch (const kvrun::Error&) {  // an id out of range
    }
  } catch (const kvrun::Error&) {
  }
  return 0;
}
