// Hugging Face tokenizer.json with a BPE model: added tokens, normalizers,
// pre-tokenizers, BPE with merge ranks, post-processors and decoders, each following
// the `tokenizers` (Rust) implementation step by step.
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "io/fs.h"
#include "text/literal_trie.h"
#include "text/regex.h"
#include "text/str_map.h"
#include "text/tokenizer_impl.h"
#include "text/utf8.h"

namespace kvrun::text {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

// ---- byte-level alphabet (GPT-2 bytes_to_unicode)
struct ByteAlphabet {
  std::array<std::string, 256> to_char;  // byte -> UTF-8 of its printable stand-in
  std::unordered_map<char32_t, uint8_t> to_byte;
  ByteAlphabet() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t c = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      append_utf8(to_char[b], c);
      to_byte[c] = static_cast<uint8_t>(b);
    }
  }
};
const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet a;
  return a;
}

// ---- small JSON helpers with clear messages
class Ctx {
 public:
  explicit Ctx(fs::path file) : file_(std::move(file)) {}
  [[noreturn]] void fail(const std::string& where, const std::string& msg) const {
    throw Error(file_.string() + ": " + where + ": " + msg);
  }
  const json& need(const json& j, const char* key, const std::string& where) const {
    if (!j.is_object() || !j.contains(key)) fail(where, std::string("expected key '") + key + "', not found");
    return j.at(key);
  }
  std::string str(const json& j, const char* key, const std::string& where) const {
    const json& v = need(j, key, where);
    if (!v.is_string()) fail(where + "." + key, "expected a string, found " + v.dump().substr(0, 80));
    return v.get<std::string>();
  }
  bool flag(const json& j, const char* key, bool dflt) const {
    if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return dflt;
    if (!j.at(key).is_boolean()) fail(key, "expected true or false, found " + j.at(key).dump());
    return j.at(key).get<bool>();
  }
  const fs::path& file() const { return file_; }

 private:
  fs::path file_;
};

// A pattern in tokenizer.json: {"String": "..."} or {"Regex": "..."}.
struct Pattern {
  std::string literal;
  std::shared_ptr<Regex> regex;
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
    if (regex) return regex->find_all(s, out);
    if (literal.empty()) return;
    for (size_t p = s.find(literal); p != std::string_view::npos; p = s.find(literal, p + literal.size()))
      out.emplace_back(p, p + literal.size());
  }
};
Pattern parse_pattern(const Ctx& ctx, const json& j, const std::string& where) {
  Pattern p;
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    p.literal = j["String"].get<std::string>();
  } else if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    p.regex = std::make_shared<Regex>(j["Regex"].get<std::string>());
  } else {
    ctx.fail(where, "expected {\"String\": ...} or {\"Regex\": ...}, found " + j.dump().substr(0, 120));
  }
  return p;
}

std::string replace_all(std::string_view s, const Pattern& p, const std::string& content) {
  std::vector<std::pair<size_t, size_t>> m;
  p.find_all(s, m);
  if (m.empty()) return std::string(s);
  std::string out;
  size_t prev = 0;
  for (auto [a, b] : m) {
    out.append(s.substr(prev, a - prev));
    out += content;
    prev = b;
  }
  out.append(s.substr(prev));
  return out;
}

bool is_ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

std::string utf8proc_apply(std::string_view s, int options) {
  if (is_ascii(s)) return std::string(s);
  utf8proc_uint8_t* dst = nullptr;
  const auto n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()), &dst,
                   static_cast<utf8proc_option_t>(options | UTF8PROC_STABLE));
  if (n < 0) throw Error(std::string("Unicode normalization failed: ") + utf8proc_errmsg(n));
  std::string out(reinterpret_cast<char*>(dst), static_cast<size_t>(n));
  std::free(dst);
  return out;
}

// ---- normalizers: string -> string
using Normalizer = std::function<std::string(std::string_view)>;

