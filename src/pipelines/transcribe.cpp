// kvrun::SpeechModel: FunASR-nano speech recognition on a kvrun package (kvrun.json
// "asr" section) or a third-party export (sherpa-onnx's encoder_adaptor.onnx + llm.onnx,
// or the split llm_prefill.onnx + llm_decode.onnx), all through kvrun::Model for the LLM.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

#include "audio/decode.h"
#include "audio/fbank.h"
#include "audio/lfr.h"
#include "audio/segment.h"
#include "io/fs.h"
#include "io/safetensors.h"
#include "kvrun/asr.h"
#include "kvrun/tokenizer.h"
#include "pipelines/funasr_prompt.h"
#include "runtime/ort_session.h"
#include "text/regex.h"

namespace kvrun {
namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string list_files(const fs::path& dir) {
  std::vector<std::string> names;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s.empty() ? "(nothing)" : s;
}

// The first existing file of `names` in dir, or "".
std::string first_existing(const fs::path& dir, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (fs::exists(dir / n)) return n;
  return {};
}

class FunAsrModel final : public SpeechModel {
 public:
  FunAsrModel(const fs::path& dir, const ModelOptions& mopt) {
    info_.dir = dir;
    if (fs::exists(dir / "kvrun.json")) {
      const json m = io::read_json_file(dir / "kvrun.json");
      if (!m.contains("asr"))
        throw Error("transcribe: " + dir.string() +
                    " is a kvrun package without an \"asr\" section (a text model); build it from a speech " +
                    "model folder (FunASR-nano: model.pt + config.yaml) to transcribe with it");
      info_.layout = "kvrun-" + m.value("target", std::string("ort"));
      load_kvrun_section(m.at("asr"));
    } else {
      load_export(dir);
    }
    runtime::SessionConfig sc;
    sc.intra_op_threads = mopt.threads;
    encoder_ = std::make_unique<runtime::Session>(dir / info_.encoder_file, sc);
    if (encoder_->inputs().empty() || encoder_->outputs().empty())
      throw Error("transcribe: " + info_.encoder_file + " has no inputs or outputs");
    if (info_.layout == "sherpa-onnx" || info_.layout == "split") read_export_metadata();
    enc_in_ = encoder_->inputs()[0].name;
    enc_out_ = encoder_->outputs()[0].name;
    const auto& ishape = encoder_->inputs()[0].shape;
    if (ishape.size() != 3)
      throw Error("transcribe: " + info_.encoder_file + " input '" + enc_in_ +
                  "' must be [batch, frames, features], found rank " + std::to_string(ishape.size()));
    info_.feature_dim = ishape[2] > 0 ? ishape[2] : fe_.num_mel_bins * info_.lfr_m;
    if (info_.feature_dim != fe_.num_mel_bins * info_.lfr_m)
      throw Error("transcribe: " + info_.encoder_file + " takes " + std::to_string(info_.feature_dim) +
                  " features per frame, the front end makes " + std::to_string(fe_.num_mel_bins) + " mel x LFR " +
                  std::to_string(info_.lfr_m) + " = " + std::to_string(fe_.num_mel_bins * info_.lfr_m));

    llm_ = Model::load(dir, mopt);
    if (!llm_->info().takes_embeddings)
      throw Error("transcribe: the LLM graph in " + dir.string() +
                  " takes input_ids only; audio rows need an inputs_embeds input (layout " + llm_->info().layout + ")");
    info_.llm_dim = llm_->info().hidden_size;
    tok_ = llm_->tokenizer();
    if (!tok_) {
      for (const fs::path& p : {dir / "Qwen3-0.6B", dir / "tokenizer"})
        if (fs::exists(p / "tokenizer.json") || fs::exists(p / "vocab.json")) {
          own_tok_ = Tokenizer::load(p);
          tok_ = own_tok_.get();
          break;
        }
    }
    if (!tok_)
      throw Error("transcribe: no tokenizer in " + dir.string() +
                  " (expected tokenizer.json there or in Qwen3-0.6B/); found: " + list_files(dir));
    if (stop_ids_.empty()) {  // an export without the package's list: <|im_end|>, else the model's first EOS
      if (auto id = tok_->token_to_id("<|im_end|>"))
        stop_ids_.push_back(*id);
      else if (!llm_->info().eos_ids.empty())
        stop_ids_.push_back(llm_->info().eos_ids.front());
    }
    suffix_ids_ = tok_->encode(prompt_.suffix_text());
  }

