// The template lexer and parser: jinja2's lexing rules (trim_blocks and lstrip_blocks on, as
// HuggingFace sets them; newlines normalized to \n and one trailing newline dropped) and its
// grammar and operator precedence, into the syntax tree of jinja_ast.h.
#include <unicode/uchar.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "tokenize/jinja_ast.h"
#include "tokenize/utf8.h"

namespace pqvk::jinja::detail {

namespace {

// ---- tokens -----------------------------------------------------------------------------------

struct Token {
  enum Kind { data, block_begin, block_end, var_begin, var_end, name, string, integer, floating, op, eof } kind;
  std::string text;  // data, a name, a string's value, an operator
  int64_t i = 0;
  double d = 0;
  size_t pos = 0;  // offset in the normalized source
};

const char* describe(Token::Kind k) {
  switch (k) {
    case Token::data: return "template data / text";
    case Token::block_begin: return "begin of statement block";
    case Token::block_end: return "end of statement block";
    case Token::var_begin: return "begin of print statement";
    case Token::var_end: return "end of print statement";
    case Token::name: return "name";
    case Token::string: return "string";
    case Token::integer: return "integer";
    case Token::floating: return "float";
    case Token::op: return "operator";
    case Token::eof: return "end of template";
  }
  return "token";
}

std::string describe(const Token& t) {
  if (t.kind == Token::name || t.kind == Token::op) return t.text;
  return describe(t.kind);
}

// Line and column (in characters) of an offset.
class Positions {
 public:
  explicit Positions(const std::string& src) : src_(src) {
    starts_.push_back(0);
    for (size_t i = 0; i < src.size(); ++i)
      if (src[i] == '\n') starts_.push_back(i + 1);
  }
  std::pair<int, int> at(size_t pos) const {
    pos = std::min(pos, src_.size());
    const size_t line = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), pos) - starts_.begin()) - 1;
    int col = 1;
    for (size_t i = starts_[line]; i < pos; ++i) col += (static_cast<unsigned char>(src_[i]) & 0xC0) != 0x80;
    return {static_cast<int>(line) + 1, col};
  }

 private:
  const std::string& src_;
  std::vector<size_t> starts_;
};

