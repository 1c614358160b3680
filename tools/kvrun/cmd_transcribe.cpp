// kvrun transcribe: speech -> text with a speech LLM package (FunASR-nano) or a
// sherpa-onnx / split export of one.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "kvrun/asr.h"

namespace kvrun::cli {
namespace {

struct TranscribeCliOptions {
  std::string model;
  std::vector<std::string> audio;
  std::string language, hotwords;
  bool no_itn = false, print_ids = false, json = false, stats = false;
  int threads = 0;
  TranscribeOptions opt;
};

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t b = item.find_first_not_of(' '), e = item.find_last_not_of(' ');
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}

nlohmann::json stats_json(const TranscribeStats& s) {
  return {{"audio_seconds", s.audio_seconds},      {"real_time_factor", s.real_time_factor()},
          {"total_seconds", s.total_seconds},      {"frontend_seconds", s.frontend_seconds},
          {"encoder_seconds", s.encoder_seconds},  {"prefill_seconds", s.prefill_seconds},
          {"decode_seconds", s.decode_seconds},    {"prompt_tokens", s.prompt_tokens},
          {"generated_tokens", s.generated_tokens}};
}

int run_transcribe(TranscribeCliOptions& o) {
  o.opt.language = o.language;
  o.opt.hotwords = split_commas(o.hotwords);
  o.opt.itn = !o.no_itn;
  o.opt.quiet_decoders = true;  // one error line: libmpg123's notes on damaged frames stay off the terminal
  o.opt.validate();
  ModelOptions mo;
  mo.threads = o.threads;
  const auto model = SpeechModel::load(o.model, mo);
  std::vector<std::filesystem::path> files(o.audio.begin(), o.audio.end());
  const std::vector<Transcript> ts = model->transcribe_files(files, o.opt);
  TranscribeStats all;
  for (const auto& t : ts) {
    if (o.json) {
      nlohmann::json segs = nlohmann::json::array();
      for (const auto& s : t.segments) {
        nlohmann::json js = {{"start", s.start},
                             {"end", s.end},
                             {"text", s.text},
                             {"audio_tokens", s.audio_tokens},
                             {"finish_reason", s.finish_reason}};
        if (o.print_ids) js["ids"] = s.ids;
        segs.push_back(js);
      }
      nlohmann::json j = {{"file", t.source}, {"text", t.text}, {"segments", segs}};
      if (o.stats) j["stats"] = stats_json(t.stats);
      std::puts(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      if (ts.size() > 1) std::printf("%s\t", t.source.c_str());
      std::printf("%s\n", t.text.c_str());
      if (o.print_ids) {
        std::vector<TokenId> ids;
        for (const auto& s : t.segments) ids.insert(ids.end(), s.ids.begin(), s.ids.end());
        std::printf("%s\n", nlohmann::json(ids).dump().c_str());
      }
    }
    all.audio_seconds += t.stats.audio_seconds;
    all.frontend_seconds += t.stats.frontend_seconds;
    all.encoder_seconds += t.stats.encoder_seconds;
    all.prefill_seconds += t.stats.prefill_seconds;
    all.decode_seconds += t.stats.decode_seconds;
    all.total_seconds += t.stats.total_seconds;
    all.prompt_tokens += t.stats.prompt_tokens;
    all.generated_tokens += t.stats.generated_tokens;
  }
  std::fflush(stdout);
  if (o.stats && !o.json)
    std::fprintf(stderr,
                 "audio %.2f s, RTF %.3f (total %.3f s): front end %.3f s, encoder-adaptor %.3f s, prefill %.3f s "
                 "(%lld tokens), decode %.3f s (%lld tokens)\n",
                 all.audio_seconds, all.real_time_factor(), all.total_seconds, all.frontend_seconds,
                 all.encoder_seconds, all.prefill_seconds, static_cast<long long>(all.prompt_tokens),
                 all.decode_seconds, static_cast<long long>(all.generated_tokens));
  return 0;
}

}  // namespace

Command add_transcribe_command(CLI::App& app) {
  auto o = std::make_shared<TranscribeCliOptions>();
  auto* cmd = app.add_subcommand(
      "transcribe",
      "Speech to text with a speech LLM: a kvrun package built from a FunASR-nano folder, or a sherpa-onnx / split "
      "export (encoder_adaptor.onnx + llm.onnx | llm_prefill.onnx + llm_decode.onnx)");
  cmd->add_option("model", o->model, "Speech model folder")->required();
  cmd->add_option("audio", o->audio, "Audio files (WAV, FLAC, OGG, MP3; any rate, any channel count)")->required();
  cmd->add_option("--language", o->language, "Language to transcribe into: zh, en, ja (default: the model decides)");
  cmd->add_option("--hotwords", o->hotwords, "Comma-separated words the model should prefer, e.g. kvrun,ONNX");
  cmd->add_flag("--no-itn", o->no_itn, "Ask for text without inverse text normalization");
  cmd->add_flag("--print-ids", o->print_ids, "Also print the generated token ids");
  cmd->add_flag("--json", o->json, "One JSON object per file: text, segments with start/end times");
  cmd->add_flag("--stats", o->stats, "Audio seconds, real-time factor and time per stage");
  cmd->add_option("--max-new-tokens", o->opt.max_new_tokens, "Tokens generated per segment at most")
      ->capture_default_str();
  cmd->add_option("--max-segment-seconds", o->opt.max_segment_seconds,
                  "Longer audio is cut at its quietest points into segments of at most this length")
      ->capture_default_str();
  cmd->add_option("--batch-size", o->opt.batch_size, "Segments decoded together")->capture_default_str();
  cmd->add_option("--threads", o->threads, "ONNX Runtime threads (0: one per core)")->capture_default_str();
  return {cmd, [o] { return run_transcribe(*o); }};
}

}  // namespace kvrun::cli