void parse_normalizer(const Ctx& ctx, const json& j, std::vector<Normalizer>& out) {
  if (j.is_null()) return;
  const std::string type = ctx.str(j, "type", "normalizer");
  if (type == "Sequence") {
    for (const auto& n : ctx.need(j, "normalizers", "normalizer")) parse_normalizer(ctx, n, out);
  } else if (type == "NFC") {
    out.push_back([](std::string_view s) { return utf8proc_apply(s, UTF8PROC_COMPOSE); });
  } else if (type == "NFD") {
    out.push_back([](std::string_view s) { return utf8proc_apply(s, UTF8PROC_DECOMPOSE); });
  } else if (type == "NFKC") {
    out.push_back([](std::string_view s) { return utf8proc_apply(s, UTF8PROC_COMPOSE | UTF8PROC_COMPAT); });
  } else if (type == "NFKD") {
    out.push_back([](std::string_view s) { return utf8proc_apply(s, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT); });
  } else if (type == "Lowercase") {
    out.push_back([](std::string_view s) {
      std::string r;
      for (size_t i = 0; i < s.size();)
        append_utf8(r, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(next_char(s, i)))));
      return r;
    });
  } else if (type == "Replace") {
    auto p = parse_pattern(ctx, ctx.need(j, "pattern", "normalizer Replace"), "normalizer Replace.pattern");
    auto content = ctx.str(j, "content", "normalizer Replace");
    out.push_back([p, content](std::string_view s) { return replace_all(s, p, content); });
  } else if (type == "Prepend") {
    auto prepend = ctx.str(j, "prepend", "normalizer Prepend");
    out.push_back([prepend](std::string_view s) { return s.empty() ? std::string() : prepend + std::string(s); });
  } else if (type == "Strip") {
    const bool left = ctx.flag(j, "strip_left", true), right = ctx.flag(j, "strip_right", true);
    out.push_back([left, right](std::string_view s) {
      size_t a = 0, b = s.size();
      if (left)
        for (size_t i = 0; i < s.size();) {
          if (!is_unicode_space(next_char(s, i))) break;
          a = i;
        }
      if (right)
        while (b > a) {
          size_t st = b - 1;
          while (st > a && (static_cast<unsigned char>(s[st]) & 0xC0) == 0x80) --st;
          size_t i = st;
          if (!is_unicode_space(next_char(s, i))) break;
          b = st;
        }
      return std::string(s.substr(a, b - a));
    });
  } else {
    ctx.fail("normalizer", "type '" + type +
                               "' is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Replace, "
                               "Prepend, Strip)");
  }
}

// ---- pre-tokenizers: pieces -> pieces
using Pieces = std::vector<std::string>;
using PreTokenizer = std::function<void(Pieces&)>;

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// NormalizedString::split of `tokenizers`.
void split_piece(std::string_view s, const Pattern& pat, Behavior behavior, bool invert, Pieces& out) {
  if (s.empty()) return;
  std::vector<std::pair<size_t, size_t>> m;
  pat.find_all(s, m);
  struct Seg {
    size_t a, b;
    bool match;
  };
  std::vector<Seg> segs;
  size_t prev = 0;
  for (auto [a, b] : m) {
    if (prev != a) segs.push_back({prev, a, false});
    segs.push_back({a, b, true});
    prev = b;
  }
  if (prev != s.size()) segs.push_back({prev, s.size(), false});
  if (invert)
    for (auto& g : segs) g.match = !g.match;
  std::vector<Seg> res;
  switch (behavior) {
    case Behavior::Removed:
      for (auto& g : segs)
        if (!g.match) res.push_back(g);
      break;
    case Behavior::Isolated:
      res = segs;
      break;
    case Behavior::MergedWithPrevious: {
      bool prev_match = false;
      for (auto& g : segs) {
        if (g.match && !prev_match && !res.empty())
          res.back().b = g.b;
        else
          res.push_back(g);
        prev_match = g.match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !prev_match && !res.empty())
          res.back().a = it->a;
        else
          res.push_back(*it);
        prev_match = it->match;
      }
      std::reverse(res.begin(), res.end());
      break;
    }
    case Behavior::Contiguous: {
      bool prev_match = false;
      for (auto& g : segs) {
        if (g.match == prev_match && !res.empty())
          res.back().b = g.b;
        else
          res.push_back(g);
        prev_match = g.match;
      }
      break;
    }
  }
  for (auto& g : res)
    if (g.b > g.a) out.emplace_back(s.substr(g.a, g.b - g.a));
}

PreTokenizer split_pre_tokenizer(Pattern pat, Behavior behavior, bool invert) {
  return [pat = std::move(pat), behavior, invert](Pieces& pieces) {
    Pieces out;
    out.reserve(pieces.size() * 2);
    for (const auto& p : pieces) split_piece(p, pat, behavior, invert, out);
    pieces = std::move(out);
  };
}

const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

