// ChatTemplate: finds a model's chat template, prepares apply_chat_template's variables,
// renders with the Jinja subset of text/jinja.h (implementation in text/jinja/).
#include "kvrun/chat_template.h"

#include "io/fs.h"
#include "io/gguf.h"
#include "kvrun/error.h"
#include "text/jinja.h"

namespace kvrun {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

// ChatML, as transformers' old default template wrote it (no generation prompt unless asked).
constexpr const char* kChatML =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// The named special tokens transformers passes to templates (special_tokens_map).
constexpr const char* kSpecialTokenKeys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                             "pad_token", "cls_token", "mask_token"};

// Config files are read as nlohmann::json (sorted keys): their key order does not matter here,
// and ordered_json is quadratic on the thousands of added_tokens_decoder entries.
using nlohmann::json;

std::optional<std::string> token_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

// chat_template value of tokenizer_config.json / kvrun.json: a string or [{name, template}].
std::optional<std::string> template_of(const json& t, const fs::path& file) {
  if (t.is_null()) return std::nullopt;
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {
    for (const auto& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        return e["template"].get<std::string>();
    if (t.size() == 1 && t[0].is_object() && t[0].contains("template") && t[0]["template"].is_string())
      return t[0]["template"].get<std::string>();
    throw Error(file.string() +
                ": chat_template: expected a list of {name, template} with a \"default\" entry, found " +
                std::to_string(t.size()) + " entries without one");
  }
  throw Error(file.string() + ": chat_template: expected a string or a list of {name, template}, found " +
              std::string(t.type_name()));
}

jinja::RenderOptions render_options(const ChatOptions& opt) {
  jinja::RenderOptions r;
  r.now = opt.now;
  r.limits.max_output_bytes = opt.max_output_bytes;
  r.limits.max_steps = opt.max_steps;
  return r;
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source, std::string bos_token, std::string eos_token)
    : source_(std::move(source)), tpl_(std::make_shared<const jinja::Template>(source_)) {
  if (!bos_token.empty()) special_tokens_["bos_token"] = bos_token;
  if (!eos_token.empty()) special_tokens_["eos_token"] = eos_token;
}

ChatTemplate ChatTemplate::chatml() { return ChatTemplate(kChatML); }

ChatTemplate ChatTemplate::from_gguf(const fs::path& gguf_file) {
  const io::GgufFile f(gguf_file);
  const auto source = f.opt_string("tokenizer.chat_template");
  if (!source) return chatml();
  std::string bos, eos;
  if (f.has("tokenizer.ggml.tokens")) {
    const auto tokens = f.get_string_array("tokenizer.ggml.tokens");
    auto text = [&](const char* key) {
      const auto id = f.opt_int(key);
      if (!id) return std::string();
      if (*id < 0 || static_cast<uint64_t>(*id) >= tokens.size())
        throw Error(gguf_file.string() + ": metadata key '" + key + "': id " + std::to_string(*id) +
                    " is out of range (" + std::to_string(tokens.size()) + " tokens)");
      return tokens[static_cast<size_t>(*id)];
    };
    bos = text("tokenizer.ggml.bos_token_id");
    eos = text("tokenizer.ggml.eos_token_id");
  }
  return ChatTemplate(*source, bos, eos);
}

ChatTemplate ChatTemplate::from_tokenizer_config(const fs::path& path) {
  const json cfg = io::read_json_file(path);
  if (!cfg.is_object()) throw Error(path.string() + ": expected a JSON object, found " + cfg.type_name());
  std::optional<std::string> src;
  const fs::path jinja_file = path.parent_path() / "chat_template.jinja";
  if (fs::exists(jinja_file)) src = io::read_text_file(jinja_file);
  if (!src && cfg.contains("chat_template")) src = template_of(cfg["chat_template"], path);
  ChatTemplate t = src ? ChatTemplate(*src) : chatml();
  for (const char* k : kSpecialTokenKeys)
    if (cfg.contains(k))
      if (auto s = token_text(cfg[k])) t.special_tokens_[k] = *s;
  if (cfg.contains("extra_special_tokens") && cfg["extra_special_tokens"].is_object())  // e.g. Gemma 3's image_token
    for (const auto& [k, v] : cfg["extra_special_tokens"].items())
      if (auto s = token_text(v)) t.special_tokens_[k] = *s;
  return t;
}

ChatTemplate ChatTemplate::from_folder(const fs::path& dir) {
  std::optional<std::string> src;
  if (fs::exists(dir / "kvrun.json")) {
    const json m = io::read_json_file(dir / "kvrun.json");
    if (m.is_object() && m.contains("chat_template")) src = template_of(m["chat_template"], dir / "kvrun.json");
  }
  if (!src && fs::exists(dir / "chat_template.jinja")) src = io::read_text_file(dir / "chat_template.jinja");
  ojson tokens = ojson::object();
  if (fs::exists(dir / "tokenizer_config.json")) {
    ChatTemplate from_cfg = from_tokenizer_config(dir / "tokenizer_config.json");
    if (!src) return from_cfg;
    tokens = from_cfg.special_tokens_;
  } else if (fs::exists(dir / "tokenizer.gguf")) {  // a package built from a GGUF file
    ChatTemplate from_gguf_file = from_gguf(dir / "tokenizer.gguf");
    if (!src) return from_gguf_file;
    tokens = from_gguf_file.special_tokens_;
  }
  ChatTemplate t = src ? ChatTemplate(*src) : chatml();
  t.special_tokens_ = tokens;
  return t;
}

std::string ChatTemplate::render_context(const ojson& context, const ChatOptions& opt) const {
  return tpl_->render(context, render_options(opt));
}

std::string ChatTemplate::render(const ojson& messages, const ChatOptions& opt) const {
  if (!messages.is_array())
    throw Error(std::string("chat messages: expected a JSON array of message objects, found ") + messages.type_name());
  if (messages.empty()) throw Error("chat messages: expected at least one message, found an empty list");
  // apply_chat_template: drop None-valued keys; then alias reasoning fields
  // ({"thinking": r, **message, "reasoning_content": r} for the first of reasoning_content/thinking/reasoning set).
  ojson msgs = ojson::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const ojson& m = messages[i];
    if (!m.is_object())
      throw Error("chat messages[" + std::to_string(i) + "]: expected a message object, found " + m.type_name());
    ojson clean = ojson::object();
    for (auto it = m.begin(); it != m.end(); ++it)
      if (!it.value().is_null()) clean[it.key()] = it.value();
    const ojson* reasoning = nullptr;
    for (const char* k : {"reasoning_content", "thinking", "reasoning"})
      if (!reasoning && clean.contains(k)) reasoning = &clean[k];
    if (reasoning) {
      ojson aliased = ojson::object();
      aliased["thinking"] = *reasoning;
      for (auto it = clean.begin(); it != clean.end(); ++it) aliased[it.key()] = it.value();
      aliased["reasoning_content"] = *reasoning;
      clean = std::move(aliased);
    }
    msgs.push_back(std::move(clean));
  }
  ojson ctx = special_tokens_;
  ctx["messages"] = std::move(msgs);
  ctx["tools"] = opt.tools;
  ctx["documents"] = opt.documents;
  ctx["add_generation_prompt"] = opt.add_generation_prompt;
  if (opt.enable_thinking) ctx["enable_thinking"] = *opt.enable_thinking;
  if (!opt.extra.is_null()) {
    if (!opt.extra.is_object())
      throw Error(std::string("chat options extra: expected a JSON object of variables, found ") +
                  opt.extra.type_name());
    for (auto it = opt.extra.begin(); it != opt.extra.end(); ++it) ctx[it.key()] = it.value();
  }
  return tpl_->render(ctx, render_options(opt));
}

}  // namespace kvrun