// ---- characters -------------------------------------------------------------------------------

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The whitespace character starting at s[i] (Python's \s), its length; 0 when none.
size_t space_at(const std::string& s, size_t i) {
  if (i >= s.size()) return 0;
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return py_isspace(c) ? 1 : 0;
  const tokenize::Utf8Step st = tokenize::utf8_step(s, i);
  return st.kind == tokenize::Utf8Step::complete && py_isspace(st.code_point) ? st.length : 0;
}

size_t skip_spaces(const std::string& s, size_t i) {
  while (size_t n = space_at(s, i)) i += n;
  return i;
}

// text.rstrip(): the length of `text` without its trailing whitespace.
size_t rstrip_length(std::string_view text) {
  const std::u32string cps = code_points(text);
  size_t n = cps.size();
  while (n > 0 && py_isspace(cps[n - 1])) --n;
  return utf8(std::u32string_view(cps).substr(0, n)).size();
}

bool all_spaces(std::string_view text) {
  for (char32_t c : code_points(text))
    if (!py_isspace(c)) return false;
  return true;
}

// Python's string literal decoding as jinja2 does it: non-ASCII characters become \x / \u / \U
// escapes (backslashreplace), then the whole is decoded as "unicode-escape".
std::string unescape(std::string_view raw) {
  std::string ascii;
  for (char32_t c : code_points(raw)) {
    if (c < 0x80) {
      ascii += static_cast<char>(c);
      continue;
    }
    char buf[16];
    if (c < 0x100) std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
    else if (c < 0x10000) std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
    else std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
    ascii += buf;
  }
  std::string out;
  auto hex = [&](size_t& i, int n, const char* what) -> char32_t {
    uint32_t v = 0;
    for (int k = 0; k < n; ++k, ++i) {
      const char c = i < ascii.size() ? ascii[i] : '\0';
      int d = -1;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      if (d < 0) fail("TemplateSyntaxError", std::string("truncated ") + what + " escape");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    return v;
  };
  auto put = [&](char32_t c) {
    if (c > 0x10FFFF) fail("TemplateSyntaxError", "illegal Unicode character");
    if (c >= 0xD800 && c <= 0xDFFF)
      fail("TemplateSyntaxError", "a string literal holds a lone surrogate, which cannot be written as UTF-8");
    tokenize::utf8_append(out, c);
  };
  for (size_t i = 0; i < ascii.size();) {
    const char c = ascii[i++];
    if (c != '\\') {
      out += c;
      continue;
    }
    if (i >= ascii.size()) fail("TemplateSyntaxError", "\\ at end of string");
    const char e = ascii[i++];
    switch (e) {
      case '\n': break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x': put(hex(i, 2, "\\xXX")); break;
      case 'u': put(hex(i, 4, "\\uXXXX")); break;
      case 'U': put(hex(i, 8, "\\UXXXXXXXX")); break;
      case 'N': {
        const size_t close = ascii.find('}', i);
        if (i >= ascii.size() || ascii[i] != '{' || close == std::string::npos || close == i + 1)
          fail("TemplateSyntaxError", "malformed \\N character escape");
        const std::string cname = ascii.substr(i + 1, close - i - 1);
        UErrorCode err = U_ZERO_ERROR;
        const UChar32 cp = u_charFromName(U_EXTENDED_CHAR_NAME, cname.c_str(), &err);
        if (U_FAILURE(err) || cp < 0) fail("TemplateSyntaxError", "unknown Unicode character name");
        put(static_cast<char32_t>(cp));
        i = close + 1;
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          uint32_t v = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && i < ascii.size() && ascii[i] >= '0' && ascii[i] <= '7'; ++k)
            v = v * 8 + static_cast<uint32_t>(ascii[i++] - '0');
          put(v);
        } else {
          out += '\\';
          out += e;
        }
    }
  }
  return out;
}

// ---- the lexer --------------------------------------------------------------------------------

class Lexer {
 public:
  Lexer(const std::string& src, const Positions& positions, const std::string& name)
      : s_(src), pos_(positions), name_(name) {}

  std::vector<Token> run() {
    size_t p = 0;
    while (p < s_.size()) {
      const size_t t = find_tag(p);
      if (t == std::string::npos) {
        add_data(p, s_.size(), p);
        break;
      }
      const char kind = s_[t + 1];
      size_t after = t + 2;
      char sign = 0;
      if (after < s_.size() && (s_[after] == '-' || s_[after] == '+')) sign = s_[after++];
      add_data(p, text_end(p, t, sign, kind != '{'), p);
      size_t raw_end = 0;
      if (kind == '%' && raw_begin(after, &raw_end)) {
        p = lex_raw(raw_end);
      } else if (kind == '#') {
        p = lex_comment(after, t);
      } else {
        p = lex_tag(kind, t, after);
      }
    }
    tokens_.push_back(Token{Token::eof, "", 0, 0, s_.size()});
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void error(size_t at, const std::string& msg) const {
    const auto [line, col] = pos_.at(at);
    throw Error("TemplateSyntaxError", msg, name_, line, col);
  }

  size_t find_tag(size_t p) const {
    for (size_t i = s_.find('{', p); i != std::string::npos && i + 1 < s_.size(); i = s_.find('{', i + 1))
      if (s_[i + 1] == '{' || s_[i + 1] == '%' || s_[i + 1] == '#') return i;
    return std::string::npos;
  }

  // Where the text s_[p, t) before a tag at t ends once the tag's whitespace control applies:
  // '-' strips all whitespace before it; otherwise, for block tags and comments (lstrip), the
  // spaces and tabs between the start of a line and the tag go, unless the tag says '+'.
  size_t text_end(size_t p, size_t t, char sign, bool lstrip) const {
    const std::string_view text = std::string_view(s_).substr(p, t - p);
    if (sign == '-') return p + rstrip_length(text);
    if (sign == '+' || !lstrip) return t;
    const size_t nl = text.rfind('\n');
    const size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
    if ((l_pos > 0 || line_starting_) && l_pos < text.size() && all_spaces(text.substr(l_pos))) return p + l_pos;
    return t;
  }

  void add_data(size_t b, size_t e, size_t at) {
    if (e > b) tokens_.push_back(Token{Token::data, s_.substr(b, e - b), 0, 0, at});
  }

  bool starts(size_t p, std::string_view w) const { return s_.compare(p, w.size(), w) == 0; }

  // `\s*raw\s*(-%}\s*|%})` at p; *end: after it.
  bool raw_begin(size_t p, size_t* end) const {
    p = skip_spaces(s_, p);
    if (!starts(p, "raw")) return false;
    p = skip_spaces(s_, p + 3);
    if (starts(p, "-%}")) {
      *end = skip_spaces(s_, p + 3);
    } else if (starts(p, "%}")) {
      *end = p + 2;
    } else {
      return false;
    }
    line_starting_ = *end > 0 && s_[*end - 1] == '\n';
    return true;
  }

  // The block end at p ('+%}', '-%}' + whitespace, '%}' + one newline); returns the position after it.
  size_t block_end(size_t p, bool* found) const {
    *found = true;
    if (starts(p, "+%}")) return p + 3;
    if (starts(p, "-%}")) return skip_spaces(s_, p + 3);
    if (starts(p, "%}")) return p + 2 + (p + 2 < s_.size() && s_[p + 2] == '\n' ? 1 : 0);
    *found = false;
    return p;
  }

  size_t lex_raw(size_t p) {
    // Up to {% endraw %}, with the same whitespace rules for the text before it.
    for (size_t t = s_.find("{%", p); t != std::string::npos; t = s_.find("{%", t + 1)) {
      size_t q = t + 2;
      char sign = 0;
      if (q < s_.size() && (s_[q] == '-' || s_[q] == '+')) sign = s_[q++];
      q = skip_spaces(s_, q);
      if (!starts(q, "endraw")) continue;
      q = skip_spaces(s_, q + 6);
      bool found = false;
      const size_t end = block_end(q, &found);
      if (!found) continue;
      add_data(p, text_end(p, t, sign, true), p);
      line_starting_ = s_[end - 1] == '\n';
      return end;
    }
    error(p, "Missing end of raw directive");
  }

  size_t lex_comment(size_t p, size_t start) {
    const size_t k = s_.find("#}", p);
    if (k == std::string::npos) error(start, "Missing end of comment tag");
    size_t end;
    if (k > p && s_[k - 1] == '-') end = skip_spaces(s_, k + 2);
    else if (k > p && s_[k - 1] == '+') end = k + 2;
    else end = k + 2 + (k + 2 < s_.size() && s_[k + 2] == '\n' ? 1 : 0);
    line_starting_ = s_[end - 1] == '\n';
    return end;
  }

  size_t lex_tag(char kind, size_t start, size_t p) {
    const bool block = kind == '%';
    tokens_.push_back(Token{block ? Token::block_begin : Token::var_begin, "", 0, 0, start});
    std::vector<char> balance;
    for (;;) {
      if (p >= s_.size()) {
        tokens_.push_back(Token{Token::eof, "", 0, 0, s_.size()});  // the parser reports it
        return p;
      }
      if (balance.empty()) {
        size_t end = p;
        bool found = false;
        if (block) {
          end = block_end(p, &found);
        } else if (starts(p, "-}}")) {
          end = skip_spaces(s_, p + 3);
          found = true;
        } else if (starts(p, "}}")) {
          end = p + 2;
          found = true;
        }
        if (found) {
          tokens_.push_back(Token{block ? Token::block_end : Token::var_end, "", 0, 0, p});
          line_starting_ = s_[end - 1] == '\n';
          return end;
        }
      }
      if (size_t n = space_at(s_, p)) {
        p = skip_spaces(s_, p + n);
        continue;
      }
      if (size_t e = match_float(p)) {
        std::string digits;
        for (size_t i = p; i < e; ++i)
          if (s_[i] != '_') digits += s_[i];
        tokens_.push_back(Token{Token::floating, s_.substr(p, e - p), 0, std::strtod(digits.c_str(), nullptr), p});
        p = e;
        continue;
      }
      if (size_t e = match_integer(p)) {
        tokens_.push_back(Token{Token::integer, s_.substr(p, e - p), parse_integer(p, e), 0, p});
        p = e;
        continue;
      }
      if (size_t e = match_name(p)) {
        tokens_.push_back(Token{Token::name, s_.substr(p, e - p), 0, 0, p});
        p = e;
        continue;
      }
      if (size_t e = match_string(p)) {
        std::string value;
        try {
          value = unescape(std::string_view(s_).substr(p + 1, e - p - 2));
        } catch (const Fault& f) {
          error(p, f.message);
        }
        tokens_.push_back(Token{Token::string, std::move(value), 0, 0, p});
        p = e;
        continue;
      }
      static const char* ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(",
                                  ")",  "{",  "}",  ">",  "<",  "=",  ".", ":", "|", ",", ";"};
      const char* op = nullptr;
      for (const char* o : ops)
        if (starts(p, o)) {
          op = o;
          break;
        }
      if (!op) {
        const tokenize::Utf8Step st = tokenize::utf8_step(s_, p);
        error(p, "unexpected char " + repr_string(s_.substr(p, st.kind == tokenize::Utf8Step::complete ? st.length : 1)) +
                     " at " + std::to_string(p));
      }
      const std::string o(op);
      if (o == "(" || o == "[" || o == "{") {
        balance.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
      } else if (o == ")" || o == "]" || o == "}") {
        if (balance.empty()) error(p, "unexpected '" + o + "'");
        if (balance.back() != o[0]) error(p, "unexpected '" + o + "', expected '" + std::string(1, balance.back()) + "'");
        balance.pop_back();
      }
      tokens_.push_back(Token{Token::op, o, 0, 0, p});
      p += o.size();
    }
  }

  // (\d+_)*\d+ at p: its end, or p when there is none.
  size_t digits(size_t p, bool (*ok)(char) = [](char c) { return is_digit(c); }) const {
    size_t q = p;
    while (q < s_.size() && ok(s_[q])) ++q;
    if (q == p) return p;
    while (q + 1 < s_.size() && s_[q] == '_' && ok(s_[q + 1])) {
      ++q;
      while (q < s_.size() && ok(s_[q])) ++q;
    }
    return q;
  }

  // The match_* functions return the end of what they match at p, 0 when nothing matches.
  size_t match_float(size_t p) const {
    if (p > 0 && s_[p - 1] == '.') return 0;
    const size_t q = digits(p);
    if (q == p) return 0;
    auto exponent = [&](size_t x) -> size_t {
      if (x >= s_.size() || (s_[x] != 'e' && s_[x] != 'E')) return 0;
      size_t y = x + 1;
      if (y < s_.size() && (s_[y] == '+' || s_[y] == '-')) ++y;
      const size_t z = digits(y);
      return z == y ? 0 : z;
    };
    size_t frac = 0;
    if (q < s_.size() && s_[q] == '.') {
      const size_t f = digits(q + 1);
      if (f > q + 1) frac = f;
    }
    if (frac) {
      if (size_t e = exponent(frac)) return e;
      return frac;
    }
    return exponent(q);
  }

  size_t match_integer(size_t p) const {
    if (p >= s_.size() || !is_digit(s_[p])) return 0;
    if (s_[p] == '0' && p + 1 < s_.size()) {
      const char k = static_cast<char>(s_[p + 1] | 0x20);
      bool (*ok)(char) = nullptr;
      if (k == 'b') ok = [](char c) { return c == '0' || c == '1'; };
      if (k == 'o') ok = [](char c) { return c >= '0' && c <= '7'; };
      if (k == 'x') ok = [](char c) { return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f'); };
      if (ok) {  // (_?[digit])+
        size_t q = p + 2;
        for (;;) {
          if (q < s_.size() && ok(s_[q])) ++q;
          else if (q + 1 < s_.size() && s_[q] == '_' && ok(s_[q + 1])) q += 2;
          else break;
        }
        if (q > p + 2) return q;
      }
    }
    if (s_[p] == '0') {  // 0(_?0)*
      size_t q = p + 1;
      for (;;) {
        if (q < s_.size() && s_[q] == '0') ++q;
        else if (q + 1 < s_.size() && s_[q] == '_' && s_[q + 1] == '0') q += 2;
        else break;
      }
      return q;
    }
    size_t q = p + 1;  // [1-9](_?\d)*
    for (;;) {
      if (q < s_.size() && is_digit(s_[q])) ++q;
      else if (q + 1 < s_.size() && s_[q] == '_' && is_digit(s_[q + 1])) q += 2;
      else break;
    }
    return q;
  }

  int64_t parse_integer(size_t b, size_t e) const {
    std::string t;
    for (size_t i = b; i < e; ++i)
      if (s_[i] != '_') t += s_[i];
    int base = 10;
    size_t skip = 0;
    if (t.size() > 1 && t[0] == '0') {
      const char k = static_cast<char>(t[1] | 0x20);
      if (k == 'b') base = 2, skip = 2;
      if (k == 'o') base = 8, skip = 2;
      if (k == 'x') base = 16, skip = 2;
    }
    errno = 0;
    char* end = nullptr;
    const unsigned long long v = std::strtoull(t.c_str() + skip, &end, base);
    if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX))
      error(b, "the integer " + t + " is too large (the renderer's integers are 64-bit)");
    return static_cast<int64_t>(v);
  }

  size_t match_name(size_t p) const {
    size_t q = p;
    while (q < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[q]);
      if (c < 0x80) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (q > p && is_digit(static_cast<char>(c)));
        if (!ok) break;
        ++q;
        continue;
      }
      const tokenize::Utf8Step st = tokenize::utf8_step(s_, q);
      if (st.kind != tokenize::Utf8Step::complete) break;
      const auto cp = static_cast<UChar32>(st.code_point);
      if (!u_hasBinaryProperty(cp, q == p ? UCHAR_XID_START : UCHAR_XID_CONTINUE)) break;
      q += st.length;
    }
    return q == p ? 0 : q;
  }

  size_t match_string(size_t p) const {
    if (p >= s_.size() || (s_[p] != '\'' && s_[p] != '"')) return 0;
    const char quote = s_[p];
    for (size_t q = p + 1; q < s_.size(); ++q) {
      if (s_[q] == '\\') {
        ++q;
        continue;
      }
      if (s_[q] == quote) return q + 1;
    }
    return 0;
  }

  const std::string& s_;
  const Positions& pos_;
  const std::string& name_;
  std::vector<Token> tokens_;
  mutable bool line_starting_ = true;
};

