// Jinja lexer: template text -> tokens (data, tag delimiters, names, literals,
// operators), with jinja2's whitespace control (trim_blocks, lstrip_blocks, -/+ markers),
// comments dropped and {% raw %} bodies passed through as data.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvrun::jinja::detail {

enum class T { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Tok {
  T t;
  std::string s;  // data, name, decoded string, operator
  int line = 1, col = 1;
  int64_t i = 0;
  double f = 0;
};

std::string describe(const Tok& t);  // for error messages: "name 'x'", "'%}'", ...

// Tokenizes a whole template, ending with an Eof token; throws kvrun::Error on a syntax error.
std::vector<Tok> lex(std::string_view source);

}  // namespace kvrun::jinja::detail
