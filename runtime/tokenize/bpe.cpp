// HuggingFace BPE (tokenizer.json with a "BPE" model) from the stored vocabulary, merges and
// pipeline sections: normalizer -> pre-tokenizer -> BPE merges by rank per pre-token -> ids; and
// the decoder for token_bytes(). Byte-level BPE (GPT-2, Llama 3, Qwen2/3) maps every byte of a
// pre-token to a printable character before the merges and back when decoding.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#include <unicode/locid.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <queue>
#include <unordered_map>

#include "tokenize/pair_merge.h"
#include "tokenize/tokenizer.h"
#include "tokenize/utf8.h"

namespace pqvk::tokenize {

using nlohmann::json;

// ---- GPT-2's byte <-> unicode map -------------------------------------------------------------

namespace {

struct ByteLevelTables {
  std::array<std::string, 256> to_char;
  std::unordered_map<char32_t, uint8_t> to_byte;
  ByteLevelTables() {
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? static_cast<char32_t>(b) : next++;
      utf8_append(to_char[static_cast<size_t>(b)], cp);
      to_byte.emplace(cp, static_cast<uint8_t>(b));
    }
  }
};

const ByteLevelTables& byte_tables() {
  static const ByteLevelTables t;
  return t;
}

}  // namespace

const std::string& byte_level_char(uint8_t byte) { return byte_tables().to_char[byte]; }

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += byte_level_char(static_cast<uint8_t>(c));
  return out;
}

std::optional<std::string> byte_level_decode(std::string_view text) {
  const auto& t = byte_tables();
  std::string out;
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Step st = utf8_step(text, pos);
    if (st.kind != Utf8Step::complete) return std::nullopt;
    auto it = t.to_byte.find(st.code_point);
    if (it == t.to_byte.end()) return std::nullopt;
    out += static_cast<char>(it->second);
    pos += st.length;
  }
  return out;
}

// ---- PCRE2 ------------------------------------------------------------------------------------

namespace {

class Regex {
 public:
  Regex(std::string_view pattern, const std::string& where) {
    int err = 0;
    PCRE2_SIZE err_off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                          &err_off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      tokenizer_fail(where, "regex /" + std::string(pattern) + "/: " + reinterpret_cast<const char*>(msg) + " at offset " +
                                std::to_string(err_off));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;  // without JIT the interpreter runs it
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // [start, end) of every non-empty match, left to right. `text` must be valid UTF-8.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text, const std::string& where) const {
    std::vector<std::pair<size_t, size_t>> out;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(pcre2_match_data_create_from_pattern(code_, nullptr),
                                                                           &pcre2_match_data_free);
    if (!md) throw std::bad_alloc();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos <= text.size()) {
      const int rc = jit_ ? pcre2_jit_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr)
                          : pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        tokenizer_fail(where, std::string("regex match failed: ") + reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      const size_t s = ov[0], e = ov[1];
      if (e > s) {
        out.emplace_back(s, e);
        pos = e;
      } else {
        // An empty match: step over one character.
        if (s >= text.size()) break;
        pos = s + utf8_step(text, s).length;
      }
    }
    return out;
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

const Regex& gpt2_regex() {
  static const Regex r(kGpt2SplitPattern, "GPT-2 pre-tokenizer");
  return r;
}

}  // namespace

std::vector<std::string> regex_split(std::string_view pattern, std::string_view text) {
  if (!utf8_valid(text)) tokenizer_fail("regex_split", "the text is not valid UTF-8");
  const Regex re(pattern, "regex_split");
  std::vector<std::string> out;
  size_t prev = 0;
  for (auto [s, e] : re.find_all(text, "regex_split")) {
    if (s > prev) out.emplace_back(text.substr(prev, s - prev));
    out.emplace_back(text.substr(s, e - s));
    prev = e;
  }
  if (prev < text.size()) out.emplace_back(text.substr(prev));
  return out;
}

// ---- the BPE tokenizer ---------------------------------------------------------------------------

namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 '▁'

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
    out.append(s.substr(pos, hit - pos));
    out.append(to);
  }
  out.append(s.substr(pos));
  return out;
}

