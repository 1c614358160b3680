// Tokenizers from GGUF vocabularies (text/gguf_tokenizer.h) against Hugging Face
// `tokenizers` ids (tools/make_gguf_tokenizer_goldens.py, tests/fixtures/gguf-tokenizer/):
// Gemma 3 from the real GGUF file, Qwen3 / Llama 3 from vocabularies converted as llama.cpp's
// convert_hf_to_gguf.py does, and a tiny committed tokenizer-only .gguf end to end.
#include "text/gguf_tokenizer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "kvrun/chat_template.h"
#include "kvrun/tokenizer.h"
#include "test_util.h"
#include "text/utf8.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;
using text::GgufTokenType;
using text::GgufVocab;

const fs::path kGemmaGguf = gemma3_270m_gguf();

fs::path gguf_tok_fixture(const std::string& name) { return fixture("gguf-tokenizer") / name; }
fs::path hf_dir(const std::string& name) { return source_dir() / ".deps" / "tokenizers" / name; }

const json& goldens() {
  static const json j = [] {
    std::ifstream in(gguf_tok_fixture("goldens.json"));
    return json::parse(in);
  }();
  return j;
}

std::string show(const std::vector<TokenId>& ids) { return json(ids).dump(); }

// A tokenizer.json vocabulary as convert_hf_to_gguf.py writes it for a "gpt2" model: tokens by
// id, added special tokens CONTROL (also added ones that look special, "<|...|>"), other added
// tokens USER_DEFINED, the rest NORMAL; merges as "left right".
GgufVocab gpt2_vocab_from_hf(const std::string& name, const std::string& pre) {
  std::ifstream in(hf_dir(name) / "tokenizer.json");
  const json j = json::parse(in);
  GgufVocab v;
  v.model = "gpt2";
  v.pre = pre;
  v.source = name + " (converted from tokenizer.json)";
  const json& vocab = j["model"]["vocab"];
  size_t n = vocab.size();
  for (const auto& a : j["added_tokens"]) n = std::max(n, a["id"].get<size_t>() + 1);
  v.tokens.resize(n);
  v.token_type.assign(n, static_cast<int32_t>(GgufTokenType::Unused));
  for (size_t i = 0; i < n; ++i) v.tokens[i] = "[PAD" + std::to_string(i) + "]";
  for (const auto& [tok, id] : vocab.items()) {
    v.tokens[id.get<size_t>()] = tok;
    v.token_type[id.get<size_t>()] = static_cast<int32_t>(GgufTokenType::Normal);
  }
  for (const auto& a : j["added_tokens"]) {
    const std::string c = a["content"];
    const bool looks_special = c.size() >= 4 && c.rfind("<|", 0) == 0 && c.compare(c.size() - 2, 2, "|>") == 0;
    v.tokens[a["id"].get<size_t>()] = c;
    v.token_type[a["id"].get<size_t>()] = static_cast<int32_t>(
        a["special"].get<bool>() || looks_special ? GgufTokenType::Control : GgufTokenType::UserDefined);
  }
  for (const auto& m : j["model"]["merges"])
    v.merges.push_back(m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>());
  // What each tokenizer.json's post-processor adds with add_special_tokens=True (nothing for these two).
  v.add_bos = false;
  v.add_eos = false;
  return v;
}

struct Agreement {
  size_t matched = 0, total = 0;
};

// Encodes every golden string with add_special_tokens=True; reports the first differences.
Agreement check_goldens(const Tokenizer& tok, const std::string& name) {
  const json& g = goldens();
  const json& strings = g["strings"];
  const json& ids = g["ids"][name];
  EXPECT_EQ(strings.size(), ids.size());
  Agreement a;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::string s = strings[i];
    const auto want = ids[i].get<std::vector<TokenId>>();
    const auto got = tok.encode(s, true);
    ++a.total;
    if (got == want) {
      ++a.matched;
    } else if (a.total - a.matched <= 5) {
      ADD_FAILURE() << name << ": ids differ for " << json(s).dump() << "\n  expected " << show(want) << "\n  found    "
                    << show(got);
    }
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ gguf-tok ] %s: %zu / %zu strings identical to Hugging Face tokenizers (%.2f s)\n", name.c_str(),
              a.matched, a.total, sec);
  EXPECT_EQ(a.matched, a.total) << name;
  EXPECT_GE(a.total, 2000u);
  EXPECT_LT(sec, 5.0) << name << ": encoding the goldens is too slow";
  return a;
}

const Tokenizer& gemma() {
  static const std::unique_ptr<Tokenizer> t = Tokenizer::load(kGemmaGguf);
  return *t;
}

