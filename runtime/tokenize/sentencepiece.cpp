// SentencePiece models, run by libsentencepiece from the serialized ModelProto stored in the .pqm.
#include <sentencepiece_processor.h>

#include "tokenize/tokenizer.h"
#include "tokenize/utf8.h"

namespace pqvk::tokenize {

namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 '▁', SentencePiece's space

std::string replace_space_symbol(std::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      out += ' ';
      i += kSpaceSymbol.size();
    } else {
      out += piece[i++];
    }
  }
  return out;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::string_view model_proto, const TokenizerSetup& setup)
      : Tokenizer(TokenizerKind::sentencepiece, setup) {
    const auto status = sp_.LoadFromSerializedProto(model_proto);
    if (!status.ok()) tokenizer_fail(where(), "not a valid SentencePiece model: " + status.ToString());
    const int n = sp_.GetPieceSize();
    if (n <= 0) tokenizer_fail(where(), "empty vocabulary");
    tokens_.resize(static_cast<size_t>(n));
    std::vector<Whole> control;
    for (int id = 0; id < n; ++id) {
      Token& t = tokens_[static_cast<size_t>(id)];
      t.piece = sp_.IdToPiece(id);
      if (sp_.IsByte(id)) {
        // "<0xXX>"
        const std::string& p = t.piece;
        const int hi = p.size() == 6 ? hex_digit(p[3]) : -1, lo = p.size() == 6 ? hex_digit(p[4]) : -1;
        if (p.compare(0, 3, "<0x") != 0 || p[5] != '>' || hi < 0 || lo < 0)
          tokenizer_fail(where(), "byte piece " + std::to_string(id) + " '" + p + "' is not of the form <0xXX>");
        t.bytes = std::string(1, static_cast<char>(hi * 16 + lo));
      } else if (sp_.IsControl(id) || sp_.IsUnknown(id) || sp_.IsUnused(id)) {
        t.bytes = t.piece;
        t.special = true;
        if (sp_.IsControl(id) && !t.piece.empty()) control.push_back({t.piece, id, true});
      } else {
        t.bytes = replace_space_symbol(t.piece);
      }
    }
    // The dummy prefix: whether encoding "x" yields a leading space (normalizer_spec's
    // add_dummy_prefix, which the library does not expose).
    std::vector<int> probe;
    if (sp_.Encode("x", &probe).ok()) {
      std::string text;
      for (int id : probe)
        if (id >= 0 && id < n) text += tokens_[static_cast<size_t>(id)].bytes;
      strip_leading_space_ = !text.empty() && text[0] == ' ';
    }
    std::vector<int32_t> eos;
    if (sp_.eos_id() >= 0) eos.push_back(sp_.eos_id());
    finish(setup, sp_.bos_id(), std::move(eos), std::move(control));
    adds_bos_ = bos() >= 0;
  }

 protected:
  void encode_text(std::string_view text, bool /*first*/, std::vector<int32_t>& out) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(text, &ids);
    if (!status.ok()) tokenizer_fail(where(), "SentencePiece could not encode the text: " + status.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece(std::string_view model_proto, const TokenizerSetup& setup) {
  return std::make_unique<SentencePieceTokenizer>(model_proto, setup);
}

}  // namespace pqvk::tokenize
