// Tokenizers of the models a .pqm file holds (docs/pqm-format.md, "tokenizer"), behind one
// interface, and a streaming detokenizer.
//
//   Tokenizer::from_pqm(file)   the tokenizer stored in a .pqm: SentencePiece (the model bytes,
//                               run by libsentencepiece), HuggingFace BPE (vocab + merges + the
//                               tokenizer.json pipeline: byte-level for Llama 3 / Qwen2 / Qwen3),
//                               or llama2.c's tokenizer (vocab + scores, greedy merges by score)
//   make_sentencepiece(), make_bpe(), make_llama2c()   the same from parts (tests, tools)
//   TextStream                  ids -> text one id at a time, emitting only complete UTF-8
//
// Added tokens (TokenizerInfo::added_tokens) and a tokenizer's own control tokens (<s>, </s>) are
// matched in the text first, whole and longest first, and never split; the text between them is
// encoded by the tokenizer. With parse_special = false only the non-special added tokens are
// matched and "<|im_end|>" in user text is encoded as ordinary characters.
//
// SentencePiece's dummy prefix: SentencePiece and llama2.c prepend a space to every run of text
// they encode (the text at the start and after each special token), so decoding drops one
// leading space there (strips_leading_space()): decode(encode(s)) == s.
//
// A Tokenizer does not change after construction: encode() and decode() may run concurrently.
//
// Every failure on bad input (a malformed vocabulary, an id out of range, text that is not
// UTF-8) is a TokenizerError whose message starts with the source (the .pqm path).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "tokenize/split_patterns.h"

namespace pqvk::model {
class PqmFile;
}

namespace pqvk::tokenize {

class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws TokenizerError("<where>: <what>").
[[noreturn]] void tokenizer_fail(const std::string& where, const std::string& what);

enum class TokenizerKind { sentencepiece, bpe, llama2c };
const char* kind_name(TokenizerKind k);

// What a tokenizer takes from the model besides its own files.
struct TokenizerSetup {
  std::string where = "tokenizer";   // names the source in errors, e.g. the .pqm path
  // BOS / EOS ids; nullopt: the tokenizer's own (SentencePiece's bos_id/eos_id; llama2.c 1 / 2;
  // BPE none). -1 / an empty list: none.
  std::optional<int32_t> bos;
  std::optional<std::vector<int32_t>> eos;
  std::vector<model::AddedToken> added_tokens;
  // The model's vocabulary (embedding rows); it may exceed the tokenizer's own count (padding
  // rows, added tokens). 0: the tokenizer's own count.
  int64_t vocab_size = 0;
};

class Tokenizer {
 public:
  virtual ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // The tokenizer of a .pqm file, with the model's BOS / EOS ids and vocab_size. A file whose
  // tokenizer kind is "none" is an error.
  static std::unique_ptr<Tokenizer> from_pqm(const model::PqmFile& file);

  TokenizerKind kind() const { return kind_; }
  const std::string& where() const { return where_; }

  // Text (UTF-8, checked) to ids. add_bos: start with bos() when there is one.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special = true) const;
  // The concatenation of parts encoded as one text, special tokens matched only inside parts
  // that allow it: a chat prompt's own markup does, the messages' content does not (a user
  // typing "<|im_end|>" gets characters, not the token). See chat.h's encode_chat().
  struct TextPart {
    std::string_view text;
    bool parse_special;
  };
  std::vector<int32_t> encode(std::span<const TextPart> parts, bool add_bos) const;
  // Ids to text: what a TextStream(sequence_start = true) would print, always valid UTF-8.
  // skip_special: leave out special tokens (BOS, EOS, <|im_end|>, ...).
  std::string decode(std::span<const int32_t> ids, bool skip_special = true) const;

  // The raw bytes of a token: SentencePiece's "▁" as a space, byte-fallback <0xXX> as the
  // byte, byte-level BPE characters mapped back to bytes; special tokens as their text. May be
  // part of a UTF-8 sequence.
  const std::string& token_bytes(int32_t id) const;
  // The token as the vocabulary stores it ("▁Hello", "Ġhello", "<0x0A>"); "" for ids the
  // tokenizer does not define (padding rows of the model's vocabulary).
  const std::string& piece(int32_t id) const;
  // The id of a token by its stored string or, for added and special tokens, its text.
  std::optional<int32_t> token_id(std::string_view piece) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos() const { return bos_; }  // -1: none
  const std::vector<int32_t>& eos_ids() const { return eos_; }
  bool is_eos(int32_t id) const;
  // Control and added special tokens, unknown / unused pieces and ids the tokenizer does not define.
  bool is_special(int32_t id) const;
  // Whether the model expects BOS at the start of a sequence (SentencePiece, llama2.c: when it
  // has one; BPE: when tokenizer.json's post-processor adds it, as Llama 3's does).
  bool adds_bos() const { return adds_bos_; }
  // The dummy-prefix rule (see above).
  bool strips_leading_space() const { return strip_leading_space_; }
  // Throws a TokenizerError unless 0 <= id < vocab_size().
  void check_id(int32_t id) const;

 protected:
  Tokenizer(TokenizerKind kind, const TokenizerSetup& setup);

