// GGUF vocabularies -> kvrun::Tokenizer: llama.cpp's SPM tokenizer ("llama") and the
// tokenizer.json byte-level BPE ("gpt2"). See text/gguf_tokenizer.h.
#include "text/gguf_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "io/gguf.h"
#include "text/literal_trie.h"
#include "text/str_map.h"
#include "text/tokenizer_impl.h"
#include "text/utf8.h"

namespace kvrun::text {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

using TokenMap = StrMap<TokenId>;

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581 '▁'

// ' ' -> '▁' (llama_escape_whitespace).
std::string escape_spaces(std::string_view s) {
  std::string r;
  r.reserve(s.size() + 8);
  for (char c : s)
    if (c == ' ')
      r += kSpace;
    else
      r += c;
  return r;
}

[[noreturn]] void fail(const GgufVocab& v, const std::string& msg) { throw Error(v.source + ": " + msg); }

GgufTokenType type_of(const GgufVocab& v, size_t id) {
  return v.token_type.empty() ? GgufTokenType::Normal : static_cast<GgufTokenType>(v.token_type[id]);
}

void check_vocab(const GgufVocab& v) {
  if (v.tokens.empty()) fail(v, "tokenizer.ggml.tokens: expected at least one token, found none");
  if (v.tokens.size() >= (size_t{1} << 31)) fail(v, "tokenizer.ggml.tokens: too many tokens");
  if (!v.scores.empty() && v.scores.size() != v.tokens.size())
    fail(v, "tokenizer.ggml.scores: expected " + std::to_string(v.tokens.size()) + " values (one per token), found " +
                std::to_string(v.scores.size()));
  if (!v.token_type.empty() && v.token_type.size() != v.tokens.size())
    fail(v, "tokenizer.ggml.token_type: expected " + std::to_string(v.tokens.size()) +
                " values (one per token), found " + std::to_string(v.token_type.size()));
  for (size_t i = 0; i < v.token_type.size(); ++i)
    if (v.token_type[i] < 1 || v.token_type[i] > 6)
      fail(v, "tokenizer.ggml.token_type[" + std::to_string(i) + "]: expected 1..6 (NORMAL..BYTE), found " +
                  std::to_string(v.token_type[i]));
  const std::pair<const char*, const std::optional<TokenId>*> ids[] = {{"bos_token_id", &v.bos},
                                                                       {"eos_token_id", &v.eos},
                                                                       {"unknown_token_id", &v.unk},
                                                                       {"padding_token_id", &v.pad},
                                                                       {"eot_token_id", &v.eot}};
  for (const auto& [key, id] : ids)
    if (*id && (**id < 0 || static_cast<size_t>(**id) >= v.tokens.size()))
      fail(v, std::string("tokenizer.ggml.") + key + ": id " + std::to_string(**id) + " is out of range (" +
                  std::to_string(v.tokens.size()) + " tokens)");
  for (size_t i = 0; i < v.tokens.size(); ++i)
    check_utf8(v.tokens[i], "tokenizer.ggml.tokens[" + std::to_string(i) + "]");
}

std::optional<SpecialToken> special(const GgufVocab& v, const std::optional<TokenId>& id) {
  if (!id) return std::nullopt;
  return SpecialToken{v.tokens[*id], *id};
}

// ---- "llama": llama.cpp's llm_tokenizer_spm
class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(GgufVocab v) : v_(std::move(v)) {
    const size_t n = v_.tokens.size();
    if (v_.scores.empty()) v_.scores.assign(n, 0.0f);
    if (v_.token_type.empty()) v_.token_type.assign(n, static_cast<int32_t>(GgufTokenType::Normal));
    add_bos_ = v_.add_bos.value_or(true);
    add_eos_ = v_.add_eos.value_or(false);
    add_space_prefix_ = v_.add_space_prefix.value_or(true);
    if (add_bos_ && !v_.bos)
      fail(v_, "tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing");
    if (add_eos_ && !v_.eos)
      fail(v_, "tokenizer.ggml.add_eos_token is true but tokenizer.ggml.eos_token_id is missing");
    ids_.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      ids_[v_.tokens[i]] = static_cast<TokenId>(i);  // later ids win, as llama.cpp's token_to_id
      const auto t = type_of(v_, i);
      if (t == GgufTokenType::Control || t == GgufTokenType::UserDefined || t == GgufTokenType::Unknown)
        specials_.add(v_.tokens[i], static_cast<int>(i));
    }
    // convert_hf_to_gguf.py wrote USER_DEFINED tokens with '▁' as spaces ("▁▁" -> "  "). The
    // tokenizer.json they came from also matches the '▁' form (typed in the text, or formed by
    // merges): so does this, for ids identical to Hugging Face `tokenizers`.
    for (size_t i = 0; i < n; ++i) {
      if (type_of(v_, i) != GgufTokenType::UserDefined || v_.tokens[i].find(' ') == std::string::npos) continue;
      const std::string escaped = escape_spaces(v_.tokens[i]);
      specials_.add(escaped, static_cast<int>(i));
      ids_.emplace(escaped, static_cast<TokenId>(i));  // an existing token of that text keeps it
    }
    bytes_.fill(-1);
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      if (auto it = ids_.find(std::string_view(name)); it != ids_.end()) bytes_[b] = it->second;
    }
    bos_ = special(v_, v_.bos);
    eos_ = special(v_, v_.eos);
    pad_ = special(v_, v_.pad);
  }

  std::vector<TokenId> encode(std::string_view text, bool add_special_tokens) const override {
    check_utf8(text, "encode");
    std::vector<TokenId> out;
    out.reserve(text.size() / 3 + 4);
    if (add_special_tokens && add_bos_) out.push_back(*v_.bos);
    bool prev_special = true;
    std::string piece;
    size_t pos = 0;
    for (;;) {
      auto [start, stop, id] = specials_.find(text, pos);
      if (start > pos) {
        piece.clear();
        if (add_space_prefix_ && prev_special) piece += kSpace;
        piece += escape_spaces(text.substr(pos, start - pos));
        encode_piece(piece, out);
        prev_special = false;
      }
      if (id < 0) break;
      out.push_back(id);
      prev_special = true;
      pos = stop;
    }
    if (add_special_tokens && add_eos_) out.push_back(*v_.eos);
    return out;
  }

  std::string decode(std::span<const TokenId> ids, bool skip_special_tokens) const override {
    std::string out, bytes;
    auto flush = [&] {
      if (bytes.empty()) return;
      if (utf8_lossy(bytes) == bytes)
        out += bytes;
      else
        for (size_t k = 0; k < bytes.size(); ++k) out += "\xEF\xBF\xBD";  // as `tokenizers`' ByteFallback
      bytes.clear();
    };
    bool first = true;
    for (TokenId id : ids) {
      check_id(id);
      if (skip_special_tokens && is_special(id)) continue;
      const std::string& t = v_.tokens[id];
      const auto type = type_of(v_, id);
      if (type == GgufTokenType::Byte && t.size() == 6 && std::isxdigit(static_cast<unsigned char>(t[3])) &&
          std::isxdigit(static_cast<unsigned char>(t[4]))) {
        bytes += static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16));
        first = false;
        continue;
      }
      flush();
      std::string s;
      if (type == GgufTokenType::Normal || type == GgufTokenType::Unused || type == GgufTokenType::Unknown) {
        for (size_t p = 0; p < t.size();) {
          if (t.compare(p, kSpace.size(), kSpace) == 0) {
            s += ' ';
            p += kSpace.size();
          } else {
            s += t[p++];
          }
        }
      } else {
        s = t;
      }
      // llama.cpp's detokenize drops the space add_space_prefix put before the first piece.
      if (first && add_space_prefix_ && !s.empty() && s[0] == ' ') s.erase(0, 1);
      first = false;
      out += s;
    }
    flush();
    return out;
  }

  std::optional<TokenId> token_to_id(std::string_view token) const override {
    if (auto it = ids_.find(token); it != ids_.end()) return it->second;
    return std::nullopt;
  }
  std::string id_to_token(TokenId id) const override {
    check_id(id);
    return v_.tokens[id];
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(v_.tokens.size()); }
  bool is_special(TokenId id) const override {
    return id >= 0 && static_cast<size_t>(id) < v_.tokens.size() && type_of(v_, id) == GgufTokenType::Control;
  }
  std::string description() const override { return "GGUF SentencePiece-style vocabulary (llama.cpp SPM)"; }

 private:
  GgufVocab v_;
  bool add_bos_ = true, add_eos_ = false, add_space_prefix_ = true;
  TokenMap ids_;
  LiteralTrie specials_;
  std::array<TokenId, 256> bytes_{};

  void check_id(TokenId id) const {
    if (id < 0 || static_cast<size_t>(id) >= v_.tokens.size())
      throw Error("token id " + std::to_string(id) + " is out of range: expected 0 <= id < " +
                  std::to_string(v_.tokens.size()));
  }

  struct Symbol {
    uint32_t off, n;  // n == 0: merged into its left neighbour
    int prev, next;
  };
  struct Bigram {
    float score;
    int left, right;
    uint32_t size;
    // std::push_heap keeps the largest on top: higher score first, then the leftmost.
    bool operator<(const Bigram& o) const { return score < o.score || (score == o.score && left > o.left); }
  };

  // llm_tokenizer_spm_session::tokenize on one piece of text ('▁' for spaces already).
  void encode_piece(std::string_view s, std::vector<TokenId>& out) const {
    if (s.empty()) return;
    thread_local std::vector<Symbol> sym;
    thread_local std::vector<Bigram> heap;
    sym.clear();
    heap.clear();
    for (size_t off = 0; off < s.size();) {
      const size_t n = std::min(utf8_len(static_cast<unsigned char>(s[off])), s.size() - off);
      const int idx = static_cast<int>(sym.size());
      sym.push_back(
          {static_cast<uint32_t>(off), static_cast<uint32_t>(n), idx - 1, off + n == s.size() ? -1 : idx + 1});
      off += n;
    }
    auto try_add = [&](int l, int r) {
      if (l < 0 || r < 0) return;
      const std::string_view t = s.substr(sym[l].off, sym[l].n + sym[r].n);
      auto it = ids_.find(t);
      if (it == ids_.end()) return;
      heap.push_back({v_.scores[it->second], l, r, static_cast<uint32_t>(t.size())});
      std::push_heap(heap.begin(), heap.end());
    };
    for (int i = 1; i < static_cast<int>(sym.size()); ++i) try_add(i - 1, i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end());
      const Bigram b = heap.back();
      heap.pop_back();
      Symbol& l = sym[b.left];
      Symbol& r = sym[b.right];
      if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;  // stale
      l.n += r.n;
      r.n = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }
    // A merged symbol is always a token; a lone character without one becomes byte tokens.
    for (int i = 0; i >= 0; i = sym[i].next) {
      const std::string_view t = s.substr(sym[i].off, sym[i].n);
      if (auto it = ids_.find(t); it != ids_.end()) {
        out.push_back(it->second);
        continue;
      }
      for (unsigned char c : t) {
        if (bytes_[c] >= 0)
          out.push_back(bytes_[c]);
        else if (v_.unk)
          out.push_back(*v_.unk);
        else
          throw Error(v_.source + ": no token for byte " + std::to_string(c) +
                      " (no <0xXX> byte token and no tokenizer.ggml.unknown_token_id)");
      }
    }
  }
};

