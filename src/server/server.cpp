// kvrun serve: HTTP front end (cpp-httplib) -- routes, authentication, limits, streaming.
#include "server/server.h"

#include <httplib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "kvrun/asr.h"
#include "kvrun/chat_template.h"
#include "kvrun/runtime.h"
#include "kvrun/tokenizer.h"
#include "kvrun/translate.h"
#include "runtime/batcher.h"
#include "runtime/engine.h"
#include "server/http_util.h"
#include "server/metrics.h"

namespace kvrun::server {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::atomic<bool> g_signalled{false};
extern "C" void on_signal(int) { g_signalled = true; }

// ---- served models

enum class Kind { Chat, Speech, Translation };
const char* kind_name(Kind k) { return k == Kind::Chat ? "chat" : k == Kind::Speech ? "speech" : "translation"; }

Kind detect_kind(const fs::path& p) {
  if (fs::is_directory(p)) {
    if (fs::exists(p / "encoder_adaptor.onnx")) return Kind::Speech;
    if (fs::exists(p / "kvrun.json")) {
      std::ifstream f(p / "kvrun.json");
      std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      if (s.find("\"seq2seq\"") != std::string::npos) return Kind::Translation;
    }
    if (fs::exists(p / "encoder_model.onnx") || fs::exists(p / "onnx" / "encoder_model.onnx")) return Kind::Translation;
  }
  return Kind::Chat;
}

struct Served {
  std::string name;
  fs::path path;
  Kind kind = Kind::Chat;
  int64_t created = 0;
  std::unique_ptr<Model> llm;
  runtime::Engine* engine = nullptr;
  std::unique_ptr<runtime::Batcher> batcher;
  std::unique_ptr<SpeechModel> speech;
  std::unique_ptr<Translator> translator;
  // speech / translation: one request at a time; the others wait (bounded by max_queue)
  std::mutex work_mu;
  std::atomic<int64_t> running{0}, waiting{0};
};

// One request's events from the batcher thread to its HTTP thread (all its choices).
struct Channel {
  struct Item {
    size_t choice = 0;
    bool done = false;
    runtime::TokenEvent ev;
    GenerationResult res;
    std::string error;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Item> items;
  void push(Item it) {
    {
      std::lock_guard<std::mutex> lk(mu);
      items.push_back(std::move(it));
    }
    cv.notify_one();
  }
  // Waits up to `timeout` for items; returns them (possibly none).
  std::deque<Item> take(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait_for(lk, timeout, [&] { return !items.empty(); });
    std::deque<Item> out;
    out.swap(items);
    return out;
  }
};

struct TextRequest {
  bool chat = true;
  std::vector<std::vector<TokenId>> prompts;  // completions may have several
  std::vector<std::string> prompt_texts;      // for echo
  GenerationOptions opt;
  int64_t n = 1;
  int top_logprobs = -1;  // -1: no logprobs
  bool stream = false, include_usage = false, echo = false;
};

class Server {
 public:
  explicit Server(const ServeOptions& o) : o_(o) {}
  int run(const std::function<void(int)>& on_listening, const std::function<bool()>& stop);

 private:
  void routes();
  bool authorized(const httplib::Request& req) const;
  Served& find(const ojson& body, Kind kind, bool required = true);
  Served& find_name(const std::string& name, Kind kind);
  void load_models();

  void completions(const httplib::Request& req, httplib::Response& res, bool chat);
  TextRequest parse_text(Served& m, const ojson& body, bool chat);
  void transcriptions(const httplib::Request& req, httplib::Response& res);
  void translations(const httplib::Request& req, httplib::Response& res);
  void tokenize(const httplib::Request& req, httplib::Response& res);
  void detokenize(const httplib::Request& req, httplib::Response& res);
  void models(httplib::Response& res);
  std::vector<ModelGauges> gauges() const;