  const SpeechModelInfo& info() const override { return info_; }
  Model& llm() override { return *llm_; }

  std::vector<TokenId> prompt_ids(int64_t n_audio, const TranscribeOptions& opt) const override {
    std::vector<TokenId> ids = tok_->encode(prompt_.prefix_text(opt));
    ids.insert(ids.end(), static_cast<size_t>(n_audio), prompt_.placeholder_id);
    ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
    return ids;
  }

  std::vector<float> features(const std::vector<float>& samples, int64_t* rows) const override {
    return audio::features(samples, fe_, rows);
  }

  std::vector<float> encode(const std::vector<float>& feats, int64_t rows) override {
    if (rows <= 0) throw Error("transcribe: no feature frames to encode (audio shorter than one 25 ms frame)");
    auto x = runtime::HostTensor::from_f32(feats, {1, rows, info_.feature_dim});
    std::vector<Ort::Value> in;
    in.push_back(x.view());
    std::vector<Ort::Value> out = encoder_->run({enc_in_}, in, {enc_out_});
    const std::vector<int64_t> shape = runtime::shape_of(out.at(0));
    if (shape.size() != 3 || shape[1] != rows || shape[2] != info_.llm_dim)
      throw Error("transcribe: " + info_.encoder_file + " returned " + io::shape_str(shape) + ", expected [1, " +
                  std::to_string(rows) + ", " + std::to_string(info_.llm_dim) + "]");
    return runtime::to_f32(out.at(0));
  }

  Transcript transcribe_samples(const std::vector<float>& samples, const TranscribeOptions& opt) override {
    opt.validate();
    check_not_silent(samples, "the audio");
    std::vector<Job> jobs;
    add_jobs(samples, "", 0, jobs, opt.max_segment_seconds);
    std::vector<Transcript> t(1);
    run_jobs(jobs, opt, t);
    return std::move(t[0]);
  }

  std::vector<Transcript> transcribe_files(const std::vector<fs::path>& files, const TranscribeOptions& opt) override {
    opt.validate();
    std::vector<Transcript> out(files.size());
    std::vector<Job> jobs;
    for (size_t i = 0; i < files.size(); ++i) {
      const auto t0 = Clock::now();
      audio::DecodeOptions dopt;
      dopt.target_rate = fe_.sample_rate;
      dopt.silence_codec_messages = opt.quiet_decoders;
      const audio::Audio a = audio::decode_file(files[i], dopt);
      check_not_silent(a.samples, files[i].string());
      out[i].source = files[i].string();
      out[i].stats.frontend_seconds += since(t0);  // decoding and resampling count as front end
      out[i].stats.total_seconds += since(t0);
      add_jobs(a.samples, files[i].string(), i, jobs, opt.max_segment_seconds);
    }
    run_jobs(jobs, opt, out);
    return out;
  }

 private:
  // Digital silence (every sample 0) has nothing to transcribe; the model would only invent text.
  static void check_not_silent(const std::vector<float>& samples, const std::string& name) {
    if (samples.empty()) throw Error("transcribe: " + name + " has no samples");
    for (float x : samples)
      if (x != 0.0f) return;
    throw Error("transcribe: " + name + " is digital silence (all " + std::to_string(samples.size()) +
                " samples are 0): nothing to transcribe");
  }

  struct Job {
    size_t file = 0;
    double start = 0, end = 0;
    std::vector<float> samples;
  };

