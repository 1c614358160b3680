// kvrun — chat templates: renders a model's Jinja chat template (tokenizer_config.json)
// byte-identical to transformers' apply_chat_template(..., tokenize=False).
// Supported Jinja subset and template discovery: docs/chat-templates.md.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace kvrun {

namespace jinja {
class Template;
}

struct ChatOptions {
  bool add_generation_prompt = true;
  std::optional<bool> enable_thinking;  // passed to the template only when set (Qwen3)
  nlohmann::ordered_json tools;         // list of JSON tool schemas; null = none (key order is kept)
  nlohmann::ordered_json documents;     // RAG documents; null = none
  nlohmann::ordered_json extra;         // more template variables (object), e.g. {"date_string": "26 Jul 2024"}
  // What strftime_now() formats, as UTC fields. Default: the current local time.
  std::optional<std::chrono::system_clock::time_point> now;
  // Bounds on one render (output size, macro depth, loop iterations).
  size_t max_output_bytes = 64u << 20;
  uint64_t max_steps = 2'000'000;
};

class ChatTemplate {
 public:
  // Parses once; throws kvrun::Error (with line and column) on a syntax error.
  // Empty bos/eos tokens are left undefined in the template.
  explicit ChatTemplate(std::string source, std::string bos_token = "", std::string eos_token = "");

  // From a tokenizer_config.json: chat_template as a string or a list of {name, template}
  // ("default" is used); a chat_template.jinja beside it takes precedence. Special tokens
  // (bos/eos/unk/pad/... as strings or {"content": ...}) become template variables.
  // Falls back to ChatML when the config has no template.
  static ChatTemplate from_tokenizer_config(const std::filesystem::path& tokenizer_config_json);
  // From a checkpoint or package folder: kvrun.json's chat_template, else chat_template.jinja,
  // else tokenizer_config.json (special tokens from tokenizer_config.json either way); ChatML if none.
  static ChatTemplate from_folder(const std::filesystem::path& dir);
  // From a GGUF file: its tokenizer.chat_template, with bos_token / eos_token the texts of
  // tokenizer.ggml.bos_token_id / eos_token_id; ChatML when the file has no template.
  static ChatTemplate from_gguf(const std::filesystem::path& gguf_file);
  static ChatTemplate chatml();

  // messages: a JSON array of message objects ({"role", "content", ...}), as apply_chat_template
  // takes them: keys with null values are dropped, reasoning fields are aliased
  // (reasoning_content / thinking / reasoning), then the template renders with messages, tools,
  // documents, add_generation_prompt, the special tokens, enable_thinking and `extra`.
  std::string render(const nlohmann::ordered_json& messages, const ChatOptions& opt = {}) const;
  // Raw: renders with exactly the variables of `context` (a JSON object).
  std::string render_context(const nlohmann::ordered_json& context, const ChatOptions& opt = {}) const;

  const std::string& source() const { return source_; }
  // Template variables added to every render(): bos_token, eos_token, ...
  const nlohmann::ordered_json& special_tokens() const { return special_tokens_; }

 private:
  std::string source_;
  nlohmann::ordered_json special_tokens_ = nlohmann::ordered_json::object();
  std::shared_ptr<const jinja::Template> tpl_;
};

}  // namespace kvrun
