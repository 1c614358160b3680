// Jinja lexer (see lexer.h).
#include "text/jinja/lexer.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <optional>
#include <tuple>
#include <utility>

#include "text/jinja/error.h"
#include "text/jinja/pystring.h"

namespace kvrun::jinja::detail {

std::string describe(const Tok& t) {
  switch (t.t) {
    case T::Data:
      return "template text";
    case T::VarBegin:
      return "'{{'";
    case T::VarEnd:
      return "'}}'";
    case T::BlockBegin:
      return "'{%'";
    case T::BlockEnd:
      return "'%}'";
    case T::Name:
      return "name '" + t.s + "'";
    case T::String:
      return "a string";
    case T::Int:
    case T::Float:
      return "a number";
    case T::Op:
      return "'" + t.s + "'";
    default:
      return "end of template";
  }
}

namespace {

class Lexer {
 public:
  explicit Lexer(std::string_view src) {
    // jinja2: newlines normalised to \n; one trailing newline dropped (keep_trailing_newline=False).
    s_.reserve(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\r') {
        s_ += '\n';
        if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
      } else {
        s_ += src[i];
      }
    }
    if (!s_.empty() && s_.back() == '\n') s_.pop_back();
    for (size_t i = 0; i < s_.size(); ++i)
      if (s_[i] == '\n') nl_.push_back(i);
  }

  std::vector<Tok> run() {
    size_t pos = 0;
    const size_t n = s_.size();
    while (pos < n) {
      size_t q = pos;
      while (q + 1 < n && !(s_[q] == '{' && (s_[q + 1] == '{' || s_[q + 1] == '%' || s_[q + 1] == '#'))) ++q;
      if (q + 1 >= n) {
        data(s_.substr(pos), pos);
        break;
      }
      const char kind = s_[q + 1];
      size_t p = q + 2;
      char sign = 0;
      if (p < n && (s_[p] == '-' || s_[p] == '+')) sign = s_[p++];
      std::string text = s_.substr(pos, q - pos);
      if (sign == '-') {
        text = py_strip(text, nullptr, false, true);
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks (not for {{ }})
        const size_t nlp = text.rfind('\n');
        const size_t l = nlp == std::string::npos ? 0 : nlp + 1;
        if ((l > 0 || line_starting_) && l < text.size()) {
          const std::u32string rest = decode(std::string_view(text).substr(l));
          if (std::all_of(rest.begin(), rest.end(), py_isspace)) text.resize(l);
        }
      }
      data(std::move(text), pos);
      if (kind == '%') {
        if (const auto after = raw_begin(p, q)) {
          pos = *after;
          continue;
        }
      }
      if (kind == '#') {
        pos = comment(q, p);
        continue;
      }
      pos = tag(q, p, kind == '%');
    }
    Tok eof{T::Eof, "", 0, 0};
    std::tie(eof.line, eof.col) = lc(s_.size());
    out_.push_back(eof);
    return std::move(out_);
  }

 private:
  std::pair<int, int> lc(size_t off) const {
    const auto it = std::lower_bound(nl_.begin(), nl_.end(), off);
    const int line = static_cast<int>(it - nl_.begin()) + 1;
    const size_t start = it == nl_.begin() ? 0 : *(it - 1) + 1;
    return {line, static_cast<int>(cp_count(std::string_view(s_).substr(start, off - start))) + 1};
  }
  void push(T t, std::string s, size_t off) {
    Tok tok{t, std::move(s)};
    std::tie(tok.line, tok.col) = lc(off);
    out_.push_back(std::move(tok));
  }
  void data(std::string text, size_t off) {
    if (!text.empty()) push(T::Data, std::move(text), off);
  }
  bool starts(size_t p, std::string_view w) const { return s_.compare(p, w.size(), w) == 0; }
  size_t skip_ws(size_t p) const {
    while (p < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[p]);
      if (c < 0x80) {
        if (!py_isspace(c)) break;
        ++p;
        continue;
      }
      size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
      const std::u32string u = decode(std::string_view(s_).substr(p, len));
      if (u.size() != 1 || !py_isspace(u[0])) break;
      p += len;
    }
    return p;
  }
  // Block end: "+%}" keeps what follows, "-%}" eats following whitespace, "%}" eats one newline.
  size_t block_end(size_t p, bool* matched) const {
    *matched = true;
    if (starts(p, "+%}")) return p + 3;
    if (starts(p, "-%}")) return skip_ws(p + 3);
    if (starts(p, "%}")) return p + 2 + (p + 2 < s_.size() && s_[p + 2] == '\n');
    *matched = false;
    return p;
  }

