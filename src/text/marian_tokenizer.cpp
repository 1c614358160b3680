// Marian / OPUS-MT tokenizer (transformers' MarianTokenizer on its slow-tokenizer base).
#include "text/marian_tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <unordered_set>

#include "io/fs.h"
#include "kvrun/error.h"
#include "text/literal_trie.h"
#include "text/spm_api.h"
#include "text/utf8.h"

namespace kvrun::text {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A string for a one-line message: quoted, at most ~40 bytes, control bytes escaped.
std::string quote(std::string_view s) {
  std::string out = "\"";
  size_t i = 0;
  for (; i < s.size() && i < 40; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7F || c == '"' || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (i < s.size()) {
    while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80) out.pop_back();
    if (!out.empty() && static_cast<unsigned char>(out.back()) >= 0xC0) out.pop_back();
    out += "...";
  }
  out += "\"";
  return out;
}

std::string describe(const json& v) {
  std::string s = v.dump(-1, ' ', true, json::error_handler_t::replace);
  if (s.size() > 40) {
    s.resize(40);
    s += "...";
  }
  return s;
}

// Python's str.isspace().
bool py_space(char32_t c) { return is_unicode_space(c) || (c >= 0x1C && c <= 0x1F); }

// The character starting at s[i] (valid or not: an invalid byte is returned as itself + 0x110000).
char32_t char_at(std::string_view s, size_t i, size_t& len) {
  len = utf8_len(static_cast<unsigned char>(s[i]));
  if (len == 1 || i + len > s.size()) {
    len = 1;
    return static_cast<unsigned char>(s[i]) < 0x80 ? static_cast<char32_t>(s[i]) : 0x110000;
  }
  size_t j = i;
  return next_char(s, j);
}

std::string py_lstrip(std::string_view s) {
  size_t i = 0, len = 0;
  while (i < s.size() && py_space(char_at(s, i, len))) i += len;
  return std::string(s.substr(i));
}

std::string py_rstrip(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && end - start < 4 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t len = 0;
    const char32_t c = char_at(s, start, len);
    if (start + len != end || !py_space(c)) break;
    end = start;
  }
  return std::string(s.substr(0, end));
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

json parse_json(std::string_view text, const std::string& name) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(name + ": expected a JSON document, found invalid JSON: " + e.what());
  }
}

// A token value: "text" or {"content": "text", ...}; nullopt for null.
std::optional<std::string> token_value(const json& v, const std::string& name, const std::string& key) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  throw Error(name + ": " + key + " is " + describe(v) + ", expected a token string or {\"content\": string}");
}

bool flag(const json& obj, const char* key, const std::string& name, const std::string& where) {
  if (!obj.contains(key) || obj[key].is_null()) return false;
  if (!obj[key].is_boolean())
    throw Error(name + ": " + where + "." + key + " is " + describe(obj[key]) + ", expected true or false");
  return obj[key].get<bool>();
}

const char* const kNamedTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                    "pad_token", "cls_token", "mask_token"};

void add_unique(std::vector<std::string>& v, const std::string& s) {
  if (std::find(v.begin(), v.end(), s) == v.end()) v.push_back(s);
}

// Reads the special-token keys of a tokenizer_config.json / special_tokens_map.json object.
void read_special_tokens(const json& j, const std::string& name,
                         std::vector<std::pair<std::string, std::string>>& named, std::vector<std::string>& extras) {
  auto set_named = [&](const std::string& key, const std::optional<std::string>& v) {
    auto it = std::find_if(named.begin(), named.end(), [&](const auto& p) { return p.first == key; });
    if (it != named.end()) named.erase(it);
    if (v) named.emplace_back(key, *v);
  };
  for (const char* key : kNamedTokens)
    if (j.contains(key)) set_named(key, token_value(j[key], name, key));
  for (auto it = j.begin(); it != j.end(); ++it) {  // model-specific "*_token" keys
    const std::string& key = it.key();
    if (key.size() < 6 || key.compare(key.size() - 6, 6, "_token") != 0) continue;
    if (std::find(std::begin(kNamedTokens), std::end(kNamedTokens), key) != std::end(kNamedTokens)) continue;
    if (it->is_string() || it->is_object()) set_named(key, token_value(*it, name, key));
  }
  const char* list_key = j.contains("extra_special_tokens") && !j["extra_special_tokens"].empty()
                             ? "extra_special_tokens"
                             : "additional_special_tokens";
  if (j.contains(list_key) && !j[list_key].is_null()) {
    const json& v = j[list_key];
    if (v.is_array()) {
      for (const auto& t : v)
        if (auto s = token_value(t, name, list_key)) add_unique(extras, *s);
    } else if (v.is_object()) {
      for (auto it = v.begin(); it != v.end(); ++it)
        if (auto s = token_value(*it, name, std::string(list_key) + "." + it.key())) set_named(it.key(), *s);
    } else {
      throw Error(name + ": " + list_key + " is " + describe(v) + ", expected a list of tokens");
    }
  }
}

}  // namespace