std::string type_of(const json& j, const std::string& where) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) tokenizer_fail(where, "expected an object with a \"type\"");
  return j["type"].get<std::string>();
}

bool bool_or(const json& j, const char* key, bool def, const std::string& where) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_boolean()) tokenizer_fail(where, std::string("\"") + key + "\" is not a boolean");
  return j[key].get<bool>();
}

std::string string_or(const json& j, const char* key, const std::string& def, const std::string& where) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_string()) tokenizer_fail(where, std::string("\"") + key + "\" is not a string");
  return j[key].get<std::string>();
}

// tokenizer.json's {"String": "..."} or {"Regex": "..."}.
struct Pattern {
  std::string literal;
  std::shared_ptr<const Regex> regex;

  static Pattern parse(const json& j, const std::string& where) {
    Pattern p;
    if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
      p.regex = std::make_shared<const Regex>(j["Regex"].get<std::string>(), where);
    } else if (j.is_object() && j.contains("String") && j["String"].is_string()) {
      p.literal = j["String"].get<std::string>();
      if (p.literal.empty()) tokenizer_fail(where, "empty pattern string");
    } else {
      tokenizer_fail(where, "pattern is neither {\"String\": ...} nor {\"Regex\": ...}");
    }
    return p;
  }
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text, const std::string& where) const {
    if (regex) return regex->find_all(text, where);
    std::vector<std::pair<size_t, size_t>> out;
    for (size_t pos = 0; (pos = text.find(literal, pos)) != std::string_view::npos; pos += literal.size())
      out.emplace_back(pos, pos + literal.size());
    return out;
  }
};

// ---- normalizers -------------------------------------------------------------------------------

struct Normalizer {
  enum Type { nfc, nfd, nfkc, nfkd, lowercase, prepend, replace, strip } type;
  std::string text;  // prepend: the prefix; replace: the replacement
  Pattern pattern;   // replace
  bool left = false, right = false;  // strip
};

void parse_normalizer(const json& j, const std::string& where, std::vector<Normalizer>& out) {
  if (j.is_null()) return;
  const std::string t = type_of(j, where);
  if (t == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array()) tokenizer_fail(where, "Sequence without \"normalizers\"");
    for (size_t i = 0; i < j["normalizers"].size(); ++i)
      parse_normalizer(j["normalizers"][i], where + "[" + std::to_string(i) + "]", out);
  } else if (t == "NFC") out.push_back({Normalizer::nfc, "", {}});
  else if (t == "NFD") out.push_back({Normalizer::nfd, "", {}});
  else if (t == "NFKC") out.push_back({Normalizer::nfkc, "", {}});
  else if (t == "NFKD") out.push_back({Normalizer::nfkd, "", {}});
  else if (t == "Lowercase") out.push_back({Normalizer::lowercase, "", {}});
  else if (t == "Prepend") out.push_back({Normalizer::prepend, string_or(j, "prepend", "", where), {}});
  else if (t == "Replace") {
    if (!j.contains("pattern")) tokenizer_fail(where, "Replace without \"pattern\"");
    out.push_back({Normalizer::replace, string_or(j, "content", "", where), Pattern::parse(j["pattern"], where)});
  } else if (t == "Strip") {
    Normalizer n{Normalizer::strip, "", {}};
    n.left = bool_or(j, "strip_left", false, where);
    n.right = bool_or(j, "strip_right", false, where);
    out.push_back(std::move(n));
  } else {
    tokenizer_fail(where, "normalizer type '" + t + "' is not supported");
  }
}