  // {% raw %}...{% endraw %}: the text between is data, verbatim.
  std::optional<size_t> raw_begin(size_t p, size_t tag_off) {
    size_t r = skip_ws(p);
    if (!starts(r, "raw")) return std::nullopt;
    r = skip_ws(r + 3);
    size_t body;
    if (starts(r, "-%}"))
      body = skip_ws(r + 3);
    else if (starts(r, "%}"))
      body = r + 2;
    else
      return std::nullopt;
    // find {%[-+]? \s* endraw \s* (+%} | -%}\s* | %}\n?)
    for (size_t q = s_.find("{%", body); q != std::string::npos; q = s_.find("{%", q + 1)) {
      size_t e = q + 2;
      char sign = 0;
      if (e < s_.size() && (s_[e] == '-' || s_[e] == '+')) sign = s_[e++];
      e = skip_ws(e);
      if (!starts(e, "endraw")) continue;
      e = skip_ws(e + 6);
      bool ok;
      const size_t after = block_end(e, &ok);
      if (!ok) continue;
      std::string text = s_.substr(body, q - body);
      line_starting_ = s_[body - 1] == '\n';
      if (sign == '-') {
        text = py_strip(text, nullptr, false, true);
      } else if (sign != '+') {
        const size_t nlp = text.rfind('\n');
        const size_t l = nlp == std::string::npos ? 0 : nlp + 1;
        if ((l > 0 || line_starting_) && l < text.size()) {
          const std::u32string rest = decode(std::string_view(text).substr(l));
          if (std::all_of(rest.begin(), rest.end(), py_isspace)) text.resize(l);
        }
      }
      data(std::move(text), body);
      line_starting_ = s_[after - 1] == '\n';
      return after;
    }
    const auto [line, col] = lc(tag_off);
    syntax_error(line, col, "missing end of raw directive: expected '{% endraw %}' for this '{% raw %}'");
  }

  size_t comment(size_t q, size_t p) {
    for (size_t e = s_.find("#}", p); e != std::string::npos; e = s_.find("#}", e + 1)) {
      size_t after;
      if (e > p && s_[e - 1] == '-')
        after = skip_ws(e + 2);
      else if (e > p && s_[e - 1] == '+')
        after = e + 2;
      else
        after = e + 2 + (e + 2 < s_.size() && s_[e + 2] == '\n');
      line_starting_ = s_[after - 1] == '\n';
      return after;
    }
    const auto [line, col] = lc(q);
    syntax_error(line, col, "unterminated comment: expected '#}' to close the '{#' opened here");
  }

  size_t tag(size_t q, size_t p, bool block) {
    push(block ? T::BlockBegin : T::VarBegin, "", q);
    std::vector<char> balance;
    const size_t n = s_.size();
    for (;;) {
      p = skip_ws(p);
      if (p >= n) {
        const auto [line, col] = lc(q);
        syntax_error(line, col,
                     std::string("unexpected end of template: expected '") + (block ? "%}" : "}}") +
                         "' to close the '" + (block ? "{%" : "{{") + "' opened here");
      }
      if (balance.empty()) {
        if (block) {
          bool ok;
          const size_t after = block_end(p, &ok);
          if (ok) {
            push(T::BlockEnd, "", p);
            line_starting_ = s_[after - 1] == '\n';
            return after;
          }
        } else if (starts(p, "-}}") || starts(p, "}}")) {
          push(T::VarEnd, "", p);
          const size_t after = s_[p] == '-' ? skip_ws(p + 3) : p + 2;
          line_starting_ = s_[after - 1] == '\n';
          return after;
        }
      }
      const char c = s_[p];
      if (c >= '0' && c <= '9') {
        p = number(p);
      } else if (ascii_alpha(c) || c == '_') {
        size_t e = p;
        while (e < n && (ascii_alpha(s_[e]) || s_[e] == '_' || (s_[e] >= '0' && s_[e] <= '9'))) ++e;
        push(T::Name, s_.substr(p, e - p), p);
        p = e;
      } else if (c == '\'' || c == '"') {
        p = string_lit(p);
      } else {
        static const char* two[] = {"//", "**", "==", "!=", ">=", "<="};
        std::string op;
        for (const char* t : two)
          if (starts(p, t)) op = t;
        if (op.empty() && std::string_view("+-*/%~[](){}><=.:|,;").find(c) != std::string_view::npos) op = c;
        if (op.empty()) {
          const auto [line, col] = lc(p);
          const std::u32string u = decode(std::string_view(s_).substr(p, 4));
          syntax_error(line, col, "unexpected character '" + encode(u.substr(0, 1)) + "' in expression");
        }
        if (op == "(" || op == "[" || op == "{") {
          balance.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
        } else if (op == ")" || op == "]" || op == "}") {
          const auto [line, col] = lc(p);
          if (balance.empty()) syntax_error(line, col, "unexpected '" + op + "'");
          if (balance.back() != op[0])
            syntax_error(line, col, "unexpected '" + op + "', expected '" + std::string(1, balance.back()) + "'");
          balance.pop_back();
        }
        push(T::Op, op, p);
        p += op.size();
      }
    }
  }