  void add_jobs(const std::vector<float>& samples, const std::string& name, size_t file, std::vector<Job>& jobs,
                double max_seconds) {
    if (samples.empty()) throw Error("transcribe: " + (name.empty() ? std::string("audio") : name) + " has no samples");
    const double rate = fe_.sample_rate;
    for (const audio::Segment& seg : audio::split_at_quiet(samples, fe_.sample_rate, max_seconds)) {
      Job j;
      j.file = file;
      j.start = static_cast<double>(seg.begin) / rate;
      j.end = static_cast<double>(seg.end) / rate;
      j.samples.assign(samples.begin() + seg.begin, samples.begin() + seg.end);
      jobs.push_back(std::move(j));
    }
  }

  void run_jobs(std::vector<Job>& jobs, const TranscribeOptions& opt, std::vector<Transcript>& out) {
    const auto t_all = Clock::now();
    for (auto& t : out) t.segments.clear();
    GenerationOptions g;
    g.max_new_tokens = opt.max_new_tokens;
    g.stop_at_eos = false;  // the reference stops on <|im_end|> only (generation_config.json is not read)
    g.stop_ids = stop_ids_;
    const std::vector<TokenId> prefix = tok_->encode(prompt_.prefix_text(opt));
    const size_t bs = static_cast<size_t>(std::max<int64_t>(1, opt.batch_size));
    for (size_t b0 = 0; b0 < jobs.size(); b0 += bs) {
      const size_t b1 = std::min(jobs.size(), b0 + bs);
      std::vector<Prompt> prompts;
      std::vector<int64_t> n_audio;
      for (size_t k = b0; k < b1; ++k) {
        Job& j = jobs[k];
        Transcript& t = out[j.file];
        t.stats.audio_seconds += j.end - j.start;
        auto t0 = Clock::now();
        int64_t rows = 0;
        const std::vector<float> feats = features(j.samples, &rows);
        t.stats.frontend_seconds += since(t0);
        t0 = Clock::now();
        std::vector<float> emb = encode(feats, rows);
        t.stats.encoder_seconds += since(t0);
        const int64_t n = info_.truncate_audio_tokens ? std::min(rows, funasr_audio_token_count(rows)) : rows;
        emb.resize(static_cast<size_t>(n * info_.llm_dim));
        Prompt p;
        p.ids(prefix).embeddings(std::move(emb), n).ids(suffix_ids_);
        prompts.push_back(std::move(p));
        n_audio.push_back(n);
        j.samples.clear();
        j.samples.shrink_to_fit();
      }
      const int64_t max_len = llm_->info().max_length;
      for (size_t k = 0; k < prompts.size(); ++k) {
        const int64_t need = static_cast<int64_t>(prefix.size() + suffix_ids_.size()) + n_audio[k] + 1;
        if (max_len > 0 && need > max_len)
          throw Error(
              "transcribe: the prompt for " +
              (out[jobs[b0 + k].file].source.empty() ? std::string("the audio") : out[jobs[b0 + k].file].source) +
              " needs " + std::to_string(need) + " positions (" + std::to_string(n_audio[k]) +
              " audio rows) but the model holds " + std::to_string(max_len) +
              "; kvrun does not drop audio rows: use shorter segments (--max-segment-seconds)");
      }
      std::vector<GenerationResult> rs = llm_->generate(prompts, g);
      double prefill = 0, decode = 0;
      for (const auto& r : rs) {
        prefill = std::max(prefill, r.stats.prefill_seconds);
        decode = std::max(decode, r.stats.decode_seconds);
      }
      for (size_t k = b0; k < b1; ++k) {
        const GenerationResult& r = rs[k - b0];
        Transcript& t = out[jobs[k].file];
        TranscriptSegment s;
        s.start = jobs[k].start;
        s.end = jobs[k].end;
        s.ids = r.tokens;
        s.audio_tokens = n_audio[k - b0];
        s.finish_reason = r.finish_reason;
        s.text = funasr_postprocess(decode_ids(r.tokens));
        t.stats.prompt_tokens += r.stats.prompt_tokens;
        t.stats.generated_tokens += r.stats.generated_tokens;
        // one batched step serves every row: its time is shared out by rows
        t.stats.prefill_seconds += prefill / static_cast<double>(b1 - b0);
        t.stats.decode_seconds += decode / static_cast<double>(b1 - b0);
        t.segments.push_back(std::move(s));
      }
    }
    const double total = since(t_all);
    double audio_total = 0;
    for (const auto& t : out) audio_total += t.stats.audio_seconds;
    for (auto& t : out) {
      std::string text;
      for (const auto& s : t.segments) {
        if (s.text.empty()) continue;
        const bool space = !text.empty() && static_cast<unsigned char>(text.back()) < 0x80 &&
                           static_cast<unsigned char>(s.text.front()) < 0x80 && text.back() != ' ' &&
                           s.text.front() != ' ';
        text += (space ? " " : "") + s.text;
      }
      t.text = text;
      t.stats.total_seconds += audio_total > 0 ? total * t.stats.audio_seconds / audio_total : total;
    }
  }

