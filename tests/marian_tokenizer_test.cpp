// Marian tokenizer (src/text/marian_tokenizer.cpp) against transformers' MarianTokenizer
// goldens (tools/make_marian_tokenizer_goldens.py, tests/fixtures/marian-tok/), and every
// bad-input error.
#include "text/marian_tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "test_util.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;
using text::MarianTokenizer;

fs::path marian_fixture(const std::string& variant) {
  const fs::path root = fixture("marian-tok");
  return variant == "shared" ? root : root / variant;
}

const MarianTokenizer& cached(const std::string& variant) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<MarianTokenizer>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& t = cache[variant];
  if (!t) t = MarianTokenizer::load(marian_fixture(variant));
  return *t;
}

const json& goldens() {
  static const json g = [] {
    std::ifstream in(fixture("marian-tok") / "goldens.json");
    EXPECT_TRUE(in);
    return json::parse(in);
  }();
  return g;
}

std::string show(const std::vector<TokenId>& ids) { return json(ids).dump(); }

void check_variant(const std::string& variant) {
  const MarianTokenizer& tok = cached(variant);
  const json& v = goldens()["variants"][variant];
  ASSERT_GE(v["encode"].size(), 300u);
  size_t bad_src = 0, bad_tgt = 0, bad_dec = 0, errors = 0;
  for (const auto& e : v["encode"]) {
    const std::string s = e["text"];
    const auto want_src = e["source"].get<std::vector<TokenId>>(), want_tgt = e["target"].get<std::vector<TokenId>>();
    const auto src = tok.encode_source(s), tgt = tok.encode_target(s);
    if (src != want_src && ++bad_src <= 5)
      ADD_FAILURE() << variant << ": source ids differ for " << json(s).dump() << "\n  expected " << show(want_src)
                    << "\n  found    " << show(src);
    if (tgt != want_tgt && ++bad_tgt <= 5)
      ADD_FAILURE() << variant << ": target ids differ for " << json(s).dump() << "\n  expected " << show(want_tgt)
                    << "\n  found    " << show(tgt);
  }
  for (const auto& d : v["decode"]) {
    const auto ids = d["ids"].get<std::vector<TokenId>>();
    if (d.contains("error")) {
      ++errors;
      EXPECT_THROW(tok.decode(ids), Error) << variant << ": transformers refuses " << show(ids);
      continue;
    }
    const std::string got = tok.decode(ids), got_skip = tok.decode(ids, true);
    if ((got != d["text"] || got_skip != d["skip"]) && ++bad_dec <= 5)
      ADD_FAILURE() << variant << ": decode differs for " << show(ids) << "\n  expected " << d["text"].dump()
                    << " / skip " << d["skip"].dump() << "\n  found    " << json(got).dump() << " / skip "
                    << json(got_skip).dump();
  }
  EXPECT_EQ(bad_src, 0u) << variant << ": " << bad_src << " of " << v["encode"].size() << " source encodes differ";
  EXPECT_EQ(bad_tgt, 0u) << variant << ": " << bad_tgt << " target encodes differ";
  EXPECT_EQ(bad_dec, 0u) << variant << ": " << bad_dec << " of " << v["decode"].size() << " decodes differ";
  EXPECT_GE(errors, 3u);
}

TEST(MarianTok, GoldensSharedVocab) { check_variant("shared"); }
TEST(MarianTok, GoldensSeparateVocabs) { check_variant("separate"); }
TEST(MarianTok, GoldensAddedTokenFlagsAndExtraSpecials) { check_variant("specials"); }

TEST(MarianTok, Accessors) {
  const MarianTokenizer& tok = cached("shared");
  EXPECT_EQ(tok.eos_id(), 0);
  EXPECT_EQ(tok.unk_id(), 1);
  EXPECT_EQ(tok.pad_id(), tok.vocab_size() - 1);
  EXPECT_EQ(tok.target_vocab_size(), tok.vocab_size());
  EXPECT_EQ(tok.id_to_piece(0), "</s>");
  EXPECT_EQ(tok.id_to_piece(tok.pad_id()), "<pad>");
  EXPECT_EQ(tok.id_to_piece(2), ">>fr<<");
  EXPECT_EQ(tok.model_max_length(), 512);
  EXPECT_FALSE(tok.separate_vocabs());
  EXPECT_EQ(tok.language_codes(), (std::vector<std::string>{">>fr<<", ">>de<<", ">>es<<", ">>zh_Hans<<", ">>pt_BR<<"}));
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_TRUE(tok.is_special(tok.pad_id()));
  EXPECT_FALSE(tok.is_special(2));
  ASSERT_TRUE(tok.eos_token() && tok.pad_token());
  EXPECT_EQ(tok.eos_token()->id, 0);
  EXPECT_FALSE(tok.bos_token());
  EXPECT_EQ(tok.token_to_id(">>de<<"), 3);
  EXPECT_FALSE(tok.token_to_id("no such piece"));
  // kvrun::Tokenizer interface: encode() is the source side, </s> only with add_special_tokens.
  auto ids = tok.encode_source(">>fr<< Hello world");
  EXPECT_EQ(ids.front(), 2);
  EXPECT_EQ(ids.back(), 0);
  ids.pop_back();
  EXPECT_EQ(tok.encode(">>fr<< Hello world"), ids);
  EXPECT_EQ(tok.encode_source(""), std::vector<TokenId>{0});

  const MarianTokenizer& sep = cached("separate");
  EXPECT_TRUE(sep.separate_vocabs());
  EXPECT_NE(sep.target_vocab_size(), sep.vocab_size());
  EXPECT_TRUE(sep.language_codes().empty());
  // Tokenizer::load recognises a Marian folder.
  const auto any = Tokenizer::load(marian_fixture("shared"));
  EXPECT_EQ(any->description(), tok.description());
  EXPECT_EQ(any->encode("I am a small frog", true), tok.encode_source("I am a small frog"));
}