// ---- the parser -------------------------------------------------------------------------------

class Parser {
 public:
  Parser(std::vector<Token> tokens, const Positions& positions, const std::string& name, const Limits& limits)
      : t_(std::move(tokens)), pos_(positions), name_(name), limits_(limits) {}

  Body parse() {
    Body body = subparse({});
    return body;
  }

 private:
  // ---- the token stream ----
  const Token& cur() const { return t_[i_]; }
  const Token& look() const { return t_[std::min(i_ + 1, t_.size() - 1)]; }
  const Token& next() {
    const Token& t = t_[i_];
    if (i_ + 1 < t_.size()) ++i_;
    return t;
  }
  bool is_name(const Token& t, std::string_view n) const { return t.kind == Token::name && t.text == n; }
  bool is_op(const Token& t, std::string_view o) const { return t.kind == Token::op && t.text == o; }
  bool skip_name(std::string_view n) {
    if (!is_name(cur(), n)) return false;
    next();
    return true;
  }
  bool skip_op(std::string_view o) {
    if (!is_op(cur(), o)) return false;
    next();
    return true;
  }

  [[noreturn]] void error(const Token& at, const std::string& msg) const {
    const auto [line, col] = pos_.at(at.pos);
    throw Error("TemplateSyntaxError", msg, name_, line, col);
  }
  const Token& expect(Token::Kind k) {
    if (cur().kind != k) {
      if (cur().kind == Token::eof) fail_eof({});
      error(cur(), std::string("expected token '") + describe(k) + "', got '" + describe(cur()) + "'");
    }
    return next();
  }
  const Token& expect_op(std::string_view o) {
    if (!is_op(cur(), o)) {
      if (cur().kind == Token::eof) fail_eof({});
      error(cur(), "expected token '" + std::string(o) + "', got '" + describe(cur()) + "'");
    }
    return next();
  }
  std::string expect_name() {
    if (cur().kind != Token::name) {
      if (cur().kind == Token::eof) fail_eof({});
      error(cur(), "expected token 'name', got '" + describe(cur()) + "'");
    }
    return next().text;
  }

