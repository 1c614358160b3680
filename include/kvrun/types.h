// Basic types shared by the public API.
#pragma once
#include <cstdint>

namespace kvrun {

// A token id. Vocabularies stay far below 2^31 entries.
using TokenId = int32_t;

}  // namespace kvrun