std::optional<TokenId> MarianVocab::find(std::string_view piece) const {
  const auto it = ids.find(std::string(piece));
  if (it == ids.end()) return std::nullopt;
  return it->second;
}

MarianVocab parse_marian_vocab(std::string_view json_text, const std::string& name) {
  std::string duplicate;
  bool has_duplicate = false;
  std::unordered_set<std::string> keys;
  json j;
  try {
    j = json::parse(json_text, [&](int depth, json::parse_event_t event, json& parsed) {
      if (depth == 1 && event == json::parse_event_t::key && parsed.is_string()) {
        if (!keys.insert(parsed.get<std::string>()).second && !has_duplicate) {
          has_duplicate = true;
          duplicate = parsed.get<std::string>();
        }
      }
      return true;
    });
  } catch (const json::exception& e) {
    throw Error(name + ": expected a JSON object of piece -> id, found invalid JSON: " + e.what());
  }
  if (!j.is_object())
    throw Error(name + ": expected a JSON object of piece -> id, found a JSON " + std::string(j.type_name()));
  if (has_duplicate)
    throw Error(name + ": piece " + quote(duplicate) + " appears more than once (expected each piece once)");
  const size_t n = j.size();
  if (n == 0) throw Error(name + ": expected a JSON object of piece -> id, found an empty object");
  if (n > static_cast<size_t>(std::numeric_limits<TokenId>::max()))
    throw Error(name + ": " + std::to_string(n) + " pieces, expected fewer than 2^31");
  MarianVocab v;
  v.pieces.resize(n);
  std::vector<bool> seen(n, false);
  v.ids.reserve(n);
  for (auto it = j.begin(); it != j.end(); ++it) {
    const json& val = *it;
    if (!val.is_number_integer())
      throw Error(name + ": piece " + quote(it.key()) + " has id " + describe(val) + ", expected an integer id");
    const bool in_range = val.is_number_unsigned()
                              ? val.get<uint64_t>() < n
                              : val.get<int64_t>() >= 0 && static_cast<uint64_t>(val.get<int64_t>()) < n;
    if (!in_range)
      throw Error(name + ": piece " + quote(it.key()) + " has id " + describe(val) + ", expected ids 0.." +
                  std::to_string(n - 1) + " (one per piece, contiguous)");
    const auto id = static_cast<size_t>(val.get<int64_t>());
    if (seen[id])
      throw Error(name + ": id " + std::to_string(id) + " is given to both " + quote(v.pieces[id]) + " and " +
                  quote(it.key()) + " (expected each id once)");
    seen[id] = true;
    v.pieces[id] = it.key();
    v.ids.emplace(it.key(), static_cast<TokenId>(id));
  }
  return v;
}

