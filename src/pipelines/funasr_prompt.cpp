#include "pipelines/funasr_prompt.h"

#include "kvrun/error.h"

namespace kvrun::pipelines {
using nlohmann::json;

namespace {
std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}
}  // namespace

std::string FunAsrPrompt::instruction(const TranscribeOptions& opt) const {
  std::string p;
  if (!opt.hotwords.empty()) {
    std::string list;
    for (size_t i = 0; i < opt.hotwords.size(); ++i) list += (i ? hotword_separator : "") + opt.hotwords[i];
    p = hotword_intro + replace_all(hotword_list, "{hotwords}", list);
  }
  if (opt.language.empty()) {
    p += task;
  } else {
    std::string word = opt.language;
    for (const auto& [code, w] : languages)
      if (code == opt.language) word = w;
    p += replace_all(task_with_language, "{language}", word);
  }
  if (!opt.itn) p += no_itn;
  return p + colon;
}

std::string FunAsrPrompt::prefix_text(const TranscribeOptions& opt) const {
  return replace_all(prefix_template, "{system}", system) + instruction(opt);
}

json FunAsrPrompt::to_json() const {
  json langs = json::object();
  for (const auto& [code, w] : languages) langs[code] = w;
  return {{"system", system},
          {"prefix_template", prefix_template},
          {"suffix", suffix},
          {"task", task},
          {"task_with_language", task_with_language},
          {"no_itn", no_itn},
          {"colon", colon},
          {"hotword_intro", hotword_intro},
          {"hotword_list", hotword_list},
          {"hotword_separator", hotword_separator},
          {"languages", langs},
          {"placeholder_id", placeholder_id}};
}

FunAsrPrompt FunAsrPrompt::from_json(const json& j) {
  FunAsrPrompt p;
  if (!j.is_object()) throw Error("kvrun.json: asr.prompt must be an object, found " + std::string(j.type_name()));
  auto str = [&](const char* key, std::string& field) {
    if (!j.contains(key)) return;
    if (!j[key].is_string())
      throw Error(std::string("kvrun.json: asr.prompt.") + key + " must be a string, found " + j[key].type_name());
    field = j[key].get<std::string>();
  };
  str("system", p.system);
  str("prefix_template", p.prefix_template);
  str("suffix", p.suffix);
  str("task", p.task);
  str("task_with_language", p.task_with_language);
  str("no_itn", p.no_itn);
  str("colon", p.colon);
  str("hotword_intro", p.hotword_intro);
  str("hotword_list", p.hotword_list);
  str("hotword_separator", p.hotword_separator);
  if (j.contains("languages")) {
    if (!j["languages"].is_object()) throw Error("kvrun.json: asr.prompt.languages must be an object");
    p.languages.clear();
    for (const auto& [k, v] : j["languages"].items()) {
      if (!v.is_string()) throw Error("kvrun.json: asr.prompt.languages." + k + " must be a string");
      p.languages.emplace_back(k, v.get<std::string>());
    }
  }
  if (j.contains("placeholder_id")) {
    if (!j["placeholder_id"].is_number_integer())
      throw Error("kvrun.json: asr.prompt.placeholder_id must be an integer");
    p.placeholder_id = j["placeholder_id"].get<int32_t>();
  }
  return p;
}

}  // namespace kvrun::pipelines
