// Tokenizers against Hugging Face `tokenizers` / SentencePiece goldens
// (tools/make_tokenizer_goldens.py, tests/fixtures/tokenizers/), streaming
// detokenization, bad input, and `kvrun tokenize`.
#include "kvrun/tokenizer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "test_util.h"
#include "text/utf8.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

fs::path real_tokenizer(const std::string& name) { return source_dir() / ".deps" / "tokenizers" / name; }
fs::path tok_fixture(const std::string& name) { return fixture("tokenizers") / name; }

// Loaded once per test binary run (tokenizer.json files are 10-30 MB).
const Tokenizer& cached(const fs::path& path) {
  static std::mutex mu;
  static std::map<fs::path, std::unique_ptr<Tokenizer>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& t = cache[path];
  if (!t) t = Tokenizer::load(path);
  return *t;
}

struct Golden {
  std::string text;
  std::vector<TokenId> ids;
  bool add_special = false;
  std::string decode, decode_skip;
};

std::vector<Golden> read_goldens(const std::string& name) {
  std::ifstream in(tok_fixture(name + ".jsonl"));
  EXPECT_TRUE(in) << name;
  std::vector<Golden> out;
  std::string line;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    Golden g;
    g.text = j["text"];
    g.ids = j["ids"].get<std::vector<TokenId>>();
    g.add_special = j.value("add_special_tokens", false);
    g.decode = j.value("decode", g.text);
    g.decode_skip = j.value("decode_skip", g.decode);
    out.push_back(std::move(g));
  }
  return out;
}

std::string show(const std::vector<TokenId>& ids) { return json(ids).dump(); }

// Every golden: identical ids, and decode (both ways) identical to `tokenizers`.
void check_goldens(const Tokenizer& tok, const std::string& name, size_t min_count) {
  const auto goldens = read_goldens(name);
  ASSERT_GE(goldens.size(), min_count);
  size_t bad_ids = 0, bad_decode = 0;
  for (const auto& g : goldens) {
    const auto ids = tok.encode(g.text, g.add_special);
    if (ids != g.ids && ++bad_ids <= 5)
      ADD_FAILURE() << name << ": ids differ for " << json(g.text).dump() << " (add_special_tokens=" << g.add_special
                    << ")\n  expected " << show(g.ids) << "\n  found    " << show(ids);
    const std::string d = tok.decode(g.ids), ds = tok.decode(g.ids, true);
    if ((d != g.decode || ds != g.decode_skip) && ++bad_decode <= 5)
      ADD_FAILURE() << name << ": decode differs for " << show(g.ids) << "\n  expected " << json(g.decode).dump()
                    << " / skip " << json(g.decode_skip).dump() << "\n  found    " << json(d).dump() << " / skip "
                    << json(ds).dump();
  }
  EXPECT_EQ(bad_ids, 0u) << name << ": " << bad_ids << " of " << goldens.size() << " strings encode differently";
  EXPECT_EQ(bad_decode, 0u) << name << ": " << bad_decode << " of " << goldens.size() << " decode differently";
}

TEST(TokGolden, Qwen3) { check_goldens(cached(real_tokenizer("qwen3")), "qwen3", 2000); }
TEST(TokGolden, Llama3) { check_goldens(cached(real_tokenizer("llama3")), "llama3", 2000); }
TEST(TokGolden, Llama3_1) { check_goldens(cached(real_tokenizer("llama3_1")), "llama3_1", 300); }
TEST(TokGolden, Gemma3) { check_goldens(cached(real_tokenizer("gemma3")), "gemma3", 600); }
TEST(TokGolden, TinyBpeAddedTokenFlags) { check_goldens(cached(tok_fixture("tiny_bpe.json")), "tiny_bpe", 300); }
TEST(TokGolden, SentencePiece) { check_goldens(cached(tok_fixture("tiny_sp.model")), "tiny_sp", 600); }

// Without NFC changes the text, decode(encode(s)) == s.
TEST(TokRoundTrip, DecodeEncodeIsIdentity) {
  for (const std::string name : {"qwen3", "llama3"}) {
    const Tokenizer& tok = cached(real_tokenizer(name));
    size_t n = 0;
    for (const auto& g : read_goldens(name)) {
      if (g.add_special || g.decode != g.text) continue;
      ASSERT_EQ(tok.decode(tok.encode(g.text)), g.text) << name;
      ++n;
    }
    EXPECT_GT(n, 1500u) << name;
  }
}