  ServeOptions o_;
  httplib::Server http_;
  std::vector<std::unique_ptr<Served>> models_;
  std::atomic<bool> ready_{false};
  std::string load_error_;
  Metrics metrics_;
};

void send_json(httplib::Response& res, int status, const ojson& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, ojson::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const HttpError& e) {
  send_json(res, e.status, error_body(e.status, e.type, e.what(), e.param, e.code));
  if (e.status == 429 || e.status == 503) res.set_header("Retry-After", "1");
}

// ---- authentication, lookup

bool Server::authorized(const httplib::Request& req) const {
  if (o_.api_key.empty()) return true;
  const std::string auth = req.get_header_value("Authorization");
  if (auth == "Bearer " + o_.api_key) return true;
  return req.get_header_value("X-Api-Key") == o_.api_key;
}

Served& Server::find_name(const std::string& name, Kind kind) {
  std::string names;
  for (auto& m : models_) {
    if (m->name == name) {
      if (m->kind != kind)
        throw HttpError(400, "invalid_request_error",
                        "model '" + name + "' is a " + kind_name(m->kind) + " model; this endpoint takes a " +
                            kind_name(kind) + " model",
                        "model", "model_not_supported");
      return *m;
    }
    names += (names.empty() ? "" : ", ") + m->name;
  }
  throw HttpError(404, "invalid_request_error", "model '" + name + "' does not exist; served: " + names, "model",
                  "model_not_found");
}

Served& Server::find(const ojson& body, Kind kind, bool required) {
  const auto name = string_field(body, "model");
  if (name) return find_name(*name, kind);
  Served* only = nullptr;
  int count = 0;
  for (auto& m : models_)
    if (m->kind == kind) only = m.get(), ++count;
  if (!required && count == 1) return *only;
  bad_request("'model' is required (one of the served models: see GET /v1/models)", "model");
}

// ---- chat / completions

// Message content: a string, null, or an array of {"type": "text", "text": ...} parts.
std::string content_text(const ojson& content, size_t i) {
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  const std::string where = "messages[" + std::to_string(i) + "].content";
  if (!content.is_array()) bad_request("'" + where + "' must be a string or an array of parts", where);
  std::string out;
  for (const auto& part : content) {
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      bad_request("'" + where + "' parts must be objects with a 'type'", where);
    const std::string type = part["type"].get<std::string>();
    if (type != "text")
      bad_request("'" + where + "' has a part of type '" + type + "'; this model takes text parts only", where);
    if (!part.contains("text") || !part["text"].is_string())
      bad_request("'" + where + "' text parts need a string 'text'", where);
    out += part["text"].get<std::string>();
  }
  return out;
}

TextRequest Server::parse_text(Served& m, const ojson& body, bool chat) {
  TextRequest r;
  r.chat = chat;
  const Tokenizer* tok = m.llm->tokenizer();
  if (chat) {
    auto it = body.find("messages");
    if (it == body.end() || !it->is_array() || it->empty())
      bad_request("'messages' must be a non-empty array of messages", "messages");
    ojson msgs = ojson::array();
    for (size_t i = 0; i < it->size(); ++i) {
      const ojson& msg = (*it)[i];
      const std::string where = "messages[" + std::to_string(i) + "]";
      if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string())
        bad_request("'" + where + "' must be an object with a string 'role'", where);
      ojson copy = msg;
      copy["content"] = content_text(msg.contains("content") ? msg["content"] : ojson(), i);
      msgs.push_back(std::move(copy));
    }
    if (!tok) bad_request("model '" + m.name + "' has no tokenizer; use /v1/completions with token ids", "messages");
    ChatOptions co;
    if (auto t = body.find("tools"); t != body.end() && !t->is_null()) {
      if (!t->is_array()) bad_request("'tools' must be an array", "tools");
      co.tools = *t;
    }
    if (auto k = body.find("chat_template_kwargs"); k != body.end() && !k->is_null()) {
      if (!k->is_object()) bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs");
      co.extra = *k;
      if (k->contains("enable_thinking") && (*k)["enable_thinking"].is_boolean())
        co.enable_thinking = (*k)["enable_thinking"].get<bool>();
    }
    std::string text;
    try {
      text = m.llm->chat_template().render(msgs, co);
    } catch (const std::exception& e) {
      bad_request(std::string("the model's chat template failed on these messages: ") + e.what(), "messages");
    }
    r.prompts.push_back(tok->encode(text, false));
    r.prompt_texts.push_back(text);
  } else {
    auto it = body.find("prompt");
    if (it == body.end() || it->is_null()) bad_request("'prompt' is required", "prompt");
    auto from_ids = [&](const ojson& a) {
      std::vector<TokenId> ids;
      for (const auto& x : a) {
        if (!x.is_number_integer()) bad_request("'prompt' token arrays must hold integers", "prompt");
        ids.push_back(x.get<TokenId>());
      }
      return ids;
    };
    auto from_text = [&](const std::string& s) {
      if (!tok) bad_request("model '" + m.name + "' has no tokenizer; give the prompt as token ids", "prompt");
      return tok->encode(s, true);
    };
    if (it->is_string()) {
      r.prompts.push_back(from_text(it->get<std::string>()));
      r.prompt_texts.push_back(it->get<std::string>());
    } else if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) {
      r.prompts.push_back(from_ids(*it));
      r.prompt_texts.push_back(tok ? tok->decode(r.prompts.back()) : "");
    } else if (it->is_array() && !it->empty()) {
      if (it->size() > 16) bad_request("'prompt' takes at most 16 prompts", "prompt");
      for (const auto& p : *it) {
        if (p.is_string()) {
          r.prompts.push_back(from_text(p.get<std::string>()));
          r.prompt_texts.push_back(p.get<std::string>());
        } else if (p.is_array()) {
          r.prompts.push_back(from_ids(p));
          r.prompt_texts.push_back(tok ? tok->decode(r.prompts.back()) : "");
        } else {
          bad_request("'prompt' must be a string, an array of strings, or token ids", "prompt");
        }
      }
    } else {
      bad_request("'prompt' must be a non-empty string, array of strings, or token ids", "prompt");
    }
    for (const auto& p : r.prompts)
      if (p.empty()) bad_request("'prompt' is empty after tokenization", "prompt");
    if (auto s = body.find("suffix"); s != body.end() && !s->is_null())
      bad_request("'suffix' (fill-in-the-middle) is not supported", "suffix");
    r.echo = bool_field(body, "echo").value_or(false);
  }
  GenerationOptions& g = r.opt;
  const auto max_ctx = m.batcher->context();
  auto mt = int_field(body, "max_completion_tokens", 0, 1 << 30);
  if (!mt) mt = int_field(body, "max_tokens", 0, 1 << 30);
  g.max_new_tokens = mt.value_or(max_ctx);
  g.stop_strings = stop_field(body);
  g.stop_at_eos = !bool_field(body, "ignore_eos").value_or(false);
  SamplingOptions& s = g.sampling;
  s.temperature = static_cast<float>(number_field(body, "temperature", 0, 2).value_or(1.0));
  s.top_p = static_cast<float>(number_field(body, "top_p", 0, 1).value_or(1.0));
  if (s.top_p <= 0) bad_request("'top_p' must be > 0", "top_p");
  s.top_k = static_cast<int>(int_field(body, "top_k", 0, 1 << 30).value_or(0));
  s.min_p = static_cast<float>(number_field(body, "min_p", 0, 1).value_or(0));
  s.presence_penalty = static_cast<float>(number_field(body, "presence_penalty", -2, 2).value_or(0));
  s.frequency_penalty = static_cast<float>(number_field(body, "frequency_penalty", -2, 2).value_or(0));
  s.repetition_penalty = static_cast<float>(number_field(body, "repetition_penalty", 0.01, 10).value_or(1));
  if (auto seed = int_field(body, "seed", INT64_MIN, INT64_MAX))
    s.seed = static_cast<uint64_t>(*seed);
  else
    s.seed = std::random_device{}() | (static_cast<uint64_t>(std::random_device{}()) << 32);
  r.n = int_field(body, "n", 1, 16).value_or(1);
  if (r.n * static_cast<int64_t>(r.prompts.size()) > 16)
    bad_request("'n' x prompts must be at most 16, found " + std::to_string(r.n * r.prompts.size()), "n");
  if (chat) {
    const bool lp = bool_field(body, "logprobs").value_or(false);
    const auto top = int_field(body, "top_logprobs", 0, 20);
    if (top && !lp) bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    r.top_logprobs = lp ? static_cast<int>(top.value_or(0)) : -1;
  } else {
    if (auto lp = int_field(body, "logprobs", 0, 5)) r.top_logprobs = static_cast<int>(*lp);
    if (r.echo && r.top_logprobs >= 0) bad_request("'echo' with 'logprobs' is not supported", "echo");
  }
  r.stream = bool_field(body, "stream").value_or(false);
  if (auto so = body.find("stream_options"); so != body.end() && !so->is_null()) {
    if (!so->is_object()) bad_request("'stream_options' must be an object", "stream_options");
    r.include_usage = bool_field(*so, "include_usage").value_or(false);
  }
  try {
    g.validate();
  } catch (const Error& e) {
    bad_request(e.what());
  }
  return r;
}

