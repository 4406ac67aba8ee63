// The tokenizer of a GGUF file (tokenizer.ggml.*, tokenizer.chat_template*) as a .pqm tokenizer:
//
//   tokenizer.ggml.model "llama"  SentencePiece: the tokens, scores and token types become a
//                                 SentencePiece ModelProto (BPE model, the types as piece types,
//                                 byte fallback when there are byte tokens, identity
//                                 normalization with the dummy prefix of add_space_prefix),
//                                 checked by loading it with libsentencepiece and stored as the
//                                 "tokenizer.model" blob, as a HuggingFace tokenizer.model is.
//   tokenizer.ggml.model "gpt2"   byte-level BPE: the tokens and merges become "tokenizer.vocab"
//                                 and "tokenizer.merges"; the tokenizer.json pipeline is rebuilt
//                                 from tokenizer.ggml.pre (llama-bpe / smaug-bpe: Llama 3's split,
//                                 merges ignored for whole-vocabulary words; qwen2: NFC and
//                                 Qwen2's split; gpt-2: GPT-2's split); control tokens become
//                                 special added tokens, user-defined ones plain added tokens.
//   absent, "none", "no_vocab"    no tokenizer.
//
// Token types (tokenizer.ggml.token_type): 1 normal, 2 unknown, 3 control, 4 user defined,
// 5 unused, 6 byte -- SentencePiece's own numbering.
#include <sentencepiece_processor.h>

#include <cmath>
#include <cstring>

#include "model/error.h"
#include "model/gguf.h"
#include "model/pqm.h"
#include "model/source.h"
#include "tokenize/split_patterns.h"

namespace pqvk::model {

namespace {

enum TokenType : int64_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// Protocol-buffer wire format, just what a ModelProto needs.
class ProtoWriter {
 public:
  void varint(uint64_t v) {
    while (v >= 0x80) {
      out_ += static_cast<char>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    out_ += static_cast<char>(v);
  }
  void field_varint(int field, uint64_t v) {
    varint(static_cast<uint64_t>(field) << 3);  // wire type 0
    varint(v);
  }
  void field_int32(int field, int64_t v) { field_varint(field, static_cast<uint64_t>(v)); }  // negative: 10 bytes
  void field_bool(int field, bool v) { field_varint(field, v ? 1 : 0); }
  void field_bytes(int field, std::string_view b) {
    varint(static_cast<uint64_t>(field) << 3 | 2);
    varint(b.size());
    out_.append(b);
  }
  void field_float(int field, float f) {
    varint(static_cast<uint64_t>(field) << 3 | 5);
    char b[4];
    std::memcpy(b, &f, 4);
    out_.append(b, 4);
  }
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

// "<0xXX>": SentencePiece's name of a byte-fallback piece.
bool is_byte_piece(const std::string& t) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && hex(t[3]) && hex(t[4]) && t[5] == '>';
}

struct SpecialIds {
  int64_t bos = -1, eos = -1, unk = -1, pad = -1;
};

// The id a special-token key names (-1: absent); it must be a token of the vocabulary.
int64_t special_id(const GgufFile& f, const std::string& key, size_t n_tokens) {
  const std::optional<uint64_t> v = f.get_uint(key, n_tokens - 1);
  return v ? static_cast<int64_t>(*v) : -1;
}

// sentencepiece_model.proto: ModelProto { pieces = 1 { piece = 1, score = 2, type = 3 },
// trainer_spec = 2 { model_type = 3, vocab_size = 4, byte_fallback = 35, unk_id = 40, bos_id = 41,
// eos_id = 42, pad_id = 43, unk_piece = 45, bos_piece = 46, eos_piece = 47, pad_piece = 48 },
// normalizer_spec = 3 { name = 1, add_dummy_prefix = 3, remove_extra_whitespaces = 4,
// escape_whitespaces = 5 } }.
std::string sentencepiece_proto(const std::vector<std::string>& tokens, const std::vector<float>& scores,
                                const std::vector<int64_t>& types, const SpecialIds& ids, bool add_dummy_prefix,
                                bool remove_extra_whitespaces) {
  ProtoWriter model;
  bool byte_fallback = false;
  for (size_t i = 0; i < tokens.size(); ++i) {
    ProtoWriter piece;
    piece.field_bytes(1, tokens[i]);
    piece.field_float(2, scores[i]);
    piece.field_varint(3, static_cast<uint64_t>(types[i]));
    model.field_bytes(1, piece.bytes());
    byte_fallback = byte_fallback || types[i] == kByte;
  }
  auto piece_of = [&](int64_t id) { return id >= 0 ? tokens[static_cast<size_t>(id)] : std::string(); };
  ProtoWriter trainer;
  trainer.field_varint(3, 2);  // BPE: merges by piece score, what llama.cpp does with a "llama" vocabulary
  trainer.field_int32(4, static_cast<int64_t>(tokens.size()));
  trainer.field_bool(35, byte_fallback);
  trainer.field_int32(40, ids.unk);
  trainer.field_int32(41, ids.bos);
  trainer.field_int32(42, ids.eos);
  trainer.field_int32(43, ids.pad);
  trainer.field_bytes(45, piece_of(ids.unk));
  trainer.field_bytes(46, piece_of(ids.bos));
  trainer.field_bytes(47, piece_of(ids.eos));
  trainer.field_bytes(48, piece_of(ids.pad));
  model.field_bytes(2, trainer.bytes());
  ProtoWriter normalizer;
  normalizer.field_bytes(1, "identity");
  normalizer.field_bool(3, add_dummy_prefix);
  normalizer.field_bool(4, remove_extra_whitespaces);
  normalizer.field_bool(5, true);
  model.field_bytes(3, normalizer.bytes());
  return model.bytes();
}

SourceTokenizer sentencepiece_from_gguf(const GgufFile& f, const std::vector<std::string>& tokens,
                                        std::vector<int64_t> types, const SpecialIds& ids) {
  const std::string tw = f.where_key("tokenizer.ggml.tokens");
  std::vector<float> scores = f.get_floats("tokenizer.ggml.scores").value_or(std::vector<float>(tokens.size(), 0.0f));
  if (scores.size() != tokens.size())
    model_fail(f.where_key("tokenizer.ggml.scores"), std::to_string(scores.size()) + " scores for " + std::to_string(tokens.size()) + " tokens");
  for (size_t i = 0; i < scores.size(); ++i)
    if (!std::isfinite(scores[i])) model_fail(f.where_key("tokenizer.ggml.scores"), "element " + std::to_string(i) + " is not finite");
  if (f.find("tokenizer.ggml.precompiled_charsmap"))
    model_fail(f.where_key("tokenizer.ggml.precompiled_charsmap"), "normalization rules are not supported (only identity normalization)");
  if (types.empty()) {
    // No types: every token is normal except the special ones named by id.
    types.assign(tokens.size(), kNormal);
    if (ids.unk >= 0) types[static_cast<size_t>(ids.unk)] = kUnknown;
    for (int64_t id : {ids.bos, ids.eos, ids.pad})
      if (id >= 0 && id != ids.unk) types[static_cast<size_t>(id)] = kControl;
  }
  SpecialIds sp = ids;
  if (sp.unk < 0)
    for (size_t i = 0; i < types.size() && sp.unk < 0; ++i)
      if (types[i] == kUnknown) sp.unk = static_cast<int64_t>(i);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].empty()) model_fail(tw, "token " + std::to_string(i) + " is empty (SentencePiece pieces must not be)");
    if (types[i] == kByte && !is_byte_piece(tokens[i]))
      model_fail(tw, "token " + std::to_string(i) + " '" + tokens[i] + "' has the byte type but is not of the form <0xXX>");
  }
  const std::string proto = sentencepiece_proto(tokens, scores, types, sp, f.get_bool("tokenizer.ggml.add_space_prefix").value_or(true),
                                                f.get_bool("tokenizer.ggml.remove_extra_whitespaces").value_or(false));
  sentencepiece::SentencePieceProcessor check;
  const auto status = check.LoadFromSerializedProto(proto);
  if (!status.ok()) model_fail(tw, "the vocabulary does not make a valid SentencePiece model: " + status.ToString());
  SourceTokenizer t;
  t.info.kind = "sentencepiece";
  t.blobs.emplace_back("tokenizer.model", std::vector<uint8_t>(proto.begin(), proto.end()));
  return t;
}

