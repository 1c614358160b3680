// Leftmost-longest literal matching of added/special tokens in text.
#pragma once
#include <array>
#include <cstdint>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace kvrun::text {

// Leftmost-longest literal matcher (as the aho-corasick automaton `tokenizers` uses).
class LiteralTrie {
 public:
  void add(std::string_view s, int value) {
    if (s.empty()) return;
    first_[static_cast<unsigned char>(s[0])] = true;
    int node = 0;
    for (unsigned char c : s) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | c;
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        it = edges_.emplace(key, static_cast<int>(values_.size())).first;
        values_.push_back(-1);
      }
      node = it->second;
    }
    values_[node] = value;
  }
  bool empty() const { return edges_.empty(); }
  // First match at or after `from`: (start, end, value), or value -1.
  std::tuple<size_t, size_t, int> find(std::string_view s, size_t from) const {
    for (size_t i = from; i < s.size(); ++i) {
      if (!first_[static_cast<unsigned char>(s[i])]) continue;
      int node = 0, best = -1;
      size_t best_end = 0;
      for (size_t k = i; k < s.size(); ++k) {
        auto it = edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(s[k]));
        if (it == edges_.end()) break;
        node = it->second;
        if (values_[node] >= 0) {
          best = values_[node];
          best_end = k + 1;
        }
      }
      if (best >= 0) return {i, best_end, best};
    }
    return {s.size(), s.size(), -1};
  }

 private:
  std::array<bool, 256> first_{};
  std::unordered_map<uint64_t, int> edges_;
  std::vector<int> values_{-1};  // node 0 = root
};

}  // namespace kvrun::text
