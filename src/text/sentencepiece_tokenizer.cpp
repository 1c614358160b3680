// SentencePiece models (*.model) through libsentencepiece, reached via the C shim
// libkvrun_sentencepiece.so loaded with dlmopen() (see sentencepiece_shim.cpp for why).
#include "text/spm_api.h"
#include "text/tokenizer_impl.h"
#include "text/utf8.h"

namespace kvrun::text {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const fs::path& file, const json& config) : api_(spm_api()), file_(file) {
    char err[1024] = {0};
    handle_ = api_.load(file.c_str(), err, sizeof err);
    if (!handle_)
      throw Error(file.string() +
                  ": expected a SentencePiece model (or a tokenizer.json), but it does not load: " + err);
    const int32_t n = api_.piece_size(handle_);
    pieces_.resize(n);
    control_.resize(n);
    std::string buf(256, '\0');
    for (int32_t id = 0; id < n; ++id) {
      int64_t len = api_.id_to_piece(handle_, id, buf.data(), buf.size());
      if (static_cast<size_t>(len) > buf.size()) {
        buf.resize(len);
        len = api_.id_to_piece(handle_, id, buf.data(), buf.size());
      }
      pieces_[id] = buf.substr(0, len);
      control_[id] = api_.is_control(handle_, id) != 0;
    }
    auto model_token = [&](int32_t which) -> std::optional<SpecialToken> {
      const int32_t id = api_.special_id(handle_, which);
      if (id < 0 || id >= n) return std::nullopt;
      return SpecialToken{pieces_[id], id};
    };
    unk_ = api_.special_id(handle_, 0);
    bos_ = model_token(1);
    eos_ = model_token(2);
    pad_ = model_token(3);
    if (config.is_object()) {
      if (auto t = config_token(config, "bos_token", *this)) bos_ = t;
      if (auto t = config_token(config, "eos_token", *this)) eos_ = t;
      if (auto t = config_token(config, "pad_token", *this)) pad_ = t;
      if (config.contains("add_bos_token") && config["add_bos_token"].is_boolean()) add_bos_ = config["add_bos_token"];
      if (config.contains("add_eos_token") && config["add_eos_token"].is_boolean()) add_eos_ = config["add_eos_token"];
    }
  }
  ~SentencePieceTokenizer() override { api_.free(handle_); }

  std::vector<TokenId> encode(std::string_view text, bool add_special_tokens) const override {
    check_utf8(text, "encode");
    std::vector<TokenId> ids(text.size() + 16);
    char err[1024] = {0};
    int64_t n = api_.encode(handle_, text.data(), text.size(), ids.data(), ids.size(), err, sizeof err);
    if (n > static_cast<int64_t>(ids.size())) {
      ids.resize(n);
      n = api_.encode(handle_, text.data(), text.size(), ids.data(), ids.size(), err, sizeof err);
    }
    if (n < 0) throw Error(file_.string() + ": SentencePiece encode failed: " + err);
    ids.resize(n);
    if (add_special_tokens && add_bos_ && bos_) ids.insert(ids.begin(), bos_->id);
    if (add_special_tokens && add_eos_ && eos_) ids.push_back(eos_->id);
    return ids;
  }

  std::string decode(std::span<const TokenId> ids, bool skip_special_tokens) const override {
    // SentencePiece drops control tokens (<s>, </s>) when decoding; unless skipping
    // special tokens, write them out as their text between decoded runs.
    std::string out;
    std::vector<int32_t> run;
    auto flush = [&] {
      if (run.empty()) return;
      std::string s(run.size() * 8 + 16, '\0');
      char err[1024] = {0};
      int64_t n = api_.decode(handle_, run.data(), run.size(), s.data(), s.size(), err, sizeof err);
      if (n > static_cast<int64_t>(s.size())) {
        s.resize(n);
        n = api_.decode(handle_, run.data(), run.size(), s.data(), s.size(), err, sizeof err);
      }
      if (n < 0) throw Error(file_.string() + ": SentencePiece decode failed: " + err);
      out.append(s.data(), n);
      run.clear();
    };
    for (TokenId id : ids) {
      check_id(id);
      if (control_[id]) {
        if (skip_special_tokens) continue;
        flush();
        out += pieces_[id];
      } else {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }

  std::optional<TokenId> token_to_id(std::string_view token) const override {
    const int32_t id = api_.piece_to_id(handle_, token.data(), token.size());
    if (id < 0 || id >= static_cast<int32_t>(pieces_.size()) || (id == unk_ && pieces_[id] != token))
      return std::nullopt;
    return id;
  }
  std::string id_to_token(TokenId id) const override {
    check_id(id);
    return pieces_[id];
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  bool is_special(TokenId id) const override {
    return id >= 0 && static_cast<size_t>(id) < control_.size() && control_[id];
  }
  std::string description() const override { return "SentencePiece model"; }

 private:
  const SpmApi& api_;
  fs::path file_;
  void* handle_ = nullptr;
  std::vector<std::string> pieces_;
  std::vector<bool> control_;
  int32_t unk_ = -1;
  bool add_bos_ = true, add_eos_ = false;

  void check_id(TokenId id) const {
    if (id < 0 || static_cast<size_t>(id) >= pieces_.size())
      throw Error("token id " + std::to_string(id) + " is out of range: expected 0 <= id < " +
                  std::to_string(pieces_.size()));
  }
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const fs::path& file, const json& config) {
  return std::make_unique<SentencePieceTokenizer>(file, config);
}

}  // namespace kvrun::text