void parse_pre_tokenizer(const Ctx& ctx, const json& j, std::vector<PreTokenizer>& out, bool& byte_level) {
  if (j.is_null()) return;
  const std::string type = ctx.str(j, "type", "pre_tokenizer");
  if (type == "Sequence") {
    for (const auto& p : ctx.need(j, "pretokenizers", "pre_tokenizer")) parse_pre_tokenizer(ctx, p, out, byte_level);
  } else if (type == "Split") {
    Pattern pat = parse_pattern(ctx, ctx.need(j, "pattern", "pre_tokenizer Split"), "pre_tokenizer Split.pattern");
    const std::string b = ctx.str(j, "behavior", "pre_tokenizer Split");
    static const std::map<std::string, Behavior> names = {{"Removed", Behavior::Removed},
                                                          {"Isolated", Behavior::Isolated},
                                                          {"MergedWithPrevious", Behavior::MergedWithPrevious},
                                                          {"MergedWithNext", Behavior::MergedWithNext},
                                                          {"Contiguous", Behavior::Contiguous}};
    if (!names.count(b))
      ctx.fail("pre_tokenizer Split.behavior",
               "expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous, found '" + b + "'");
    out.push_back(split_pre_tokenizer(std::move(pat), names.at(b), ctx.flag(j, "invert", false)));
  } else if (type == "ByteLevel") {
    byte_level = true;
    const bool prefix = ctx.flag(j, "add_prefix_space", true);
    if (prefix)
      out.push_back([](Pieces& pieces) {
        for (auto& p : pieces)
          if (p.empty() || p[0] != ' ') p.insert(p.begin(), ' ');
      });
    if (ctx.flag(j, "use_regex", true))
      out.push_back(split_pre_tokenizer(Pattern{"", std::make_shared<Regex>(kGpt2Regex)}, Behavior::Isolated, false));
    out.push_back([](Pieces& pieces) {
      const auto& a = byte_alphabet();
      for (auto& p : pieces) {
        std::string m;
        m.reserve(p.size() * 2);
        for (unsigned char c : p) m += a.to_char[c];
        p = std::move(m);
      }
    });
  } else if (type == "Digits") {
    const bool individual = ctx.flag(j, "individual_digits", false);
    out.push_back(split_pre_tokenizer(Pattern{"", std::make_shared<Regex>(individual ? "\\p{N}" : "\\p{N}+")},
                                      Behavior::Isolated, false));
  } else if (type == "WhitespaceSplit") {
    out.push_back(split_pre_tokenizer(Pattern{"", std::make_shared<Regex>("\\s+")}, Behavior::Removed, false));
  } else if (type == "Metaspace") {
    const std::string repl = j.contains("replacement") ? ctx.str(j, "replacement", "pre_tokenizer Metaspace") : "▁";
    std::string scheme = "always";
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) scheme = j["prepend_scheme"];
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>())
      scheme = "never";
    if (scheme == "first")
      ctx.fail("pre_tokenizer Metaspace", "prepend_scheme 'first' is not supported (supported: always, never)");
    const bool split = ctx.flag(j, "split", true);
    out.push_back([repl, scheme, split](Pieces& pieces) {
      Pieces res;
      for (auto& p : pieces) {
        std::string s = replace_all(p, Pattern{" ", nullptr}, repl);
        if (scheme == "always" && s.compare(0, repl.size(), repl) != 0) s = repl + s;
        if (split)
          split_piece(s, Pattern{repl, nullptr}, Behavior::MergedWithNext, false, res);
        else if (!s.empty())
          res.push_back(std::move(s));
      }
      pieces = std::move(res);
    });
  } else {
    ctx.fail("pre_tokenizer", "type '" + type +
                                  "' is not supported (supported: Sequence, Split, ByteLevel, Digits, "
                                  "WhitespaceSplit, Metaspace)");
  }
}

// ---- decoders: tokens -> tokens (joined at the end)
using Decoder = std::function<void(std::vector<std::string>&)>;

