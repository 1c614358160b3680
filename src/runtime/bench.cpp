// kvrun bench: timed generation runs plus a memory-bandwidth roofline.
#include "kvrun/bench.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "graph/inspect.h"
#include "kvrun/error.h"
#include "kvrun/runtime.h"

namespace kvrun {
namespace fs = std::filesystem;

void BenchOptions::validate() const {
  if (prompt_lens.empty()) throw Error("bench: --prompt-len needs at least one length");
  for (int64_t n : prompt_lens)
    if (n < 1) throw Error("bench: prompt lengths must be >= 1, found " + std::to_string(n));
  if (gen_len < 2)
    throw Error("bench: --gen-len must be >= 2 (decode speed is timed after the first token), found " +
                std::to_string(gen_len));
  if (runs < 1) throw Error("bench: --runs must be >= 1, found " + std::to_string(runs));
  if (warmup < 0) throw Error("bench: --warmup must be >= 0, found " + std::to_string(warmup));
  if (threads < 0) throw Error("bench: --threads must be >= 0, found " + std::to_string(threads));
  for (int64_t n : prompt_lens)
    if (!prompt_ids.empty() && static_cast<size_t>(n) > prompt_ids.size())
      throw Error("bench: --prompt-ids holds " + std::to_string(prompt_ids.size()) +
                  " ids, fewer than the prompt length " + std::to_string(n));
  if (bandwidth_bytes < (1 << 20)) throw Error("bench: the bandwidth probe needs at least 1 MiB");
}

namespace {

Spread spread(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  Spread s;
  s.min = v.front();
  s.max = v.back();
  s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  return s;
}

int64_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

// The "precision" field of a kvrun package's manifest, else "".
std::string package_precision(const fs::path& dir) {
  std::ifstream f(dir / "kvrun.json");
  if (!f) return "";
  const auto j = nlohmann::json::parse(f, nullptr, false);
  return j.is_object() ? j.value("precision", std::string()) : "";
}

int64_t dtype_bytes(const std::string& dtype) { return dtype == "float16" || dtype == "bfloat16" ? 2 : 4; }

nlohmann::ordered_json spread_json(const Spread& s) { return {{"median", s.median}, {"min", s.min}, {"max", s.max}}; }

}  // namespace

double measure_read_bandwidth(int64_t bytes, int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const size_t words = static_cast<size_t>(bytes) / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[words]);
  for (size_t i = 0; i < words; ++i) buf[i] = i;  // touch every page before timing
  std::vector<uint64_t> sums(static_cast<size_t>(threads));
  auto pass = [&]() {
    std::vector<std::thread> ts;
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        const size_t a = words * static_cast<size_t>(t) / static_cast<size_t>(threads);
        const size_t b = words * static_cast<size_t>(t + 1) / static_cast<size_t>(threads);
        // Four independent accumulators so the loop is bound by loads, not by the add chain.
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t i = a;
        for (; i + 4 <= b; i += 4) s0 += buf[i], s1 += buf[i + 1], s2 += buf[i + 2], s3 += buf[i + 3];
        for (; i < b; ++i) s0 += buf[i];
        sums[static_cast<size_t>(t)] = s0 + s1 + s2 + s3;
      });
    for (auto& th : ts) th.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  double best = 1e30;
  for (int p = 0; p < 5; ++p) best = std::min(best, pass());
  volatile uint64_t sink = 0;
  for (uint64_t s : sums) sink = sink + s;  // keep the sums alive
  return static_cast<double>(words * sizeof(uint64_t)) / best;
}

BenchReport bench(const fs::path& model, const BenchOptions& opt, const BenchProgressFn& progress) {
  opt.validate();
  ModelOptions mo;
  mo.threads = opt.threads;
  mo.build_progress = opt.build_progress;
  auto m = Model::load(model, mo);
  const ModelInfo& info = m->info();

  BenchReport rep;
  rep.model = model.string();
  rep.layout = info.layout;
  rep.precision = package_precision(info.dir);
  rep.threads = opt.threads > 0 ? opt.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  rep.runs = opt.runs;
  rep.warmup = opt.warmup;
  // What a decode step reads: the step graph's initializers (a tied lm_head reading the
  // embedding table in place counts) plus the KV cache up to the current position.
  graph::InspectOptions io;
  io.decoder = false;
  const auto report = graph::inspect(info.dir / info.graphs.back(), io);
  rep.weights_bytes = report.at("graphs").at(0).at("initializers").at("bytes").get<int64_t>();
  if (info.num_kv_heads > 0 && info.head_dim > 0)
    rep.kv_bytes_per_token = 2 * info.num_layers * info.num_kv_heads * info.head_dim * dtype_bytes(info.kv_dtype);

  const int64_t vocab = info.vocab_size > 0 ? info.vocab_size : 1;
  std::mt19937_64 rng(opt.seed);
  for (int64_t plen : opt.prompt_lens) {
    std::vector<TokenId> ids(static_cast<size_t>(plen));
    for (size_t i = 0; i < ids.size(); ++i)
      ids[i] = opt.prompt_ids.empty() ? static_cast<TokenId>(rng() % static_cast<uint64_t>(vocab)) : opt.prompt_ids[i];
    GenerationOptions g;
    g.max_new_tokens = opt.gen_len;
    g.stop_at_eos = false;
    g.max_length = plen + opt.gen_len;
    const Prompt prompt = Prompt().ids(ids);
    std::vector<double> prefill, decode, ttft;
    const int total = opt.warmup + opt.runs;
    for (int r = 0; r < total; ++r) {
      const GenerationResult res = m->generate(prompt, g);
      if (progress) progress(plen, r + 1, total);
      if (res.stats.generated_tokens != opt.gen_len)
        throw Error("bench: expected " + std::to_string(opt.gen_len) + " generated tokens, the model stopped after " +
                    std::to_string(res.stats.generated_tokens) + " (" + res.finish_reason + ")");
      if (r < opt.warmup) continue;
      prefill.push_back(res.stats.prefill_tokens_per_second());
      decode.push_back(res.stats.decode_tokens_per_second());
      ttft.push_back(res.stats.time_to_first_token);
    }
    BenchCase c;
    c.prompt_len = plen;
    c.gen_len = opt.gen_len;
    c.prefill_tokens_per_second = spread(prefill);
    c.decode_tokens_per_second = spread(decode);
    c.time_to_first_token_s = spread(ttft);
    c.decode_bytes_per_token = rep.weights_bytes + rep.kv_bytes_per_token * (plen + opt.gen_len / 2);
    rep.kv_cache_bytes = std::max(rep.kv_cache_bytes, rep.kv_bytes_per_token * (plen + opt.gen_len));
    rep.cases.push_back(c);
  }
  // Peak memory before the probe, whose buffer would count otherwise.
  rep.peak_rss_bytes = peak_rss_bytes();
  if (opt.probe_bandwidth) {
    m.reset();  // the model's memory is not needed for the probe
    rep.bandwidth_bytes_per_second = measure_read_bandwidth(opt.bandwidth_bytes, rep.threads);
    for (auto& c : rep.cases) {
      c.roofline_tokens_per_second = rep.bandwidth_bytes_per_second / static_cast<double>(c.decode_bytes_per_token);
      c.roofline_fraction = c.decode_tokens_per_second.median / c.roofline_tokens_per_second;
    }
  }
  return rep;
}