  template <class N>
  std::unique_ptr<N> node(const Token& at) {
    auto n = std::make_unique<N>();
    const auto [line, col] = pos_.at(at.pos);
    n->line = line;
    n->col = col;
    return n;
  }

  // Nesting: recursive constructs and each link of an operator chain count one level.
  struct Nest {
    Parser& p;
    int n = 0;
    explicit Nest(Parser& parser, bool now = true) : p(parser) {
      if (now) more();
    }
    void more() {
      ++n;
      if (++p.depth_ > p.limits_.max_nesting) {
        const auto [line, col] = p.pos_.at(p.cur().pos);
        throw Error("LimitError", "the template nests blocks or expressions more than " +
                                      std::to_string(p.limits_.max_nesting) + " levels deep", p.name_, line, col);
      }
    }
    ~Nest() { p.depth_ -= n; }
  };

  // ---- statements ----
  using EndTags = std::vector<std::string>;

  [[noreturn]] void fail_unknown(const std::string& tag, const Token& at) {
    std::string msg = tag.empty() ? "Unexpected end of template." : "Encountered unknown tag '" + tag + "'.";
    if (!end_stack_.empty()) {
      std::string looking;
      for (const std::string& e : end_stack_.back()) looking += (looking.empty() ? "" : " or ") + ("'" + e + "'");
      bool expected = false;
      for (const EndTags& tags : end_stack_) expected |= std::find(tags.begin(), tags.end(), tag) != tags.end();
      if (!tag.empty() && expected)
        msg += " You probably made a nesting mistake. Jinja is expecting this tag, but currently looking for " + looking + ".";
      else
        msg += " Jinja was looking for the following tags: " + looking + ".";
    }
    if (!tag_stack_.empty()) msg += " The innermost block that needs to be closed is '" + tag_stack_.back() + "'.";
    error(at, msg);
  }
  [[noreturn]] void fail_eof(const EndTags& extra) {
    if (!extra.empty()) end_stack_.push_back(extra);
    fail_unknown("", cur());
  }

