// PCRE2 regular expressions (UTF + Unicode properties, JIT when available) used by
// tokenizer.json pre-tokenizers, matching Oniguruma's semantics for their patterns.
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvrun::text {

class Regex {
 public:
  // Throws kvrun::Error (with the pattern and PCRE2's message) when it does not compile.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Appends [start, end) byte ranges of the non-overlapping, non-empty matches in s
  // (s must be valid UTF-8).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8
  bool jit_ = false;
};

}  // namespace kvrun::text