ojson logprob_entry(const Tokenizer* tok, TokenId id, float lp) {
  const std::string text = tok ? tok->decode(std::vector<TokenId>{id}) : std::to_string(id);
  ojson bytes = ojson::array();
  for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
  return {{"token", text}, {"logprob", lp}, {"bytes", bytes}};
}

void Server::completions(const httplib::Request& req, httplib::Response& res, bool chat) {
  const auto arrival = Clock::now();
  const ojson body = parse_body(req.body);
  Served& m = find(body, Kind::Chat);
  TextRequest tr;
  try {
    tr = parse_text(m, body, chat);
  } catch (const HttpError&) {
    metrics_.rejected(m.name, "invalid");
    throw;
  }
  const std::string id = new_id(chat ? "chatcmpl-" : "cmpl-");
  const int64_t created = unix_now();
  const Tokenizer* tok = m.llm->tokenizer();

  // One ticket per choice: prompt p x n.
  auto ch = std::make_shared<Channel>();
  struct Choice {
    size_t prompt = 0;
    std::shared_ptr<runtime::Ticket> ticket;
    Clock::time_point last;
    bool first = true;
  };
  auto choices = std::make_shared<std::vector<Choice>>();
  const std::string model_name = m.name;
  Metrics* metrics = &metrics_;
  for (size_t p = 0; p < tr.prompts.size(); ++p)
    for (int64_t k = 0; k < tr.n; ++k) choices->push_back(Choice{p, nullptr, Clock::now(), true});
  auto cancel_all = [choices] {
    for (auto& c : *choices)
      if (c.ticket) c.ticket->cancel();
  };
  try {
    for (size_t i = 0; i < choices->size(); ++i) {
      runtime::BatchRequest br;
      br.prompt = tr.prompts[(*choices)[i].prompt];
      br.opt = tr.opt;
      br.opt.sampling.seed += i;
      br.top_logprobs = tr.top_logprobs;
      br.on_token = [ch, i, choices, metrics, model_name](const runtime::TokenEvent& ev) {
        Choice& c = (*choices)[i];
        if (ev.token >= 0) {
          const auto now = Clock::now();
          if (!c.first) metrics->inter_token(model_name, std::chrono::duration<double>(now - c.last).count());
          c.first = false;
          c.last = now;
        }
        Channel::Item item;
        item.choice = i;
        item.ev = ev;
        ch->push(std::move(item));
        return true;
      };
      br.on_done = [ch, i, metrics, model_name, arrival](const GenerationResult& r, const std::string& err) {
        const double ttft = r.stats.generated_tokens > 0 ? r.stats.time_to_first_token : -1;
        metrics->request_done(model_name, err.empty() ? r.finish_reason : "error", r.stats.prompt_tokens,
                              r.stats.generated_tokens, since(arrival),
                              ttft >= 0 ? std::max(0.0, ttft - r.stats.prefill_seconds) : -1, ttft);
        Channel::Item item;
        item.choice = i;
        item.done = true;
        item.res = r;
        item.error = err;
        ch->push(std::move(item));
      };
      (*choices)[i].ticket = m.batcher->submit(std::move(br));
    }
  } catch (const runtime::QueueFull& e) {
    cancel_all();
    metrics_.rejected(m.name, "queue_full");
    throw HttpError(429, "rate_limit_error", std::string("the server is busy: ") + e.what(), "", "queue_full");
  } catch (const HttpError&) {
    cancel_all();
    throw;
  } catch (const Error& e) {
    cancel_all();
    metrics_.rejected(m.name, "invalid");
    throw HttpError(400, "invalid_request_error", e.what(), chat ? "messages" : "prompt",
                    std::string(e.what()).find("context holds") != std::string::npos ? "context_length_exceeded" : "");
  }

  const ojson object = chat ? "chat.completion.chunk" : "text_completion";
  auto chunk_base = [=] {
    return ojson{{"id", id},
                 {"object", object},
                 {"created", created},
                 {"model", model_name},
                 {"system_fingerprint", "kvrun-0.1.0"}};
  };
  auto finish_reason = [](const std::string& r) { return r == "length" ? "length" : "stop"; };
  auto usage_of = [](const std::vector<GenerationResult>& rs, const TextRequest& t) {
    int64_t prompt = 0, completion = 0, cached = 0;
    for (size_t p = 0; p < t.prompts.size(); ++p) prompt += static_cast<int64_t>(t.prompts[p].size());
    for (const auto& r : rs) completion += r.stats.generated_tokens, cached += r.stats.reused_tokens;
    return ojson{{"prompt_tokens", prompt},
                 {"completion_tokens", completion},
                 {"total_tokens", prompt + completion},
                 {"prompt_tokens_details", {{"cached_tokens", cached}}}};
  };
  auto logprobs_of = [tok, chat](const runtime::TokenEvent& ev, int top) {
    ojson e = logprob_entry(tok, ev.token, ev.logprob);
    if (chat) {
      ojson alts = ojson::array();
      for (const auto& [t, lp] : ev.top) alts.push_back(logprob_entry(tok, t, lp));
      e["top_logprobs"] = alts;
    } else {
      ojson alts = ojson::object();
      for (int i = 0; i < top && i < static_cast<int>(ev.top.size()); ++i)
        alts[logprob_entry(tok, ev.top[static_cast<size_t>(i)].first, 0)["token"].get<std::string>()] =
            ev.top[static_cast<size_t>(i)].second;
      e["top_logprobs"] = alts;
    }
    return e;
  };

  res.set_header("X-Accel-Buffering", "no");
  res.set_header("Cache-Control", "no-cache");
  const auto ping = std::chrono::milliseconds(250);
  if (tr.stream) {
    res.set_chunked_content_provider(
        "text/event-stream",
        [=](size_t, httplib::DataSink& sink) {
          std::vector<GenerationResult> results(choices->size());
          std::vector<bool> done(choices->size(), false), started(choices->size(), false);
          size_t remaining = choices->size();
          auto write = [&](const std::string& s) {
            if (!sink.write(s.data(), s.size())) {
              cancel_all();
              return false;
            }
            return true;
          };
          if (chat)  // the role first, as OpenAI does
            for (size_t i = 0; i < choices->size(); ++i) {
              ojson c = chunk_base();
              c["choices"] = ojson::array({{{"index", i},
                                            {"delta", {{"role", "assistant"}, {"content", ""}}},
                                            {"logprobs", nullptr},
                                            {"finish_reason", nullptr}}});
              if (tr.include_usage) c["usage"] = nullptr;
              if (!write(sse(c))) return false;
            }
          while (remaining > 0) {
            auto items = ch->take(ping);
            if (items.empty() && !write(": ping\n\n")) return false;
            for (auto& it : items) {
              ojson c = chunk_base();
              ojson choice = {{"index", it.choice}};
              if (it.done) {
                if (!it.error.empty()) {
                  if (!write(sse(error_body(500, "server_error", it.error)))) return false;
                  cancel_all();
                  return false;
                }
                done[it.choice] = true;
                --remaining;
                results[it.choice] = it.res;
                if (chat)
                  choice["delta"] = ojson::object();
                else
                  choice["text"] = "";
                choice["logprobs"] = nullptr;
                choice["finish_reason"] = finish_reason(it.res.finish_reason);
              } else {
                std::string text = it.ev.text;
                if (!chat && tr.echo && !started[it.choice])
                  text = tr.prompt_texts[(*choices)[it.choice].prompt] + text;
                started[it.choice] = true;
                if (chat)
                  choice["delta"] = {{"content", text}};
                else
                  choice["text"] = text;
                if (tr.top_logprobs >= 0 && it.ev.token >= 0) {
                  const ojson e = logprobs_of(it.ev, tr.top_logprobs);
                  if (chat) {
                    choice["logprobs"] = {{"content", ojson::array({e})}};
                  } else {
                    choice["logprobs"] = {{"tokens", {e["token"]}},
                                          {"token_logprobs", {e["logprob"]}},
                                          {"top_logprobs", {e["top_logprobs"]}},
                                          {"text_offset", ojson::array()}};
                  }
                } else {
                  choice["logprobs"] = nullptr;
                }
                if (text.empty() && choice["logprobs"].is_null()) continue;
                choice["finish_reason"] = nullptr;
              }
              c["choices"] = ojson::array({choice});
              if (tr.include_usage) c["usage"] = nullptr;
              if (!write(sse(c))) return false;
            }
          }
          if (tr.include_usage) {
            ojson c = chunk_base();
            c["choices"] = ojson::array();
            c["usage"] = usage_of(results, tr);
            if (!write(sse(c))) return false;
          }
          if (!write("data: [DONE]\n\n")) return false;
          sink.done();
          return true;
        },
        [cancel_all](bool) { cancel_all(); });
    return;
  }
  // Not streamed: the body is JSON preceded by spaces written while generating -- a failed
  // write is how a client that went away is noticed (its generation then stops).
  res.set_chunked_content_provider(
      "application/json",
      [=](size_t, httplib::DataSink& sink) {
        std::vector<GenerationResult> results(choices->size());
        std::vector<ojson> lps(choices->size(), ojson::array());
        std::string error;
        size_t remaining = choices->size();
        while (remaining > 0) {
          auto items = ch->take(ping);
          if (items.empty() && !sink.write(" ", 1)) {
            cancel_all();
            return false;
          }
          for (auto& it : items) {
            if (it.done) {
              results[it.choice] = it.res;
              if (!it.error.empty()) error = it.error;
              --remaining;
            } else if (tr.top_logprobs >= 0 && it.ev.token >= 0) {
              lps[it.choice].push_back(logprobs_of(it.ev, tr.top_logprobs));
            }
          }
        }
        ojson out;
        if (!error.empty()) {
          out = error_body(500, "server_error", error);
        } else {
          out = {{"id", id},
                 {"object", chat ? "chat.completion" : "text_completion"},
                 {"created", created},
                 {"model", model_name},
                 {"system_fingerprint", "kvrun-0.1.0"}};
          ojson cs = ojson::array();
          for (size_t i = 0; i < results.size(); ++i) {
            const GenerationResult& r = results[i];
            ojson c = {{"index", i}};
            ojson lp = nullptr;
            if (tr.top_logprobs >= 0) {
              if (chat) {
                lp = {{"content", lps[i]}};
              } else {
                lp = {{"tokens", ojson::array()},
                      {"token_logprobs", ojson::array()},
                      {"top_logprobs", ojson::array()},
                      {"text_offset", ojson::array()}};
                size_t off = 0;
                for (const auto& e : lps[i]) {
                  lp["tokens"].push_back(e["token"]);
                  lp["token_logprobs"].push_back(e["logprob"]);
                  lp["top_logprobs"].push_back(e["top_logprobs"]);
                  lp["text_offset"].push_back(off);
                  off += e["token"].get<std::string>().size();
                }
              }
            }
            if (chat) {
              c["message"] = {{"role", "assistant"}, {"content", r.text}};
            } else {
              c["text"] = (tr.echo ? tr.prompt_texts[(*choices)[i].prompt] : std::string()) + r.text;
            }
            c["logprobs"] = lp;
            c["finish_reason"] = finish_reason(r.finish_reason);
            cs.push_back(std::move(c));
          }
          out["choices"] = cs;
          out["usage"] = usage_of(results, tr);
        }
        const std::string s = out.dump(-1, ' ', false, ojson::error_handler_t::replace);
        if (!sink.write(s.data(), s.size())) return false;
        sink.done();
        return true;
      },
      [cancel_all](bool) { cancel_all(); });
}