// ---- "gpt2": the tokenizer.json BPE, built in memory
struct PreTokenizer {
  const char* name;
  const char* regex;  // tokenizer.json Split regex (Isolated), as the models' tokenizer.json write it
  bool nfc;           // the model's tokenizer.json normalizes to NFC first
  bool ignore_merges;
};
// GPT-2's regex as `tokenizers`' ByteLevel pre-tokenizer applies it.
constexpr const char* kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr PreTokenizer kPreTokenizers[] = {
    {"gpt-2", kGpt2, false, false},
    {"qwen2",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     true, false},
    {"llama-bpe",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     false, true},
};

std::unique_ptr<Tokenizer> make_gpt2(const GgufVocab& v) {
  const PreTokenizer* pre = nullptr;
  for (const auto& p : kPreTokenizers)
    if (v.pre == p.name) pre = &p;
  if (!pre) {
    std::string known;
    for (const auto& n : gguf_known_pre_tokenizers()) known += (known.empty() ? "" : ", ") + n;
    fail(v, "tokenizer.ggml.pre: pre-tokenizer '" + v.pre +
                "' is not supported for gpt2 vocabularies (known: " + known + ")");
  }
  json vocab = json::object(), added = json::array();
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    const auto t = type_of(v, i);
    if (t == GgufTokenType::Control || t == GgufTokenType::UserDefined)
      added.push_back({{"id", i},
                       {"content", v.tokens[i]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", t == GgufTokenType::Control}});
    vocab[v.tokens[i]] = i;
  }
  json model = {{"type", "BPE"},
                {"vocab", std::move(vocab)},
                {"merges", v.merges},
                {"byte_fallback", false},
                {"ignore_merges", pre->ignore_merges}};
  json pretok = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"}, {"pattern", {{"Regex", pre->regex}}}, {"behavior", "Isolated"}, {"invert", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  json single = json::array(), specials = json::object();
  if (v.add_bos.value_or(false)) {
    if (!v.bos) fail(v, "tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing");
    single.push_back({{"SpecialToken", {{"id", "bos"}, {"type_id", 0}}}});
    specials["bos"] = {{"id", "bos"}, {"ids", {*v.bos}}, {"tokens", {v.tokens[*v.bos]}}};
  }
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (v.add_eos.value_or(false)) {
    if (!v.eos) fail(v, "tokenizer.ggml.add_eos_token is true but tokenizer.ggml.eos_token_id is missing");
    single.push_back({{"SpecialToken", {{"id", "eos"}, {"type_id", 0}}}});
    specials["eos"] = {{"id", "eos"}, {"ids", {*v.eos}}, {"tokens", {v.tokens[*v.eos]}}};
  }
  json j = {{"model", std::move(model)},
            {"added_tokens", std::move(added)},
            {"normalizer", pre->nfc ? json{{"type", "NFC"}} : json()},
            {"pre_tokenizer", std::move(pretok)},
            {"post_processor", {{"type", "TemplateProcessing"}, {"single", single}, {"special_tokens", specials}}},
            {"decoder", {{"type", "ByteLevel"}}}};
  json config = json::object();
  if (v.bos) config["bos_token"] = v.tokens[*v.bos];
  if (v.eos) config["eos_token"] = v.tokens[*v.eos];
  if (v.pad) config["pad_token"] = v.tokens[*v.pad];
  return make_hf_tokenizer(v.source, j, config, "GGUF byte-level BPE vocabulary (pre-tokenizer " + v.pre + ")");
}

}  // namespace

std::vector<std::string> gguf_known_pre_tokenizers() {
  std::vector<std::string> r;
  for (const auto& p : kPreTokenizers) r.emplace_back(p.name);
  return r;
}

std::unique_ptr<Tokenizer> make_gguf_tokenizer(GgufVocab vocab) {
  check_vocab(vocab);
  if (vocab.model == "llama") return std::make_unique<SpmTokenizer>(std::move(vocab));
  if (vocab.model == "gpt2") return make_gpt2(vocab);
  fail(vocab, "tokenizer.ggml.model: '" + vocab.model +
                  "' is not supported (supported: \"llama\" (SentencePiece-style), \"gpt2\" (byte-level BPE))");
}

GgufVocab read_gguf_vocab(const io::GgufFile& f) {
  GgufVocab v;
  v.source = f.path().string();
  v.model = f.get_string("tokenizer.ggml.model");
  if (v.model != "llama" && v.model != "gpt2")
    fail(v, "metadata key 'tokenizer.ggml.model': '" + v.model +
                "' is not supported (supported: \"llama\" (SentencePiece-style), \"gpt2\" (byte-level BPE))");
  v.pre = f.opt_string("tokenizer.ggml.pre").value_or("default");
  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  if (f.has("tokenizer.ggml.scores")) v.scores = f.get_float_array("tokenizer.ggml.scores");
  if (f.has("tokenizer.ggml.token_type")) {
    const auto types = f.get_int_array("tokenizer.ggml.token_type");
    v.token_type.reserve(types.size());
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] < 1 || types[i] > 6)
        fail(v, "metadata key 'tokenizer.ggml.token_type'[" + std::to_string(i) +
                    "]: expected 1..6 (NORMAL..BYTE), found " + std::to_string(types[i]));
      v.token_type.push_back(static_cast<int32_t>(types[i]));
    }
  }
  if (v.model == "gpt2") v.merges = f.get_string_array("tokenizer.ggml.merges");
  auto id = [&](const char* key) -> std::optional<TokenId> {
    const auto x = f.opt_int(std::string("tokenizer.ggml.") + key);
    if (!x) return std::nullopt;
    if (*x < 0 || static_cast<uint64_t>(*x) >= v.tokens.size())
      fail(v, std::string("metadata key 'tokenizer.ggml.") + key + "': id " + std::to_string(*x) +
                  " is out of range (" + std::to_string(v.tokens.size()) + " tokens)");
    return static_cast<TokenId>(*x);
  };
  v.bos = id("bos_token_id");
  v.eos = id("eos_token_id");
  v.unk = id("unknown_token_id");
  v.pad = id("padding_token_id");
  v.eot = id("eot_token_id");
  v.add_bos = f.opt_bool("tokenizer.ggml.add_bos_token");
  v.add_eos = f.opt_bool("tokenizer.ggml.add_eos_token");
  v.add_space_prefix = f.opt_bool("tokenizer.ggml.add_space_prefix");
  v.chat_template = f.opt_string("tokenizer.chat_template").value_or("");
  if (!v.scores.empty() && v.scores.size() != v.tokens.size())
    fail(v, "metadata key 'tokenizer.ggml.scores': expected " + std::to_string(v.tokens.size()) +
                " values (one per token in tokenizer.ggml.tokens), found " + std::to_string(v.scores.size()));
  if (!v.token_type.empty() && v.token_type.size() != v.tokens.size())
    fail(v, "metadata key 'tokenizer.ggml.token_type': expected " + std::to_string(v.tokens.size()) +
                " values (one per token in tokenizer.ggml.tokens), found " + std::to_string(v.token_type.size()));
  return v;
}

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const fs::path& file) {
  const io::GgufFile f(file);
  if (!f.has("tokenizer.ggml.model"))
    throw Error(file.string() + ": this GGUF file has no tokenizer (metadata key 'tokenizer.ggml.model' missing)");
  return make_gguf_tokenizer(read_gguf_vocab(f));
}

}  // namespace kvrun::text
