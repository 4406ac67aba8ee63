// Tokenizer importers: SentencePiece .model files (kept byte for byte), llama2.c tokenizer .bin
// files, and HuggingFace tokenizer.json (byte-level BPE: vocab + merges + added tokens) with
// the chat template of tokenizer_config.json kept verbatim.
#include <sentencepiece_processor.h>

#include <cstring>
#include <map>

#include "model/error.h"
#include "model/files.h"
#include "model/json_fields.h"
#include "model/pqm.h"
#include "model/source.h"

namespace pqvk::model {

namespace {

std::vector<uint8_t> to_bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

// "a b" or ["a", "b"] -> the pair (HuggingFace wrote merges both ways over time).
std::pair<std::string, std::string> parse_merge(const json& m, const std::string& where) {
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
    return {m[0].get<std::string>(), m[1].get<std::string>()};
  if (m.is_string()) {
    const std::string s = m.get<std::string>();
    const size_t sp = s.find(' ');
    if (sp != std::string::npos && sp > 0 && sp + 1 < s.size() && s.find(' ', sp + 1) == std::string::npos)
      return {s.substr(0, sp), s.substr(sp + 1)};
  }
  model_fail(where, "expected \"left right\" or [left, right]");
}

std::vector<AddedToken> parse_added_tokens(const json& a, const std::string& where) {
  std::vector<AddedToken> out;
  if (!a.is_array()) model_fail(where, "added_tokens is not an array");
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string w = where + ": added_tokens[" + std::to_string(i) + "]";
    out.push_back({get_int(a[i], "id", w, 0, INT32_MAX), get_string(a[i], "content", w), get_bool_or(a[i], "special", w, false)});
  }
  return out;
}

// tokenizer_config.json's {"32000": {"content": "<pad>", "special": true}, ...}.
std::vector<AddedToken> parse_added_tokens_decoder(const json& d, const std::string& where) {
  std::vector<AddedToken> out;
  require_object(d, where + ": added_tokens_decoder");
  for (const auto& [key, v] : d.items()) {
    const std::string w = where + ": added_tokens_decoder['" + key + "']";
    char* end = nullptr;
    const long id = std::strtol(key.c_str(), &end, 10);
    if (key.empty() || *end != '\0' || id < 0 || id > INT32_MAX) model_fail(w, "key is not a token id");
    out.push_back({id, get_string(v, "content", w), get_bool_or(v, "special", w, false)});
  }
  return out;
}

// The content of tokenizer_config.json's bos_token / eos_token (a string or {"content": ...}).
std::string special_token_content(const json& cfg, const std::string& key) {
  if (!cfg.is_object() || !cfg.contains(key)) return "";
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

// Chat template: chat_template.jinja when present, else tokenizer_config.json's chat_template
// (a string, or a list of {"name", "template"} of which "default" becomes the main one).
void read_chat_template(const std::string& dir, const json& cfg, const std::string& cfg_path, TokenizerInfo& info) {
  const std::string jinja = join_path(dir, "chat_template.jinja");
  if (file_exists(jinja)) {
    info.chat_template = read_file(jinja);
    return;
  }
  if (!has_key(cfg, "chat_template")) return;
  const json& t = cfg["chat_template"];
  if (t.is_string()) {
    info.chat_template = t.get<std::string>();
    return;
  }
  if (!t.is_array()) model_fail(cfg_path, "chat_template is neither a string nor a list of named templates");
  for (size_t i = 0; i < t.size(); ++i) {
    const std::string w = cfg_path + ": chat_template[" + std::to_string(i) + "]";
    const std::string name = get_string(t[i], "name", w), tmpl = get_string(t[i], "template", w);
    info.chat_templates[name] = tmpl;
    if (name == "default") info.chat_template = tmpl;
  }
}

int64_t find_token(const std::vector<std::string>& tokens, const std::string& content) {
  if (content.empty()) return -1;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] == content) return static_cast<int64_t>(i);
  return -1;
}

// tokenizer.json with a BPE model -> vocab (by id, added tokens included) and merges.
SourceTokenizer load_bpe(const std::string& path, int64_t vocab_size) {
  const json j = read_json_file(path);
  require_object(j, path);
  const json& model = require_key(j, "model", path);
  const std::string type = get_string(model, "type", path + ": model");
  if (type != "BPE") model_fail(path, "tokenizer model type '" + type + "' is not supported (only BPE)");
  const json& vocab = require_key(model, "vocab", path + ": model");
  require_object(vocab, path + ": model.vocab");

  SourceTokenizer t;
  t.info.kind = "bpe";
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) t.info.added_tokens = parse_added_tokens(j["added_tokens"], path);
  std::map<int64_t, std::string> by_id;
  auto add = [&](int64_t id, const std::string& tok, const std::string& w) {
    if (id >= vocab_size) model_fail(w, "token id " + std::to_string(id) + " is not below vocab_size " + std::to_string(vocab_size));
    auto [it, fresh] = by_id.emplace(id, tok);
    if (!fresh && it->second != tok) model_fail(w, "token id " + std::to_string(id) + " is given to two tokens");
  };
  for (const auto& [tok, id] : vocab.items()) add(as_int(id, path + ": model.vocab['" + tok + "']", 0, INT32_MAX), tok, path);
  for (const AddedToken& a : t.info.added_tokens) add(a.id, a.content, path + ": added_tokens");
  if (by_id.empty()) model_fail(path, "empty vocabulary");
  std::vector<std::string> tokens(static_cast<size_t>(by_id.rbegin()->first) + 1);
  for (size_t i = 0; i < tokens.size(); ++i) {
    auto it = by_id.find(static_cast<int64_t>(i));
    if (it == by_id.end()) model_fail(path, "token id " + std::to_string(i) + " is missing (ids must be dense)");
    tokens[i] = it->second;
  }
  const json& merges = require_key(model, "merges", path + ": model");
  if (!merges.is_array()) model_fail(path, "model.merges is not an array");
  std::vector<std::string> pairs;
  pairs.reserve(2 * merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    auto [l, r] = parse_merge(merges[i], path + ": model.merges[" + std::to_string(i) + "]");
    pairs.push_back(std::move(l));
    pairs.push_back(std::move(r));
  }
  json model_opts = model;
  model_opts.erase("vocab");
  model_opts.erase("merges");
  t.info.options = {{"model", model_opts}};
  for (const char* k : {"normalizer", "pre_tokenizer", "post_processor", "decoder"})
    t.info.options[k] = j.contains(k) ? j[k] : json(nullptr);
  t.blobs.emplace_back("tokenizer.vocab", encode_string_list(tokens));
  t.blobs.emplace_back("tokenizer.merges", encode_string_list(pairs));
  return t;
}

}  // namespace

