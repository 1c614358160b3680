#include "server/metrics.h"

#include <cmath>
#include <cstdio>
#include <memory>

namespace kvrun::server {
namespace {
// OpenTelemetry GenAI semantic conventions' time-to-first-token buckets (seconds).
const std::vector<double> kLatency = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
                                      0.5,   0.75,  1,    2.5,  5,    7.5,  10,   30,  60};
const std::vector<double> kInterToken = {0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04,
                                         0.05,  0.075,  0.1,   0.15, 0.2,   0.3,  0.4,   0.5,  1.0};
const std::vector<double> kRtf = {0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5};

std::string num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char b[64];
  std::snprintf(b, sizeof b, "%.10g", v);
  return b;
}

std::string label(const std::string& model) {
  std::string out = "model_name=\"";
  for (char c : model) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

void head(std::string& out, const std::string& name, const char* type, const char* help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}
}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  uint64_t cum = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cum += counts_[i];
    const std::string le = i < bounds_.size() ? num(bounds_[i]) : "+Inf";
    out += name + "_bucket{" + labels + ",le=\"" + le + "\"} " + std::to_string(cum) + "\n";
  }
  out += name + "_sum{" + labels + "} " + num(sum_) + "\n";
  out += name + "_count{" + labels + "} " + std::to_string(count_) + "\n";
}

struct Metrics::PerModel {
  uint64_t prompt_tokens = 0, generation_tokens = 0, source_tokens = 0, target_tokens = 0;
  std::map<std::string, uint64_t> finished, rejected;
  double audio_seconds = 0;
  Histogram ttft{kLatency}, itl{kInterToken}, e2e{kLatency}, queue{kLatency}, rtf{kRtf};
};

Metrics::Metrics() = default;
Metrics::~Metrics() = default;

Metrics::PerModel& Metrics::at(const std::string& model) {
  auto& p = models_[model];
  if (!p) p = std::make_unique<PerModel>();
  return *p;
}

void Metrics::request_done(const std::string& model, const std::string& finish_reason, int64_t prompt_tokens,
                           int64_t generated_tokens, double e2e_seconds, double queue_seconds, double ttft_seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  PerModel& m = at(model);
  m.prompt_tokens += static_cast<uint64_t>(std::max<int64_t>(prompt_tokens, 0));
  m.generation_tokens += static_cast<uint64_t>(std::max<int64_t>(generated_tokens, 0));
  ++m.finished[finish_reason];
  m.e2e.observe(e2e_seconds);
  if (queue_seconds >= 0) m.queue.observe(queue_seconds);
  if (ttft_seconds >= 0) m.ttft.observe(ttft_seconds);
}

void Metrics::inter_token(const std::string& model, double seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  at(model).itl.observe(seconds);
}

void Metrics::rejected(const std::string& model, const std::string& reason) {
  std::lock_guard<std::mutex> lk(mu_);
  ++at(model).rejected[reason];
}

void Metrics::audio(const std::string& model, double audio_seconds, double processing_seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  PerModel& m = at(model);
  m.audio_seconds += audio_seconds;
  if (audio_seconds > 0) m.rtf.observe(processing_seconds / audio_seconds);
}

void Metrics::translated(const std::string& model, int64_t source_tokens, int64_t target_tokens, double seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  PerModel& m = at(model);
  m.source_tokens += static_cast<uint64_t>(source_tokens);
  m.target_tokens += static_cast<uint64_t>(target_tokens);
  m.e2e.observe(seconds);
}

std::string Metrics::render(const std::vector<ModelGauges>& gauges) const {
  std::string out;
  head(out, "kvrun_num_requests_running", "gauge", "Requests being processed (prefill or decode).");
  for (const auto& g : gauges) out += "kvrun_num_requests_running{" + label(g.model) + "} " + num(g.running) + "\n";
  head(out, "kvrun_num_requests_waiting", "gauge", "Requests waiting for a slot.");
  for (const auto& g : gauges) out += "kvrun_num_requests_waiting{" + label(g.model) + "} " + num(g.waiting) + "\n";
  head(out, "kvrun_kv_cache_usage_ratio", "gauge",
       "Share of the KV cache (slots x context positions, allocated at start) held by running requests.");
  for (const auto& g : gauges)
    if (g.kv_usage >= 0) out += "kvrun_kv_cache_usage_ratio{" + label(g.model) + "} " + num(g.kv_usage) + "\n";
  std::lock_guard<std::mutex> lk(mu_);
  auto counter = [&](const char* name, const char* help, uint64_t PerModel::*field) {
    head(out, name, "counter", help);
    for (const auto& [model, m] : models_)
      out += std::string(name) + "{" + label(model) + "} " + std::to_string((*m).*field) + "\n";
  };
  counter("kvrun_prompt_tokens_total", "Prompt tokens prefilled (positions reused from the cache excluded).",
          &PerModel::prompt_tokens);
  counter("kvrun_generation_tokens_total", "Tokens generated.", &PerModel::generation_tokens);
  counter("kvrun_translation_source_tokens_total", "Source tokens translated.", &PerModel::source_tokens);
  counter("kvrun_translation_target_tokens_total", "Target tokens produced by translation.", &PerModel::target_tokens);
  head(out, "kvrun_request_success_total", "counter", "Finished requests by finish reason.");
  for (const auto& [model, m] : models_)
    for (const auto& [reason, n] : m->finished)
      out += "kvrun_request_success_total{" + label(model) + ",finished_reason=\"" + reason + "\"} " +
             std::to_string(n) + "\n";
  head(out, "kvrun_request_rejected_total", "counter", "Requests refused (queue full, invalid, too long).");
  for (const auto& [model, m] : models_)
    for (const auto& [reason, n] : m->rejected)
      out += "kvrun_request_rejected_total{" + label(model) + ",reason=\"" + reason + "\"} " + std::to_string(n) + "\n";
  head(out, "kvrun_audio_seconds_total", "counter", "Seconds of audio transcribed.");
  for (const auto& [model, m] : models_)
    out += "kvrun_audio_seconds_total{" + label(model) + "} " + num(m->audio_seconds) + "\n";
  auto histogram = [&](const char* name, const char* help, Histogram PerModel::*field) {
    head(out, name, "histogram", help);
    for (const auto& [model, m] : models_) ((*m).*field).render(out, name, label(model));
  };
  histogram("kvrun_time_to_first_token_seconds", "From arrival to the first generated token.", &PerModel::ttft);
  histogram("kvrun_inter_token_latency_seconds", "Between two tokens of one request.", &PerModel::itl);
  histogram("kvrun_e2e_request_latency_seconds", "From arrival to the end of the response.", &PerModel::e2e);
  histogram("kvrun_request_queue_time_seconds", "From arrival to a slot.", &PerModel::queue);
  histogram("kvrun_audio_real_time_factor", "Processing seconds per second of audio.", &PerModel::rtf);
  return out;
}

}  // namespace kvrun::server