#define SKIP_WITHOUT_GEMMA_GGUF()                                                               \
  if (!fs::exists(kGemmaGguf))                                                                  \
  GTEST_SKIP() << kGemmaGguf                                                                    \
               << " is absent (scripts/install-deps.sh fetches the Gemma 3 270M Q4_K_M GGUF); " \
                  "the GGUF Gemma 3 tokenizer is not checked"

TEST(GgufTokenizer, Gemma3FromGgufMatchesHf) {
  SKIP_WITHOUT_GEMMA_GGUF();
  const Tokenizer& tok = gemma();
  EXPECT_EQ(tok.vocab_size(), 262144);
  EXPECT_EQ(tok.description(), "GGUF SentencePiece-style vocabulary (llama.cpp SPM)");
  ASSERT_TRUE(tok.bos_token());
  EXPECT_EQ(tok.bos_token()->id, 2);
  EXPECT_EQ(tok.eos_token()->text, "<eos>");
  EXPECT_EQ(tok.encode("The capital of France is", true), (std::vector<TokenId>{2, 818, 5279, 529, 7001, 563}));
  check_goldens(tok, "gemma3");
}

TEST(GgufTokenizer, Qwen3VocabMatchesHf) {
  if (!fs::exists(hf_dir("qwen3") / "tokenizer.json")) GTEST_SKIP() << "no " << hf_dir("qwen3");
  const auto tok = text::make_gguf_tokenizer(gpt2_vocab_from_hf("qwen3", "qwen2"));
  EXPECT_EQ(tok->description(), "GGUF byte-level BPE vocabulary (pre-tokenizer qwen2)");
  EXPECT_TRUE(tok->is_special(151644));
  check_goldens(*tok, "qwen3");
}

TEST(GgufTokenizer, Llama3VocabMatchesHf) {
  if (!fs::exists(hf_dir("llama3") / "tokenizer.json")) GTEST_SKIP() << "no " << hf_dir("llama3");
  const auto tok = text::make_gguf_tokenizer(gpt2_vocab_from_hf("llama3", "llama-bpe"));
  check_goldens(*tok, "llama3");
  // No normalizer: decode(encode(s)) == s, special tokens written out.
  for (const auto& sj : goldens()["strings"]) {
    const std::string s = sj;
    ASSERT_EQ(tok->decode(tok->encode(s)), s) << json(s).dump();
  }
  EXPECT_EQ(tok->decode(tok->encode("<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"), true), "user\n\nhi");
}