MarianConfig parse_marian_config(std::string_view config_json, const std::string& config_name,
                                 std::string_view special_map_json, const std::string& special_map_name) {
  MarianConfig c;
  std::vector<std::pair<std::string, std::string>> named = {
      {"eos_token", c.eos_token}, {"unk_token", c.unk_token}, {"pad_token", c.pad_token}};
  std::vector<std::string> extras;
  bool has_added_decoder = false;
  if (!config_json.empty()) {
    const json j = parse_json(config_json, config_name);
    if (!j.is_object())
      throw Error(config_name + ": expected a JSON object, found a JSON " + std::string(j.type_name()));
    if (j.contains("model_max_length") && !j["model_max_length"].is_null()) {
      const json& v = j["model_max_length"];
      if (v.is_number_unsigned() || v.is_number_integer()) {
        const bool positive = v.is_number_unsigned() || v.get<int64_t>() > 0;
        if (!positive)
          throw Error(config_name + ": model_max_length is " + describe(v) + ", expected a positive integer");
        c.model_max_length = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                                 ? INT64_MAX
                                 : v.get<int64_t>();
      } else if (v.is_number_float() && v.get<double>() >= 1) {  // transformers writes 1e30 for "no limit"
        c.model_max_length = v.get<double>() >= 9.2e18 ? INT64_MAX : static_cast<int64_t>(v.get<double>());
      } else {
        throw Error(config_name + ": model_max_length is " + describe(v) + ", expected a positive integer");
      }
    }
    c.separate_vocabs = flag(j, "separate_vocabs", config_name, "config");
    c.clean_up_tokenization_spaces = flag(j, "clean_up_tokenization_spaces", config_name, "config");
    if (j.contains("source_lang") && j["source_lang"].is_string()) c.source_lang = j["source_lang"];
    if (j.contains("target_lang") && j["target_lang"].is_string()) c.target_lang = j["target_lang"];
    read_special_tokens(j, config_name, named, extras);
    if (j.contains("added_tokens_decoder") && !j["added_tokens_decoder"].is_null()) {
      const json& d = j["added_tokens_decoder"];
      if (!d.is_object())
        throw Error(config_name + ": added_tokens_decoder is " + describe(d) + ", expected an object of id -> token");
      has_added_decoder = true;
      for (auto it = d.begin(); it != d.end(); ++it) {
        const std::string& key = it.key();
        const bool digits = !key.empty() && key.size() <= 9 &&
                            std::all_of(key.begin(), key.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
        if (!digits)
          throw Error(config_name + ": added_tokens_decoder key " + quote(key) + ", expected a token id (digits)");
        const std::string where = "added_tokens_decoder." + key;
        if (!it->is_object() || !it->contains("content") || !(*it)["content"].is_string())
          throw Error(config_name + ": " + where + " is " + describe(*it) + ", expected {\"content\": string, ...}");
        MarianAddedToken t;
        t.content = (*it)["content"].get<std::string>();
        t.id = static_cast<TokenId>(std::stol(key));
        t.lstrip = flag(*it, "lstrip", config_name, where);
        t.rstrip = flag(*it, "rstrip", config_name, where);
        t.single_word = flag(*it, "single_word", config_name, where);
        c.added_tokens.push_back(std::move(t));
      }
    }
  }
  if (!special_map_json.empty() && !has_added_decoder) {
    const json j = parse_json(special_map_json, special_map_name);
    if (!j.is_object())
      throw Error(special_map_name + ": expected a JSON object, found a JSON " + std::string(j.type_name()));
    read_special_tokens(j, special_map_name, named, extras);
  }
  auto take = [&](const char* key, std::string& out, const std::string& from) {
    auto it = std::find_if(named.begin(), named.end(), [&](const auto& p) { return p.first == key; });
    if (it == named.end() || it->second.empty())
      throw Error(from + ": " + key + " is missing or null, expected a token (Marian needs " + key + ")");
    out = it->second;
  };
  const std::string& from = special_map_json.empty() || has_added_decoder ? config_name : special_map_name;
  take("eos_token", c.eos_token, from);
  take("unk_token", c.unk_token, from);
  take("pad_token", c.pad_token, from);
  // transformers' all_special_tokens order: the named attributes, model-specific ones, extras.
  for (const char* key : kNamedTokens)
    for (const auto& [k, v] : named)
      if (k == key && k != "eos_token" && k != "unk_token" && k != "pad_token") add_unique(c.other_special_tokens, v);
  for (const auto& [k, v] : named)
    if (std::find(std::begin(kNamedTokens), std::end(kNamedTokens), k) == std::end(kNamedTokens))
      add_unique(c.other_special_tokens, v);
  for (const auto& e : extras) add_unique(c.other_special_tokens, e);
  return c;
}

struct MarianTokenizer::Trie {
  LiteralTrie trie;
};

MarianTokenizer::~MarianTokenizer() = default;

MarianTokenizer::MarianTokenizer(MarianConfig config, MarianVocab vocab, std::optional<MarianVocab> target_vocab,
                                 std::shared_ptr<const SpmModel> source_spm, std::shared_ptr<const SpmModel> target_spm,
                                 const fs::path& where)
    : config_(std::move(config)),
      vocab_(std::move(vocab)),
      target_vocab_(std::move(target_vocab)),
      source_spm_(std::move(source_spm)),
      target_spm_(std::move(target_spm)),
      where_(where),
      trie_(std::make_unique<Trie>()) {
  const std::string vocab_name = (where_ / "vocab.json").string();
  const std::string tv_name = (where_ / "target_vocab.json").string();
  const std::string cfg_name = (where_ / "tokenizer_config.json").string();
  if (config_.separate_vocabs && !target_vocab_)
    throw Error(tv_name + ": missing, expected it since tokenizer_config.json says separate_vocabs");
  if (!config_.separate_vocabs) target_vocab_.reset();  // transformers ignores it then
  if (!source_spm_ || !target_spm_) throw Error(where_.string() + ": SentencePiece models missing");

  auto need = [&](const std::string& token, const char* what) {
    const auto id = vocab_.find(token);
    if (!id)
      throw Error(vocab_name + ": " + what + " " + quote(token) + " is not in the vocabulary (expected it: " +
                  std::to_string(vocab_.size()) + " pieces, none is " + quote(token) + ")");
    return *id;
  };
  unk_id_ = need(config_.unk_token, "unk token");
  eos_id_ = need(config_.eos_token, "eos token");
  pad_id_ = need(config_.pad_token, "pad token");
  target_unk_id_ = unk_id_;
  if (target_vocab_) {
    const auto id = target_vocab_->find(config_.unk_token);
    if (!id)
      throw Error(tv_name + ": unk token " + quote(config_.unk_token) +
                  " is not in the vocabulary (expected it: unknown target pieces map to it)");
    target_unk_id_ = *id;
  }

  // Added tokens: added_tokens_decoder first, then each special token (transformers' order).
  auto add = [&](const std::string& content, TokenId id, bool lstrip, bool rstrip, bool single_word) {
    if (content.empty() || added_index_.count(content)) return;
    added_index_.emplace(content, added_.size());
    added_by_id_.emplace(id, added_.size());
    added_.push_back(Added{content, id, lstrip, rstrip, single_word});
    trie_->trie.add(content, static_cast<int>(added_.size() - 1));
  };
  for (const auto& t : config_.added_tokens) {
    const auto id = vocab_.find(t.content);
    if (!id || *id != t.id)
      throw Error(cfg_name + ": added_tokens_decoder gives " + quote(t.content) + " id " + std::to_string(t.id) +
                  ", expected the id vocab.json gives it (" + (id ? std::to_string(*id) : std::string("absent")) + ")");
    add(t.content, t.id, t.lstrip, t.rstrip, t.single_word);
  }
  special_tokens_ = {config_.eos_token, config_.unk_token, config_.pad_token};
  for (const auto& t : config_.other_special_tokens) add_unique(special_tokens_, t);
  for (const auto& t : special_tokens_) {
    if (added_index_.count(t)) continue;
    add(t, need(t, "special token"), false, false, false);
  }
  for (const auto& t : special_tokens_) special_ids_.push_back(added_[added_index_.at(t)].id);

  // SentencePiece models vs vocabularies: most pieces must be there, or these files do not belong together.
  auto coverage = [&](const SpmModel& spm, const MarianVocab& v, const std::string& vname) {
    const int32_t n = spm.piece_size();
    if (n <= 0) throw Error(spm.file().string() + ": SentencePiece model has no pieces, expected at least one");
    int64_t normal = 0, found = 0;
    for (int32_t i = 0; i < n; ++i) {
      if (spm.is_control(i) || i == spm.unk_id()) continue;
      ++normal;
      if (v.ids.count(spm.id_to_piece(i))) ++found;
    }
    if (normal > 0 && found * 2 < normal)
      throw Error(spm.file().string() + ": only " + std::to_string(found) + " of its " + std::to_string(normal) +
                  " pieces are in " + vname + ", expected most of them (vocabulary and SentencePiece model of " +
                  "different tokenizers?)");
  };
  coverage(*source_spm_, vocab_, vocab_name);
  coverage(*target_spm_, target_vocab_ ? *target_vocab_ : vocab_, target_vocab_ ? tv_name : vocab_name);

  if (!config_.separate_vocabs)
    for (const auto& p : vocab_.pieces)
      if (p.size() >= 4 && p.compare(0, 2, ">>") == 0 && p.compare(p.size() - 2, 2, "<<") == 0)
        language_codes_.push_back(p);

  eos_ = SpecialToken{config_.eos_token, eos_id_};
  pad_ = SpecialToken{config_.pad_token, pad_id_};
}

std::unique_ptr<MarianTokenizer> MarianTokenizer::load(const fs::path& folder) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec))
    throw Error(folder.string() +
                ": expected a Marian tokenizer folder (source.spm, target.spm, vocab.json), found no such folder");
  for (const char* f : {"source.spm", "target.spm", "vocab.json"})
    if (!fs::is_regular_file(folder / f, ec))
      throw Error((folder / f).string() + ": missing, expected a Marian tokenizer folder to have source.spm, " +
                  "target.spm and vocab.json");
  auto read_opt = [&](const char* f) {
    const fs::path p = folder / f;
    return fs::is_regular_file(p, ec) ? io::read_text_file(p) : std::string();
  };
  const std::string cfg_text = read_opt("tokenizer_config.json");
  const std::string map_text = read_opt("special_tokens_map.json");
  MarianConfig cfg = parse_marian_config(cfg_text, (folder / "tokenizer_config.json").string(), map_text,
                                         (folder / "special_tokens_map.json").string());
  MarianVocab vocab = parse_marian_vocab(io::read_text_file(folder / "vocab.json"), (folder / "vocab.json").string());
  std::optional<MarianVocab> target;
  if (cfg.separate_vocabs) {
    const fs::path tv = folder / "target_vocab.json";
    if (!fs::is_regular_file(tv, ec))
      throw Error(tv.string() + ": missing, expected it since tokenizer_config.json says separate_vocabs");
    target = parse_marian_vocab(io::read_text_file(tv), tv.string());
  }
  auto src = std::make_shared<const SpmModel>(folder / "source.spm");
  auto tgt = std::make_shared<const SpmModel>(folder / "target.spm");
  return std::make_unique<MarianTokenizer>(std::move(cfg), std::move(vocab), std::move(target), std::move(src),
                                           std::move(tgt), folder);
}

