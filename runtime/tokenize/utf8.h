// UTF-8 helpers shared by the tokenizers and the streaming detokenizer. Strict UTF-8 (RFC 3629):
// no overlong forms, no surrogates (U+D800..U+DFFF), nothing above U+10FFFF.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pqvk::tokenize {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// What starts at s[pos]: a complete valid sequence of `length` bytes, an incomplete one (a valid
// prefix of a sequence cut by the end of s, `length` bytes long), or an invalid one (`length` is
// the maximal subpart to replace by one U+FFFD, as the Unicode standard and WHATWG recommend).
struct Utf8Step {
  enum Kind { complete, incomplete, invalid } kind;
  size_t length;
  char32_t code_point;  // complete only
};
Utf8Step utf8_step(std::string_view s, size_t pos);

// The offset of the first byte that is not part of a valid UTF-8 sequence, or npos.
size_t utf8_invalid_offset(std::string_view s);
inline bool utf8_valid(std::string_view s) { return utf8_invalid_offset(s) == std::string_view::npos; }

// Appends the UTF-8 encoding of a code point (<= U+10FFFF, not a surrogate).
void utf8_append(std::string& out, char32_t cp);

// Valid UTF-8 from arbitrary bytes: each invalid sequence (and an incomplete one at the end)
// becomes U+FFFD.
std::string utf8_sanitize(std::string_view s);

// Number of bytes at the end of s that form an incomplete (but so far valid) sequence: they may
// still become a character when more bytes follow. 0..3.
size_t utf8_incomplete_tail(std::string_view s);

}  // namespace pqvk::tokenize