TEST(MarianTok, ConcurrentEncode) {
  const MarianTokenizer& tok = cached("shared");
  const json& enc = goldens()["variants"]["shared"]["encode"];
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = static_cast<size_t>(t); i < enc.size(); i += 4)
        if (tok.encode_source(enc[i]["text"].get<std::string>()) != enc[i]["source"].get<std::vector<TokenId>>()) ++bad;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

// A copy of the shared fixture in a temp folder, with `edit` applied.
struct Folder {
  TempDir tmp;
  fs::path dir() const { return tmp.path() / "m"; }
  Folder() {
    fs::create_directories(dir());
    for (const char* f : {"source.spm", "target.spm", "vocab.json", "tokenizer_config.json"})
      fs::copy_file(marian_fixture("shared") / f, dir() / f);
  }
  void write(const std::string& name, const std::string& text) const { std::ofstream(dir() / name) << text; }
  json vocab() const {
    std::ifstream in(dir() / "vocab.json");
    return json::parse(in);
  }
};

TEST(MarianTok, BadFiles) {
  TempDir tmp;
  expect_error([&] { MarianTokenizer::load(tmp / "nope"); }, {"nope", "Marian tokenizer folder", "no such folder"});
  for (const char* missing : {"source.spm", "target.spm", "vocab.json"}) {
    Folder f;
    fs::remove(f.dir() / missing);
    expect_error([&] { MarianTokenizer::load(f.dir()); },
                 {missing, "missing", "source.spm, target.spm and vocab.json"});
  }
  {
    Folder f;
    f.write("source.spm", "not a sentencepiece model");
    expect_error([&] { MarianTokenizer::load(f.dir()); }, {"source.spm", "SentencePiece model", "does not load"});
  }
  {  // a real SentencePiece model that does not belong to this vocabulary
    Folder f;
    fs::remove(f.dir() / "target.spm");
    fs::copy_file(fixture("tokenizers") / "tiny_sp.model", f.dir() / "target.spm");
    expect_error([&] { MarianTokenizer::load(f.dir()); },
                 {"target.spm", "pieces are in", "vocab.json", "expected most"});
  }
  auto vocab_error = [](const std::string& text, const std::vector<std::string>& frags) {
    Folder f;
    f.write("vocab.json", text);
    auto all = frags;
    all.push_back("vocab.json");
    expect_error([&] { MarianTokenizer::load(f.dir()); }, all);
  };
  vocab_error("{\"</s>\": 0, ", {"invalid JSON"});
  vocab_error("[\"</s>\", \"<unk>\"]", {"expected a JSON object", "array"});
  vocab_error("{}", {"empty object"});
  vocab_error("{\"</s>\": 0, \"<unk>\": \"1\"}", {"<unk>", "expected an integer id"});
  vocab_error("{\"</s>\": 0, \"<unk>\": 1.5}", {"<unk>", "1.5", "expected an integer id"});
  vocab_error("{\"</s>\": 0, \"<unk>\": true}", {"<unk>", "expected an integer id"});
  vocab_error("{\"</s>\": 0, \"<unk>\": 1, \"</s>\": 2}", {"</s>", "more than once"});
  vocab_error("{\"</s>\": 0, \"<unk>\": 0}", {"id 0", "both", "expected each id once"});
  vocab_error("{\"</s>\": 0, \"<unk>\": 5}", {"<unk>", "id 5", "0..1", "contiguous"});
  vocab_error("{\"</s>\": -1, \"<unk>\": 0}", {"id -1", "contiguous"});
  vocab_error("{\"</s>\": 18446744073709551615, \"<unk>\": 0}", {"18446744073709551615", "contiguous"});
  {  // eos / unk / pad missing
    for (const char* tok : {"</s>", "<unk>", "<pad>"}) {
      Folder f;
      json v = f.vocab();
      const int id = v[tok];
      v.erase(tok);
      v["<renamed>"] = id;
      f.write("vocab.json", v.dump());
      expect_error([&] { MarianTokenizer::load(f.dir()); }, {"vocab.json", tok, "not in the vocabulary"});
    }
  }
  {  // a special token from tokenizer_config.json that the vocabulary lacks
    Folder f;
    f.write("tokenizer_config.json", R"({"additional_special_tokens": ["<eop>"]})");
    expect_error([&] { MarianTokenizer::load(f.dir()); }, {"vocab.json", "<eop>", "not in the vocabulary"});
  }
  auto config_error = [](const std::string& text, const std::vector<std::string>& frags) {
    Folder f;
    f.write("tokenizer_config.json", text);
    auto all = frags;
    all.push_back("tokenizer_config.json");
    expect_error([&] { MarianTokenizer::load(f.dir()); }, all);
  };
  config_error("{", {"invalid JSON"});
  config_error("[1]", {"expected a JSON object"});
  config_error(R"({"separate_vocabs": "yes"})", {"separate_vocabs", "expected true or false"});
  config_error(R"({"model_max_length": "big"})", {"model_max_length", "positive integer"});
  config_error(R"({"model_max_length": -3})", {"model_max_length", "positive integer"});
  config_error(R"({"eos_token": 5})", {"eos_token", "expected a token"});
  config_error(R"({"eos_token": null})", {"eos_token", "missing or null"});
  config_error(R"({"additional_special_tokens": 7})", {"additional_special_tokens", "list"});
  config_error(R"({"added_tokens_decoder": {"x": {"content": "</s>"}}})", {"added_tokens_decoder", "token id"});
  config_error(R"({"added_tokens_decoder": {"5": {"content": "</s>"}}})", {"</s>", "id 5", "vocab.json gives it (0)"});
  config_error(R"({"added_tokens_decoder": {"0": {"content": "</s>", "lstrip": 1}}})", {"lstrip", "true or false"});
  config_error(R"({"separate_vocabs": true})", {"target_vocab.json", "missing", "separate_vocabs"});
  {
    Folder f;
    f.write("tokenizer_config.json", R"({"separate_vocabs": true})");
    f.write("target_vocab.json", R"({"a": 0, "a": 1})");
    expect_error([&] { MarianTokenizer::load(f.dir()); }, {"target_vocab.json", "\"a\"", "more than once"});
  }
  {  // tokenizer_config.json and special_tokens_map.json are optional; model_max_length 1e30 = no limit
    Folder f;
    fs::remove(f.dir() / "tokenizer_config.json");
    EXPECT_EQ(MarianTokenizer::load(f.dir())->model_max_length(), 512);
    f.write("tokenizer_config.json", R"({"model_max_length": 1e30})");
    EXPECT_EQ(MarianTokenizer::load(f.dir())->model_max_length(), INT64_MAX);
    f.write("special_tokens_map.json", R"({"pad_token": "<gone>"})");
    expect_error([&] { MarianTokenizer::load(f.dir()); }, {"<gone>", "not in the vocabulary"});
  }
}