std::string icu_apply(const Normalizer& n, const std::string& s, const std::string& where) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  icu::UnicodeString r;
  if (n.type == Normalizer::lowercase) {
    r = u;
    r.toLower(icu::Locale::getRoot());
  } else {
    const icu::Normalizer2* norm = n.type == Normalizer::nfc    ? icu::Normalizer2::getNFCInstance(err)
                                   : n.type == Normalizer::nfd  ? icu::Normalizer2::getNFDInstance(err)
                                   : n.type == Normalizer::nfkc ? icu::Normalizer2::getNFKCInstance(err)
                                                                : icu::Normalizer2::getNFKDInstance(err);
    if (U_SUCCESS(err)) r = norm->normalize(u, err);
  }
  if (U_FAILURE(err)) tokenizer_fail(where, std::string("Unicode normalization failed: ") + u_errorName(err));
  std::string out;
  r.toUTF8String(out);
  return out;
}

// ---- pre-tokenizers ----------------------------------------------------------------------------

enum class Behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

struct PreTokenizer {
  enum Type { split, byte_level, metaspace, digits } type;
  // split
  Pattern pattern;
  Behavior behavior = Behavior::isolated;
  bool invert = false;
  // byte_level
  bool add_prefix_space = false, use_regex = true;
  // metaspace
  std::string replacement;
  enum Prepend { always, first, never } prepend = always;
  bool split_on_replacement = true;
  // digits
  bool individual = false;
};

Behavior parse_behavior(const json& j, const std::string& where) {
  const std::string b = string_or(j, "behavior", "Isolated", where);
  if (b == "Removed") return Behavior::removed;
  if (b == "Isolated") return Behavior::isolated;
  if (b == "MergedWithPrevious") return Behavior::merged_with_previous;
  if (b == "MergedWithNext") return Behavior::merged_with_next;
  if (b == "Contiguous") return Behavior::contiguous;
  tokenizer_fail(where, "unknown split behavior '" + b + "'");
}

void parse_pre_tokenizer(const json& j, const std::string& where, std::vector<PreTokenizer>& out) {
  if (j.is_null()) return;
  const std::string t = type_of(j, where);
  if (t == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array()) tokenizer_fail(where, "Sequence without \"pretokenizers\"");
    for (size_t i = 0; i < j["pretokenizers"].size(); ++i)
      parse_pre_tokenizer(j["pretokenizers"][i], where + "[" + std::to_string(i) + "]", out);
  } else if (t == "Split") {
    PreTokenizer p{PreTokenizer::split};
    if (!j.contains("pattern")) tokenizer_fail(where, "Split without \"pattern\"");
    p.pattern = Pattern::parse(j["pattern"], where);
    p.behavior = parse_behavior(j, where);
    p.invert = bool_or(j, "invert", false, where);
    out.push_back(std::move(p));
  } else if (t == "ByteLevel") {
    PreTokenizer p{PreTokenizer::byte_level};
    p.add_prefix_space = bool_or(j, "add_prefix_space", true, where);
    p.use_regex = bool_or(j, "use_regex", true, where);
    out.push_back(std::move(p));
  } else if (t == "Metaspace") {
    PreTokenizer p{PreTokenizer::metaspace};
    p.replacement = string_or(j, "replacement", std::string(kSpaceSymbol), where);
    if (p.replacement.empty()) tokenizer_fail(where, "empty Metaspace replacement");
    const std::string scheme = string_or(j, "prepend_scheme", bool_or(j, "add_prefix_space", true, where) ? "always" : "never", where);
    if (scheme == "always") p.prepend = PreTokenizer::always;
    else if (scheme == "first") p.prepend = PreTokenizer::first;
    else if (scheme == "never") p.prepend = PreTokenizer::never;
    else tokenizer_fail(where, "unknown Metaspace prepend_scheme '" + scheme + "'");
    p.split_on_replacement = bool_or(j, "split", true, where);
    out.push_back(std::move(p));
  } else if (t == "Digits") {
    PreTokenizer p{PreTokenizer::digits};
    p.individual = bool_or(j, "individual_digits", false, where);
    out.push_back(std::move(p));
  } else {
    tokenizer_fail(where, "pre-tokenizer type '" + t + "' is not supported");
  }
}