void parse_decoder(const Ctx& ctx, const json& j, std::vector<Decoder>& out) {
  if (j.is_null()) return;
  const std::string type = ctx.str(j, "type", "decoder");
  if (type == "Sequence") {
    for (const auto& d : ctx.need(j, "decoders", "decoder")) parse_decoder(ctx, d, out);
  } else if (type == "ByteLevel") {
    out.push_back([](std::vector<std::string>& toks) {
      const auto& a = byte_alphabet();
      std::string bytes;
      for (const auto& t : toks) {
        const size_t start = bytes.size();
        bool ok = true;
        for (size_t i = 0; i < t.size();) {
          auto it = a.to_byte.find(next_char(t, i));
          if (it == a.to_byte.end()) {
            ok = false;
            break;
          }
          bytes += static_cast<char>(it->second);
        }
        if (!ok) {
          bytes.resize(start);
          bytes += t;
        }
      }
      toks.assign(1, utf8_lossy(bytes));
    });
  } else if (type == "Replace") {
    auto p = parse_pattern(ctx, ctx.need(j, "pattern", "decoder Replace"), "decoder Replace.pattern");
    auto content = ctx.str(j, "content", "decoder Replace");
    out.push_back([p, content](std::vector<std::string>& toks) {
      for (auto& t : toks) t = replace_all(t, p, content);
    });
  } else if (type == "ByteFallback") {
    out.push_back([](std::vector<std::string>& toks) {
      std::vector<std::string> res;
      std::string pending;
      auto flush = [&] {
        if (pending.empty()) return;
        std::string valid = utf8_lossy(pending);
        if (valid == pending)
          res.push_back(pending);
        else
          for (size_t k = 0; k < pending.size(); ++k) res.emplace_back("\xEF\xBF\xBD");
        pending.clear();
      };
      for (auto& t : toks) {
        if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
            std::isxdigit(static_cast<unsigned char>(t[3])) && std::isxdigit(static_cast<unsigned char>(t[4]))) {
          pending += static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16));
        } else {
          flush();
          res.push_back(std::move(t));
        }
      }
      flush();
      toks = std::move(res);
    });
  } else if (type == "Fuse") {
    out.push_back([](std::vector<std::string>& toks) {
      std::string all;
      for (auto& t : toks) all += t;
      toks.assign(1, all);
    });
  } else if (type == "Strip") {
    const std::string content = ctx.str(j, "content", "decoder Strip");
    const int start = ctx.need(j, "start", "decoder Strip").get<int>();
    const int stop = ctx.need(j, "stop", "decoder Strip").get<int>();
    out.push_back([content, start, stop](std::vector<std::string>& toks) {
      for (auto& t : toks) {
        size_t a = 0, b = t.size();
        for (int k = 0; k < start && t.compare(a, content.size(), content) == 0 && a < b; ++k) a += content.size();
        for (int k = 0;
             k < stop && b >= a + content.size() && t.compare(b - content.size(), content.size(), content) == 0; ++k)
          b -= content.size();
        t = t.substr(a, b - a);
      }
    });
  } else if (type == "Metaspace") {
    const std::string repl = j.contains("replacement") ? ctx.str(j, "replacement", "decoder Metaspace") : "▁";
    bool prepend = true;
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) prepend = j["prepend_scheme"] != "never";
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean()) prepend = j["add_prefix_space"];
    out.push_back([repl, prepend](std::vector<std::string>& toks) {
      for (size_t i = 0; i < toks.size(); ++i) {
        toks[i] = replace_all(toks[i], Pattern{repl, nullptr}, " ");
        if (i == 0 && prepend && !toks[i].empty() && toks[i][0] == ' ') toks[i].erase(0, 1);
      }
    });
  } else {
    ctx.fail("decoder", "type '" + type +
                            "' is not supported (supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, "
                            "Metaspace)");
  }
}

// ---- added tokens
struct AddedToken {
  std::string content;
  TokenId id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

using Trie = LiteralTrie;

struct Split {
  size_t a, b;
  int added;  // index into added tokens, or -1
};

// AddedVocabulary::find_matches of `tokenizers`.
std::vector<Split> find_added(std::string_view s, const Trie& trie, const std::vector<AddedToken>& added) {
  std::vector<Split> out;
  if (trie.empty()) {
    out.push_back({0, s.size(), -1});
    return out;
  }
  size_t start_offset = 0, pos = 0;
  while (pos < s.size()) {
    auto [start, stop, idx] = trie.find(s, pos);
    if (idx < 0) break;
    pos = stop;  // the automaton goes on from the match, not from its stripped spaces
    const AddedToken& t = added[idx];
    if (t.single_word) {
      bool start_space = start == 0, stop_space = stop == s.size();
      if (!start_space) {
        size_t i = start - 1;
        while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
        start_space = !is_word_char(next_char(s, i));
      }
      if (!stop_space) {
        size_t i = stop;
        stop_space = !is_word_char(next_char(s, i));
      }
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t ns = start;
      while (ns > 0) {
        size_t i = ns - 1;
        while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
        size_t j = i;
        if (!is_unicode_space(next_char(s, j))) break;
        ns = i;
      }
      start = ns;
    }
    start = std::max(start, start_offset);  // a previous token's rstrip took these spaces
    if (t.rstrip) {
      while (stop < s.size()) {
        size_t j = stop;
        if (!is_unicode_space(next_char(s, j))) break;
        stop = j;
      }
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, idx});
    start_offset = stop;
  }
  if (start_offset != s.size() || out.empty()) out.push_back({start_offset, s.size(), -1});
  return out;
}

