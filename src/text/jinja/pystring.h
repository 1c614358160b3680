// UTF-8 helpers and the Python str operations the Jinja subset needs (isspace, case
// changes, strip, replace, splitlines).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvrun::jinja::detail {

// UTF-8 <-> code points; an invalid byte decodes as a code point of its own.
std::u32string decode(std::string_view s);
void append_utf8(std::string& out, char32_t cp);
std::string encode(std::u32string_view s);
size_t cp_count(std::string_view s);  // code points in UTF-8 text

bool py_isspace(char32_t c);  // str.isspace()
// str.strip / lstrip / rstrip; chars == nullptr strips whitespace.
std::string py_strip(std::string_view s, const std::u32string* chars, bool left, bool right);

char ascii_lower(char c);
char ascii_upper(char c);
bool ascii_alpha(char c);
std::string py_lower(std::string s);
std::string py_upper(std::string s);
std::string py_title(std::string s);
std::string py_capitalize(std::string s);
// str.replace(old, rep, count); fails once the result passes max_bytes.
std::string py_replace(std::string_view s, std::string_view old, std::string_view rep, int64_t count, size_t max_bytes);
std::vector<std::string> py_splitlines(const std::string& s, bool keepends);  // str.splitlines()

}  // namespace kvrun::jinja::detail
