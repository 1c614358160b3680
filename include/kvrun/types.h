// Basic types shared by the public API.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace kvrun {

// A token id. Vocabularies stay far below 2^31 entries.
using TokenId = int32_t;

// (stage, done, total) — called as long work advances; stage e.g. "decoder".
using ProgressFn = std::function<void(const std::string&, int64_t, int64_t)>;

}  // namespace kvrun