TEST(TokSpecial, Qwen3) {
  const Tokenizer& tok = cached(real_tokenizer("qwen3"));
  EXPECT_EQ(tok.token_to_id("<|im_start|>"), 151644);
  EXPECT_EQ(tok.token_to_id("<|im_end|>"), 151645);
  EXPECT_EQ(tok.id_to_token(151644), "<|im_start|>");
  EXPECT_TRUE(tok.is_special(151644));
  EXPECT_FALSE(tok.is_special(tok.token_to_id("<think>").value()));  // added, not special
  EXPECT_FALSE(tok.is_special(100));
  EXPECT_EQ(tok.token_to_id("Ġhello"), tok.encode(" hello").at(0));
  EXPECT_EQ(tok.id_to_token(tok.encode(" hello").at(0)), "Ġhello");
  EXPECT_FALSE(tok.token_to_id("definitely not a token"));
  EXPECT_EQ(tok.vocab_size(), 151669);
  const auto ids = tok.encode("<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(ids.front(), 151644);
  EXPECT_EQ(ids.back(), 151645);
  EXPECT_EQ(tok.decode(ids), "<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(tok.decode(ids, true), "user\nhi");
  ASSERT_TRUE(tok.eos_token());
  EXPECT_EQ(tok.eos_token()->text, "<|im_end|>");
  EXPECT_EQ(tok.eos_token()->id, 151645);
  EXPECT_EQ(tok.pad_token()->id, 151643);
  EXPECT_FALSE(tok.bos_token());
  EXPECT_EQ(tok.encode("hi", true), tok.encode("hi"));  // Qwen adds nothing
}

TEST(TokSpecial, Llama3AddSpecialTokens) {
  const Tokenizer& tok = cached(real_tokenizer("llama3_1"));
  ASSERT_TRUE(tok.bos_token());
  EXPECT_EQ(tok.bos_token()->id, 128000);
  EXPECT_EQ(tok.eos_token()->text, "<|eot_id|>");
  const auto plain = tok.encode("Hello world");
  auto with = tok.encode("Hello world", true);
  ASSERT_EQ(with.size(), plain.size() + 1);
  EXPECT_EQ(with[0], 128000);
  EXPECT_EQ(std::vector<TokenId>(with.begin() + 1, with.end()), plain);
  EXPECT_EQ(tok.decode(with), "<|begin_of_text|>Hello world");
  EXPECT_EQ(tok.decode(with, true), "Hello world");
}

TEST(TokSpecial, SentencePiece) {
  const Tokenizer& tok = cached(tok_fixture("tiny_sp.model"));
  ASSERT_TRUE(tok.bos_token());
  const auto ids = tok.encode("Hello world", true);
  EXPECT_EQ(ids.front(), tok.bos_token()->id);
  EXPECT_TRUE(tok.is_special(ids.front()));
  EXPECT_EQ(tok.decode(ids), tok.bos_token()->text + "Hello world");
  EXPECT_EQ(tok.decode(ids, true), "Hello world");
  EXPECT_EQ(tok.token_to_id(tok.id_to_token(ids[1])), ids[1]);
  EXPECT_FALSE(tok.token_to_id("no such piece here"));
}

// const methods may run from several threads at once (the BPE word cache is shared).
TEST(TokThreads, ConcurrentEncodeMatchesGoldens) {
  const Tokenizer& tok = cached(real_tokenizer("qwen3"));
  const auto goldens = read_goldens("qwen3");
  std::vector<std::thread> threads;
  std::atomic<size_t> bad{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = t; i < goldens.size(); i += 2)
        if (tok.encode(goldens[i].text, goldens[i].add_special) != goldens[i].ids) ++bad;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0u);
}

// Streaming: concatenated put()s equal decode(), and no chunk is broken UTF-8.
void check_stream(const Tokenizer& tok, const std::string& text) {
  const auto ids = tok.encode(text);
  TextStreamer st(tok);
  std::string all;
  for (TokenId id : ids) {
    const std::string chunk = st.put(id);
    EXPECT_NO_THROW(text::check_utf8(chunk, "chunk")) << json(text).dump();
    EXPECT_EQ(chunk.find("\xEF\xBF\xBD"), std::string::npos) << json(text).dump();
    all += chunk;
  }
  all += st.flush();
  EXPECT_EQ(all, tok.decode(ids)) << json(text).dump();
}

TEST(TokStream, NeverSplitsCharacters) {
  const std::vector<std::string> texts = {"👩‍👩‍👧‍👦 family 👍🏽 and 🏳️‍🌈",
                                          "日本語のテキスト、中文文本，한국어", "emoji 😀😂🥲 mixed with ascii",
                                          "नमस्ते दुनिया สวัสดี", "Hello world, plain ASCII."};
  for (const std::string name : {"qwen3", "llama3"}) {
    const Tokenizer& tok = cached(real_tokenizer(name));
    for (const auto& t : texts) check_stream(tok, t);
    // At least one of these splits a character across tokens (otherwise the test proves nothing).
    bool split = false;
    for (const auto& t : texts)
      for (TokenId id : tok.encode(t)) {
        const std::string one = tok.decode(std::vector<TokenId>{id});
        split = split || one.find("\xEF\xBF\xBD") != std::string::npos;
      }
    EXPECT_TRUE(split) << name;
  }
  check_stream(cached(tok_fixture("tiny_sp.model")), "Hello world 😀 中文 test");
}

TEST(TokStream, SkipsSpecialTokens) {
  const Tokenizer& tok = cached(real_tokenizer("qwen3"));
  TextStreamer st(tok, true);
  std::string all;
  for (TokenId id : tok.encode("<|im_start|>assistant\n你好😀<|im_end|>")) all += st.put(id);
  all += st.flush();
  EXPECT_EQ(all, "assistant\n你好😀");
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& fragments) {
  try {
    f();
    ADD_FAILURE() << "expected kvrun::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& frag : fragments)
      EXPECT_NE(msg.find(frag), std::string::npos) << "missing '" << frag << "' in: " << msg;
  }
}

TEST(TokErrors, BadInput) {
  TempDir tmp;
  expect_error([&] { Tokenizer::load(tmp / "missing"); }, {"missing", "no such file"});
  expect_error([&] { Tokenizer::load(tmp.path()); }, {"no tokenizer found", "tokenizer.json", "empty folder"});
  const std::string full = [] {
    std::ifstream in(tok_fixture("tiny_bpe.json"));
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  std::ofstream(tmp / "truncated.json") << full.substr(0, full.size() / 2);
  expect_error([&] { Tokenizer::load(tmp / "truncated.json"); }, {"truncated.json", "invalid JSON"});
  json j = json::parse(full);
  j["model"]["type"] = "WordPiece";
  std::ofstream(tmp / "wordpiece.json") << j.dump();
  expect_error([&] { Tokenizer::load(tmp / "wordpiece.json"); }, {"wordpiece.json", "model.type", "WordPiece"});
  j = json::parse(full);
  j["pre_tokenizer"]["pretokenizers"][0]["type"] = "Frobnicate";
  std::ofstream(tmp / "pretok.json") << j.dump();
  expect_error([&] { Tokenizer::load(tmp / "pretok.json"); }, {"pre_tokenizer", "Frobnicate", "not supported"});
  j = json::parse(full);
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  std::ofstream(tmp / "regex.json") << j.dump();
  expect_error([&] { Tokenizer::load(tmp / "regex.json"); }, {"(unclosed", "does not compile"});
  j = json::parse(full);
  j["model"].erase("merges");
  std::ofstream(tmp / "nomerges.json") << j.dump();
  expect_error([&] { Tokenizer::load(tmp / "nomerges.json"); }, {"nomerges.json", "merges"});
  std::ofstream(tmp / "junk.model") << "this is not a sentencepiece model";
  expect_error([&] { Tokenizer::load(tmp / "junk.model"); }, {"junk.model", "SentencePiece"});

  const Tokenizer& tok = cached(real_tokenizer("qwen3"));
  expect_error([&] { tok.encode("bad \xC3 utf8"); }, {"UTF-8", "0xC3", "offset 4"});
  expect_error([&] { tok.decode(std::vector<TokenId>{1, 999999999}); }, {"999999999", "out of range"});
  expect_error([&] { tok.id_to_token(-1); }, {"-1", "out of range"});
  const Tokenizer& sp = cached(tok_fixture("tiny_sp.model"));
  expect_error([&] { sp.decode(std::vector<TokenId>{123456}); }, {"123456", "out of range"});
}

TEST(TokLoad, FolderForms) {
  TempDir tmp;
  fs::create_directories(tmp / "sp");
  fs::copy_file(tok_fixture("tiny_sp.model"), tmp / "sp" / "tokenizer.model");
  EXPECT_EQ(Tokenizer::load(tmp / "sp")->description(), "SentencePiece model");
  fs::create_directories(tmp / "hf");
  fs::copy_file(tok_fixture("tiny_bpe.json"), tmp / "hf" / "tokenizer.json");
  EXPECT_EQ(Tokenizer::load(tmp / "hf")->description(), "tokenizer.json BPE (byte-level)");
}

TEST(TokCli, Tokenize) {
  const std::string dir = real_tokenizer("qwen3").string();
  CliResult r = run_cli({"tokenize", dir, "--text", "<|im_start|>user\nhi<|im_end|>", "--ids"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out), json::parse("[151644, 872, 198, 6023, 151645]"));
  r = run_cli({"tokenize", dir, "--text", "Hello world"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const json tokens = json::parse(r.out);
  ASSERT_EQ(tokens.size(), 2u) << r.out;
  EXPECT_EQ(tokens[0]["id"], 9707);
  EXPECT_EQ(tokens[1]["piece"], "Ġworld");
  EXPECT_EQ(tokens[1]["text"], " world");

  TempDir tmp;
  std::ofstream(tmp / "in.jsonl") << "\"Hello world\"\n\"中文\"\n";
  r = run_cli(
      {"tokenize", real_tokenizer("llama3_1").string(), "--file", (tmp / "in.jsonl").string(), "--add-special-tokens"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::istringstream lines(r.out);
  std::string l1, l2;
  std::getline(lines, l1);
  std::getline(lines, l2);
  EXPECT_EQ(json::parse(l1), json::parse("[128000, 9906, 1917]"));
  EXPECT_EQ(json::parse(l2).at(0), 128000);

  r = run_cli({"tokenize", (tmp / "nothing").string(), "--text", "x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("kvrun: error:"), std::string::npos) << r.out;
  std::ofstream(tmp / "bad.jsonl") << "not json\n";
  r = run_cli({"tokenize", dir, "--file", (tmp / "bad.jsonl").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("bad.jsonl:1"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace kvrun::test
