// Speech recognition with a speech LLM (FunASR-nano: audio encoder + adaptor whose
// output is spliced into a Qwen3 decoder).
//
//   auto asr = kvrun::SpeechModel::load("pkg");   // kvrun package, sherpa-onnx or split export
//   kvrun::TranscribeOptions opt;
//   opt.language = "en";
//   kvrun::Transcript t = asr->transcribe_file("clip.wav", opt);
//
// The pipeline is the reference's (funasr FunASRNano.inference): 16 kHz mono audio ->
// Kaldi fbank (80 mel, 25/10 ms, Hamming, no dither) -> LFR 7/6 -> encoder + adaptor ->
// ChatML prompt with the first N adaptor rows at the placeholder positions (N from the
// reference's low-frame-rate rule) -> greedy decoding with the KV cache, stop on
// <|im_end|> -> special tokens skipped, "/sil" -> " ", whitespace runs collapsed.
// Audio longer than max_segment_seconds is cut at its quietest points, each segment
// transcribed on its own, and the texts joined.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvrun/error.h"
#include "kvrun/runtime.h"
#include "kvrun/types.h"

namespace kvrun {

struct TranscribeOptions {
  std::string language;               // "" (any), "zh", "en", "ja" (or the prompt's own word, e.g. "中文")
  std::vector<std::string> hotwords;  // words the model should prefer
  bool itn = true;                    // false: ask for text without inverse text normalization
  int64_t max_new_tokens = 512;       // per segment (the reference's default)
  double max_segment_seconds = 30.0;  // longer audio is cut at quiet points
  int64_t batch_size = 8;             // segments decoded together (when the graphs allow batches)
  // Silence codec libraries' own stderr notes while decoding (CLI use: redirects the
  // process's stderr for that time).
  bool quiet_decoders = false;
  void validate() const;  // throws kvrun::Error naming the field
};

struct TranscriptSegment {
  double start = 0, end = 0;  // seconds in the input audio
  std::string text;           // post-processed as the reference
  std::vector<TokenId> ids;   // generated ids (stop id excluded)
  int64_t audio_tokens = 0;   // adaptor rows fed to the LLM (N)
  std::string finish_reason;  // "stop" | "length"
};

struct TranscribeStats {
  double audio_seconds = 0;
  double frontend_seconds = 0, encoder_seconds = 0, prefill_seconds = 0, decode_seconds = 0, total_seconds = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double real_time_factor() const { return audio_seconds > 0 ? total_seconds / audio_seconds : 0; }
};

struct Transcript {
  std::string source;  // file name, or "" for samples
  std::string text;    // segments joined
  std::vector<TranscriptSegment> segments;
  TranscribeStats stats;
};

// What a speech model folder holds, for `kvrun transcribe --json` and messages.
struct SpeechModelInfo {
  std::string layout;  // "kvrun-ort" | "kvrun-portable" | "sherpa-onnx" | "split"
  std::filesystem::path dir;
  std::string encoder_file;
  int64_t feature_dim = 0, llm_dim = 0;
  int lfr_m = 7, lfr_n = 6;
  bool truncate_audio_tokens = true;  // the reference's low-frame-rate N rule
};

class SpeechModel {
 public:
  static std::unique_ptr<SpeechModel> load(const std::filesystem::path& dir, const ModelOptions& opt = {});
  virtual ~SpeechModel();
  virtual const SpeechModelInfo& info() const = 0;
  virtual Model& llm() = 0;

  // Prompt token ids with `n_audio` placeholders (id 0) where the audio rows go.
  virtual std::vector<TokenId> prompt_ids(int64_t n_audio, const TranscribeOptions& opt) const = 0;
  // LFR features [rows, feature_dim] of 16 kHz mono samples in [-1, 1].
  virtual std::vector<float> features(const std::vector<float>& samples_16k, int64_t* rows) const = 0;
  // Encoder + adaptor output [rows, llm_dim] for features [rows, feature_dim].
  virtual std::vector<float> encode(const std::vector<float>& features, int64_t rows) = 0;

  // Whole pipeline on files (decoded, resampled and down-mixed first); several files are
  // decoded as one batch where the graphs allow it. Bad audio throws kvrun::Error.
  virtual std::vector<Transcript> transcribe_files(const std::vector<std::filesystem::path>& files,
                                                   const TranscribeOptions& opt) = 0;
  Transcript transcribe_file(const std::filesystem::path& file, const TranscribeOptions& opt);
  // Whole pipeline on 16 kHz mono samples in [-1, 1].
  virtual Transcript transcribe_samples(const std::vector<float>& samples_16k, const TranscribeOptions& opt) = 0;
};

// The reference's low-frame-rate rule: how many adaptor rows of `lfr_rows` enter the LLM.
int64_t funasr_audio_token_count(int64_t lfr_rows);
// The reference's post-processing of the decoded response ("text" of FunASRNano.inference).
std::string funasr_postprocess(const std::string& response);

}  // namespace kvrun