std::vector<TokenId> MarianTokenizer::encode_side(std::string_view text, bool target, bool add_eos) const {
  check_utf8(text, "Marian tokenizer input text");
  // 1. Split off added tokens (transformers' Trie.split), no empty chunks.
  std::vector<std::string> chunks;
  for (size_t pos = 0; pos < text.size();) {
    const auto [start, end, value] = trie_->trie.find(text, pos);
    if (value < 0) {
      chunks.emplace_back(text.substr(pos));
      break;
    }
    if (start > pos) chunks.emplace_back(text.substr(pos, start - pos));
    chunks.emplace_back(text.substr(start, end - start));
    pos = end;
  }
  // 2. lstrip / rstrip / single_word of the added tokens (PreTrainedTokenizer.tokenize).
  for (size_t i = 0; i < chunks.size(); ++i) {
    const auto it = added_index_.find(chunks[i]);
    if (it == added_index_.end()) continue;
    const Added& a = added_[it->second];
    // As transformers: the neighbours are read before rstrip/lstrip change them.
    const std::string left = i > 0 ? chunks[i - 1] : std::string();
    const std::string right = i + 1 < chunks.size() ? chunks[i + 1] : std::string();
    if (a.rstrip && !right.empty()) chunks[i + 1] = py_lstrip(right);
    if (a.lstrip && !left.empty()) chunks[i - 1] = py_rstrip(left);
    if (a.single_word) {
      if (!left.empty() && left.back() != ' ') {
        chunks[i - 1] += chunks[i];
        chunks[i].clear();
      } else if (!right.empty() && right.front() != ' ') {
        chunks[i + 1] = chunks[i] + chunks[i + 1];
        chunks[i].clear();
      }
    }
  }
  // 3. Added tokens as themselves; other chunks: language code, then SentencePiece pieces.
  const SpmModel& spm = target ? *target_spm_ : *source_spm_;
  const MarianVocab& vocab = target && target_vocab_ ? *target_vocab_ : vocab_;
  const TokenId unk = target && target_vocab_ ? target_unk_id_ : unk_id_;
  auto to_id = [&](const std::string& tok) {
    if (const auto it = added_index_.find(tok); it != added_index_.end()) return added_[it->second].id;
    const auto it = vocab.ids.find(tok);
    return it == vocab.ids.end() ? unk : it->second;
  };
  std::vector<TokenId> ids;
  for (const auto& chunk : chunks) {
    if (chunk.empty()) continue;
    if (added_index_.count(chunk)) {
      ids.push_back(to_id(chunk));
      continue;
    }
    std::string_view rest = chunk;
    if (rest.size() >= 2 && rest.compare(0, 2, ">>") == 0) {
      const size_t end = rest.find("<<");
      if (end != std::string_view::npos) {
        ids.push_back(to_id(std::string(rest.substr(0, end + 2))));
        rest.remove_prefix(end + 2);
      }
    }
    for (const auto& piece : spm.encode_pieces(rest)) ids.push_back(to_id(piece));
  }
  if (add_eos) ids.push_back(eos_id_);
  return ids;
}