  // Ids the tokenizer does not know (the LLM's padded rows past the vocabulary) decode to
  // nothing, as in Hugging Face's batch_decode.
  std::string decode_ids(const std::vector<TokenId>& ids) const {
    std::vector<TokenId> known;
    for (TokenId id : ids)
      if (id >= 0 && id < tok_->vocab_size()) known.push_back(id);
    return tok_->decode(known, /*skip_special_tokens=*/true);
  }

  void load_kvrun_section(const json& asr) {
    try {
      const json& enc = asr.at("encoder");
      info_.encoder_file = enc.at("file").get<std::string>();
      const json& fe = asr.at("frontend");
      fe_.sample_rate = fe.value("sample_rate", 16000);
      fe_.num_mel_bins = fe.value("n_mels", 80);
      fe_.preemphasis = fe.value("preemphasis", 0.97);
      fe_.remove_dc_offset = fe.value("remove_dc_offset", true);
      fe_.frame_length_ms = fe.value("frame_length_ms", 25.0);
      fe_.frame_shift_ms = fe.value("frame_shift_ms", 10.0);
      fe_.window = fe.value("window", std::string("hamming"));
      fe_.snip_edges = fe.value("snip_edges", true);
      fe_.lfr_m = fe.value("lfr_m", 7);
      fe_.lfr_n = fe.value("lfr_n", 6);
      info_.lfr_m = fe_.lfr_m;
      info_.lfr_n = fe_.lfr_n;
      if (asr.contains("prompt")) prompt_ = pipelines::FunAsrPrompt::from_json(asr["prompt"]);
      if (asr.contains("stop_token_ids"))
        for (const auto& v : asr["stop_token_ids"]) stop_ids_.push_back(v.get<TokenId>());
      if (asr.contains("audio_tokens")) info_.truncate_audio_tokens = asr["audio_tokens"].value("truncate", true);
    } catch (const json::exception& e) {
      throw Error("kvrun.json: malformed \"asr\" section: " + std::string(e.what()));
    }
  }

  // sherpa-onnx (encoder_adaptor.onnx + embedding.onnx + llm.onnx) or the split layout
  // (... + llm_prefill.onnx + llm_decode.onnx): front-end parameters from the encoder's
  // ONNX metadata; the reference's front end and N rule otherwise (the same weights
  // were trained with them).
  void load_export(const fs::path& dir) {
    info_.encoder_file = first_existing(dir, {"encoder_adaptor.onnx", "encoder_adaptor.fp32.onnx",
                                              "encoder_adaptor.int8.onnx", "encoder_adaptor.fp16.onnx"});
    const std::string llm = first_existing(dir, {"llm.onnx", "llm.fp32.onnx", "llm.int8.onnx", "llm.fp16.onnx"});
    const bool split = fs::exists(dir / "llm_prefill.onnx") && fs::exists(dir / "llm_decode.onnx");
    if (info_.encoder_file.empty() || (llm.empty() && !split))
      throw Error("transcribe: " + dir.string() + " is not a speech model: expected a kvrun package with an \"asr\" " +
                  "section (kvrun.json), a sherpa-onnx folder (encoder_adaptor.onnx + embedding.onnx + llm.onnx) or " +
                  "a split export (encoder_adaptor.onnx + embedding.onnx + llm_prefill.onnx + llm_decode.onnx); " +
                  "found: " + list_files(dir));
    info_.layout = split && llm.empty() ? "split" : "sherpa-onnx";
  }