// ---- tokenize / detokenize

void Server::tokenize(const httplib::Request& req, httplib::Response& res) {
  const ojson body = parse_body(req.body);
  Served& m = find(body, Kind::Chat, false);
  const Tokenizer* tok = m.llm->tokenizer();
  if (!tok) bad_request("model '" + m.name + "' has no tokenizer", "model");
  const auto content = string_field(body, "content");
  if (!content) bad_request("'content' (a string) is required", "content");
  const bool special = bool_field(body, "add_special").value_or(false);
  const bool pieces = bool_field(body, "with_pieces").value_or(false);
  const std::vector<TokenId> ids = tok->encode(*content, special);
  ojson tokens = ojson::array();
  for (TokenId id : ids) {
    if (pieces)
      tokens.push_back({{"id", id}, {"piece", tok->decode(std::vector<TokenId>{id})}});
    else
      tokens.push_back(id);
  }
  send_json(res, 200, {{"tokens", tokens}});
}

void Server::detokenize(const httplib::Request& req, httplib::Response& res) {
  const ojson body = parse_body(req.body);
  Served& m = find(body, Kind::Chat, false);
  const Tokenizer* tok = m.llm->tokenizer();
  if (!tok) bad_request("model '" + m.name + "' has no tokenizer", "model");
  auto it = body.find("tokens");
  if (it == body.end() || !it->is_array()) bad_request("'tokens' (an array of token ids) is required", "tokens");
  std::vector<TokenId> ids;
  const int64_t vocab = tok->vocab_size();
  for (const auto& x : *it) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= vocab)
      bad_request("'tokens' must hold ids in [0, " + std::to_string(vocab) + "), found " + x.dump(), "tokens");
    ids.push_back(x.get<TokenId>());
  }
  send_json(res, 200, {{"content", tok->decode(ids)}});
}