// ---- the BPE model
class BpeModel {
 public:
  StrMap<TokenId> vocab;
  std::vector<std::string> tokens;                                    // id -> token ("" for holes)
  std::unordered_map<uint64_t, std::pair<uint32_t, TokenId>> merges;  // (left, right) -> (rank, merged)
  std::optional<TokenId> unk;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::array<TokenId, 256> byte_tokens{};

  void encode_word(std::string_view w, std::vector<TokenId>& out) const {
    if (ignore_merges) {
      auto it = vocab.find(w);
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    const bool cacheable = w.size() < 256;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      auto it = cache_.find(w);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const size_t before = out.size();
    merge_word(w, out);
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      if (cache_.size() < kCacheCapacity)
        cache_.emplace(std::string(w),
                       std::vector<TokenId>(out.begin() + static_cast<std::ptrdiff_t>(before), out.end()));
    }
  }

 private:
  static constexpr size_t kCacheCapacity = 100000;
  mutable std::mutex cache_mu_;
  mutable StrMap<std::vector<TokenId>> cache_;

  struct Symbol {
    TokenId id;
    int prev, next;
    bool alive;
  };
  struct Merge {
    uint32_t rank;
    int pos;
    TokenId id;
    bool operator>(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };

  const std::pair<uint32_t, TokenId>* find_merge(TokenId a, TokenId b) const {
    auto it = merges.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b));
    return it == merges.end() ? nullptr : &it->second;
  }

  void merge_word(std::string_view w, std::vector<TokenId>& out) const {
    thread_local std::vector<Symbol> sym;
    sym.clear();
    TokenId pending_unk = -1;  // an unknown-character run not pushed yet
    auto push = [&](TokenId id) { sym.push_back({id, static_cast<int>(sym.size()) - 1, -1, true}); };
    for (size_t i = 0; i < w.size();) {
      const size_t st = i;
      i += std::min(utf8_len(static_cast<unsigned char>(w[i])), w.size() - i);
      auto it = vocab.find(w.substr(st, i - st));
      if (it != vocab.end()) {
        if (pending_unk >= 0) push(pending_unk), pending_unk = -1;
        push(it->second);
        continue;
      }
      if (byte_fallback) {
        bool all = true;
        for (size_t k = st; k < i; ++k) all = all && byte_tokens[static_cast<unsigned char>(w[k])] >= 0;
        if (all) {
          for (size_t k = st; k < i; ++k) push(byte_tokens[static_cast<unsigned char>(w[k])]);
          continue;
        }
      }
      if (unk) {
        if (pending_unk >= 0 && !fuse_unk) push(pending_unk);
        pending_unk = *unk;
      }
    }
    if (pending_unk >= 0) push(pending_unk);
    const int n = static_cast<int>(sym.size());
    for (int k = 0; k < n; ++k) sym[k].next = k + 1 < n ? k + 1 : -1;
    if (n > 1) {
      // Min-heap on (rank, position), as Word::merge_all in `tokenizers`.
      thread_local std::vector<Merge> heap;
      heap.clear();
      auto push_merge = [](uint32_t rank, int pos, TokenId id) {
        heap.push_back({rank, pos, id});
        std::push_heap(heap.begin(), heap.end(), std::greater<>{});
      };
      for (int k = 0; k + 1 < n; ++k)
        if (auto m = find_merge(sym[k].id, sym[k + 1].id)) push_merge(m->first, k, m->second);
      while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
        const Merge top = heap.back();
        heap.pop_back();
        Symbol& s = sym[top.pos];
        if (!s.alive || s.next < 0) continue;
        const int nx = s.next;
        auto m = find_merge(s.id, sym[nx].id);
        if (!m || m->second != top.id) continue;  // stale: a neighbour was merged since
        s.id = top.id;
        sym[nx].alive = false;
        s.next = sym[nx].next;
        if (s.next >= 0) sym[s.next].prev = top.pos;
        if (s.prev >= 0)
          if (auto pm = find_merge(sym[s.prev].id, s.id)) push_merge(pm->first, s.prev, pm->second);
        if (s.next >= 0)
          if (auto nm = find_merge(s.id, sym[s.next].id)) push_merge(nm->first, top.pos, nm->second);
      }
    }
    for (int k = 0; k >= 0 && k < n; k = sym[k].next) out.push_back(sym[k].id);
  }
};