// "left right" -> left, right: split at the first space after the first byte (a merge's left
// part is never empty; byte-level tokens hold no spaces).
void split_merge(const std::string& m, size_t i, const std::string& where, std::vector<std::string>& pairs) {
  const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
  if (sp == std::string::npos || sp + 1 >= m.size())
    model_fail(where, "merge " + std::to_string(i) + " '" + m + "' is not \"left right\"");
  pairs.push_back(m.substr(0, sp));
  pairs.push_back(m.substr(sp + 1));
}

json split_then_byte_level(std::string_view pattern, bool trim_offsets) {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", std::string(pattern)}}}, {"behavior", "Isolated"}, {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", trim_offsets}, {"use_regex", false}}}}};
}

SourceTokenizer bpe_from_gguf(const GgufFile& f, const std::vector<std::string>& tokens, const std::vector<int64_t>& types,
                              const SpecialIds& ids) {
  const std::string pre_key = "tokenizer.ggml.pre";
  const std::string pre = f.get_string(pre_key).value_or("");
  json options;
  options["normalizer"] = nullptr;
  bool ignore_merges = false;
  if (pre == "llama-bpe" || pre == "smaug-bpe") {
    options["pre_tokenizer"] = split_then_byte_level(tokenize::kLlama3SplitPattern, true);
    ignore_merges = true;
  } else if (pre == "qwen2") {
    options["normalizer"] = {{"type", "NFC"}};
    options["pre_tokenizer"] = split_then_byte_level(tokenize::kQwen2SplitPattern, false);
  } else if (pre == "gpt-2") {
    options["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  } else {
    model_fail(pre.empty() ? f.path() : f.where_key(pre_key),
               (pre.empty() ? std::string("no tokenizer.ggml.pre") : "pre-tokenizer '" + pre + "' is not supported") +
                   " (supported for gpt2 vocabularies: llama-bpe, smaug-bpe, qwen2, gpt-2)");
  }
  options["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  options["model"] = {{"type", "BPE"}, {"byte_fallback", false}, {"ignore_merges", ignore_merges}, {"unk_token", nullptr}};
  const bool add_bos = f.get_bool("tokenizer.ggml.add_bos_token").value_or(ignore_merges) && ids.bos >= 0;
  if (add_bos) {
    const std::string& bos = tokens[static_cast<size_t>(ids.bos)];
    options["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{bos, {{"id", bos}, {"ids", {ids.bos}}, {"tokens", {bos}}}}}}};
  } else {
    options["post_processor"] = nullptr;
  }

  const std::string mk = "tokenizer.ggml.merges";
  const std::vector<std::string> merges = f.get_strings(mk).value_or(std::vector<std::string>{});
  if (!f.find(mk)) model_fail(f.path(), "a gpt2 vocabulary without tokenizer.ggml.merges");
  std::vector<std::string> pairs;
  pairs.reserve(2 * merges.size());
  for (size_t i = 0; i < merges.size(); ++i) split_merge(merges[i], i, f.where_key(mk), pairs);

  SourceTokenizer t;
  t.info.kind = "bpe";
  t.info.options = std::move(options);
  for (size_t i = 0; i < types.size(); ++i)
    if (types[i] == kControl || types[i] == kUserDefined) {
      if (tokens[i].empty()) model_fail(f.where_key("tokenizer.ggml.tokens"), "added token " + std::to_string(i) + " is empty");
      t.info.added_tokens.push_back({static_cast<int64_t>(i), tokens[i], types[i] == kControl});
    }
  t.blobs.emplace_back("tokenizer.vocab", encode_string_list(tokens));
  t.blobs.emplace_back("tokenizer.merges", encode_string_list(pairs));
  return t;
}

void read_chat_templates(const GgufFile& f, TokenizerInfo& info) {
  info.chat_template = f.get_string("tokenizer.chat_template").value_or("");
  const std::string prefix = "tokenizer.chat_template.";
  for (const auto& [key, v] : f.metadata())
    if (key.starts_with(prefix) && key.size() > prefix.size()) info.chat_templates[key.substr(prefix.size())] = *f.get_string(key);
}

}  // namespace

SourceTokenizer load_gguf_tokenizer(const GgufFile& f, int64_t vocab_size) {
  const std::string model = f.get_string("tokenizer.ggml.model").value_or("none");
  SourceTokenizer t;
  if (model == "none" || model == "no_vocab") {
    read_chat_templates(f, t.info);
    return t;
  }
  if (model != "llama" && model != "gpt2")
    model_fail(f.where_key("tokenizer.ggml.model"), "tokenizer '" + model + "' is not supported (supported: llama, gpt2)");
  const std::string tk = "tokenizer.ggml.tokens";
  const std::optional<std::vector<std::string>> tokens = f.get_strings(tk);
  if (!tokens || tokens->empty()) model_fail(f.path(), "a " + model + " tokenizer without tokens (missing or empty " + tk + ")");
  if (static_cast<int64_t>(tokens->size()) > vocab_size)
    model_fail(f.where_key(tk), std::to_string(tokens->size()) + " tokens, more than the " + std::to_string(vocab_size) +
                                    " rows of the embedding");
  std::vector<int64_t> types = f.get_ints("tokenizer.ggml.token_type").value_or(std::vector<int64_t>{});
  if (!types.empty() || f.find("tokenizer.ggml.token_type")) {
    if (types.size() != tokens->size())
      model_fail(f.where_key("tokenizer.ggml.token_type"), std::to_string(types.size()) + " types for " + std::to_string(tokens->size()) + " tokens");
    for (size_t i = 0; i < types.size(); ++i)
      if (types[i] < kNormal || types[i] > kByte)
        model_fail(f.where_key("tokenizer.ggml.token_type"), "element " + std::to_string(i) + " is " + std::to_string(types[i]) +
                                                                 ", not a token type (1..6)");
  }
  SpecialIds ids;
  ids.bos = special_id(f, "tokenizer.ggml.bos_token_id", tokens->size());
  ids.eos = special_id(f, "tokenizer.ggml.eos_token_id", tokens->size());
  ids.unk = special_id(f, "tokenizer.ggml.unknown_token_id", tokens->size());
  ids.pad = special_id(f, "tokenizer.ggml.padding_token_id", tokens->size());
  if (model == "llama") t = sentencepiece_from_gguf(f, *tokens, types, ids);
  else t = bpe_from_gguf(f, *tokens, types.empty() ? std::vector<int64_t>(tokens->size(), kNormal) : types, ids);
  t.bos_id = ids.bos;
  t.eos_id = ids.eos;
  read_chat_templates(f, t.info);
  return t;
}

}  // namespace pqvk::model