SourceTokenizer load_sentencepiece(const std::string& path, int64_t vocab_size) {
  const std::string bytes = read_file(path);
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.LoadFromSerializedProto(bytes);
  if (!status.ok()) model_fail(path, "not a valid SentencePiece model: " + status.ToString());
  if (sp.GetPieceSize() > vocab_size)
    model_fail(path, "SentencePiece model has " + std::to_string(sp.GetPieceSize()) + " pieces, more than the model's vocab_size " +
                         std::to_string(vocab_size));
  SourceTokenizer t;
  t.info.kind = "sentencepiece";
  t.blobs.emplace_back("tokenizer.model", to_bytes(bytes));
  t.bos_id = sp.bos_id();
  t.eos_id = sp.eos_id();
  return t;
}

SourceTokenizer load_llama2c_tokenizer(const std::string& path, int64_t vocab_size) {
  const MappedFile f(path);
  const uint8_t* p = f.data();
  const size_t n = f.size();
  auto read_i32 = [&](size_t at) {
    int32_t v;
    std::memcpy(&v, p + at, 4);
    return v;
  };
  if (n < 4) model_fail(path, "llama2.c tokenizer shorter than its 4-byte header");
  const int32_t max_len = read_i32(0);
  if (max_len <= 0 || max_len > (1 << 20)) model_fail(path, "max_token_length " + std::to_string(max_len) + " is out of range");
  std::vector<std::string> tokens;
  std::vector<float> scores;
  size_t pos = 4;
  for (int64_t i = 0; i < vocab_size; ++i) {
    const std::string w = path + ": token " + std::to_string(i);
    if (n - pos < 8) model_fail(w, "truncated (the file holds fewer tokens than the model's vocab_size " + std::to_string(vocab_size) + ")");
    float score;
    std::memcpy(&score, p + pos, 4);
    const int32_t len = read_i32(pos + 4);
    pos += 8;
    if (len < 0 || len > max_len || static_cast<size_t>(len) > n - pos)
      model_fail(w, "length " + std::to_string(len) + " is negative, above max_token_length or past the end");
    tokens.emplace_back(reinterpret_cast<const char*>(p + pos), static_cast<size_t>(len));
    scores.push_back(score);
    pos += static_cast<size_t>(len);
  }
  if (pos != n)
    model_fail(path, std::to_string(n - pos) + " bytes after token " + std::to_string(vocab_size - 1) +
                         ": the tokenizer has more tokens than the model's vocab_size " + std::to_string(vocab_size));
  SourceTokenizer t;
  t.info.kind = "llama2c";
  t.info.options = {{"max_token_length", max_len}};
  t.blobs.emplace_back("tokenizer.vocab", encode_string_list(tokens));
  t.scores = std::move(scores);
  return t;
}

SourceTokenizer load_hf_tokenizer(const std::string& dir, int64_t vocab_size) {
  const std::string sp_path = join_path(dir, "tokenizer.model"), json_path = join_path(dir, "tokenizer.json");
  const std::string cfg_path = join_path(dir, "tokenizer_config.json");
  SourceTokenizer t;
  if (file_exists(sp_path)) t = load_sentencepiece(sp_path, vocab_size);
  else if (file_exists(json_path)) t = load_bpe(json_path, vocab_size);
  const json cfg = file_exists(cfg_path) ? read_json_file(cfg_path) : json::object();
  require_object(cfg, cfg_path);
  read_chat_template(dir, cfg, cfg_path, t.info);
  if (t.info.kind == "sentencepiece" && has_key(cfg, "added_tokens_decoder"))
    t.info.added_tokens = parse_added_tokens_decoder(cfg["added_tokens_decoder"], cfg_path);
  if (t.info.kind == "bpe") {
    const std::vector<std::string> tokens = decode_string_list(t.blobs[0].second, json_path);
    t.bos_id = find_token(tokens, special_token_content(cfg, "bos_token"));
    t.eos_id = find_token(tokens, special_token_content(cfg, "eos_token"));
  }
  for (const AddedToken& a : t.info.added_tokens)
    if (a.id >= vocab_size) model_fail(dir, "added token id " + std::to_string(a.id) + " is not below vocab_size");
  return t;
}

}  // namespace pqvk::model