// ---- post-processors (applied when add_special_tokens)
using PostProcessor = std::function<std::vector<TokenId>(std::vector<TokenId>)>;

void parse_post_processor(const Ctx& ctx, const json& j, std::vector<PostProcessor>& out) {
  if (j.is_null()) return;
  const std::string type = ctx.str(j, "type", "post_processor");
  if (type == "Sequence") {
    for (const auto& p : ctx.need(j, "processors", "post_processor")) parse_post_processor(ctx, p, out);
  } else if (type == "ByteLevel") {
    // offsets only
  } else if (type == "TemplateProcessing") {
    std::map<std::string, std::vector<TokenId>> specials;
    for (const auto& [name, v] : ctx.need(j, "special_tokens", "post_processor").items())
      specials[name] = ctx.need(v, "ids", "post_processor.special_tokens." + name).get<std::vector<TokenId>>();
    std::vector<std::vector<TokenId>> items;  // empty vector marks the sequence
    for (const auto& piece : ctx.need(j, "single", "post_processor TemplateProcessing")) {
      if (piece.contains("Sequence")) {
        items.emplace_back();
      } else if (piece.contains("SpecialToken")) {
        const std::string id = ctx.str(piece["SpecialToken"], "id", "post_processor.single.SpecialToken");
        if (!specials.count(id))
          ctx.fail("post_processor.single", "special token '" + id + "' is not in special_tokens");
        items.push_back(specials[id]);
      } else {
        ctx.fail("post_processor.single", "expected Sequence or SpecialToken, found " + piece.dump());
      }
    }
    out.push_back([items](std::vector<TokenId> ids) {
      std::vector<TokenId> r;
      for (const auto& it : items)
        if (it.empty())
          r.insert(r.end(), ids.begin(), ids.end());
        else
          r.insert(r.end(), it.begin(), it.end());
      return r;
    });
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    const TokenId cls = ctx.need(j, "cls", "post_processor").at(1).get<TokenId>();
    const TokenId sep = ctx.need(j, "sep", "post_processor").at(1).get<TokenId>();
    out.push_back([cls, sep](std::vector<TokenId> ids) {
      ids.insert(ids.begin(), cls);
      ids.push_back(sep);
      return ids;
    });
  } else {
    ctx.fail("post_processor", "type '" + type +
                                   "' is not supported (supported: Sequence, ByteLevel, TemplateProcessing, "
                                   "BertProcessing, RobertaProcessing)");
  }
}

class HfTokenizer final : public Tokenizer {
 public:
  HfTokenizer(const fs::path& file, const json& j, const json& config, std::string description)
      : description_(std::move(description)) {
    const Ctx ctx(file);
    if (!j.is_object()) ctx.fail("top level", "expected a JSON object (Hugging Face tokenizer.json)");
    load_model(ctx, ctx.need(j, "model", "top level"));
    if (j.contains("normalizer")) parse_normalizer(ctx, j["normalizer"], normalizers_);
    if (j.contains("pre_tokenizer")) parse_pre_tokenizer(ctx, j["pre_tokenizer"], pre_tokenizers_, byte_level_);
    if (j.contains("post_processor")) parse_post_processor(ctx, j["post_processor"], post_);
    if (j.contains("decoder")) parse_decoder(ctx, j["decoder"], decoders_);
    if (j.contains("added_tokens")) load_added(ctx, j["added_tokens"]);
    if (id_added_.size() < model_.tokens.size()) id_added_.resize(model_.tokens.size(), -1);
    if (config.is_object()) {
      bos_ = config_token(config, "bos_token", *this);
      eos_ = config_token(config, "eos_token", *this);
      pad_ = config_token(config, "pad_token", *this);
    }
  }