TEST(MarianTok, BadTextAndIds) {
  const MarianTokenizer& tok = cached("shared");
  expect_error([&] { tok.encode_source("bad \xC3 utf8"); }, {"UTF-8", "0xC3", "offset 4"});
  expect_error([&] { tok.encode_target("\xFF"); }, {"UTF-8", "0xFF", "offset 0"});
  expect_error([&] { tok.encode_source(std::string("\xED\xA0\x80", 3)); }, {"UTF-8"});  // a surrogate
  expect_error([&] { tok.decode(std::vector<TokenId>{5, 999999}); }, {"999999", "out of range"});
  expect_error([&] { tok.decode(std::vector<TokenId>{-1}); }, {"-1", "out of range"});
  expect_error([&] { tok.id_to_piece(static_cast<TokenId>(tok.vocab_size())); }, {"out of range"});
  // Odd but valid input never crashes.
  std::string all_bytes;
  for (int c = 1; c < 128; ++c) all_bytes += static_cast<char>(c);
  EXPECT_EQ(tok.encode_source(all_bytes).back(), 0);
  EXPECT_EQ(tok.encode_source(std::string(5000, '>')).back(), 0);
  EXPECT_EQ(tok.encode_source(std::string("a\0b", 3)).back(), 0);
  EXPECT_NO_THROW(tok.decode(std::vector<TokenId>{}));
}

}  // namespace
}  // namespace kvrun::test
