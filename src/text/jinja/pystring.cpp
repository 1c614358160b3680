// UTF-8 and Python str helpers of the Jinja subset (see pystring.h).
#include "text/jinja/pystring.h"

#include "text/jinja/error.h"

namespace kvrun::jinja::detail {

std::u32string decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) {  // invalid byte: keep it as a code point of its own
      out.push_back(c);
      ++i;
      continue;
    }
    char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
    for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
    out.push_back(cp);
    i += n;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::string encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

size_t cp_count(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xc0) != 0x80;
  return n;
}

// Python's str.isspace().
bool py_isspace(char32_t c) {
  return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

namespace {

// Python's str.splitlines() boundaries.
bool py_linebreak(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

}  // namespace

// str.strip / lstrip / rstrip; chars == nullptr strips whitespace.
std::string py_strip(std::string_view s, const std::u32string* chars, bool left, bool right) {
  const std::u32string u = decode(s);
  auto strip_it = [&](char32_t c) { return chars ? chars->find(c) != std::u32string::npos : py_isspace(c); };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip_it(u[b])) ++b;
  if (right)
    while (e > b && strip_it(u[e - 1])) --e;
  return encode(std::u32string_view(u).substr(b, e - b));
}

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
char ascii_upper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }
bool ascii_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

std::string py_lower(std::string s) {
  for (char& c : s) c = ascii_lower(c);
  return s;
}
std::string py_upper(std::string s) {
  for (char& c : s) c = ascii_upper(c);
  return s;
}
// str.title(): a cased letter after an uncased character starts a word.
std::string py_title(std::string s) {
  bool prev_cased = false;
  for (char& c : s) {
    if (ascii_alpha(c)) {
      c = prev_cased ? ascii_lower(c) : ascii_upper(c);
      prev_cased = true;
    } else {
      prev_cased = false;
    }
  }
  return s;
}
std::string py_capitalize(std::string s) {
  s = py_lower(std::move(s));
  if (!s.empty()) s[0] = ascii_upper(s[0]);
  return s;
}

std::string py_replace(std::string_view s, std::string_view old, std::string_view rep, int64_t count,
                       size_t max_bytes) {
  std::string out;
  auto check = [&] {
    if (out.size() > max_bytes)
      fail("replace(): result longer than the limit of " + std::to_string(max_bytes) + " bytes");
  };
  if (old.empty()) {  // Python inserts `rep` before every character and at the end
    const std::u32string u = decode(s);
    int64_t done = 0;
    for (char32_t c : u) {
      if (count < 0 || done < count) out += rep, ++done;
      append_utf8(out, c);
      check();
    }
    if (count < 0 || done < count) out += rep;
    check();
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t q = s.find(old, pos);
    if (q == std::string_view::npos) break;
    out.append(s.substr(pos, q - pos));
    out.append(rep);
    check();
    pos = q + old.size();
    ++done;
  }
  out.append(s.substr(pos));
  check();
  return out;
}

std::vector<std::string> py_splitlines(const std::string& s, bool keepends) {
  std::vector<std::string> out;
  const std::u32string u = decode(s);
  size_t b = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    if (!py_linebreak(u[i])) continue;
    size_t e = i + 1;
    if (u[i] == '\r' && i + 1 < u.size() && u[i + 1] == '\n') e = i + 2;
    out.push_back(encode(std::u32string_view(u).substr(b, (keepends ? e : i) - b)));
    b = e;
    i = e - 1;
  }
  if (b < u.size()) out.push_back(encode(std::u32string_view(u).substr(b)));
  return out;
}

}  // namespace kvrun::jinja::detail