  struct Token {
    std::string piece;  // as stored
    std::string bytes;  // what it decodes to
    bool special = false;
  };
  // A token matched in the text before encoding (added tokens, control tokens).
  struct Whole {
    std::string text;
    int32_t id;
    bool special;
  };

  // Subclasses fill tokens_ (the tokenizer's own count), then call this once: it extends the
  // table to the model's vocab_size, applies the added tokens, checks and sets BOS / EOS.
  void finish(const TokenizerSetup& setup, int32_t default_bos, std::vector<int32_t> default_eos,
              std::vector<Whole> own_whole_tokens);
  // Encodes one run of text that holds no added token. `text` is valid UTF-8; `first`: the run
  // starts the text passed to encode() (no added token before it).
  virtual void encode_text(std::string_view text, bool first, std::vector<int32_t>& out) const = 0;

  std::vector<Token> tokens_;
  bool strip_leading_space_ = false;
  bool adds_bos_ = true;

 private:
  // The longest whole token starting at text[pos] and ending by `end` (special ones only when allowed).
  const Whole* match_whole(std::string_view text, size_t pos, size_t end, bool parse_special) const;

  TokenizerKind kind_;
  std::string where_;
  int32_t bos_ = -1;
  std::vector<int32_t> eos_;
  std::vector<Whole> whole_;                           // longest first
  std::array<std::vector<uint32_t>, 256> whole_by_first_{};  // indices into whole_ by first byte
  std::unordered_map<std::string, int32_t> by_piece_;
};

// ---- the kinds, from their parts ---------------------------------------------------------------

// A serialized SentencePiece ModelProto (the bytes of a tokenizer.model file).
std::unique_ptr<Tokenizer> make_sentencepiece(std::string_view model_proto, const TokenizerSetup& setup);

// llama2.c's tokenizer: one string per id (spaces as ' ', bytes as "<0xXX>", BOS/EOS as
// "\n<s>\n" / "\n</s>\n") and one merge score per id.
std::unique_ptr<Tokenizer> make_llama2c(std::vector<std::string> vocab, std::vector<float> scores,
                                        const TokenizerSetup& setup);

// HuggingFace BPE: token strings by id, merges as consecutive pairs (left, right) in rank order,
// and TokenizerInfo::options as pq-quantize stores them: "normalizer", "pre_tokenizer",
// "decoder", "post_processor" (tokenizer.json's sections, verbatim) and "model" (byte_fallback,
// ignore_merges, unk_token). Supported: normalizers NFC/NFD/NFKC/NFKD/Lowercase/Prepend/
// Replace/Sequence; pre-tokenizers Split/ByteLevel/Metaspace/Digits/Sequence; decoders
// ByteLevel and the SentencePiece-style ones (Replace "▁", ByteFallback, Fuse, Strip, Metaspace).
// No pre_tokenizer key at all: Llama 3's (kLlama3SplitPattern, then ByteLevel).
std::unique_ptr<Tokenizer> make_bpe(std::vector<std::string> vocab, const std::vector<std::string>& merge_pairs,
                                    const nlohmann::json& options, const TokenizerSetup& setup);

// The pre-tokenizer split patterns kLlama3SplitPattern, kQwen2SplitPattern, kGpt2SplitPattern:
// tokenize/split_patterns.h.

// GPT-2's byte-to-unicode map: the printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
// themselves, the others for U+0100 onwards in byte order. Returns the UTF-8 of the character.
const std::string& byte_level_char(uint8_t byte);
std::string byte_level_encode(std::string_view bytes);
// The inverse; nullopt when a character is not one of the 256.
std::optional<std::string> byte_level_decode(std::string_view text);

// Splits `text` with a PCRE2 pattern (UTF and Unicode-property mode) into the matches and the
// text between them, as tokenizer.json's Split with behavior "Isolated": the pieces concatenate
// to `text`. Throws TokenizerError on a pattern PCRE2 rejects.
std::vector<std::string> regex_split(std::string_view pattern, std::string_view text);

// ---- streaming detokenizer ---------------------------------------------------------------------

// Turns ids into text one at a time as a model generates them. push() returns only complete
// UTF-8: a character split over several byte tokens is held back until its last byte arrives;
// bytes that can never form a character become U+FFFD. Special tokens print only with
// print_special. The dummy-prefix rule: when the tokenizer strips_leading_space(), one leading
// space of the first token of a text run (at the start when sequence_start, and after each
// special token such as BOS) is dropped, as llama2.c and llama.cpp print.
class TextStream {
 public:
  struct Options {
    bool print_special = false;
    bool sequence_start = true;  // false: the ids continue a sequence (a reply after a prompt)
  };
  explicit TextStream(const Tokenizer& tok) : TextStream(tok, Options{}) {}
  TextStream(const Tokenizer& tok, Options options);

  std::string push(int32_t id);  // throws TokenizerError for an id out of range
  std::string flush();           // what is held back, incomplete sequences as U+FFFD

 private:
  std::string take_complete();

  const Tokenizer* tok_;
  Options options_;
  bool strip_next_;
  std::string pending_;
};

}  // namespace pqvk::tokenize
