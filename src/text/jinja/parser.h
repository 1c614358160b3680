// Jinja parser: tokens -> AST, checking syntax (known tags, filters and tests, loop
// controls inside loops) and bounding nesting depth.
#pragma once
#include <vector>

#include "text/jinja/ast.h"
#include "text/jinja/lexer.h"

namespace kvrun::jinja::detail {

// Parses a token stream from lex(); throws kvrun::Error naming line and column on a syntax error.
Body parse(std::vector<Tok> tokens);

}  // namespace kvrun::jinja::detail
