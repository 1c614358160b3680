// LFR, CMVN and the front end (see lfr.h).
#include "audio/lfr.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "kvrun/error.h"

namespace kvrun::audio {

std::vector<float> apply_lfr(const std::vector<float>& fb, int64_t frames, int m, int n, int64_t* rows) {
  if (m < 1 || n < 1) {
    throw Error("LFR: expected lfr_m >= 1 and lfr_n >= 1; found m=" + std::to_string(m) + ", n=" + std::to_string(n));
  }
  if (frames < 1 || fb.empty() || fb.size() % static_cast<size_t>(frames) != 0) {
    throw Error("LFR: expected at least one fbank frame and a [frames, dim] matrix; found " + std::to_string(frames) +
                " frames and " + std::to_string(fb.size()) + " values");
  }
  const auto dim = static_cast<int64_t>(fb.size()) / frames;
  if (m == 1 && n == 1) {
    if (rows) *rows = frames;
    return fb;
  }
  const int64_t t_lfr = (frames + n - 1) / n;
  const int64_t left = (m - 1) / 2;
  std::vector<float> out(static_cast<size_t>(t_lfr * m * dim));
  for (int64_t i = 0; i < t_lfr; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      const int64_t src = std::clamp<int64_t>(i * n + j - left, 0, frames - 1);
      std::copy_n(fb.begin() + src * dim, dim, out.begin() + (i * m + j) * dim);
    }
  }
  if (rows) *rows = t_lfr;
  return out;
}

void apply_cmvn(std::vector<float>& feats, int64_t dim, const std::vector<float>& means,
                const std::vector<float>& vars) {
  if (dim < 1 || static_cast<int64_t>(means.size()) < dim || static_cast<int64_t>(vars.size()) < dim) {
    throw Error("CMVN: expected means and vars of at least the feature width " + std::to_string(dim) + "; found " +
                std::to_string(means.size()) + " means and " + std::to_string(vars.size()) + " vars");
  }
  const size_t d = static_cast<size_t>(dim);
  for (size_t i = 0; i < feats.size(); ++i) {
    float& x = feats[i];
    x += means[i % d];
    x *= vars[i % d];
  }
}

void load_cmvn(const std::filesystem::path& path, std::vector<float>* means, std::vector<float>* vars) {
  std::ifstream in(path);
  if (!in) throw Error(path.string() + ": cannot open the CMVN file");
  std::vector<std::vector<std::string>> lines;
  for (std::string line; std::getline(in, line);) {
    std::istringstream is(line);
    std::vector<std::string> words;
    for (std::string w; is >> w;) words.push_back(w);
    lines.push_back(std::move(words));
  }
  auto numbers = [&](const std::vector<std::string>& words, std::vector<float>* dst) {
    dst->clear();
    // "<LearnRateCoef> 0 [ v0 v1 ... ]": the values are words[3 .. size-2].
    for (size_t k = 3; k + 1 < words.size(); ++k) {
      char* end = nullptr;
      float v = std::strtof(words[k].c_str(), &end);
      if (end == words[k].c_str() || *end != '\0') {
        throw Error(path.string() + ": expected a number in the CMVN vector; found \"" + words[k] + "\"");
      }
      dst->push_back(v);
    }
  };
  means->clear();
  vars->clear();
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    if (lines[i].empty() || lines[i + 1].empty() || lines[i + 1][0] != "<LearnRateCoef>") continue;
    if (lines[i][0] == "<AddShift>") numbers(lines[i + 1], means);
    if (lines[i][0] == "<Rescale>") numbers(lines[i + 1], vars);
  }
  if (means->empty() || means->size() != vars->size()) {
    throw Error(path.string() + ": expected an <AddShift> and a <Rescale> vector of the same size; found " +
                std::to_string(means->size()) + " means and " + std::to_string(vars->size()) + " vars");
  }
}

std::vector<float> features(const std::vector<float>& samples, const FrontendOptions& options, int64_t* rows) {
  int64_t frames = 0;
  std::vector<float> fb = fbank(samples, options, &frames);
  if (frames < 1) {
    throw Error("front end: expected audio of at least one frame; found " + std::to_string(samples.size()) +
                " samples");
  }
  int64_t r = 0;
  std::vector<float> out = apply_lfr(fb, frames, options.lfr_m, options.lfr_n, &r);
  if (!options.cmvn_means.empty() || !options.cmvn_vars.empty()) {
    apply_cmvn(out, static_cast<int64_t>(out.size()) / r, options.cmvn_means, options.cmvn_vars);
  }
  if (rows) *rows = r;
  return out;
}

std::vector<float> features(const Audio& audio, const FrontendOptions& options, int64_t* rows) {
  if (audio.sample_rate != options.sample_rate) {
    throw Error("front end: expected audio at " + std::to_string(options.sample_rate) + " Hz; found " +
                std::to_string(audio.sample_rate) + " Hz (decode with target_rate " +
                std::to_string(options.sample_rate) + ")");
  }
  return features(audio.samples, options, rows);
}

}  // namespace kvrun::audio
