// Prometheus text exposition for kvrun serve (GET /metrics): kvrun_ names, base units,
// a model_name label on every sample. Counters and histograms live here; gauges (running
// and waiting requests, KV-cache usage) are read from each model's scheduler at scrape time.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace kvrun::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // `name`_bucket{...,le=...}, _sum, _count lines with `labels` (without braces).
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative)
  double sum_ = 0;
  uint64_t count_ = 0;
};

struct ModelGauges {
  std::string model;
  int64_t running = 0, waiting = 0;
  double kv_usage = -1;  // < 0: not a KV-cache model
};

class Metrics {
 public:
  Metrics();
  ~Metrics();
  void request_done(const std::string& model, const std::string& finish_reason, int64_t prompt_tokens,
                    int64_t generated_tokens, double e2e_seconds, double queue_seconds, double ttft_seconds);
  void inter_token(const std::string& model, double seconds);
  void rejected(const std::string& model, const std::string& reason);  // 429, 400 ...
  void audio(const std::string& model, double audio_seconds, double processing_seconds);
  void translated(const std::string& model, int64_t source_tokens, int64_t target_tokens, double seconds);
  std::string render(const std::vector<ModelGauges>& gauges) const;

 private:
  struct PerModel;
  PerModel& at(const std::string& model);
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<PerModel>> models_;
};

}  // namespace kvrun::server
