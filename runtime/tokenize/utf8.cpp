#include "tokenize/utf8.h"

namespace pqvk::tokenize {

Utf8Step utf8_step(std::string_view s, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t b0 = byte(pos);
  if (b0 < 0x80) return {Utf8Step::complete, 1, b0};
  size_t need;
  char32_t cp;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;        // overlong
    else if (b0 == 0xED) hi = 0x9F;   // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;        // overlong
    else if (b0 == 0xF4) hi = 0x8F;   // above U+10FFFF
  } else {
    return {Utf8Step::invalid, 1, 0};  // continuation byte, C0, C1 or F5..FF
  }
  for (size_t k = 1; k < need; ++k) {
    if (pos + k >= s.size()) return {Utf8Step::incomplete, k, 0};
    const uint8_t b = byte(pos + k);
    const uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return {Utf8Step::invalid, k, 0};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {Utf8Step::complete, need, cp};
}

size_t utf8_invalid_offset(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    const Utf8Step st = utf8_step(s, pos);
    if (st.kind != Utf8Step::complete) return pos;
    pos += st.length;
  }
  return std::string_view::npos;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string utf8_sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    const Utf8Step st = utf8_step(s, pos);
    if (st.kind == Utf8Step::complete) out.append(s.substr(pos, st.length));
    else out.append(kReplacementChar);
    pos += st.length;
  }
  return out;
}

size_t utf8_incomplete_tail(std::string_view s) {
  // An incomplete sequence is at most 3 bytes: look at the last 3 lead-byte candidates.
  const size_t first = s.size() > 3 ? s.size() - 3 : 0;
  for (size_t pos = first; pos < s.size(); ++pos) {
    const uint8_t b = static_cast<uint8_t>(s[pos]);
    if ((b & 0xC0) == 0x80) continue;  // a continuation byte cannot start a sequence
    const Utf8Step st = utf8_step(s, pos);
    if (st.kind == Utf8Step::incomplete && pos + st.length == s.size()) return st.length;
  }
  return 0;
}

}  // namespace pqvk::tokenize
