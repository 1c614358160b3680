// kvrun._kvrun: the C++ library for Python (nanobind). python/kvrun/__init__.py builds the
// friendly API on top (prompts, messages, keyword sampling options, JSON reports as dicts).
// Every call into the library releases the GIL; callbacks (progress) take it back.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "graph/inspect.h"
#include "kvrun/asr.h"
#include "kvrun/build.h"
#include "kvrun/chat_template.h"
#include "kvrun/error.h"
#include "kvrun/runtime.h"
#include "kvrun/tokenizer.h"
#include "kvrun/translate.h"
#include "kvrun/verify.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using kvrun::Error;
using kvrun::GenerationOptions;
using kvrun::GenerationResult;
using kvrun::Prompt;
using kvrun::TokenId;

// A Python callable as a kvrun::ProgressFn, callable from any thread.
kvrun::ProgressFn progress_fn(nb::object cb) {
  if (!cb.is_valid() || cb.is_none()) return {};
  std::shared_ptr<nb::object> holder(new nb::object(std::move(cb)), [](nb::object* o) {
    nb::gil_scoped_acquire gil;
    delete o;
  });
  return [holder](const std::string& stage, int64_t done, int64_t total) {
    nb::gil_scoped_acquire gil;
    (*holder)(stage, done, total);
  };
}

// Prompt segments from Python: ("text", str, add_special) | ("ids", [int]) | ("emb", float32 [rows, hidden]).
Prompt to_prompt(const nb::list& segments) {
  Prompt p;
  for (nb::handle h : segments) {
    nb::tuple t = nb::cast<nb::tuple>(h);
    const std::string kind = nb::cast<std::string>(t[0]);
    if (kind == "text") {
      p.text(nb::cast<std::string>(t[1]), nb::cast<bool>(t[2]));
    } else if (kind == "ids") {
      p.ids(nb::cast<std::vector<TokenId>>(t[1]));
    } else if (kind == "emb") {
      auto a = nb::cast<nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>>(t[1]);
      const auto rows = static_cast<int64_t>(a.shape(0));
      std::vector<float> v(a.data(), a.data() + a.size());
      p.embeddings(std::move(v), rows);
    } else {
      throw Error("unknown prompt segment kind '" + kind + "'");
    }
  }
  return p;
}

struct Chunk {
  TokenId token = -1;
  std::string text;
};

// Generation on a background thread; Python iterates the chunks. close() stops it.
class Stream {
 public:
  using Run = std::function<GenerationResult(const kvrun::StreamFn&)>;
  explicit Stream(Run run) {
    th_ = std::thread([this, run = std::move(run)] {
      try {
        result_ = run([this](size_t, TokenId t, const std::string& s) {
          {
            std::lock_guard<std::mutex> lk(mu_);
            q_.push_back(Chunk{t, s});
          }
          cv_.notify_one();
          return !cancel_.load();
        });
      } catch (const std::exception& e) {
        error_ = e.what();
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        finished_ = true;
      }
      cv_.notify_one();
    });
  }
  ~Stream() { stop(); }

  Chunk next() {
    if (closed_) throw nb::stop_iteration();
    {
      nb::gil_scoped_release nogil;
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return !q_.empty() || finished_; });
      if (!q_.empty()) {
        Chunk c = std::move(q_.front());
        q_.pop_front();
        return c;
      }
    }
    stop();
    if (!error_.empty()) throw Error(error_);
    throw nb::stop_iteration();
  }
  void close() {
    {
      nb::gil_scoped_release nogil;
      stop();
    }
    closed_ = true;  // like a generator's close(): what was not taken is dropped
    std::lock_guard<std::mutex> lk(mu_);
    q_.clear();
  }
  const GenerationResult& result() const { return result_; }
  bool finished() const { return finished_; }

 private:
  void stop() {
    cancel_ = true;
    if (th_.joinable()) th_.join();
  }
  std::thread th_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Chunk> q_;
  bool finished_ = false, closed_ = false;
  std::atomic<bool> cancel_{false};
  GenerationResult result_;
  std::string error_;
};

// A model and the lock that makes its calls one at a time (several models run in parallel).
struct PyModel {
  std::shared_ptr<kvrun::Model> m;
  std::shared_ptr<std::mutex> mu = std::make_shared<std::mutex>();
};

