// Tokenizer::load (folder/file dispatch, tokenizer_config.json) and TextStreamer.
#include <algorithm>
#include <cctype>
#include <fstream>

#include "io/fs.h"
#include "text/marian_tokenizer.h"
#include "text/tokenizer_impl.h"
#include "text/utf8.h"

namespace kvrun {
namespace fs = std::filesystem;
using nlohmann::json;

namespace text {

std::optional<SpecialToken> config_token(const json& config, const char* key, const Tokenizer& tok) {
  if (!config.is_object() || !config.contains(key)) return std::nullopt;
  const json& v = config[key];
  std::string s;
  if (v.is_string())
    s = v.get<std::string>();
  else if (v.is_object() && v.contains("content") && v["content"].is_string())
    s = v["content"].get<std::string>();
  else
    return std::nullopt;
  const auto id = tok.token_to_id(s);
  if (!id) return std::nullopt;
  return SpecialToken{s, *id};
}

}  // namespace text

std::unique_ptr<Tokenizer> Tokenizer::load(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw Error(path.string() +
                ": no such file or folder (expected a tokenizer folder, tokenizer.json or a "
                "SentencePiece .model file)");
  fs::path file = path;
  if (fs::is_directory(path, ec)) {
    std::vector<fs::path> models;
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path, ec)) {
      names.push_back(e.path().filename().string());
      if (e.path().extension() == ".model" && e.is_regular_file()) models.push_back(e.path());
    }
    std::sort(models.begin(), models.end());
    std::sort(names.begin(), names.end());
    if (!fs::is_regular_file(path / "tokenizer.json") && fs::is_regular_file(path / "source.spm") &&
        fs::is_regular_file(path / "vocab.json"))  // Marian / OPUS-MT
      return text::MarianTokenizer::load(path);
    if (fs::is_regular_file(path / "tokenizer.json")) {
      file = path / "tokenizer.json";
    } else if (fs::is_regular_file(path / "tokenizer.model")) {
      file = path / "tokenizer.model";
    } else if (fs::is_regular_file(path / "tokenizer.gguf")) {  // a package built from a GGUF file
      file = path / "tokenizer.gguf";
    } else if (models.size() == 1) {
      file = models[0];
    } else {
      std::string found;
      for (size_t i = 0; i < names.size() && i < 20; ++i) found += (i ? ", " : "") + names[i];
      throw Error(path.string() +
                  ": no tokenizer found: expected tokenizer.json, tokenizer.model or tokenizer.gguf (or one *.model " +
                  "SentencePiece file), found " + (names.empty() ? std::string("an empty folder") : "[" + found + "]"));
    }
  }
  char magic[4] = {};
  {
    std::ifstream in(file, std::ios::binary);
    in.read(magic, 4);
  }
  if (std::string_view(magic, 4) == "GGUF") return text::load_gguf_tokenizer(file);
  json config;
  const fs::path cfg = file.parent_path() / "tokenizer_config.json";
  if (fs::is_regular_file(cfg)) config = io::read_json_file(cfg);
  // tokenizer.json is JSON (starts with '{'); anything else is taken as a SentencePiece model.
  char first = 0;
  {
    std::ifstream in(file, std::ios::binary);
    while (in.get(first) && std::isspace(static_cast<unsigned char>(first))) {
    }
  }
  if (file.extension() == ".json" || first == '{') return text::load_hf_tokenizer(file, config);
  return text::load_sentencepiece(file, config);
}

TextStreamer::TextStreamer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tok_(tokenizer), skip_special_(skip_special_tokens) {}

std::string TextStreamer::put(TokenId id) {
  ids_.push_back(id);
  const std::span<const TokenId> all(ids_);
  const std::string prefix = tok_.decode(all.subspan(prefix_, read_ - prefix_), skip_special_);
  const std::string full = tok_.decode(all.subspan(prefix_), skip_special_);
  if (full.size() <= prefix.size() || text::ends_with_incomplete_char(full)) return "";
  std::string out;
  if (full.compare(0, prefix.size(), prefix) == 0) {
    out = full.substr(prefix.size());
  } else {  // context changed the prefix's text: emit what follows the common part
    size_t k = 0;
    while (k < prefix.size() && prefix[k] == full[k]) ++k;
    out = full.substr(k);
  }
  prefix_ = read_;
  read_ = ids_.size();
  return out;
}

std::string TextStreamer::flush() {
  const std::span<const TokenId> all(ids_);
  const std::string prefix = tok_.decode(all.subspan(prefix_, read_ - prefix_), skip_special_);
  const std::string full = tok_.decode(all.subspan(prefix_), skip_special_);
  std::string out = full.size() > prefix.size() && full.compare(0, prefix.size(), prefix) == 0
                        ? full.substr(prefix.size())
                        : std::string();
  ids_.clear();
  prefix_ = read_ = 0;
  return out;
}

}  // namespace kvrun
