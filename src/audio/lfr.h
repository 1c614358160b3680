// Low frame rate stacking, CMVN and the whole front end, as funasr 1.4.16 WavFrontend
// (frontends/wav_frontend.py apply_lfr / load_cmvn / apply_cmvn).
#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

#include "audio/decode.h"
#include "audio/fbank.h"

namespace kvrun::audio {

// LFR: T_lfr = ceil(T / n) rows of m stacked frames; row i holds frames
// clamp(i * n + j - (m - 1) / 2, 0, T - 1) for j = 0..m-1 ((m-1)/2 copies of frame 0 on the
// left, the last frame repeated on the right). fb is [frames, dim]; returns [rows, m * dim].
// m = n = 1 returns the input. Throws kvrun::Error for frames < 1 or m, n < 1.
std::vector<float> apply_lfr(const std::vector<float>& fb, int64_t frames, int m, int n, int64_t* rows);

// funasr apply_cmvn: x[r][d] = (x[r][d] + means[d]) * vars[d] for d < dim. means/vars must
// cover dim (a longer vector is cut, as the reference's cmvn[:, :dim]).
void apply_cmvn(std::vector<float>& feats, int64_t dim, const std::vector<float>& means,
                const std::vector<float>& vars);

// Reads a Kaldi nnet am.mvn as funasr load_cmvn: the numbers of the <LearnRateCoef> line after
// <AddShift> are the means, those after <Rescale> the vars.
void load_cmvn(const std::filesystem::path& path, std::vector<float>* means, std::vector<float>* vars);

// The front end: fbank -> LFR -> CMVN (when options carry one). audio.sample_rate must equal
// options.sample_rate. Returns [rows, num_mel_bins * lfr_m].
std::vector<float> features(const Audio& audio, const FrontendOptions& options, int64_t* rows);
std::vector<float> features(const std::vector<float>& samples, const FrontendOptions& options, int64_t* rows);

}  // namespace kvrun::audio