// The committed tokenizer-only GGUF: every key read, and ids from the script's own SPM.
TEST(GgufTokenizer, TinyGgufEndToEnd) {
  const io::GgufFile f(gguf_tok_fixture("tiny.gguf"));
  const GgufVocab v = text::read_gguf_vocab(f);
  EXPECT_EQ(v.model, "llama");
  EXPECT_EQ(v.pre, "default");
  ASSERT_EQ(v.tokens.size(), v.scores.size());
  ASSERT_EQ(v.tokens.size(), v.token_type.size());
  EXPECT_EQ(v.tokens[2], "<bos>");
  EXPECT_EQ(v.token_type[2], static_cast<int32_t>(GgufTokenType::Control));
  EXPECT_EQ(v.token_type[7], static_cast<int32_t>(GgufTokenType::UserDefined));
  EXPECT_EQ(v.bos, 2);
  EXPECT_EQ(v.eos, 5);
  EXPECT_EQ(v.unk, 3);
  EXPECT_EQ(v.pad, 0);
  EXPECT_EQ(v.add_bos, true);
  EXPECT_EQ(v.add_eos, false);
  EXPECT_EQ(v.add_space_prefix, true);
  EXPECT_NE(v.chat_template.find("<start_of_turn>"), std::string::npos);

  const auto tok = Tokenizer::load(gguf_tok_fixture("tiny.gguf"));
  EXPECT_EQ(tok->vocab_size(), static_cast<int64_t>(v.tokens.size()));
  EXPECT_EQ(tok->eos_token()->text, "<end_of_turn>");
  EXPECT_EQ(tok->pad_token()->id, 0);
  std::ifstream in(gguf_tok_fixture("tiny.json"));
  const json cases = json::parse(in)["cases"];
  ASSERT_GE(cases.size(), 100u);
  size_t bad = 0, round_trips = 0;
  for (const auto& c : cases) {
    const std::string s = c["text"];
    const auto want = c["ids"].get<std::vector<TokenId>>();
    const auto got = tok->encode(s, true);
    if (got != want && ++bad <= 5)
      ADD_FAILURE() << "ids differ for " << json(s).dump() << "\n  expected " << show(want) << "\n  found    "
                    << show(got);
    // The space add_space_prefix puts in front is dropped again; control tokens are skipped.
    // (After a special token, "\n" included, llama.cpp's SPM adds a '▁' that decode keeps.)
    if (s.find_first_of("<[\n") == std::string::npos) {
      EXPECT_EQ(tok->decode(got, true), s);
      ++round_trips;
    }
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_GT(round_trips, 50u);
  // add_space_prefix: every text piece after a special token starts with '▁', as in llama.cpp.
  EXPECT_EQ(tok->decode(tok->encode("<start_of_turn>user\nhi", true)), "<bos><start_of_turn> user\n hi");
  EXPECT_EQ(tok->decode(tok->encode("<start_of_turn>user\nhi", true), true), "user\n hi");
}

// Chat templates come from the GGUF: tiny.gguf holds Gemma 3's instruction template, which
// must render the Gemma 3 chat goldens (tests/fixtures/chat_templates) byte for byte.
TEST(GgufTokenizer, ChatTemplateFromGguf) {
  const ChatTemplate t = ChatTemplate::from_gguf(gguf_tok_fixture("tiny.gguf"));
  EXPECT_EQ(t.special_tokens().value("bos_token", ""), "<bos>");
  EXPECT_EQ(t.special_tokens().value("eos_token", ""), "<end_of_turn>");
  std::ifstream in(fixture("chat_templates/goldens.json"));
  const nlohmann::ordered_json g = nlohmann::ordered_json::parse(in);
  EXPECT_EQ(t.source(), g["templates"]["gemma3"]["source"].get<std::string>());
  int checked = 0;
  for (const auto& c : g["cases"]) {
    if (c["template"] != "gemma3" || !c.contains("expected")) continue;
    SCOPED_TRACE(c["name"].get<std::string>());
    ChatOptions o;
    if (c["options"].contains("add_generation_prompt"))
      o.add_generation_prompt = c["options"]["add_generation_prompt"].get<bool>();
    EXPECT_EQ(t.render(c["messages"], o), c["expected"].get<std::string>());
    ++checked;
  }
  EXPECT_GE(checked, 8);
  // A GGUF without a template (the fixtures of tests/gguf_test.cpp) gets ChatML.
  EXPECT_EQ(ChatTemplate::from_gguf(fixture("gguf/v2.gguf")).source(), ChatTemplate::chatml().source());
}

// Decoding: decode(encode(s)) == s on the golden strings; byte fallback pieces reassembled.
TEST(GgufTokenizer, Gemma3DecodeRoundTrip) {
  SKIP_WITHOUT_GEMMA_GGUF();
  const Tokenizer& tok = gemma();
  size_t n = 0;
  for (const auto& sj : goldens()["strings"]) {
    const std::string s = sj;
    if (s.find("\xE2\x96\x81") != std::string::npos) continue;  // a typed '▁' decodes as ' ' (as in `tokenizers`)
    const auto ids = tok.encode(s, true);
    ASSERT_EQ(tok.decode(ids), "<bos>" + s) << json(s).dump() << " " << show(ids);
    ++n;
  }
  EXPECT_GE(n, 2000u);
  // A character without a token comes as <0xXX> byte tokens.
  const std::string rare = "\U0010FFFD";  // private use: no token
  const auto ids = tok.encode(rare);
  ASSERT_EQ(ids.size(), 4u) << show(ids);
  for (TokenId id : ids) EXPECT_EQ(tok.id_to_token(id).rfind("<0x", 0), 0u) << tok.id_to_token(id);
  EXPECT_EQ(tok.decode(ids), rare);
  // Incomplete bytes: one U+FFFD each, as `tokenizers`' ByteFallback decoder writes them.
  EXPECT_EQ(tok.decode(std::vector<TokenId>(ids.begin(), ids.end() - 1)), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(GgufTokenizer, Gemma3SpecialTokens) {
  SKIP_WITHOUT_GEMMA_GGUF();
  const Tokenizer& tok = gemma();
  const auto ids = tok.encode("<start_of_turn>user\nhi<end_of_turn>\n", true);
  EXPECT_EQ(ids, (std::vector<TokenId>{2, 105, 2364, 107, 2202, 106, 107}));
  EXPECT_TRUE(tok.is_special(105));
  EXPECT_TRUE(tok.is_special(2));
  EXPECT_FALSE(tok.is_special(107));  // "\n" is USER_DEFINED
  EXPECT_EQ(tok.token_to_id("<end_of_turn>"), 106);
  EXPECT_EQ(tok.id_to_token(107), "\n");
  EXPECT_EQ(tok.decode(ids), "<bos><start_of_turn>user\nhi<end_of_turn>\n");
  EXPECT_EQ(tok.decode(ids, true), "user\nhi\n");
  EXPECT_EQ(tok.encode("hi", false), std::vector<TokenId>{2202});
}

// Streaming over Gemma's byte-fallback tokens never emits a partial character.
TEST(GgufTokenizer, Gemma3TextStreamer) {
  SKIP_WITHOUT_GEMMA_GGUF();
  const Tokenizer& tok = gemma();
  const std::vector<std::string> texts = {"\U0010FFFD\U000E0041 private use, tags",
                                          "日本語のテキスト、中文文本，한국어",
                                          "👩‍👩‍👧‍👦 family 👍🏽 and 🏳️‍🌈",
                                          "  spaced   out  ", "<start_of_turn>model\nÇa va? 😀<end_of_turn>"};
  bool split = false;
  for (const auto& s : texts) {
    for (bool skip : {false, true}) {
      const auto ids = tok.encode(s, true);
      TextStreamer st(tok, skip);
      std::string all;
      for (TokenId id : ids) {
        const std::string chunk = st.put(id);
        EXPECT_NO_THROW(text::check_utf8(chunk, "chunk")) << json(s).dump();
        EXPECT_EQ(chunk.find("\xEF\xBF\xBD"), std::string::npos) << json(s).dump();
        all += chunk;
      }
      all += st.flush();
      EXPECT_EQ(all, tok.decode(ids, skip)) << json(s).dump();
    }
    for (TokenId id : tok.encode(s))
      split = split || tok.decode(std::vector<TokenId>{id}).find("\xEF\xBF\xBD") != std::string::npos;
  }
  EXPECT_TRUE(split) << "no text split a character across byte tokens";
  TextStreamer st(tok, true);
  std::string all;
  for (TokenId id : tok.encode("<start_of_turn>model\nÇa va? 😀<end_of_turn>", true)) all += st.put(id);
  all += st.flush();
  EXPECT_EQ(all, "model\nÇa va? 😀");
}

TEST(GgufTokenizer, Errors) {
  const io::GgufFile f(gguf_tok_fixture("tiny.gguf"));
  const GgufVocab good = text::read_gguf_vocab(f);
  GgufVocab v = good;
  v.model = "bert";
  expect_error([&] { text::make_gguf_tokenizer(v); }, {"tokenizer.ggml.model", "bert", "llama", "gpt2"});
  v = good;
  v.scores.pop_back();
  expect_error([&] { text::make_gguf_tokenizer(v); }, {"tokenizer.ggml.scores", "one per token"});
  v = good;
  v.token_type.push_back(1);
  expect_error([&] { text::make_gguf_tokenizer(v); }, {"tokenizer.ggml.token_type", "one per token"});
  v = good;
  v.token_type[9] = 9;
  expect_error([&] { text::make_gguf_tokenizer(v); }, {"token_type[9]", "found 9"});
  v = good;
  v.bos = 100000;
  expect_error([&] { text::make_gguf_tokenizer(v); }, {"bos_token_id", "100000", "out of range"});
  v = good;
  v.model = "gpt2";
  v.pre = "frobnicate";
  expect_error([&] { text::make_gguf_tokenizer(v); },
               {"tokenizer.ggml.pre", "frobnicate", "known", "qwen2", "llama-bpe", "gpt-2"});
  v.pre = "gpt-2";
  v.merges = {"nosuchpiece x"};
  expect_error([&] { text::make_gguf_tokenizer(v); }, {"merges[0]", "nosuchpiece"});
  expect_error([&] { Tokenizer::load(gguf_tok_fixture("bad_lengths.gguf")); },
               {"bad_lengths.gguf", "tokenizer.ggml.scores", "expected 3", "found 2"});
  expect_error([&] { Tokenizer::load(gguf_tok_fixture("bad_type.gguf")); },
               {"bad_type.gguf", "tokenizer.ggml.bos_token_id", "string"});
  // A GGUF without tokenizer keys.
  expect_error([&] { Tokenizer::load(fixture("gguf/v2.gguf")); }, {"v2.gguf", "tokenizer.ggml.model"});
  expect_error([&] { text::read_gguf_vocab(io::GgufFile(fixture("gguf/v2.gguf"))); },
               {"v2.gguf", "tokenizer.ggml.model"});
  const auto tok = Tokenizer::load(gguf_tok_fixture("tiny.gguf"));
  expect_error([&] { tok->decode(std::vector<TokenId>{1, 99999}); }, {"99999", "out of range"});
  expect_error([&] { tok->encode("bad \xC3 utf8"); }, {"UTF-8", "offset 4"});
}

}  // namespace
}  // namespace kvrun::test
