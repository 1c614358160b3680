// The parsed template: expressions (Expr) and statements (Node), as the parser builds
// them and the evaluator walks them.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/jinja/value.h"

namespace kvrun::jinja::detail {

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum K {
    Const,
    Name,
    Attr,
    Item,
    Slice,
    Call,
    Filter,
    Test,
    Neg,
    Pos,
    Not,
    Bin,
    Cmp,
    And,
    Or,
    Cond,
    ListLit,
    TupleLit,
    DictLit
  };
  K k;
  int line = 0, col = 0;
  Value cval;                                     // Const
  std::string name;                               // Name, Attr, Filter, Test, Bin operator
  std::vector<ExprP> a;                           // operands / arguments (a[0] = subject)
  std::vector<std::pair<std::string, ExprP>> kw;  // keyword arguments
  std::vector<std::string> ops;                   // Cmp operators
  bool negated = false;                           // Test: "is not"
  int depth = 1;                                  // height of this subtree (bounded by the parser)
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum K { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue, Plain };
  K k;
  int line = 0, col = 0;
  std::string text;                                   // Text; Macro name
  ExprP expr;                                         // Output, Set value, For iterable
  std::vector<std::pair<ExprP, Body>> branches;       // If: (condition or null for else, body)
  std::vector<std::string> targets;                   // For / Set names
  std::string attr;                                   // Set ns.attr
  ExprP filter;                                       // For ... if filter
  Body body, else_body;                               // For, SetBlock, Macro, Plain
  std::vector<std::pair<std::string, ExprP>> params;  // Macro parameters with optional defaults
};

}  // namespace kvrun::jinja::detail