std::vector<TokenId> MarianTokenizer::encode_source(std::string_view text) const {
  return encode_side(text, false, true);
}
std::vector<TokenId> MarianTokenizer::encode_target(std::string_view text) const {
  return encode_side(text, true, true);
}
std::vector<TokenId> MarianTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return encode_side(text, false, add_special_tokens);
}

std::string MarianTokenizer::id_to_piece(TokenId id) const {
  if (const auto it = added_by_id_.find(id); it != added_by_id_.end()) return added_[it->second].content;
  const MarianVocab& v = target_vocab_ ? *target_vocab_ : vocab_;
  if (id >= 0 && id < v.size()) return v.pieces[static_cast<size_t>(id)];
  // transformers falls back to the SentencePiece model used for decoding.
  const SpmModel& spm = config_.separate_vocabs ? *target_spm_ : *source_spm_;
  if (id >= 0 && id < spm.piece_size()) {
    const std::string& p = spm.id_to_piece(id);
    return p.empty() ? config_.unk_token : p;
  }
  const int64_t limit = std::max<int64_t>(v.size(), spm.piece_size());
  throw Error("token id " + std::to_string(id) + " is out of range: expected 0 <= id < " + std::to_string(limit) +
              " (" + (target_vocab_ ? "target_vocab.json" : "vocab.json") + ")");
}