// Cuts `s` at the given matches with a split behavior; empty pieces are dropped.
void split_with(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matches, Behavior behavior, bool invert,
                std::vector<std::string>& out) {
  struct Part {
    size_t start, end;
    bool match;
  };
  std::vector<Part> parts;
  size_t prev = 0;
  for (auto [a, b] : matches) {
    if (a > prev) parts.push_back({prev, a, invert});
    parts.push_back({a, b, !invert});
    prev = b;
  }
  if (prev < s.size()) parts.push_back({prev, s.size(), invert});
  std::vector<std::string> pieces;
  bool glue_next = false;  // merged_with_next: the last piece waits for the next one
  for (size_t i = 0; i < parts.size(); ++i) {
    const Part& p = parts[i];
    const std::string_view text = s.substr(p.start, p.end - p.start);
    if (!p.match) {
      if (glue_next) pieces.back() += text, glue_next = false;
      else pieces.emplace_back(text);
      continue;
    }
    switch (behavior) {
      case Behavior::removed: break;
      case Behavior::isolated: pieces.emplace_back(text); break;
      case Behavior::merged_with_previous:
        if (!pieces.empty() && i > 0 && !parts[i - 1].match) pieces.back() += text;
        else pieces.emplace_back(text);
        break;
      case Behavior::merged_with_next:
        if (glue_next) pieces.back() += text;
        else pieces.emplace_back(text);
        glue_next = true;
        break;
      case Behavior::contiguous:
        if (!pieces.empty() && i > 0 && parts[i - 1].match) pieces.back() += text;
        else pieces.emplace_back(text);
        break;
    }
  }
  for (std::string& p : pieces)
    if (!p.empty()) out.push_back(std::move(p));
}

bool is_ascii_digit(char c) { return c >= '0' && c <= '9'; }

// ---- decoders ----------------------------------------------------------------------------------

struct DecoderPlan {
  bool byte_level = false;
  bool byte_fallback = false;  // <0xXX> tokens are bytes
  std::vector<std::pair<std::string, std::string>> replaces;
  size_t strip_start = 0;      // leading spaces removed at the start of the text
};

void parse_decoder(const json& j, const std::string& where, DecoderPlan& plan) {
  if (j.is_null()) return;
  const std::string t = type_of(j, where);
  if (t == "Sequence") {
    if (!j.contains("decoders") || !j["decoders"].is_array()) tokenizer_fail(where, "Sequence without \"decoders\"");
    for (size_t i = 0; i < j["decoders"].size(); ++i) parse_decoder(j["decoders"][i], where + "[" + std::to_string(i) + "]", plan);
  } else if (t == "ByteLevel") {
    plan.byte_level = true;
  } else if (t == "ByteFallback") {
    plan.byte_fallback = true;
  } else if (t == "Fuse") {
    // Concatenation: what decode() does anyway.
  } else if (t == "Replace") {
    if (!j.contains("pattern") || !j["pattern"].is_object() || !j["pattern"].contains("String") || !j["pattern"]["String"].is_string())
      tokenizer_fail(where, "only Replace decoders with a {\"String\": ...} pattern are supported");
    plan.replaces.emplace_back(j["pattern"]["String"].get<std::string>(), string_or(j, "content", "", where));
  } else if (t == "Strip") {
    const std::string content = string_or(j, "content", " ", where);
    if (content != " ") tokenizer_fail(where, "only Strip decoders of spaces are supported");
    if (j.contains("start") && j["start"].is_number_integer() && j["start"].get<int64_t>() > 0)
      plan.strip_start = static_cast<size_t>(j["start"].get<int64_t>());
    if (j.contains("stop") && j["stop"].is_number_integer() && j["stop"].get<int64_t>() > 0)
      tokenizer_fail(where, "Strip decoders that strip the end are not supported");
  } else if (t == "Metaspace") {
    const std::string rep = string_or(j, "replacement", std::string(kSpaceSymbol), where);
    plan.replaces.emplace_back(rep, " ");
    const std::string scheme = string_or(j, "prepend_scheme", bool_or(j, "add_prefix_space", true, where) ? "always" : "never", where);
    if (scheme != "never") plan.strip_start = std::max<size_t>(plan.strip_start, 1);
  } else {
    tokenizer_fail(where, "decoder type '" + t + "' is not supported");
  }
}

