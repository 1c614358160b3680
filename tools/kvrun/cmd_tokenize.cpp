// kvrun tokenize: text -> token ids with a model's tokenizer.
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "kvrun/tokenizer.h"

namespace kvrun::cli {
namespace {

struct TokenizeOptions {
  std::string path, text, file;
  bool ids_only = false, add_special = false;
};

void print_line(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fputc('\n', stdout);
}

// The lines of a --file input, each a JSON string.
std::vector<std::string> read_text_lines(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file + ": cannot open");
  std::vector<std::string> texts;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      j = nullptr;
    }
    if (!j.is_string())
      throw Error(file + ":" + std::to_string(n) + ": expected a JSON string per line, found: " + line.substr(0, 80));
    texts.push_back(j.get<std::string>());
  }
  return texts;
}

int run_tokenize(const TokenizeOptions& o) {
  if (!o.file.empty()) {
    const auto texts = read_text_lines(o.file);
    const auto tok = Tokenizer::load(o.path);
    for (const auto& t : texts) print_line(nlohmann::json(tok->encode(t, o.add_special)).dump());
    return 0;
  }
  const auto tok = Tokenizer::load(o.path);
  const auto ids = tok->encode(o.text, o.add_special);
  if (o.ids_only) {
    print_line(nlohmann::json(ids).dump());
    return 0;
  }
  // One token object per line.
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    const TokenId one[] = {ids[i]};
    const nlohmann::json t = {{"id", ids[i]}, {"piece", tok->id_to_token(ids[i])}, {"text", tok->decode(one)}};
    out += (i ? ",\n  " : "\n  ") + t.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  print_line(out + (ids.empty() ? "]" : "\n]"));
  return 0;
}

}  // namespace

Command add_tokenize_command(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  auto* cmd = app.add_subcommand(
      "tokenize",
      "Encode text with a tokenizer (tokenizer.json or SentencePiece .model) and print the token ids as JSON");
  cmd->add_option("path", o->path,
                  "Model/package folder or tokenizer folder (tokenizer.json or tokenizer.model), or a tokenizer file")
      ->required();
  auto* text = cmd->add_option("--text", o->text, "Text to encode (UTF-8)");
  auto* file =
      cmd->add_option("--file", o->file, "File with one JSON string per line; prints one JSON array of ids per line");
  text->excludes(file);
  file->excludes(text);
  cmd->add_flag("--ids", o->ids_only,
                "Print only the JSON array of ids (default: one object per token: id, piece, text)");
  cmd->add_flag("--add-special-tokens", o->add_special,
                "Apply the tokenizer's post-processor (e.g. prepend <|begin_of_text|> / bos)");
  cmd->callback([text, file] {
    if (text->count() == 0 && file->count() == 0) throw CLI::RequiredError("--text or --file");
  });
  return {cmd, [o] { return run_tokenize(*o); }};
}

}  // namespace kvrun::cli
