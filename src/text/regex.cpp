#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/regex.h"

#include <pcre2.h>

#include "kvrun/error.h"

namespace kvrun::text {
namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

// Oniguruma (used by Hugging Face tokenizers) gives \s the Unicode White_Space set;
// PCRE2's \s (UCP) also matches U+180E. Spell the White_Space set out instead.
std::string rewrite_space_classes(const std::string& p) {
  static const std::string ws = R"(\t-\r\x{85}\p{Z})";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      if (n == 's') {
        out += in_class ? ws : "[" + ws + "]";
      } else if (n == 'S' && !in_class) {
        out += "[^" + ws + "]";
      } else {
        out += c;
        out += n;
      }
      ++i;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // literal ] first in a class
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

// One JIT stack and match data per thread, grown on demand.
struct ThreadState {
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* mctx = nullptr;
  ThreadState() {
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    if (stack && mctx) pcre2_jit_stack_assign(mctx, nullptr, stack);
  }
  ~ThreadState() {
    if (mctx) pcre2_match_context_free(mctx);
    if (stack) pcre2_jit_stack_free(stack);
  }
};

}  // namespace

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  const std::string p = rewrite_space_classes(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  auto* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!code)
    throw Error("tokenizer regex '" + pattern + "' does not compile: " + pcre2_message(err) + " at offset " +
                std::to_string(off));
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  thread_local ThreadState ts;
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  if (!md) throw Error("out of memory for a regex match");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    const int rc = jit_ ? pcre2_jit_match(code, subject, s.size(), pos, 0, md, ts.mctx)
                        : pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, ts.mctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      throw Error("tokenizer regex '" + pattern_ + "' failed on a " + std::to_string(s.size()) +
                  "-byte text: " + pcre2_message(rc));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t a = ov[0], b = ov[1];
    if (b > a) {
      out.emplace_back(a, b);
      pos = b;
    } else {  // empty match: step over one character
      if (a >= s.size()) break;
      pos = a + 1;
      while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
  pcre2_match_data_free(md);
}

}  // namespace kvrun::text