  std::vector<TokenId> encode(std::string_view text, bool add_special_tokens) const override {
    check_utf8(text, "encode");
    std::vector<TokenId> ids;
    ids.reserve(text.size() / 3 + 4);
    Pieces pieces;
    for (const Split& raw : find_added(text, raw_trie_, added_)) {
      if (raw.added >= 0) {
        ids.push_back(added_[raw.added].id);
        continue;
      }
      const std::string norm = normalize(text.substr(raw.a, raw.b - raw.a));
      for (const Split& sp : find_added(norm, norm_trie_, added_)) {
        if (sp.added >= 0) {
          ids.push_back(added_[sp.added].id);
          continue;
        }
        if (sp.b == sp.a) continue;
        pieces.clear();
        pieces.emplace_back(norm.substr(sp.a, sp.b - sp.a));
        for (const auto& pt : pre_tokenizers_) pt(pieces);
        for (const auto& p : pieces) model_.encode_word(p, ids);
      }
    }
    if (add_special_tokens)
      for (const auto& p : post_) ids = p(std::move(ids));
    return ids;
  }

  std::string decode(std::span<const TokenId> ids, bool skip_special_tokens) const override {
    std::vector<std::string> toks;
    toks.reserve(ids.size());
    for (TokenId id : ids) {
      check_id(id);
      if (skip_special_tokens && is_special(id)) continue;
      toks.push_back(token_text(id));
    }
    if (decoders_.empty()) {
      std::string r;
      for (size_t i = 0; i < toks.size(); ++i) r += (i ? " " : "") + toks[i];
      return r;
    }
    for (const auto& d : decoders_) d(toks);
    std::string r;
    for (const auto& t : toks) r += t;
    return r;
  }

  std::optional<TokenId> token_to_id(std::string_view token) const override {
    if (auto it = added_by_content_.find(token); it != added_by_content_.end()) return added_[it->second].id;
    if (auto it = model_.vocab.find(token); it != model_.vocab.end()) return it->second;
    return std::nullopt;
  }
  std::string id_to_token(TokenId id) const override {
    check_id(id);
    return token_text(id);
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(id_added_.size()); }
  bool is_special(TokenId id) const override {
    return id >= 0 && static_cast<size_t>(id) < id_added_.size() && id_added_[id] >= 0 && added_[id_added_[id]].special;
  }
  std::string description() const override {
    if (!description_.empty()) return description_;
    return std::string("tokenizer.json BPE") + (byte_level_ ? " (byte-level)" : "") +
           (model_.byte_fallback ? " (byte fallback)" : "");
  }

 private:
  std::string description_;
  BpeModel model_;
  std::vector<Normalizer> normalizers_;
  std::vector<PreTokenizer> pre_tokenizers_;
  std::vector<PostProcessor> post_;
  std::vector<Decoder> decoders_;
  bool byte_level_ = false;
  std::vector<AddedToken> added_;
  StrMap<int> added_by_content_;
  std::vector<int> id_added_;  // id -> index in added_ or -1; its size is vocab_size()
  Trie raw_trie_, norm_trie_;

  std::string normalize(std::string_view s) const {
    std::string r(s);
    for (const auto& n : normalizers_) r = n(r);
    return r;
  }
  void check_id(TokenId id) const {
    if (id < 0 || static_cast<size_t>(id) >= id_added_.size())
      throw Error("token id " + std::to_string(id) + " is out of range: expected 0 <= id < " +
                  std::to_string(id_added_.size()));
  }
  const std::string& token_text(TokenId id) const {
    if (id_added_[id] >= 0) return added_[id_added_[id]].content;
    static const std::string none;
    return static_cast<size_t>(id) < model_.tokens.size() ? model_.tokens[id] : none;
  }