// ---- speech, translation: one request at a time per model

struct OneAtATime {
  Served& m;
  std::unique_lock<std::mutex> lk;
  OneAtATime(Served& s, int64_t max_queue, Metrics& metrics) : m(s) {
    if (m.waiting + m.running >= 1 + max_queue) {
      metrics.rejected(m.name, "queue_full");
      throw HttpError(429, "rate_limit_error",
                      "the server is busy: 1 request runs and " + std::to_string(m.waiting.load()) +
                          " wait for model '" + m.name + "' (--max-queue " + std::to_string(max_queue) + ")",
                      "", "queue_full");
    }
    ++m.waiting;
    lk = std::unique_lock<std::mutex>(m.work_mu);
    --m.waiting;
    ++m.running;
  }
  ~OneAtATime() { --m.running; }
};

void Server::transcriptions(const httplib::Request& req, httplib::Response& res) {
  if (!req.is_multipart_form_data()) bad_request("expected multipart/form-data with a 'file' part");
  auto field = [&](const char* name) -> std::optional<std::string> {
    if (!req.has_file(name)) return std::nullopt;
    return req.get_file_value(name).content;
  };
  const auto model = field("model");
  if (!model) bad_request("'model' is required", "model");
  Served& m = find_name(*model, Kind::Speech);
  if (!req.has_file("file")) bad_request("'file' (the audio) is required", "file");
  const httplib::MultipartFormData file = req.get_file_value("file");
  if (file.content.empty()) bad_request("'file' is empty", "file");
  const std::string format = field("response_format").value_or("json");
  if (format != "json" && format != "text" && format != "srt" && format != "vtt" && format != "verbose_json")
    bad_request("'response_format' must be json, text, srt, vtt or verbose_json, found '" + format + "'",
                "response_format");
  TranscribeOptions to;
  to.language = field("language").value_or("");
  if (!to.language.empty() && to.language != "zh" && to.language != "en" && to.language != "ja")
    bad_request("'language' must be zh, en or ja for this model, found '" + to.language + "'", "language");
  // The upload goes to a private temporary file: the audio decoders read files.
  std::string ext = fs::path(file.filename).extension().string();
  if (ext.size() > 8 || ext.find_first_of("/\\") != std::string::npos) ext.clear();
  std::string tmpl = (fs::temp_directory_path() / "kvrun-upload-XXXXXX").string() + ext;
  const int fd = mkstemps(tmpl.data(), static_cast<int>(ext.size()));
  if (fd < 0) throw HttpError(500, "server_error", "cannot create a temporary file for the upload");
  struct Remove {
    std::string path;
    ~Remove() { std::remove(path.c_str()); }
  } remove_later{tmpl};
  const ssize_t wrote = ::write(fd, file.content.data(), file.content.size());
  ::close(fd);
  if (wrote != static_cast<ssize_t>(file.content.size()))
    throw HttpError(500, "server_error", "cannot write the upload to a temporary file");
  Transcript t;
  {
    OneAtATime turn(m, o_.max_queue, metrics_);
    const auto t0 = Clock::now();
    try {
      t = m.speech->transcribe_file(tmpl, to);
    } catch (const Error& e) {
      metrics_.rejected(m.name, "invalid");
      bad_request(std::string("cannot transcribe 'file': ") + e.what(), "file");
    }
    metrics_.audio(m.name, t.stats.audio_seconds, since(t0));
  }
  if (format == "text") {
    res.set_content(t.text + "\n", "text/plain; charset=utf-8");
  } else if (format == "srt" || format == "vtt") {
    std::string out = format == "vtt" ? "WEBVTT\n\n" : "";
    for (size_t i = 0; i < t.segments.size(); ++i) {
      const auto& s = t.segments[i];
      if (format == "srt") out += std::to_string(i + 1) + "\n" + srt_time(s.start) + " --> " + srt_time(s.end) + "\n";
      if (format == "vtt") out += vtt_time(s.start) + " --> " + vtt_time(s.end) + "\n";
      out += s.text + "\n\n";
    }
    res.set_content(out, format == "vtt" ? "text/vtt; charset=utf-8" : "application/x-subrip; charset=utf-8");
  } else if (format == "json") {
    send_json(res, 200, {{"text", t.text}, {"usage", {{"type", "duration"}, {"seconds", t.stats.audio_seconds}}}});
  } else {
    ojson segs = ojson::array();
    for (size_t i = 0; i < t.segments.size(); ++i) {
      const auto& s = t.segments[i];
      segs.push_back({{"id", i},
                      {"seek", 0},
                      {"start", s.start},
                      {"end", s.end},
                      {"text", s.text},
                      {"tokens", s.ids},
                      {"temperature", 0.0}});
    }
    send_json(res, 200,
              {{"task", "transcribe"},
               {"language", to.language.empty() ? "auto" : to.language},
               {"duration", t.stats.audio_seconds},
               {"text", t.text},
               {"segments", segs},
               {"usage", {{"type", "duration"}, {"seconds", t.stats.audio_seconds}}}});
  }
}