  // Statements and text up to a block whose first name is one of `end`; leaves the stream at
  // that name (or at the end of the template when `end` is empty).
  Body subparse(const EndTags& end) {
    if (!end.empty()) end_stack_.push_back(end);
    Body body;
    for (;;) {
      const Token& t = cur();
      if (t.kind == Token::eof) break;
      if (t.kind == Token::data) {
        auto n = node<Text>(t);
        n->text = t.text;
        body.push_back(std::move(n));
        next();
      } else if (t.kind == Token::var_begin) {
        const Token& at = next();
        auto n = node<Print>(at);
        n->expr = parse_tuple(false, true, {}, false);
        expect(Token::var_end);
        body.push_back(std::move(n));
      } else if (t.kind == Token::block_begin) {
        next();
        if (!end.empty() && cur().kind == Token::name && std::find(end.begin(), end.end(), cur().text) != end.end()) {
          end_stack_.pop_back();
          return body;
        }
        if (StmtPtr s = parse_statement()) body.push_back(std::move(s));
        expect(Token::block_end);
      } else {
        error(t, std::string("unexpected '") + describe(t) + "'");
      }
    }
    if (!end.empty()) fail_eof({});
    return body;
  }

  // After the tag's own tokens: the block end, the body up to one of `end`; returns the body and
  // leaves the stream at the end tag's name.
  Body parse_statements(const EndTags& end, bool drop_needle) {
    skip_op(":");
    expect(Token::block_end);
    Body b = subparse(end);
    if (drop_needle) next();
    return b;
  }

  StmtPtr parse_statement() {
    const Token& t = cur();
    if (t.kind != Token::name) error(t, "tag name expected");
    Nest nest(*this);
    const std::string tag = t.text;
    static const std::set<std::string> unsupported = {"extends", "block", "include", "import", "from", "autoescape"};
    if (unsupported.count(tag))
      error(t, "the '" + tag + "' tag is not supported (a chat template is rendered alone, without other templates)");
    tag_stack_.push_back(tag);
    StmtPtr s;
    if (tag == "if") s = parse_if();
    else if (tag == "for") s = parse_for();
    else if (tag == "set") s = parse_set();
    else if (tag == "macro") s = parse_macro();
    else if (tag == "call") s = parse_call_block();
    else if (tag == "filter") s = parse_filter_block();
    else if (tag == "with") s = parse_with();
    else if (tag == "print") s = parse_print();
    else if (tag == "generation") s = parse_generation();
    else if (tag == "break" || tag == "continue") s = parse_loop_control();
    else {
      tag_stack_.pop_back();
      fail_unknown(tag, t);
    }
    tag_stack_.pop_back();
    return s;
  }

  StmtPtr parse_if() {
    auto n = node<If>(next());
    for (;;) {
      ExprPtr test = parse_tuple(false, false, {}, false);
      Body body = parse_statements({"elif", "else", "endif"}, false);
      n->branches.emplace_back(std::move(test), std::move(body));
      const Token& t = next();
      if (is_name(t, "elif")) continue;
      if (is_name(t, "else")) n->otherwise = parse_statements({"endif"}, true);
      break;
    }
    return n;
  }

  StmtPtr parse_for() {
    auto n = node<For>(next());
    n->target = parse_assign_target(true, false, {"in"}, false);
    if (!skip_name("in")) error(cur(), "expected token 'in', got '" + describe(cur()) + "'");
    n->iterable = parse_tuple(false, false, {"recursive"}, false);
    if (skip_name("if")) n->filter = parse_expression(true);
    if (is_name(cur(), "recursive")) error(cur(), "recursive for loops are not supported");
    ++loop_depth_;
    n->body = parse_statements({"endfor", "else"}, false);
    --loop_depth_;
    if (is_name(next(), "else")) n->otherwise = parse_statements({"endfor"}, true);
    return n;
  }

  StmtPtr parse_set() {
    const Token& at = next();
    Target target = parse_assign_target(true, false, {}, true);
    if (skip_op("=")) {
      auto n = node<Set>(at);
      n->target = std::move(target);
      n->value = parse_tuple(false, true, {}, false);
      return n;
    }
    auto n = node<SetBlock>(at);
    n->target = std::move(target);
    n->filter = parse_filter(nullptr, false);
    n->body = parse_statements({"endset"}, true);
    return n;
  }

  void parse_signature(MacroSignature& sig) {
    expect_op("(");
    while (!is_op(cur(), ")")) {
      if (!sig.params.empty()) expect_op(",");
      const Token& at = cur();
      sig.params.push_back(expect_name());
      if (skip_op("=")) {
        sig.defaults.push_back(parse_expression(true));
      } else if (!sig.defaults.empty()) {
        error(at, "non-default argument follows default argument");
      }
    }
    expect_op(")");
  }

  // The names a macro body refers to decide whether it takes caller, varargs and kwargs.
  void body_uses(MacroSignature& sig, const std::set<std::string>& names) {
    sig.uses_caller = names.count("caller") > 0;
    sig.uses_varargs = names.count("varargs") > 0;
    sig.uses_kwargs = names.count("kwargs") > 0;
  }

  StmtPtr parse_macro() {
    auto n = node<Macro>(next());
    n->name = expect_name();
    n->sig = std::make_shared<MacroSignature>();
    parse_signature(*n->sig);
    names_.emplace_back();
    const int loops = loop_depth_;
    loop_depth_ = 0;
    n->body = std::make_shared<Body>(parse_statements({"endmacro"}, true));
    loop_depth_ = loops;
    body_uses(*n->sig, names_.back());
    names_.pop_back();
    return n;
  }

  StmtPtr parse_call_block() {
    auto n = node<CallBlock>(next());
    n->sig = std::make_shared<MacroSignature>();
    if (is_op(cur(), "(")) parse_signature(*n->sig);
    const Token& at = cur();
    ExprPtr call = parse_expression(true);
    if (!dynamic_cast<Call*>(call.get())) error(at, "expected call");
    n->call.reset(static_cast<Call*>(call.release()));
    names_.emplace_back();
    const int loops = loop_depth_;
    loop_depth_ = 0;
    n->body = std::make_shared<Body>(parse_statements({"endcall"}, true));
    loop_depth_ = loops;
    body_uses(*n->sig, names_.back());
    names_.pop_back();
    return n;
  }