  void load_model(const Ctx& ctx, const json& m) {
    std::string type = m.is_object() && m.contains("type") && m["type"].is_string() ? m["type"].get<std::string>() : "";
    if (type.empty() && m.is_object() && m.contains("merges")) type = "BPE";
    if (type != "BPE")
      ctx.fail("model.type", "'" + type + "' is not supported (expected BPE; WordPiece/Unigram/WordLevel are not)");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (m.contains(k) && m[k].is_string() && !m[k].get<std::string>().empty())
        ctx.fail(std::string("model.") + k, "a non-empty value is not supported");
    if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0)
      ctx.fail("model.dropout", "BPE dropout is not supported (expected null)");
    const json& vocab = ctx.need(m, "vocab", "model");
    if (!vocab.is_object()) ctx.fail("model.vocab", "expected an object {token: id}");
    model_.vocab.reserve(vocab.size());
    for (const auto& [tok, idj] : vocab.items()) {
      if (!idj.is_number_integer()) ctx.fail("model.vocab." + tok, "expected an integer id, found " + idj.dump());
      const auto id = idj.get<int64_t>();
      if (id < 0 || id >= (int64_t{1} << 30))
        ctx.fail("model.vocab." + tok, "id " + std::to_string(id) + " out of range");
      model_.vocab[tok] = static_cast<TokenId>(id);
      if (static_cast<size_t>(id) >= model_.tokens.size()) model_.tokens.resize(id + 1);
      model_.tokens[id] = tok;
    }
    const json& merges = ctx.need(m, "merges", "model");
    if (!merges.is_array()) ctx.fail("model.merges", "expected an array");
    model_.merges.reserve(merges.size());
    uint32_t rank = 0;
    std::string a, b;
    for (const auto& mj : merges) {
      if (mj.is_string()) {
        const auto& s = mj.get_ref<const std::string&>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          ctx.fail("model.merges[" + std::to_string(rank) + "]", "expected \"left right\", found \"" + s + "\"");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (mj.is_array() && mj.size() == 2 && mj[0].is_string() && mj[1].is_string()) {
        a = mj[0].get<std::string>();
        b = mj[1].get<std::string>();
      } else {
        ctx.fail("model.merges[" + std::to_string(rank) + "]",
                 "expected \"left right\" or [left, right], found " + mj.dump().substr(0, 80));
      }
      auto ia = model_.vocab.find(a), ib = model_.vocab.find(b), ic = model_.vocab.find(a + b);
      if (ia == model_.vocab.end() || ib == model_.vocab.end() || ic == model_.vocab.end())
        ctx.fail("model.merges[" + std::to_string(rank) + "]",
                 "merge \"" + a + "\" + \"" + b + "\": expected both parts and their concatenation in the vocab");
      const uint64_t key =
          (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) | static_cast<uint32_t>(ib->second);
      model_.merges.emplace(key, std::make_pair(rank, ic->second));  // first (lowest rank) wins
      ++rank;
    }
    model_.byte_fallback = ctx.flag(m, "byte_fallback", false);
    model_.fuse_unk = ctx.flag(m, "fuse_unk", false);
    model_.ignore_merges = ctx.flag(m, "ignore_merges", false);
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      auto it = model_.vocab.find(m["unk_token"].get<std::string>());
      if (it != model_.vocab.end()) model_.unk = it->second;
    }
    for (int byte = 0; byte < 256; ++byte) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", byte);
      auto it = model_.vocab.find(std::string_view(name));
      model_.byte_tokens[byte] = it == model_.vocab.end() ? -1 : it->second;
    }
  }

  void load_added(const Ctx& ctx, const json& arr) {
    if (!arr.is_array()) ctx.fail("added_tokens", "expected an array");
    for (const auto& t : arr) {
      AddedToken a;
      a.content = ctx.str(t, "content", "added_tokens");
      const json& idj = ctx.need(t, "id", "added_tokens");
      if (!idj.is_number_integer() || idj.get<int64_t>() < 0 || idj.get<int64_t>() >= (int64_t{1} << 30))
        ctx.fail("added_tokens." + a.content, "expected a non-negative integer id, found " + idj.dump());
      a.id = idj.get<TokenId>();
      a.single_word = ctx.flag(t, "single_word", false);
      a.lstrip = ctx.flag(t, "lstrip", false);
      a.rstrip = ctx.flag(t, "rstrip", false);
      a.normalized = ctx.flag(t, "normalized", true);
      a.special = ctx.flag(t, "special", false);
      added_by_content_[a.content] = static_cast<int>(added_.size());
      added_.push_back(a);
    }
    size_t n = model_.tokens.size();
    for (const auto& a : added_) n = std::max(n, static_cast<size_t>(a.id) + 1);
    id_added_.assign(n, -1);
    for (size_t i = 0; i < added_.size(); ++i) {
      const AddedToken& a = added_[i];
      id_added_[a.id] = static_cast<int>(i);
      if (a.normalized)
        norm_trie_.add(normalize(a.content), static_cast<int>(i));
      else
        raw_trie_.add(a.content, static_cast<int>(i));
    }
  }
};

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const fs::path& file, const json& config) {
  const std::string text = io::read_text_file(file);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(file.string() + ": expected a Hugging Face tokenizer.json, found invalid JSON (" + e.what() + ")");
  }
  return std::make_unique<HfTokenizer>(file, j, config, "");
}

std::unique_ptr<Tokenizer> make_hf_tokenizer(const fs::path& source, const json& tokenizer_json, const json& config,
                                             std::string description) {
  return std::make_unique<HfTokenizer>(source, tokenizer_json, config, std::move(description));
}

}  // namespace kvrun::text