  size_t digits(size_t p) const {  // \d+(_\d+)*
    while (p < s_.size() && s_[p] >= '0' && s_[p] <= '9') {
      ++p;
      if (p + 1 < s_.size() && s_[p] == '_' && s_[p + 1] >= '0' && s_[p + 1] <= '9') ++p;
    }
    return p;
  }
  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  size_t number(size_t p) {
    const size_t n = s_.size();
    size_t e = digits(p);
    bool is_float = false;
    const bool after_dot = !out_.empty() && out_.back().t == T::Op && out_.back().s == ".";
    if (!after_dot) {
      size_t f = e;
      if (f + 1 < n && s_[f] == '.' && is_digit(s_[f + 1])) f = digits(f + 1), is_float = true;
      if (f < n && (s_[f] == 'e' || s_[f] == 'E')) {
        size_t x = f + 1;
        if (x < n && (s_[x] == '+' || s_[x] == '-')) ++x;
        if (x < n && is_digit(s_[x])) f = digits(x), is_float = true;
      }
      if (is_float) e = f;
    }
    std::string text;
    for (size_t i = p; i < e; ++i)
      if (s_[i] != '_') text += s_[i];
    Tok tok{is_float ? T::Float : T::Int, text};
    std::tie(tok.line, tok.col) = lc(p);
    if (is_float) {
      tok.f = std::strtod(text.c_str(), nullptr);
    } else {
      const auto r = std::from_chars(text.data(), text.data() + text.size(), tok.i);
      if (r.ec != std::errc()) syntax_error(tok.line, tok.col, "integer literal " + text + " is out of 64-bit range");
    }
    out_.push_back(std::move(tok));
    return e;
  }

  // Python unicode-escape decoding of a string literal's body.
  size_t string_lit(size_t p) {
    const char q = s_[p];
    size_t e = p + 1;
    while (e < s_.size() && s_[e] != q) e += s_[e] == '\\' ? 2 : 1;
    if (e >= s_.size()) {
      const auto [line, col] = lc(p);
      syntax_error(line, col,
                   std::string("unterminated string: expected a closing ") + q + " for the string opened here");
    }
    const std::string_view body = std::string_view(s_).substr(p + 1, e - p - 1);
    std::string out;
    auto hexval = [](char c) {
      return c >= '0' && c <= '9'   ? c - '0'
             : c >= 'a' && c <= 'f' ? c - 'a' + 10
             : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                    : -1;
    };
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] != '\\' || i + 1 >= body.size()) {
        out += body[i];
        continue;
      }
      const char c = body[++i];
      switch (c) {
        case '\n':
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x':
        case 'u':
        case 'U': {
          const size_t len = c == 'x' ? 2 : c == 'u' ? 4 : 8;
          char32_t cp = 0;
          bool ok = i + len < body.size();
          for (size_t k = 1; ok && k <= len; ++k) {
            const int h = hexval(body[i + k]);
            if (h < 0) ok = false;
            cp = cp * 16 + static_cast<char32_t>(h < 0 ? 0 : h);
          }
          if (!ok || cp > 0x10ffff) {
            const auto [line, col] = lc(p);
            syntax_error(line, col, std::string("invalid \\") + c + " escape in string literal");
          }
          append_utf8(out, cp);
          i += len;
          break;
        }
        default:
          if (c >= '0' && c <= '7') {
            char32_t cp = c - '0';
            for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k)
              cp = cp * 8 + (body[++i] - '0');
            append_utf8(out, cp);
          } else {
            out += '\\';
            out += c;
          }
      }
    }
    push(T::String, std::move(out), p);
    return e + 1;
  }

  std::string s_;
  std::vector<size_t> nl_;
  std::vector<Tok> out_;
  bool line_starting_ = true;
};

}  // namespace

std::vector<Tok> lex(std::string_view source) { return Lexer(source).run(); }

}  // namespace kvrun::jinja::detail