void Server::translations(const httplib::Request& req, httplib::Response& res) {
  const ojson body = parse_body(req.body);
  Served& m = find(body, Kind::Translation);
  auto it = body.find("input");
  std::vector<std::string> inputs;
  if (it != body.end() && it->is_string()) {
    inputs.push_back(it->get<std::string>());
  } else if (it != body.end() && it->is_array() && !it->empty() && it->size() <= 256) {
    for (const auto& s : *it) {
      if (!s.is_string()) bad_request("'input' must be a string or an array of strings", "input");
      inputs.push_back(s.get<std::string>());
    }
  } else {
    bad_request("'input' must be a string or an array of 1 to 256 strings", "input");
  }
  TranslateOptions to;
  to.num_beams = int_field(body, "beams", 1, 16).value_or(0);
  to.n_best = int_field(body, "n_best", 1, 16).value_or(1);
  to.max_length = int_field(body, "max_length", 2, 4096).value_or(0);
  to.sampling.temperature = static_cast<float>(number_field(body, "temperature", 0, 2).value_or(0));
  if (auto seed = int_field(body, "seed", 0, INT64_MAX)) to.sampling.seed = static_cast<uint64_t>(*seed);
  std::vector<Translation> out;
  TranslateStats st;
  {
    OneAtATime turn(m, o_.max_queue, metrics_);
    try {
      to.validate();
      out = m.translator->translate(inputs, to, &st);
    } catch (const Error& e) {
      metrics_.rejected(m.name, "invalid");
      bad_request(e.what(), "input");
    }
  }
  metrics_.translated(m.name, st.source_tokens, st.target_tokens, st.seconds);
  ojson data = ojson::array();
  for (size_t i = 0; i < out.size(); ++i) {
    ojson d = {{"index", i}, {"translation", out[i].hypotheses.empty() ? "" : out[i].hypotheses[0].text}};
    if (to.n_best > 1) {
      ojson alts = ojson::array();
      for (const auto& h : out[i].hypotheses) alts.push_back({{"text", h.text}, {"score", h.score}});
      d["hypotheses"] = alts;
    }
    data.push_back(std::move(d));
  }
  send_json(res, 200,
            {{"object", "list"},
             {"model", m.name},
             {"data", data},
             {"usage", {{"source_tokens", st.source_tokens}, {"target_tokens", st.target_tokens}}}});
}

