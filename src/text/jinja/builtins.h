// Python built-ins as templates see them: attribute, item and slice access
// (jinja2 Environment.getattr / getitem), the bound methods of str, dict and list, and the
// global functions (range, namespace, dict, raise_exception, strftime_now).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "text/jinja/value.h"

namespace kvrun::jinja::detail {

// obj.name: Python attribute first, then item (jinja2 Environment.getattr).
Value get_attr(const Value& obj, const std::string& name);
// obj[key]: item first, then attribute for string keys (jinja2 Environment.getitem).
Value get_item(const Value& obj, const Value& key);
Value do_slice(const Value& obj, const Value& a, const Value& b, const Value& s);  // obj[a:b:s]

// str.split / str.rsplit (sep_v nullopt or None: runs of whitespace).
std::vector<std::string> py_split(const std::string& s, const std::optional<Value>& sep_v, int64_t maxsplit,
                                  bool from_right);

// A global function by name, or nullopt.
std::optional<Value> global(const std::string& name);

}  // namespace kvrun::jinja::detail
