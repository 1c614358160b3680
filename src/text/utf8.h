// UTF-8 helpers for the tokenizers.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace kvrun::text {

// Throws kvrun::Error naming `what` and the byte offset when s is not valid UTF-8.
void check_utf8(std::string_view s, std::string_view what);
// Length in bytes of the UTF-8 sequence starting with lead byte b (1 for invalid bytes).
inline size_t utf8_len(unsigned char b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }
// Decodes the (valid) character at s[i]; advances i.
char32_t next_char(std::string_view s, size_t& i);
void append_utf8(std::string& out, char32_t c);
// Bytes -> valid UTF-8, each maximal invalid subsequence replaced by U+FFFD (as Rust's
// String::from_utf8_lossy and Python's errors="replace").
std::string utf8_lossy(std::string_view bytes);
// True when s ends with an incomplete (but so far valid) multi-byte sequence or U+FFFD.
bool ends_with_incomplete_char(std::string_view s);
// Unicode White_Space (Rust char::is_whitespace).
bool is_unicode_space(char32_t c);
// A regex \w character as `tokenizers` checks single_word added tokens: letters, marks,
// decimal and letter numbers, connector punctuation, ZWNJ/ZWJ.
bool is_word_char(char32_t c);

}  // namespace kvrun::text