// ---- models, health, metrics

void Server::models(httplib::Response& res) {
  ojson data = ojson::array();
  for (const auto& m : models_) {
    ojson d = {{"id", m->name},
               {"object", "model"},
               {"created", m->created},
               {"owned_by", "kvrun"},
               {"kind", kind_name(m->kind)}};
    if (m->batcher) d["context"] = m->batcher->context(), d["slots"] = m->batcher->slots();
    data.push_back(std::move(d));
  }
  send_json(res, 200, {{"object", "list"}, {"data", data}});
}

std::vector<ModelGauges> Server::gauges() const {
  std::vector<ModelGauges> g;
  for (const auto& m : models_) {
    ModelGauges x;
    x.model = m->name;
    if (m->batcher) {
      const runtime::BatcherStats s = m->batcher->stats();
      x.running = s.running, x.waiting = s.waiting, x.kv_usage = s.kv_usage();
    } else {
      x.running = m->running, x.waiting = m->waiting;
    }
    g.push_back(x);
  }
  return g;
}

void Server::load_models() {
  std::map<std::string, int> taken;
  for (const std::string& spec : o_.models) {
    auto s = std::make_unique<Served>();
    const size_t eq = spec.find('=');
    s->path = eq == std::string::npos ? fs::path(spec) : fs::path(spec.substr(eq + 1));
    if (!fs::exists(s->path)) throw Error("model not found: " + s->path.string());
    if (eq != std::string::npos) {
      s->name = spec.substr(0, eq);
    } else {  // the folder's name, or the file's without its extension
      const fs::path p = fs::absolute(s->path).lexically_normal();
      s->name = p.has_filename() ? p.filename().string() : p.parent_path().filename().string();
      if (s->path.extension() == ".gguf") s->name = s->path.stem().string();
    }
    if (s->name.empty()) throw Error("an empty model name in '" + spec + "'");
    if (taken[s->name]++) throw Error("two models are named '" + s->name + "': give names with NAME=PATH");
    s->kind = detect_kind(s->path);
    s->created = unix_now();
    std::fprintf(stderr, "kvrun serve: loading %s model '%s' from %s\n", kind_name(s->kind), s->name.c_str(),
                 s->path.string().c_str());
    ModelOptions mo;
    mo.threads = o_.threads;
    if (s->kind == Kind::Speech) {
      s->speech = SpeechModel::load(s->path, mo);
    } else if (s->kind == Kind::Translation) {
      s->translator = Translator::load(s->path, o_.threads);
    } else {
      s->llm = Model::load(s->path, mo);
      s->engine = dynamic_cast<runtime::Engine*>(s->llm.get());
      if (!s->engine) throw Error(s->path.string() + ": not a model the server can schedule");
      runtime::BatcherOptions bo;
      bo.slots = o_.parallel, bo.context = o_.ctx, bo.max_queue = o_.max_queue, bo.prefill_chunk = o_.prefill_chunk;
      s->batcher = std::make_unique<runtime::Batcher>(*s->engine, bo);
      std::fprintf(stderr, "kvrun serve: '%s': %lld slot(s) x %lld positions%s\n", s->name.c_str(),
                   static_cast<long long>(s->batcher->slots()), static_cast<long long>(s->batcher->context()),
                   s->batcher->batched() ? " (continuous batching)" : " (one request at a time: no shared KV buffer)");
    }
    models_.push_back(std::move(s));
  }
}