std::string MarianTokenizer::decode(std::span<const TokenId> ids, bool skip_special_tokens) const {
  const SpmModel& spm = config_.separate_vocabs ? *target_spm_ : *source_spm_;
  std::string out;
  std::vector<std::string> run;
  for (const TokenId id : ids) {
    if (skip_special_tokens && std::find(special_ids_.begin(), special_ids_.end(), id) != special_ids_.end()) continue;
    std::string tok = id_to_piece(id);
    if (std::find(special_tokens_.begin(), special_tokens_.end(), tok) != special_tokens_.end()) {
      out += spm.decode_pieces(run);
      run.clear();
      out += tok;
      out += ' ';
    } else {
      run.push_back(std::move(tok));
    }
  }
  out += spm.decode_pieces(run);
  replace_all(out, "\xE2\x96\x81", " ");
  out = py_rstrip(py_lstrip(out));
  if (config_.clean_up_tokenization_spaces) out = clean_up_tokenization(std::move(out));
  return out;
}

std::optional<TokenId> MarianTokenizer::token_to_id(std::string_view token) const {
  if (const auto it = added_index_.find(std::string(token)); it != added_index_.end()) return added_[it->second].id;
  return vocab_.find(token);
}

bool MarianTokenizer::is_special(TokenId id) const {
  return std::find(special_ids_.begin(), special_ids_.end(), id) != special_ids_.end();
}

std::string clean_up_tokenization(std::string text) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) replace_all(text, from, to);
  return text;
}

}  // namespace kvrun::text