std::string BenchReport::to_json() const {
  std::string out;
  for (const auto& c : cases) {
    const nlohmann::ordered_json j = {{"schema", "kvrun-bench/1"},
                                      {"engine", "kvrun"},
                                      {"model", model},
                                      {"layout", layout},
                                      {"variant", precision},
                                      {"threads", threads},
                                      {"prompt_len", c.prompt_len},
                                      {"gen_len", c.gen_len},
                                      {"runs", runs},
                                      {"warmup", warmup},
                                      {"prefill_tokens_per_second", spread_json(c.prefill_tokens_per_second)},
                                      {"decode_tokens_per_second", spread_json(c.decode_tokens_per_second)},
                                      {"time_to_first_token_s", spread_json(c.time_to_first_token_s)},
                                      {"peak_rss_bytes", peak_rss_bytes},
                                      {"weights_bytes", weights_bytes},
                                      {"kv_cache_bytes", kv_bytes_per_token * (c.prompt_len + c.gen_len)},
                                      {"bandwidth_bytes_per_second", bandwidth_bytes_per_second},
                                      {"decode_bytes_per_token", c.decode_bytes_per_token},
                                      {"roofline_tokens_per_second", c.roofline_tokens_per_second},
                                      {"roofline_fraction", c.roofline_fraction}};
    out += j.dump() + "\n";
  }
  return out;
}

std::string BenchReport::to_text() const {
  std::ostringstream o;
  char line[256];
  auto mb = [](int64_t b) { return static_cast<double>(b) / 1e6; };
  o << "model     " << model << " (" << layout << (precision.empty() ? "" : ", " + precision) << ")\n";
  std::snprintf(line, sizeof line, "threads   %d, %d runs after %d warm-up\n", threads, runs, warmup);
  o << line;
  std::snprintf(line, sizeof line, "weights   %.1f MB read per decode step, KV cache %.3f MB per position\n",
                mb(weights_bytes), mb(kv_bytes_per_token));
  o << line;
  if (bandwidth_bytes_per_second > 0) {
    std::snprintf(line, sizeof line, "memory    %.2f GB/s read bandwidth (%d threads)\n",
                  bandwidth_bytes_per_second / 1e9, threads);
    o << line;
  }
  o << "\n prompt    gen  prefill tok/s [min-max]   decode tok/s [min-max]   TTFT s [max]    roofline tok/s\n";
  for (const auto& c : cases) {
    std::snprintf(
        line, sizeof line, "%7lld %6lld  %8.1f [%.1f-%.1f]  %7.2f [%.2f-%.2f]  %6.3f [%.3f]  %8.2f (%.0f%% of it)\n",
        static_cast<long long>(c.prompt_len), static_cast<long long>(c.gen_len), c.prefill_tokens_per_second.median,
        c.prefill_tokens_per_second.min, c.prefill_tokens_per_second.max, c.decode_tokens_per_second.median,
        c.decode_tokens_per_second.min, c.decode_tokens_per_second.max, c.time_to_first_token_s.median,
        c.time_to_first_token_s.max, c.roofline_tokens_per_second, 100 * c.roofline_fraction);
    o << line;
  }
  std::snprintf(
      line, sizeof line, "\npeak RSS  %.1f MB (weights %.1f MB + KV cache %.1f MB = %.1f MB; ratio %.2f)\n",
      mb(peak_rss_bytes), mb(weights_bytes), mb(kv_cache_bytes), mb(weights_bytes + kv_cache_bytes),
      static_cast<double>(peak_rss_bytes) / static_cast<double>(std::max<int64_t>(1, weights_bytes + kv_cache_bytes)));
  o << line;
  return o.str();
}

}  // namespace kvrun