void Server::routes() {
  auto guard = [this](auto fn) {
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        if (!ready_) throw HttpError(503, "unavailable_error", "Loading model");
        fn(req, res);
      } catch (const HttpError& e) {
        send_error(res, e);
      } catch (const std::exception& e) {
        send_error(res, HttpError(500, "server_error", e.what()));
      }
    };
  };
  http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (!load_error_.empty())
      send_json(res, 503, error_body(503, "unavailable_error", "model loading failed: " + load_error_));
    else if (!ready_)
      send_json(res, 503, error_body(503, "unavailable_error", "Loading model"));
    else
      send_json(res, 200, {{"status", "ok"}});
  });
  http_.Get("/v1/health", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, ready_ ? 200 : 503,
              ready_ ? ojson{{"status", "ok"}} : error_body(503, "unavailable_error", "Loading model"));
  });
  http_.Get("/metrics", guard([this](const httplib::Request&, httplib::Response& res) {
              res.set_content(metrics_.render(gauges()), "text/plain; version=0.0.4; charset=utf-8");
            }));
  http_.Get("/v1/models", guard([this](const httplib::Request&, httplib::Response& res) { models(res); }));
  http_.Get(
      R"(/v1/models/(.+))", guard([this](const httplib::Request& req, httplib::Response& res) {
        for (const auto& m : models_)
          if (m->name == req.matches[1].str()) {
            send_json(res, 200, {{"id", m->name}, {"object", "model"}, {"created", m->created}, {"owned_by", "kvrun"}});
            return;
          }
        throw HttpError(404, "invalid_request_error", "model '" + req.matches[1].str() + "' does not exist", "model",
                        "model_not_found");
      }));
  http_.Post("/v1/chat/completions",
             guard([this](const httplib::Request& req, httplib::Response& res) { completions(req, res, true); }));
  http_.Post("/v1/completions",
             guard([this](const httplib::Request& req, httplib::Response& res) { completions(req, res, false); }));
  http_.Post("/v1/audio/transcriptions",
             guard([this](const httplib::Request& req, httplib::Response& res) { transcriptions(req, res); }));
  http_.Post("/v1/translations",
             guard([this](const httplib::Request& req, httplib::Response& res) { translations(req, res); }));
  http_.Post("/tokenize", guard([this](const httplib::Request& req, httplib::Response& res) { tokenize(req, res); }));
  http_.Post("/detokenize",
             guard([this](const httplib::Request& req, httplib::Response& res) { detokenize(req, res); }));

  // Before the body is read: the API key, then the declared body size.
  http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/health" || req.path == "/v1/health") return httplib::Server::HandlerResponse::Unhandled;
    if (!authorized(req)) {
      send_json(res, 401, error_body(401, "authentication_error", "Invalid API Key", "", "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    }
    const bool upload = req.path == "/v1/audio/transcriptions";
    const int64_t limit = upload ? o_.max_upload_bytes : o_.max_body_bytes;
    const std::string cl = req.get_header_value("Content-Length");
    if (!cl.empty()) {
      char* end = nullptr;
      const unsigned long long n = std::strtoull(cl.c_str(), &end, 10);
      if (end == cl.c_str() || *end || n > static_cast<unsigned long long>(limit)) {
        send_json(res, 413,
                  error_body(413, "invalid_request_error",
                             "the request body of " + cl + " bytes exceeds the limit of " + std::to_string(limit) +
                                 " bytes" + (upload ? " (--max-upload-mb)" : " (--max-body-mb)"),
                             "", "request_too_large"));
        res.set_header("Connection", "close");
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http_.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    const int st = res.status;
    const std::string msg = st == 404   ? "no such endpoint"
                            : st == 413 ? "the request body exceeds the limit"
                                        : "the request failed (HTTP " + std::to_string(st) + ")";
    send_json(res, st, error_body(st, st == 404 ? "not_found_error" : "invalid_request_error", msg));
  });
  http_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_json(res, 500, error_body(500, "server_error", what));
  });
}

int Server::run(const std::function<void(int)>& on_listening, const std::function<bool()>& stop) {
  routes();
  const int64_t threads =
      o_.http_threads > 0
          ? o_.http_threads
          : o_.parallel * static_cast<int64_t>(std::max<size_t>(o_.models.size(), 1)) + o_.max_queue + 8;
  http_.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http_.set_payload_max_length(static_cast<size_t>(std::max(o_.max_body_bytes, o_.max_upload_bytes)));
  http_.set_read_timeout(o_.timeout_seconds, 0);
  http_.set_write_timeout(o_.timeout_seconds, 0);
  http_.set_keep_alive_timeout(5);  // an idle keep-alive connection holds a worker (and delays stop) this long
  http_.set_keep_alive_max_count(1000);
  int port = o_.port;
  if (port == 0) {
    port = http_.bind_to_any_port(o_.host);
  } else if (!http_.bind_to_port(o_.host, port)) {
    port = -1;
  }
  if (port < 0) throw Error("cannot listen on " + o_.host + ":" + std::to_string(o_.port));
  std::thread listener([this] { http_.listen_after_bind(); });
  std::fprintf(stderr, "kvrun serve: listening on http://%s:%d\n", o_.host.c_str(), port);
  if (on_listening) on_listening(port);
  int code = 0;
  try {
    load_models();
    ready_ = true;
    std::fprintf(stderr, "kvrun serve: ready (%zu model(s))\n", models_.size());
  } catch (const std::exception& e) {
    load_error_ = e.what();
    std::fprintf(stderr, "kvrun: error: %s\n", e.what());
    code = 2;
  }
  while (code == 0 && !g_signalled && !(stop && stop())) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "kvrun serve: stopping\n");
  ready_ = false;  // new requests: 503
  for (auto& m : models_)
    if (m->batcher) m->batcher->shutdown();  // running and waiting requests end now (an error event)
  http_.stop();
  listener.join();
  return code;
}

}  // namespace

void ServeOptions::validate() const {
  if (models.empty()) throw Error("give at least one model to serve");
  if (port < 0 || port > 65535) throw Error("--port must be in [0, 65535], found " + std::to_string(port));
  if (parallel < 1 || parallel > 256) throw Error("--parallel must be in [1, 256], found " + std::to_string(parallel));
  if (max_queue < 0 || max_queue > 100000)
    throw Error("--max-queue must be in [0, 100000], found " + std::to_string(max_queue));
  if (ctx < 0) throw Error("--ctx must be >= 0, found " + std::to_string(ctx));
  if (max_body_bytes < 1024 || max_upload_bytes < 1024) throw Error("body limits must be at least 1 KiB");
  if (timeout_seconds < 1) throw Error("--timeout must be >= 1 second");
}

int serve(const ServeOptions& opt, const std::function<void(int)>& on_listening, const std::function<bool()>& stop) {
  opt.validate();
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  Server s(opt);
  return s.run(on_listening, stop);
}

}  // namespace kvrun::server