struct PySequence {
  PyModel model;
  std::shared_ptr<kvrun::Sequence> seq;
};

nb::dict transcript_dict(const kvrun::Transcript& t) {
  nb::list segs;
  for (const auto& s : t.segments) {
    nb::dict d;
    d["start"] = s.start, d["end"] = s.end, d["text"] = s.text, d["tokens"] = s.ids;
    d["finish_reason"] = s.finish_reason;
    segs.append(d);
  }
  nb::dict stats;
  stats["audio_seconds"] = t.stats.audio_seconds, stats["total_seconds"] = t.stats.total_seconds;
  stats["real_time_factor"] = t.stats.real_time_factor();
  stats["prompt_tokens"] = t.stats.prompt_tokens, stats["generated_tokens"] = t.stats.generated_tokens;
  nb::dict d;
  d["source"] = t.source, d["text"] = t.text, d["segments"] = segs, d["stats"] = stats;
  return d;
}

}  // namespace

NB_MODULE(_kvrun, m) {
  m.doc() = "kvrun's C++ library (use the kvrun package, not this module directly)";
  nb::exception<Error>(m, "Error", PyExc_RuntimeError);

  nb::class_<kvrun::SamplingOptions>(m, "SamplingOptions")
      .def(nb::init<>())
      .def_rw("temperature", &kvrun::SamplingOptions::temperature)
      .def_rw("top_k", &kvrun::SamplingOptions::top_k)
      .def_rw("top_p", &kvrun::SamplingOptions::top_p)
      .def_rw("min_p", &kvrun::SamplingOptions::min_p)
      .def_rw("repetition_penalty", &kvrun::SamplingOptions::repetition_penalty)
      .def_rw("presence_penalty", &kvrun::SamplingOptions::presence_penalty)
      .def_rw("frequency_penalty", &kvrun::SamplingOptions::frequency_penalty)
      .def_rw("seed", &kvrun::SamplingOptions::seed);

  nb::class_<GenerationOptions>(m, "GenerationOptions")
      .def(nb::init<>())
      .def_rw("max_new_tokens", &GenerationOptions::max_new_tokens)
      .def_rw("sampling", &GenerationOptions::sampling)
      .def_rw("stop_at_eos", &GenerationOptions::stop_at_eos)
      .def_rw("stop_ids", &GenerationOptions::stop_ids)
      .def_rw("stop_strings", &GenerationOptions::stop_strings)
      .def_rw("prefill_chunk", &GenerationOptions::prefill_chunk)
      .def_rw("max_length", &GenerationOptions::max_length)
      .def("validate", &GenerationOptions::validate);

  nb::class_<kvrun::GenerationStats>(m, "GenerationStats")
      .def_ro("prompt_tokens", &kvrun::GenerationStats::prompt_tokens)
      .def_ro("reused_tokens", &kvrun::GenerationStats::reused_tokens)
      .def_ro("generated_tokens", &kvrun::GenerationStats::generated_tokens)
      .def_ro("prefill_seconds", &kvrun::GenerationStats::prefill_seconds)
      .def_ro("decode_seconds", &kvrun::GenerationStats::decode_seconds)
      .def_ro("time_to_first_token", &kvrun::GenerationStats::time_to_first_token)
      .def_prop_ro("prefill_tokens_per_second", &kvrun::GenerationStats::prefill_tokens_per_second)
      .def_prop_ro("decode_tokens_per_second", &kvrun::GenerationStats::decode_tokens_per_second);

  nb::class_<GenerationResult>(m, "GenerationResult")
      .def_ro("tokens", &GenerationResult::tokens)
      .def_ro("text", &GenerationResult::text)
      .def_ro("finish_reason", &GenerationResult::finish_reason)
      .def_ro("stats", &GenerationResult::stats);

  nb::class_<Chunk>(m, "Chunk")
      .def_ro("token", &Chunk::token, "the generated token id; -1 for the final piece of text")
      .def_ro("text", &Chunk::text)
      .def("__repr__", [](const Chunk& c) { return "Chunk(token=" + std::to_string(c.token) + ")"; });

  nb::class_<Stream>(m, "Stream")
      .def("__iter__", [](nb::handle self) { return self; })
      .def("__next__", &Stream::next)
      .def("close", &Stream::close, "stops the generation (the tokens so far stay in a Sequence's cache)")
      .def_prop_ro("result", [](const Stream& s) -> const GenerationResult& {
        if (!s.finished()) throw Error("the stream has not finished: iterate it to the end or close() it first");
        return s.result();
      });

  nb::class_<kvrun::ModelInfo>(m, "ModelInfo")
      .def_ro("layout", &kvrun::ModelInfo::layout)
      .def_prop_ro("dir", [](const kvrun::ModelInfo& i) { return i.dir.string(); })
      .def_ro("graphs", &kvrun::ModelInfo::graphs)
      .def_ro("num_layers", &kvrun::ModelInfo::num_layers)
      .def_ro("hidden_size", &kvrun::ModelInfo::hidden_size)
      .def_ro("vocab_size", &kvrun::ModelInfo::vocab_size)
      .def_ro("max_length", &kvrun::ModelInfo::max_length)
      .def_ro("eos_ids", &kvrun::ModelInfo::eos_ids)
      .def_ro("takes_embeddings", &kvrun::ModelInfo::takes_embeddings)
      .def_ro("shared_kv_buffer", &kvrun::ModelInfo::shared_kv_buffer)
      .def_ro("kv_dtype", &kvrun::ModelInfo::kv_dtype)
      .def("__str__", &kvrun::ModelInfo::to_text);

  nb::class_<PyModel>(m, "Model")
      .def_static(
          "load",
          [](const std::filesystem::path& path, int threads, nb::object progress) {
            kvrun::ModelOptions o;
            o.threads = threads;
            o.build_progress = progress_fn(std::move(progress));
            nb::gil_scoped_release nogil;
            return PyModel{std::shared_ptr<kvrun::Model>(kvrun::Model::load(path, o))};
          },
          "path"_a, "threads"_a = 0, "progress"_a = nb::none())
      .def_prop_ro("info", [](const PyModel& p) -> const kvrun::ModelInfo& { return p.m->info(); })
      .def_prop_ro("has_tokenizer", [](const PyModel& p) { return p.m->tokenizer() != nullptr; })
      .def(
          "encode",
          [](const PyModel& p, const std::string& text, bool special) {
            if (!p.m->tokenizer()) throw Error("this model has no tokenizer");
            nb::gil_scoped_release nogil;
            return p.m->tokenizer()->encode(text, special);
          },
          "text"_a, "add_special_tokens"_a = false)
      .def(
          "decode",
          [](const PyModel& p, const std::vector<TokenId>& ids, bool skip) {
            if (!p.m->tokenizer()) throw Error("this model has no tokenizer");
            nb::gil_scoped_release nogil;
            return p.m->tokenizer()->decode(ids, skip);
          },
          "ids"_a, "skip_special_tokens"_a = false)
      .def(
          "render_chat",
          [](const PyModel& p, const std::string& messages_json, bool add_generation_prompt,
             std::optional<bool> enable_thinking, const std::string& tools_json) {
            kvrun::ChatOptions co;
            co.add_generation_prompt = add_generation_prompt;
            co.enable_thinking = enable_thinking;
            if (!tools_json.empty()) co.tools = nlohmann::ordered_json::parse(tools_json);
            const auto msgs = nlohmann::ordered_json::parse(messages_json);
            nb::gil_scoped_release nogil;
            return p.m->chat_template().render(msgs, co);
          },
          "messages_json"_a, "add_generation_prompt"_a = true, "enable_thinking"_a = nb::none(), "tools_json"_a = "")
      .def("prompt_ids",
           [](const PyModel& p, const nb::list& segments) {
             const Prompt pr = to_prompt(segments);
             nb::gil_scoped_release nogil;
             return p.m->prompt_ids(pr);
           })
      .def("generate",
           [](const PyModel& p, const nb::list& segments, const GenerationOptions& o) {
             const Prompt pr = to_prompt(segments);
             nb::gil_scoped_release nogil;
             std::lock_guard<std::mutex> lk(*p.mu);
             return p.m->generate(pr, o);
           })
      .def("generate_batch",
           [](const PyModel& p, const std::vector<nb::list>& prompts, const GenerationOptions& o) {
             std::vector<Prompt> ps;
             for (const auto& s : prompts) ps.push_back(to_prompt(s));
             nb::gil_scoped_release nogil;
             std::lock_guard<std::mutex> lk(*p.mu);
             return p.m->generate(ps, o);
           })
      .def("stream",
           [](const PyModel& p, const nb::list& segments, const GenerationOptions& o) {
             Prompt pr = to_prompt(segments);
             return new Stream([p, pr = std::move(pr), o](const kvrun::StreamFn& fn) {
               std::lock_guard<std::mutex> lk(*p.mu);
               return p.m->generate(pr, o, fn);
             });
           })
      .def("new_sequence", [](const PyModel& p) {
        return PySequence{p, std::shared_ptr<kvrun::Sequence>(p.m->new_sequence())};
      });

  nb::class_<PySequence>(m, "Sequence")
      .def("generate",
           [](PySequence& s, const nb::list& segments, const GenerationOptions& o) {
             const Prompt pr = to_prompt(segments);
             nb::gil_scoped_release nogil;
             std::lock_guard<std::mutex> lk(*s.model.mu);
             return s.seq->generate(pr, o);
           })
      .def("stream",
           [](PySequence& s, const nb::list& segments, const GenerationOptions& o) {
             Prompt pr = to_prompt(segments);
             return new Stream([s, pr = std::move(pr), o](const kvrun::StreamFn& fn) {
               std::lock_guard<std::mutex> lk(*s.model.mu);
               return s.seq->generate(pr, o, fn);
             });
           })
      .def_prop_ro("cached_tokens", [](const PySequence& s) { return s.seq->cached_tokens(); })
      .def("reset", [](PySequence& s) { s.seq->reset(); });

  m.def(
      "build",
      [](const std::filesystem::path& checkpoint, const std::filesystem::path& out, const std::string& target,
         const std::string& precision, const std::string& kv_dtype, int64_t max_length, bool overwrite,
         int64_t block_size, bool symmetric, int accuracy_level, const std::string& exclude, nb::object progress) {
        kvrun::BuildOptions o;
        o.checkpoint = checkpoint, o.out = out, o.target = target, o.precision = precision, o.kv_dtype = kv_dtype;
        o.max_length = max_length, o.overwrite = overwrite;
        o.quant.block_size = block_size, o.quant.symmetric = symmetric, o.quant.accuracy_level = accuracy_level;
        o.quant.exclude = exclude;
        o.progress = progress_fn(std::move(progress));
        nb::gil_scoped_release nogil;
        const kvrun::BuildResult r = kvrun::build_package(o);
        return std::make_pair(r.out.string(), r.files);
      },
      "checkpoint"_a, "out"_a, "target"_a = "ort", "precision"_a = "auto", "kv_dtype"_a = "auto", "max_length"_a = 0,
      "overwrite"_a = false, "block_size"_a = 32, "symmetric"_a = true, "accuracy_level"_a = 4, "exclude"_a = "",
      "progress"_a = nb::none());

  m.def(
      "verify",
      [](const std::filesystem::path& package, const std::filesystem::path& checkpoint, int greedy_tokens, int threads,
         nb::object progress) {
        kvrun::VerifyOptions o;
        o.package = package, o.checkpoint = checkpoint, o.greedy_tokens = greedy_tokens, o.threads = threads;
        o.build_progress = progress_fn(std::move(progress));
        nb::gil_scoped_release nogil;
        return kvrun::verify_package(o).to_json();
      },
      "package"_a, "checkpoint"_a = std::filesystem::path(), "greedy_tokens"_a = 16, "threads"_a = 0,
      "progress"_a = nb::none());

  m.def(
      "quantize",
      [](const std::filesystem::path& input, const std::filesystem::path& out, const std::string& mode,
         int64_t block_size, bool symmetric, int accuracy_level, const std::string& exclude, bool overwrite,
         nb::object progress) {
        kvrun::QuantizeOptions o;
        o.input = input, o.out = out, o.mode = mode, o.block_size = block_size, o.symmetric = symmetric;
        o.accuracy_level = accuracy_level, o.exclude = exclude, o.overwrite = overwrite;
        o.progress = progress_fn(std::move(progress));
        nb::gil_scoped_release nogil;
        return kvrun::quantize(o).to_json();
      },
      "input"_a, "out"_a, "mode"_a = "int4", "block_size"_a = 32, "symmetric"_a = true, "accuracy_level"_a = 4,
      "exclude"_a = "", "overwrite"_a = false, "progress"_a = nb::none());

  m.def(
      "inspect",
      [](const std::filesystem::path& path, bool decoder) {
        kvrun::graph::InspectOptions o;
        o.decoder = decoder;
        nb::gil_scoped_release nogil;
        return kvrun::graph::inspect(path, o).dump();
      },
      "path"_a, "decoder"_a = true);

  struct PySpeech {
    std::shared_ptr<kvrun::SpeechModel> m;
    std::shared_ptr<std::mutex> mu = std::make_shared<std::mutex>();
  };
  nb::class_<PySpeech>(m, "SpeechModel")
      .def_static(
          "load",
          [](const std::filesystem::path& path, int threads) {
            kvrun::ModelOptions o;
            o.threads = threads;
            nb::gil_scoped_release nogil;
            return PySpeech{std::shared_ptr<kvrun::SpeechModel>(kvrun::SpeechModel::load(path, o))};
          },
          "path"_a, "threads"_a = 0)
      .def(
          "transcribe_files",
          [](PySpeech& s, const std::vector<std::filesystem::path>& files, const std::string& language,
             const std::vector<std::string>& hotwords, bool itn, int64_t max_new_tokens) {
            kvrun::TranscribeOptions o;
            o.language = language, o.hotwords = hotwords, o.itn = itn, o.max_new_tokens = max_new_tokens;
            std::vector<kvrun::Transcript> ts;
            {
              nb::gil_scoped_release nogil;
              std::lock_guard<std::mutex> lk(*s.mu);
              o.validate();
              ts = s.m->transcribe_files(files, o);
            }
            nb::list out;
            for (const auto& t : ts) out.append(transcript_dict(t));
            return out;
          },
          "files"_a, "language"_a = "", "hotwords"_a = std::vector<std::string>(), "itn"_a = true,
          "max_new_tokens"_a = 512)
      .def(
          "transcribe_samples",
          [](PySpeech& s, nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu> samples,
             const std::string& language) {
            std::vector<float> v(samples.data(), samples.data() + samples.size());
            kvrun::TranscribeOptions o;
            o.language = language;
            kvrun::Transcript t;
            {
              nb::gil_scoped_release nogil;
              std::lock_guard<std::mutex> lk(*s.mu);
              t = s.m->transcribe_samples(v, o);
            }
            return transcript_dict(t);
          },
          "samples_16k"_a, "language"_a = "");

  struct PyTranslator {
    std::shared_ptr<kvrun::Translator> t;
    std::shared_ptr<std::mutex> mu = std::make_shared<std::mutex>();
  };
  nb::class_<PyTranslator>(m, "Translator")
      .def_static(
          "load",
          [](const std::filesystem::path& path, int threads) {
            nb::gil_scoped_release nogil;
            return PyTranslator{std::shared_ptr<kvrun::Translator>(kvrun::Translator::load(path, threads))};
          },
          "path"_a, "threads"_a = 0)
      .def(
          "translate",
          [](PyTranslator& t, const std::vector<std::string>& sources, int64_t beams, int64_t n_best,
             int64_t max_length, int64_t batch_size, float temperature, uint64_t seed) {
            kvrun::TranslateOptions o;
            o.num_beams = beams, o.n_best = n_best, o.max_length = max_length, o.batch_size = batch_size;
            o.sampling.temperature = temperature, o.sampling.seed = seed;
            std::vector<kvrun::Translation> rs;
            {
              nb::gil_scoped_release nogil;
              std::lock_guard<std::mutex> lk(*t.mu);
              o.validate();
              rs = t.t->translate(sources, o);
            }
            nb::list out;
            for (const auto& r : rs) {
              nb::list hyps;
              for (const auto& h : r.hypotheses) {
                nb::dict d;
                d["text"] = h.text, d["tokens"] = h.tokens, d["score"] = h.score;
                hyps.append(d);
              }
              nb::dict d;
              d["text"] = r.hypotheses.empty() ? std::string() : r.hypotheses[0].text;
              d["hypotheses"] = hyps, d["source_tokens"] = r.source_tokens;
              out.append(d);
            }
            return out;
          },
          "sources"_a, "beams"_a = 0, "n_best"_a = 1, "max_length"_a = 0, "batch_size"_a = 16, "temperature"_a = 0.f,
          "seed"_a = 0);
}