  StmtPtr parse_filter_block() {
    auto n = node<FilterBlock>(next());
    n->filter = parse_filter(nullptr, true);
    n->body = parse_statements({"endfilter"}, true);
    return n;
  }

  StmtPtr parse_with() {
    auto n = node<With>(next());
    while (cur().kind != Token::block_end) {
      if (!n->assignments.empty()) expect_op(",");
      Target t = parse_assign_target(true, false, {}, false);
      expect_op("=");
      n->assignments.emplace_back(std::move(t), parse_expression(true));
    }
    n->body = parse_statements({"endwith"}, true);
    return n;
  }

  StmtPtr parse_print() {
    const Token& at = next();
    auto list = node<ListExpr>(at);
    list->tuple = true;
    while (cur().kind != Token::block_end) {
      if (!list->items.empty()) expect_op(",");
      list->items.push_back(parse_expression(true));
    }
    // {% print a, b %} writes a then b.
    auto body = node<If>(at);  // an always-true branch holding the prints
    Body prints;
    for (ExprPtr& e : list->items) {
      auto p = node<Print>(at);
      p->expr = std::move(e);
      prints.push_back(std::move(p));
    }
    auto yes = node<Const>(at);
    yes->value = Value(true);
    body->branches.emplace_back(std::move(yes), std::move(prints));
    return body;
  }

  // HuggingFace's {% generation %} marks the assistant's text for its masks; it renders its body.
  StmtPtr parse_generation() {
    const Token& at = next();
    auto body = node<If>(at);
    auto yes = node<Const>(at);
    yes->value = Value(true);
    body->branches.emplace_back(std::move(yes), parse_statements({"endgeneration"}, true));
    return body;
  }

  StmtPtr parse_loop_control() {
    const Token& t = next();
    if (loop_depth_ == 0) error(t, "'" + t.text + "' outside of a for loop");
    auto n = node<LoopControl>(t);
    n->is_break = t.text == "break";
    return n;
  }

