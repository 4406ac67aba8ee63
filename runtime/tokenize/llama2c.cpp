// llama2.c's tokenizer: a vocabulary with one merge score per token. Encoding prepends a space
// (SentencePiece's dummy prefix), starts from one token per UTF-8 character (characters not in
// the vocabulary become their bytes' <0xXX> tokens), then repeatedly merges the adjacent pair
// whose concatenation is a token of the highest score (the leftmost such pair on ties) until no
// adjacent pair forms a token.
#include <cmath>
#include <queue>
#include <unordered_map>

#include "tokenize/pair_merge.h"
#include "tokenize/tokenizer.h"
#include "tokenize/utf8.h"

namespace pqvk::tokenize {

namespace {

std::string trim(std::string_view s) {
  const size_t b = s.find_first_not_of(" \n");
  if (b == std::string_view::npos) return "";
  const size_t e = s.find_last_not_of(" \n");
  return std::string(s.substr(b, e - b + 1));
}

std::optional<uint8_t> parse_byte_token(std::string_view s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return std::nullopt;
  const int hi = hex(s[3]), lo = hex(s[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<uint8_t>(hi * 16 + lo);
}

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> vocab, std::vector<float> scores, const TokenizerSetup& setup)
      : Tokenizer(TokenizerKind::llama2c, setup), scores_(std::move(scores)) {
    if (vocab.empty()) tokenizer_fail(where(), "empty vocabulary");
    if (scores_.size() != vocab.size())
      tokenizer_fail(where(), std::to_string(vocab.size()) + " tokens but " + std::to_string(scores_.size()) + " scores");
    byte_id_.fill(-1);
    tokens_.resize(vocab.size());
    std::vector<Whole> control;
    int32_t bos = -1;
    std::vector<int32_t> eos;
    for (size_t i = 0; i < vocab.size(); ++i) {
      const auto id = static_cast<int32_t>(i);
      if (!std::isfinite(scores_[i]))
        tokenizer_fail(where(), "token " + std::to_string(i) + " '" + utf8_sanitize(vocab[i]) + "' has a score that is not finite");
      Token& t = tokens_[i];
      t.piece = vocab[i];
      t.bytes = vocab[i];
      if (auto b = parse_byte_token(vocab[i])) {
        t.bytes = std::string(1, static_cast<char>(*b));
        if (byte_id_[*b] < 0) byte_id_[*b] = id;
      } else if (i < 3) {
        // llama2.c's <unk>, "\n<s>\n", "\n</s>\n".
        const std::string name = trim(vocab[i]);
        if (name == "<unk>" || name == "<s>" || name == "</s>") {
          t.bytes = name;
          t.special = true;
          if (name == "<s>") bos = id, control.push_back({name, id, true});
          if (name == "</s>") eos.push_back(id), control.push_back({name, id, true});
        }
      }
      if (!t.special) by_text_.emplace(vocab[i], id);  // first id wins
    }
    strip_leading_space_ = true;
    finish(setup, bos, std::move(eos), std::move(control));
    adds_bos_ = this->bos() >= 0;
  }

 protected:
  void encode_text(std::string_view text, bool /*first*/, std::vector<int32_t>& out) const override {
    if (text.empty()) return;
    std::vector<int32_t> sym;
    const std::string with_prefix = " " + std::string(text);  // the dummy prefix
    for (size_t pos = 0; pos < with_prefix.size();) {
      const size_t len = utf8_step(with_prefix, pos).length;  // valid: checked by encode()
      const std::string ch = with_prefix.substr(pos, len);
      if (auto it = by_text_.find(ch); it != by_text_.end()) {
        sym.push_back(it->second);
      } else {
        for (char c : ch) {
          const int32_t b = byte_id_[static_cast<uint8_t>(c)];
          if (b < 0)
            tokenizer_fail(where(), "the character '" + ch + "' is not in the vocabulary and there is no byte token <0x" +
                                        "0123456789ABCDEF"[static_cast<uint8_t>(c) >> 4] +
                                        "0123456789ABCDEF"[static_cast<uint8_t>(c) & 15] + ">");
          sym.push_back(b);
        }
      }
      pos += len;
    }
    // The merge whose token has the highest score first (leftmost among equals).
    merge_pairs(sym, [&](int32_t x, int32_t y) -> std::optional<PairMerge> {
      auto it = by_text_.find(tokens_[static_cast<size_t>(x)].piece + tokens_[static_cast<size_t>(y)].piece);
      if (it == by_text_.end()) return std::nullopt;
      return PairMerge{-static_cast<double>(scores_[static_cast<size_t>(it->second)]), it->second};
    }, out);
  }

 private:
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> by_text_;
  std::array<int32_t, 256> byte_id_{};
};

}  // namespace

std::unique_ptr<Tokenizer> make_llama2c(std::vector<std::string> vocab, std::vector<float> scores,
                                        const TokenizerSetup& setup) {
  return std::make_unique<Llama2cTokenizer>(std::move(vocab), std::move(scores), setup);
}

}  // namespace pqvk::tokenize