  // Front-end parameters the sherpa-onnx exporter writes into encoder_adaptor.onnx.
  void read_export_metadata() {
    Ort::ModelMetadata md = encoder_->get().GetModelMetadata();
    Ort::AllocatorWithDefaultOptions alloc;
    auto num = [&](const char* key, int fallback) {
      Ort::AllocatedStringPtr v = md.LookupCustomMetadataMapAllocated(key, alloc);
      if (!v) return fallback;
      const std::string s = v.get();
      try {
        return std::stoi(s);
      } catch (const std::exception&) {
        throw Error("transcribe: " + info_.encoder_file + " metadata " + key + " must be an integer, found '" + s +
                    "'");
      }
    };
    fe_.lfr_m = info_.lfr_m = num("lfr_window_size", 7);
    fe_.lfr_n = info_.lfr_n = num("lfr_window_shift", 6);
  }

  SpeechModelInfo info_;
  audio::FrontendOptions fe_;
  pipelines::FunAsrPrompt prompt_;
  std::unique_ptr<runtime::Session> encoder_;
  std::string enc_in_, enc_out_;
  std::unique_ptr<Model> llm_;
  const Tokenizer* tok_ = nullptr;
  std::unique_ptr<Tokenizer> own_tok_;
  std::vector<TokenId> stop_ids_, suffix_ids_;
};

}  // namespace

void TranscribeOptions::validate() const {
  if (max_new_tokens < 1 || max_new_tokens > (1 << 20))
    throw Error("transcribe: max_new_tokens must be in [1, 1048576], found " + std::to_string(max_new_tokens));
  if (!(max_segment_seconds >= 1.0 && max_segment_seconds <= 600.0))
    throw Error("transcribe: max_segment_seconds must be in [1, 600], found " + std::to_string(max_segment_seconds));
  if (batch_size < 1 || batch_size > 256)
    throw Error("transcribe: batch_size must be in [1, 256], found " + std::to_string(batch_size));
  for (const auto& h : hotwords)
    if (h.empty()) throw Error("transcribe: an empty hotword was given");
}

int64_t funasr_audio_token_count(int64_t t) {
  // Python floor division, as the reference writes it.
  auto fdiv = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  int64_t o = 1 + fdiv(t - 3 + 2, 2);
  o = 1 + fdiv(o - 3 + 2, 2);
  return fdiv(o - 1, 2) + 1;
}

std::string funasr_postprocess(const std::string& response) {
  // text = re.sub(r"\s+", " ", response.replace("/sil", " ")); Python's \s also covers
  // U+001C..U+001F, which PCRE2's Unicode \s does not.
  std::string s;
  s.reserve(response.size());
  for (size_t i = 0; i < response.size();) {
    if (response.compare(i, 4, "/sil") == 0) {
      s.push_back(' ');
      i += 4;
    } else {
      s.push_back(response[i++]);
    }
  }
  static const text::Regex ws(R"([\s\x{1c}-\x{1f}\x{85}]+)");
  std::vector<std::pair<size_t, size_t>> m;
  ws.find_all(s, m);
  std::string out;
  size_t last = 0;
  for (const auto& [b, e] : m) {
    out.append(s, last, b - last);
    out += ' ';
    last = e;
  }
  out.append(s, last, std::string::npos);
  return out;
}

SpeechModel::~SpeechModel() = default;

Transcript SpeechModel::transcribe_file(const fs::path& file, const TranscribeOptions& opt) {
  return std::move(transcribe_files({file}, opt).at(0));
}

std::unique_ptr<SpeechModel> SpeechModel::load(const fs::path& dir, const ModelOptions& opt) {
  if (!fs::is_directory(dir)) throw Error("transcribe: model folder not found: " + dir.string());
  return std::make_unique<FunAsrModel>(dir, opt);
}

}  // namespace kvrun