  // ---- assignment targets ----
  Target parse_assign_target(bool with_tuple, bool name_only, const EndTags& extra_end, bool with_namespace) {
    Target target;
    const auto [line, col] = pos_.at(cur().pos);
    target.line = line;
    target.col = col;
    if (with_namespace && cur().kind == Token::name && is_op(look(), ".")) {
      target.kind = Target::ns_attr;
      target.id = next().text;
      next();
      target.attr = expect_name();
      return target;
    }
    if (name_only) {
      target.id = expect_name();
      return target;
    }
    // A tuple of names (simplified: primaries only), or one.
    std::vector<Target> items;
    bool is_tuple = false;
    for (;;) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      items.push_back(parse_target_primary());
      if (is_op(cur(), ",")) is_tuple = true;
      else break;
      if (!with_tuple) break;
    }
    if (!is_tuple) {
      if (items.empty()) error(cur(), "Expected an expression, got '" + describe(cur()) + "'");
      return std::move(items[0]);
    }
    target.kind = Target::tuple;
    target.items = std::move(items);
    return target;
  }

  Target parse_target_primary() {
    Target t;
    const auto [line, col] = pos_.at(cur().pos);
    t.line = line;
    t.col = col;
    if (cur().kind == Token::name) {
      const std::string& n = cur().text;
      if (n == "true" || n == "false" || n == "True" || n == "False" || n == "none" || n == "None")
        error(cur(), "can't assign to 'const'");
      t.id = next().text;
      return t;
    }
    if (is_op(cur(), "(")) {
      next();
      Nest nest(*this);
      Target inner = parse_assign_target(true, false, {}, false);
      expect_op(")");
      if (inner.kind != Target::tuple) return inner;
      return inner;
    }
    error(cur(), "can't assign to '" + describe(cur()) + "'");
  }

  // ---- expressions ----
  bool is_tuple_end(const EndTags& extra) const {
    const Token& t = cur();
    if (t.kind == Token::var_end || t.kind == Token::block_end || is_op(t, ")") || t.kind == Token::eof) return true;
    for (const std::string& e : extra)
      if (is_name(t, e)) return true;
    return false;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    Nest nest(*this);
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    const Token& at = cur();
    ExprPtr e = parse_or();
    Nest chain(*this, false);
    while (skip_name("if")) {
      chain.more();
      auto n = node<CondExpr>(at);
      n->then = std::move(e);
      n->test = parse_or();
      if (skip_name("else")) n->otherwise = parse_condexpr();
      e = std::move(n);
    }
    return e;
  }

  ExprPtr parse_or() {
    const Token& at = cur();
    ExprPtr left = parse_and();
    Nest chain(*this, false);
    while (skip_name("or")) {
      chain.more();
      auto n = node<Logic>(at);
      n->is_and = false;
      n->left = std::move(left);
      n->right = parse_and();
      left = std::move(n);
    }
    return left;
  }

  ExprPtr parse_and() {
    const Token& at = cur();
    ExprPtr left = parse_not();
    Nest chain(*this, false);
    while (skip_name("and")) {
      chain.more();
      auto n = node<Logic>(at);
      n->left = std::move(left);
      n->right = parse_not();
      left = std::move(n);
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name(cur(), "not")) {
      const Token& at = next();
      Nest nest(*this);
      auto n = node<Unary>(at);
      n->op = Unary::not_;
      n->operand = parse_not();
      return n;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token& at = cur();
    ExprPtr first = parse_math1();
    std::vector<std::pair<CmpOp, ExprPtr>> rest;
    Nest chain(*this, false);
    for (;;) {
      std::optional<CmpOp> op;
      const Token& t = cur();
      if (t.kind == Token::op) {
        if (t.text == "==") op = CmpOp::eq;
        else if (t.text == "!=") op = CmpOp::ne;
        else if (t.text == "<") op = CmpOp::lt;
        else if (t.text == "<=") op = CmpOp::le;
        else if (t.text == ">") op = CmpOp::gt;
        else if (t.text == ">=") op = CmpOp::ge;
        if (op) next();
      } else if (is_name(t, "in")) {
        op = CmpOp::in;
        next();
      } else if (is_name(t, "not") && is_name(look(), "in")) {
        op = CmpOp::not_in;
        next();
        next();
      }
      if (!op) break;
      chain.more();
      rest.emplace_back(*op, parse_math1());
    }
    if (rest.empty()) return first;
    auto n = node<Compare>(at);
    n->first = std::move(first);
    n->rest = std::move(rest);
    return n;
  }

  ExprPtr binary(const Token& at, BinOp op, ExprPtr l, ExprPtr r) {
    auto n = node<Binary>(at);
    n->op = op;
    n->left = std::move(l);
    n->right = std::move(r);
    return n;
  }

  ExprPtr parse_math1() {
    const Token& at = cur();
    ExprPtr left = parse_concat();
    Nest chain(*this, false);
    while (is_op(cur(), "+") || is_op(cur(), "-")) {
      const BinOp op = next().text == "+" ? BinOp::add : BinOp::sub;
      chain.more();
      left = binary(at, op, std::move(left), parse_concat());
    }
    return left;
  }

  ExprPtr parse_concat() {
    const Token& at = cur();
    ExprPtr first = parse_math2();
    if (!is_op(cur(), "~")) return first;
    auto n = node<Concat>(at);
    n->parts.push_back(std::move(first));
    Nest chain(*this, false);
    while (skip_op("~")) {
      chain.more();
      n->parts.push_back(parse_math2());
    }
    return n;
  }

  ExprPtr parse_math2() {
    const Token& at = cur();
    ExprPtr left = parse_pow();
    Nest chain(*this, false);
    for (;;) {
      BinOp op;
      if (is_op(cur(), "*")) op = BinOp::mul;
      else if (is_op(cur(), "/")) op = BinOp::div;
      else if (is_op(cur(), "//")) op = BinOp::floordiv;
      else if (is_op(cur(), "%")) op = BinOp::mod;
      else break;
      next();
      chain.more();
      left = binary(at, op, std::move(left), parse_pow());
    }
    return left;
  }

  ExprPtr parse_pow() {
    const Token& at = cur();
    ExprPtr left = parse_unary(true);
    Nest chain(*this, false);
    while (skip_op("**")) {
      chain.more();
      left = binary(at, BinOp::pow, std::move(left), parse_unary(true));
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    Nest nest(*this);
    const Token& at = cur();
    ExprPtr e;
    if (is_op(at, "-") || is_op(at, "+")) {
      next();
      auto n = node<Unary>(at);
      n->op = at.text == "-" ? Unary::neg : Unary::pos;
      n->operand = parse_unary(false);
      e = std::move(n);
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    if (t.kind == Token::name) {
      next();
      if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
        auto n = node<Const>(t);
        n->value = Value(t.text == "true" || t.text == "True");
        return n;
      }
      if (t.text == "none" || t.text == "None") {
        auto n = node<Const>(t);
        n->value = Value::none();
        return n;
      }
      auto n = node<Name>(t);
      n->name = t.text;
      for (auto& set : names_) set.insert(t.text);
      return n;
    }
    if (t.kind == Token::string) {
      std::string s;
      while (cur().kind == Token::string) s += next().text;
      auto n = node<Const>(t);
      n->value = Value(std::move(s));
      return n;
    }
    if (t.kind == Token::integer || t.kind == Token::floating) {
      next();
      auto n = node<Const>(t);
      n->value = t.kind == Token::integer ? Value(t.i) : Value(t.d);
      return n;
    }
    if (is_op(t, "(")) {
      next();
      Nest nest(*this);
      ExprPtr e = parse_tuple(false, true, {}, true);
      expect_op(")");
      return e;
    }
    if (is_op(t, "[")) return parse_list();
    if (is_op(t, "{")) return parse_dict();
    if (t.kind == Token::eof) fail_eof({});
    error(t, "unexpected '" + describe(t) + "'");
  }

  // Expressions separated by commas: a tuple when there is a comma, else the expression.
  ExprPtr parse_tuple(bool simplified, bool with_condexpr, const EndTags& extra_end, bool explicit_parens) {
    const Token& at = cur();
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    for (;;) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      items.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
      if (is_op(cur(), ",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) {
        if (cur().kind == Token::eof) fail_eof({});
        error(cur(), "Expected an expression, got '" + describe(cur()) + "'");
      }
    }
    auto n = node<ListExpr>(at);
    n->tuple = true;
    n->items = std::move(items);
    return n;
  }

  ExprPtr parse_list() {
    auto n = node<ListExpr>(expect_op("["));
    Nest nest(*this);
    while (!is_op(cur(), "]")) {
      if (!n->items.empty()) expect_op(",");
      if (is_op(cur(), "]")) break;
      n->items.push_back(parse_expression(true));
    }
    expect_op("]");
    return n;
  }

  ExprPtr parse_dict() {
    auto n = node<DictExpr>(expect_op("{"));
    Nest nest(*this);
    while (!is_op(cur(), "}")) {
      if (!n->items.empty()) expect_op(",");
      if (is_op(cur(), "}")) break;
      ExprPtr k = parse_expression(true);
      expect_op(":");
      n->items.emplace_back(std::move(k), parse_expression(true));
    }
    expect_op("}");
    return n;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    Nest chain(*this, false);
    for (;;) {
      if (is_op(cur(), ".") || is_op(cur(), "[")) {
        chain.more();
        e = parse_subscript(std::move(e));
      } else if (is_op(cur(), "(")) {
        chain.more();
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    Nest chain(*this, false);
    for (;;) {
      if (is_op(cur(), "|")) {
        chain.more();
        e = parse_filter(std::move(e), false);
      } else if (is_name(cur(), "is")) {
        chain.more();
        e = parse_test(std::move(e));
      } else if (is_op(cur(), "(")) {
        chain.more();
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr e) {
    const Token& t = next();
    if (t.text == ".") {
      const Token& a = next();
      if (a.kind == Token::name) {
        auto n = node<Getattr>(t);
        n->object = std::move(e);
        n->attr = a.text;
        return n;
      }
      if (a.kind != Token::integer) error(a, "expected name or number");
      auto n = node<Getitem>(t);
      n->object = std::move(e);
      auto k = node<Const>(a);
      k->value = Value(a.i);
      n->key = std::move(k);
      return n;
    }
    std::vector<ExprPtr> args;
    while (!is_op(cur(), "]")) {
      if (!args.empty()) expect_op(",");
      args.push_back(parse_subscribed());
    }
    expect_op("]");
    auto n = node<Getitem>(t);
    n->object = std::move(e);
    if (args.size() == 1) {
      n->key = std::move(args[0]);
    } else {
      auto tup = node<ListExpr>(t);
      tup->tuple = true;
      tup->items = std::move(args);
      n->key = std::move(tup);
    }
    return n;
  }

  ExprPtr parse_subscribed() {
    const Token& at = cur();
    ExprPtr start;
    if (is_op(cur(), ":")) {
      next();
    } else {
      ExprPtr e = parse_expression(true);
      if (!is_op(cur(), ":")) return e;
      next();
      start = std::move(e);
    }
    auto n = node<SliceExpr>(at);
    n->start = std::move(start);
    if (!is_op(cur(), ":") && !is_op(cur(), "]") && !is_op(cur(), ",")) n->stop = parse_expression(true);
    if (skip_op(":"))
      if (!is_op(cur(), "]") && !is_op(cur(), ",")) n->step = parse_expression(true);
    return n;
  }

  CallArgs parse_call_args() {
    const Token& open = expect_op("(");
    CallArgs a;
    bool require_comma = false;
    while (!is_op(cur(), ")")) {
      if (require_comma) {
        expect_op(",");
        if (is_op(cur(), ")")) break;
      }
      if (is_op(cur(), "*") || is_op(cur(), "**"))
        error(cur(), "'*' and '**' arguments (argument unpacking) are not supported");
      if (cur().kind == Token::name && is_op(look(), "=")) {
        std::string key = next().text;
        next();
        a.kw.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!a.kw.empty()) error(open, "invalid syntax for function call expression");
        a.pos.push_back(parse_expression(true));
      }
      require_comma = true;
    }
    expect_op(")");
    return a;
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto n = node<Call>(cur());
    n->line = callee->line;  // errors point at what is called
    n->col = callee->col;
    n->callee = std::move(callee);
    n->args = parse_call_args();
    return n;
  }

  // `| name(args)` links; with start_inline the first link has no '|' ({% filter name %}).
  ExprPtr parse_filter(ExprPtr e, bool start_inline) {
    Nest chain(*this, false);
    while (is_op(cur(), "|") || start_inline) {
      if (!start_inline) next();
      chain.more();
      const Token& at = cur();
      auto n = node<Filter>(at);
      n->name = expect_name();
      while (skip_op(".")) n->name += "." + expect_name();
      if (is_op(cur(), "(")) n->args = parse_call_args();
      n->value = std::move(e);
      e = std::move(n);
      start_inline = false;
    }
    return e;
  }

  ExprPtr parse_test(ExprPtr e) {
    const Token& at = next();  // 'is'
    const bool negated = skip_name("not");
    auto n = node<Test>(at);
    n->name = expect_name();
    while (skip_op(".")) n->name += "." + expect_name();
    const Token& t = cur();
    if (is_op(t, "(")) {
      n->args = parse_call_args();
    } else if ((t.kind == Token::name || t.kind == Token::string || t.kind == Token::integer || t.kind == Token::floating ||
                is_op(t, "(") || is_op(t, "[") || is_op(t, "{")) &&
               !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and")) {
      if (is_name(t, "is")) error(t, "You cannot chain multiple tests with is");
      n->args.pos.push_back(parse_postfix(parse_primary()));
    }
    n->value = std::move(e);
    if (!negated) return n;
    auto no = node<Unary>(at);
    no->op = Unary::not_;
    no->operand = std::move(n);
    return no;
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  const Positions& pos_;
  const std::string& name_;
  const Limits& limits_;
  int depth_ = 0;
  int loop_depth_ = 0;
  std::vector<EndTags> end_stack_;
  std::vector<std::string> tag_stack_;
  std::vector<std::set<std::string>> names_;  // names referred to, per macro / call body being parsed
};

}  // namespace

Body parse_template(std::string_view source, const std::string& name, const Limits& limits) {
  if (source.size() > limits.max_source_bytes)
    throw Error("LimitError", "the template is " + std::to_string(source.size()) + " bytes, more than the limit of " +
                                  std::to_string(limits.max_source_bytes),
                name, 0, 0);
  if (const size_t bad = tokenize::utf8_invalid_offset(source); bad != std::string_view::npos)
    throw Error("TemplateSyntaxError", "the template is not valid UTF-8 (at byte " + std::to_string(bad) + ")", name, 0, 0);
  // Newlines normalized to \n; one trailing newline dropped (keep_trailing_newline=False).
  std::string src;
  src.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      src += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      src += source[i];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  const Positions positions(src);
  std::vector<Token> tokens = Lexer(src, positions, name).run();
  return Parser(std::move(tokens), positions, name, limits).parse();
}

}  // namespace pqvk::jinja::detail
