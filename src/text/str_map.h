// Hash maps keyed by std::string that look up by std::string_view without a copy.
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace kvrun::text {

struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StrMap = std::unordered_map<std::string, V, StrHash, std::equal_to<>>;

}  // namespace kvrun::text
