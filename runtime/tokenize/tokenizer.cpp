#include "tokenize/tokenizer.h"

#include <algorithm>
#include <set>

#include "model/error.h"
#include "model/pqm.h"
#include "tokenize/utf8.h"

namespace pqvk::tokenize {

void tokenizer_fail(const std::string& where, const std::string& what) { throw TokenizerError(where + ": " + what); }

const char* kind_name(TokenizerKind k) {
  switch (k) {
    case TokenizerKind::sentencepiece: return "sentencepiece";
    case TokenizerKind::bpe: return "bpe";
    case TokenizerKind::llama2c: return "llama2c";
  }
  return "?";
}

Tokenizer::Tokenizer(TokenizerKind kind, const TokenizerSetup& setup) : kind_(kind), where_(setup.where) {}
Tokenizer::~Tokenizer() = default;

void Tokenizer::finish(const TokenizerSetup& setup, int32_t default_bos, std::vector<int32_t> default_eos,
                       std::vector<Whole> own_whole_tokens) {
  const std::string& w = where_;
  if (tokens_.empty()) tokenizer_fail(w, "empty vocabulary");
  constexpr int64_t kMaxVocab = int64_t{1} << 24;
  if (setup.vocab_size < 0 || setup.vocab_size > kMaxVocab)
    tokenizer_fail(w, "vocab_size " + std::to_string(setup.vocab_size) + " is out of range");
  if (static_cast<int64_t>(tokens_.size()) > kMaxVocab)
    tokenizer_fail(w, std::to_string(tokens_.size()) + " tokens, more than " + std::to_string(kMaxVocab));
  if (setup.vocab_size > 0 && static_cast<int64_t>(tokens_.size()) > setup.vocab_size)
    tokenizer_fail(w, "the tokenizer has " + std::to_string(tokens_.size()) + " tokens, more than the model's vocab_size " +
                          std::to_string(setup.vocab_size));
  const size_t own = tokens_.size();
  size_t n = std::max<size_t>(own, static_cast<size_t>(setup.vocab_size));
  for (const model::AddedToken& a : setup.added_tokens) {
    if (a.id < 0 || a.id >= kMaxVocab || (setup.vocab_size > 0 && a.id >= setup.vocab_size))
      tokenizer_fail(w, "added token '" + a.content + "' has id " + std::to_string(a.id) + ", outside the vocabulary");
    n = std::max(n, static_cast<size_t>(a.id) + 1);
  }
  // Ids past the tokenizer's own: padding rows of the embedding unless an added token names them.
  tokens_.resize(n);
  for (size_t i = own; i < n; ++i) tokens_[i].special = true;

  std::vector<Whole> whole = std::move(own_whole_tokens);
  std::set<int64_t> seen;
  for (const model::AddedToken& a : setup.added_tokens) {
    const std::string aw = w + ": added token " + std::to_string(a.id) + " '" + a.content + "'";
    if (!seen.insert(a.id).second) tokenizer_fail(aw, "the id is given twice");
    if (a.content.empty()) tokenizer_fail(aw, "empty text");
    if (!utf8_valid(a.content)) tokenizer_fail(aw, "the text is not valid UTF-8");
    Token& t = tokens_[static_cast<size_t>(a.id)];
    if (static_cast<size_t>(a.id) >= own || t.piece.empty()) t.piece = a.content;
    t.bytes = a.content;
    t.special = a.special;
    // An added token replaces a control token of the same text.
    std::erase_if(whole, [&](const Whole& x) { return x.text == a.content; });
    whole.push_back({a.content, static_cast<int32_t>(a.id), a.special});
  }
  // Longest first, then lowest id, so the first match found is the longest.
  std::stable_sort(whole.begin(), whole.end(), [](const Whole& a, const Whole& b) {
    return a.text.size() != b.text.size() ? a.text.size() > b.text.size() : a.id < b.id;
  });
  whole.erase(std::unique(whole.begin(), whole.end(), [](const Whole& a, const Whole& b) { return a.text == b.text; }),
              whole.end());
  whole_ = std::move(whole);
  for (size_t i = 0; i < whole_.size(); ++i)
    whole_by_first_[static_cast<uint8_t>(whole_[i].text[0])].push_back(static_cast<uint32_t>(i));

  by_piece_.reserve(tokens_.size());
  for (size_t i = 0; i < tokens_.size(); ++i)
    if (!tokens_[i].piece.empty()) by_piece_.emplace(tokens_[i].piece, static_cast<int32_t>(i));  // first id wins

  const int32_t vocab = vocab_size();
  bos_ = setup.bos.value_or(default_bos);
  if (bos_ < -1 || bos_ >= vocab) tokenizer_fail(w, "BOS id " + std::to_string(bos_) + " is not a token id");
  eos_ = setup.eos.value_or(std::move(default_eos));
  for (int32_t e : eos_)
    if (e < 0 || e >= vocab) tokenizer_fail(w, "EOS id " + std::to_string(e) + " is not a token id");
  if (bos_ >= 0) tokens_[static_cast<size_t>(bos_)].special = true;
  for (int32_t e : eos_) tokens_[static_cast<size_t>(e)].special = true;
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    tokenizer_fail(where_, "token id " + std::to_string(id) + " is out of range (vocabulary of " +
                               std::to_string(vocab_size()) + ")");
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  check_id(id);
  return tokens_[static_cast<size_t>(id)].bytes;
}

const std::string& Tokenizer::piece(int32_t id) const {
  check_id(id);
  return tokens_[static_cast<size_t>(id)].piece;
}

bool Tokenizer::is_special(int32_t id) const {
  check_id(id);
  return tokens_[static_cast<size_t>(id)].special;
}

bool Tokenizer::is_eos(int32_t id) const { return std::find(eos_.begin(), eos_.end(), id) != eos_.end(); }

std::optional<int32_t> Tokenizer::token_id(std::string_view piece) const {
  for (const Whole& x : whole_)
    if (x.text == piece) return x.id;
  auto it = by_piece_.find(std::string(piece));
  if (it == by_piece_.end()) return std::nullopt;
  return it->second;
}

const Tokenizer::Whole* Tokenizer::match_whole(std::string_view text, size_t pos, size_t end, bool parse_special) const {
  for (uint32_t i : whole_by_first_[static_cast<uint8_t>(text[pos])]) {
    const Whole& x = whole_[i];
    if (x.special && !parse_special) continue;
    if (x.text.size() <= end - pos && text.compare(pos, x.text.size(), x.text) == 0) return &x;
  }
  return nullptr;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  const TextPart part{text, parse_special};
  return encode(std::span<const TextPart>(&part, 1), add_bos);
}

std::vector<int32_t> Tokenizer::encode(std::span<const TextPart> parts, bool add_bos) const {
  std::string text;
  std::vector<size_t> part_end;
  for (const TextPart& p : parts) {
    text += p.text;
    part_end.push_back(text.size());
  }
  if (const size_t bad = utf8_invalid_offset(text); bad != std::string_view::npos) {
    static const char* hex = "0123456789ABCDEF";
    const auto b = static_cast<uint8_t>(text[bad]);
    tokenizer_fail(where_, std::string("cannot encode text that is not valid UTF-8 (byte 0x") + hex[b >> 4] + hex[b & 15] +
                               " at offset " + std::to_string(bad) + ")");
  }
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  const std::string_view all = text;
  size_t start = 0, pos = 0, part = 0;
  while (pos < all.size()) {
    while (pos >= part_end[part]) ++part;
    const Whole* w = match_whole(all, pos, part_end[part], parts[part].parse_special);
    if (!w) {
      ++pos;
      continue;
    }
    if (pos > start) encode_text(all.substr(start, pos - start), start == 0, out);
    out.push_back(w->id);
    pos += w->text.size();
    start = pos;
  }
  if (start < all.size()) encode_text(all.substr(start), start == 0, out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  TextStream s(*this, {.print_special = !skip_special, .sequence_start = true});
  std::string out;
  for (int32_t id : ids) out += s.push(id);
  out += s.flush();
  return out;
}

// ---- from a .pqm file ----------------------------------------------------------------------------

std::unique_ptr<Tokenizer> Tokenizer::from_pqm(const model::PqmFile& file) {
  const model::TokenizerInfo& info = file.tokenizer();
  const model::ModelConfig& cfg = file.config();
  TokenizerSetup setup;
  setup.where = file.path() + ": tokenizer";
  setup.bos = static_cast<int32_t>(cfg.bos_id);
  std::vector<int32_t> eos;
  for (int64_t e : cfg.eos_ids) eos.push_back(static_cast<int32_t>(e));
  setup.eos = std::move(eos);
  setup.added_tokens = info.added_tokens;
  setup.vocab_size = cfg.vocab_size;
  try {
    if (info.kind == "sentencepiece") {
      const auto bytes = file.bytes(file.tensor("tokenizer.model"));
      return make_sentencepiece(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), setup);
    }
    if (info.kind == "llama2c") {
      std::vector<std::string> vocab = file.read_strings(file.tensor("tokenizer.vocab"));
      const std::vector<float> scores = file.read_floats(file.tensor("tokenizer.scores"));
      return make_llama2c(std::move(vocab), scores, setup);
    }
    if (info.kind == "bpe") {
      std::vector<std::string> vocab = file.read_strings(file.tensor("tokenizer.vocab"));
      const std::vector<std::string> merges = file.read_strings(file.tensor("tokenizer.merges"));
      return make_bpe(std::move(vocab), merges, info.options, setup);
    }
  } catch (const ModelError& e) {
    tokenizer_fail(setup.where, e.what());
  }
  tokenizer_fail(file.path(), "the model has no tokenizer (kind '" + info.kind + "')");
}

// ---- TextStream ----------------------------------------------------------------------------------

TextStream::TextStream(const Tokenizer& tok, Options options)
    : tok_(&tok), options_(options), strip_next_(options.sequence_start) {}

std::string TextStream::take_complete() {
  const size_t keep = utf8_incomplete_tail(pending_);
  std::string out = utf8_sanitize(std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string TextStream::push(int32_t id) {
  const std::string& bytes = tok_->token_bytes(id);  // checks the id
  if (tok_->is_special(id)) {
    // Nothing can complete a character across a special token.
    std::string out = flush();
    if (options_.print_special) out += utf8_sanitize(bytes);
    strip_next_ = true;
    return out;
  }
  std::string_view b = bytes;
  if (strip_next_ && tok_->strips_leading_space() && !b.empty() && b[0] == ' ') b.remove_prefix(1);
  strip_next_ = false;
  pending_ += b;
  return take_complete();
}

std::string TextStream::flush() {
  std::string out = utf8_sanitize(pending_);
  pending_.clear();
  return out;
}

}  // namespace pqvk::tokenize