std::optional<uint8_t> byte_fallback_value(std::string_view s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>' || hex(s[3]) < 0 || hex(s[4]) < 0) return std::nullopt;
  return static_cast<uint8_t>(hex(s[3]) * 16 + hex(s[4]));
}

// Does the post-processor put a special token before the text (Llama 3's TemplateProcessing)?
bool post_processor_adds_prefix(const json& j) {
  if (!j.is_object()) return false;
  const std::string t = j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
  if (t == "Sequence" && j.contains("processors") && j["processors"].is_array()) {
    for (const json& p : j["processors"])
      if (post_processor_adds_prefix(p)) return true;
    return false;
  }
  if (t == "TemplateProcessing" && j.contains("single") && j["single"].is_array() && !j["single"].empty())
    return j["single"][0].is_object() && j["single"][0].contains("SpecialToken");
  return false;
}

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(std::vector<std::string> vocab, const std::vector<std::string>& merge_pairs, const json& options,
               const TokenizerSetup& setup)
      : Tokenizer(TokenizerKind::bpe, setup) {
    const std::string& w = where();
    if (vocab.empty()) tokenizer_fail(w, "empty vocabulary");
    if (!options.is_object()) tokenizer_fail(w, "options is not an object");
    tokens_.resize(vocab.size());
    for (size_t i = 0; i < vocab.size(); ++i) {
      if (!utf8_valid(vocab[i])) tokenizer_fail(w, "token " + std::to_string(i) + " is not valid UTF-8");
      by_text_.emplace(vocab[i], static_cast<int32_t>(i));  // first id wins
    }

    // The BPE model's options (pq-quantize keeps them under "model"; accept them at the top too).
    const json& model = options.contains("model") && options["model"].is_object() ? options["model"] : options;
    const std::string mw = w + ": options.model";
    if (model.contains("type") && !model["type"].is_null() && string_or(model, "type", "", mw) != "BPE")
      tokenizer_fail(mw, "model type '" + model["type"].dump() + "' is not BPE");
    byte_fallback_ = bool_or(model, "byte_fallback", false, mw);
    ignore_merges_ = bool_or(model, "ignore_merges", false, mw);
    fuse_unk_ = bool_or(model, "fuse_unk", false, mw);
    if (!string_or(model, "continuing_subword_prefix", "", mw).empty() || !string_or(model, "end_of_word_suffix", "", mw).empty())
      tokenizer_fail(mw, "continuing_subword_prefix / end_of_word_suffix are not supported");
    if (const std::string unk = string_or(model, "unk_token", "", mw); !unk.empty()) {
      auto it = by_text_.find(unk);
      if (it == by_text_.end()) tokenizer_fail(mw, "unk_token '" + unk + "' is not in the vocabulary");
      unk_ = it->second;
    }
    if (byte_fallback_) {
      byte_id_.fill(-1);
      for (int b = 0; b < 256; ++b) {
        static const char* hex = "0123456789ABCDEF";
        const std::string name = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
        if (auto it = by_text_.find(name); it != by_text_.end()) byte_id_[static_cast<size_t>(b)] = it->second;
      }
    }

    // Merges.
    if (merge_pairs.size() % 2 != 0) tokenizer_fail(w, "merges hold pairs: odd string count " + std::to_string(merge_pairs.size()));
    merges_.reserve(merge_pairs.size() / 2);
    for (size_t i = 0; i + 1 < merge_pairs.size(); i += 2) {
      const std::string& l = merge_pairs[i];
      const std::string& r = merge_pairs[i + 1];
      const std::string mwh = w + ": merge " + std::to_string(i / 2) + " ('" + l + "' '" + r + "')";
      const auto li = by_text_.find(l), ri = by_text_.find(r), mi = by_text_.find(l + r);
      if (li == by_text_.end()) tokenizer_fail(mwh, "'" + l + "' is not in the vocabulary");
      if (ri == by_text_.end()) tokenizer_fail(mwh, "'" + r + "' is not in the vocabulary");
      if (mi == by_text_.end()) tokenizer_fail(mwh, "the merged token '" + l + r + "' is not in the vocabulary");
      merges_.emplace(pair_key(li->second, ri->second), Merge{static_cast<int32_t>(i / 2), mi->second});  // first rank wins
    }

    // Pipeline.
    if (options.contains("normalizer")) parse_normalizer(options["normalizer"], w + ": normalizer", normalizers_);
    if (options.contains("pre_tokenizer")) {
      parse_pre_tokenizer(options["pre_tokenizer"], w + ": pre_tokenizer", pre_);
    } else {
      parse_pre_tokenizer(json{{"type", "Sequence"},
                               {"pretokenizers",
                                {{{"type", "Split"}, {"pattern", {{"Regex", std::string(kLlama3SplitPattern)}}}, {"behavior", "Isolated"}},
                                 {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}},
                          w + ": default pre_tokenizer", pre_);
    }
    const bool byte_level_pre =
        std::any_of(pre_.begin(), pre_.end(), [](const PreTokenizer& p) { return p.type == PreTokenizer::byte_level; });
    DecoderPlan plan;
    if (options.contains("decoder") && !options["decoder"].is_null()) parse_decoder(options["decoder"], w + ": decoder", plan);
    else plan.byte_level = byte_level_pre;
    if (plan.byte_level && (plan.byte_fallback || !plan.replaces.empty()))
      tokenizer_fail(w + ": decoder", "ByteLevel mixed with SentencePiece-style decoders is not supported");
    plan.byte_fallback = plan.byte_fallback || byte_fallback_;
    strip_leading_space_ = plan.strip_start > 0;

    for (size_t i = 0; i < vocab.size(); ++i) {
      Token& t = tokens_[i];
      t.piece = std::move(vocab[i]);
      if (plan.byte_level) {
        // A token whose characters are not all byte-level characters decodes to itself.
        t.bytes = byte_level_decode(t.piece).value_or(t.piece);
      } else if (auto b = plan.byte_fallback ? byte_fallback_value(t.piece) : std::nullopt) {
        t.bytes = std::string(1, static_cast<char>(*b));
      } else {
        t.bytes = t.piece;
        for (const auto& [from, to] : plan.replaces) t.bytes = replace_all(t.bytes, from, to);
      }
    }
    if (unk_ >= 0) tokens_[static_cast<size_t>(unk_)].special = true;
    finish(setup, -1, {}, {});
    adds_bos_ = options.contains("post_processor") ? post_processor_adds_prefix(options["post_processor"]) && bos() >= 0
                                                   : bos() >= 0;
  }

 protected:
  void encode_text(std::string_view text, bool first, std::vector<int32_t>& out) const override {
    std::string normalized(text);
    for (const Normalizer& n : normalizers_) normalized = normalize(n, normalized);
    std::vector<std::string> pieces;
    if (!normalized.empty()) pieces.push_back(std::move(normalized));
    for (const PreTokenizer& p : pre_) pieces = pre_tokenize(p, pieces, first);
    for (const std::string& piece : pieces) encode_word(piece, out);
  }

 private:
  struct Merge {
    int32_t rank, merged;
  };
  static uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

  std::string normalize(const Normalizer& n, const std::string& s) const {
    switch (n.type) {
      case Normalizer::prepend: return s.empty() ? s : n.text + s;
      case Normalizer::replace: {
        std::string out;
        size_t prev = 0;
        for (auto [a, b] : n.pattern.find_all(s, where())) {
          out.append(s, prev, a - prev);
          out += n.text;
          prev = b;
        }
        out.append(s, prev, std::string::npos);
        return out;
      }
      case Normalizer::strip: {
        // Unicode whitespace is rare in practice here; strip ASCII whitespace.
        size_t b = 0, e = s.size();
        if (n.left) while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
        if (n.right) while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
        return s.substr(b, e - b);
      }
      default: return icu_apply(n, s, where());
    }
  }

  std::vector<std::string> pre_tokenize(const PreTokenizer& p, const std::vector<std::string>& in, bool first) const {
    std::vector<std::string> out;
    for (size_t k = 0; k < in.size(); ++k) {
      const std::string& s = in[k];
      switch (p.type) {
        case PreTokenizer::split: split_with(s, p.pattern.find_all(s, where()), p.behavior, p.invert, out); break;
        case PreTokenizer::byte_level: {
          std::string t = p.add_prefix_space && (s.empty() || s[0] != ' ') ? " " + s : s;
          std::vector<std::string> parts;
          if (p.use_regex) split_with(t, gpt2_regex().find_all(t, where()), Behavior::isolated, false, parts);
          else parts.push_back(std::move(t));
          for (const std::string& part : parts) out.push_back(byte_level_encode(part));
          break;
        }
        case PreTokenizer::metaspace: {
          std::string t = replace_all(s, " ", p.replacement);
          const bool prepend = p.prepend == PreTokenizer::always || (p.prepend == PreTokenizer::first && first && k == 0);
          if (prepend && t.compare(0, p.replacement.size(), p.replacement) != 0) t = p.replacement + t;
          if (p.split_on_replacement) {
            std::vector<std::pair<size_t, size_t>> m;
            for (size_t pos = 0; (pos = t.find(p.replacement, pos)) != std::string::npos; pos += p.replacement.size())
              m.emplace_back(pos, pos + p.replacement.size());
            split_with(t, m, Behavior::merged_with_next, false, out);
          } else {
            out.push_back(std::move(t));
          }
          break;
        }
        case PreTokenizer::digits: {
          std::vector<std::pair<size_t, size_t>> m;
          for (size_t i = 0; i < s.size();) {
            if (!is_ascii_digit(s[i])) {
              ++i;
              continue;
            }
            size_t j = i + 1;
            if (!p.individual) while (j < s.size() && is_ascii_digit(s[j])) ++j;
            m.emplace_back(i, j);
            i = j;
          }
          split_with(s, m, p.individual ? Behavior::isolated : Behavior::contiguous, false, out);
          break;
        }
      }
    }
    return out;
  }

  void encode_word(const std::string& word, std::vector<int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges_) {
      if (auto it = by_text_.find(word); it != by_text_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    std::vector<int32_t> sym;
    for (size_t pos = 0; pos < word.size();) {
      const size_t len = utf8_step(word, pos).length;
      const std::string ch = word.substr(pos, len);
      pos += len;
      if (auto it = by_text_.find(ch); it != by_text_.end()) {
        sym.push_back(it->second);
        continue;
      }
      bool done = false;
      if (byte_fallback_) {
        done = true;
        for (char c : ch) done = done && byte_id_[static_cast<uint8_t>(c)] >= 0;
        if (done)
          for (char c : ch) sym.push_back(byte_id_[static_cast<uint8_t>(c)]);
      }
      if (done) continue;
      if (unk_ < 0)
        tokenizer_fail(where(), "the character '" + ch + "' (in '" + word +
                                    "') is not in the vocabulary and the tokenizer has neither byte fallback nor an unk token");
      if (!(fuse_unk_ && !sym.empty() && sym.back() == unk_)) sym.push_back(unk_);
    }
    merge_pairs(sym, [&](int32_t x, int32_t y) -> std::optional<PairMerge> {
      auto it = merges_.find(pair_key(x, y));
      if (it == merges_.end()) return std::nullopt;
      return PairMerge{static_cast<double>(it->second.rank), it->second.merged};
    }, out);
  }

  std::unordered_map<std::string, int32_t> by_text_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<Normalizer> normalizers_;
  std::vector<PreTokenizer> pre_;
  bool byte_fallback_ = false, ignore_merges_ = false, fuse_unk_ = false;
  int32_t unk_ = -1;
  std::array<int32_t, 256> byte_id_{};
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe(std::vector<std::string> vocab, const std::vector<std::string>& merge_pairs,
                                    const json& options, const TokenizerSetup& setup) {
  return std::make_unique<BpeTokenizer>(std::move(vocab), merge_pairs, options, setup);
}

}  // namespace pqvk::tokenize
