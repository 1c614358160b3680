// The FunASR-nano prompt, as funasr's FunASRNano builds it (get_prompt, generate_chatml,
// data_load_speech): ChatML system + user turn whose text ends where the audio rows go,
// then the assistant header. The texts live in kvrun.json ("asr.prompt") so a package
// can carry another model's wording; these are the reference's defaults.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvrun/asr.h"

namespace kvrun::pipelines {

struct FunAsrPrompt {
  std::string system = "You are a helpful assistant.";
  std::string prefix_template = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n";
  std::string suffix = "<|im_end|>\n<|im_start|>assistant\n";
  std::string task = "语音转写";
  std::string task_with_language = "语音转写成{language}";
  std::string no_itn = "，不进行文本规整";
  std::string colon = "：";
  std::string hotword_intro =
      "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n**上下文信息：**\n\n\n";
  std::string hotword_list = "热词列表：[{hotwords}]\n";
  std::string hotword_separator = ", ";
  // --language codes -> the word the prompt uses; other values are used as written.
  std::vector<std::pair<std::string, std::string>> languages = {{"zh", "中文"}, {"en", "英文"}, {"ja", "日文"}};
  int32_t placeholder_id = 0;  // the reference's fake token id (overwritten by audio rows)

  // The user instruction (get_prompt): hotwords, task, language, no-ITN, colon.
  std::string instruction(const TranscribeOptions& opt) const;
  // Text before the audio rows and after them.
  std::string prefix_text(const TranscribeOptions& opt) const;
  const std::string& suffix_text() const { return suffix; }

  nlohmann::json to_json() const;
  static FunAsrPrompt from_json(const nlohmann::json& j);  // missing keys keep the defaults
};

}  // namespace kvrun::pipelines
