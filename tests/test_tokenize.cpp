// runtime/tokenize: UTF-8 helpers, GPT-2's byte map, the pre-tokenizer regexes, byte-level BPE
// on small vocabularies built here (expected ids worked out by hand from the merges), the real
// Llama 2 SentencePiece model and its llama2.c twin (tests/data), .pqm round trips, the
// streaming detokenizer, bad input, the chat formats and chat templates (ChatTemplate).
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "expect_error.h"
#include "model/pqm.h"
#include "model/source.h"
#include "tokenize/chat.h"
#include "tokenize/tokenizer.h"
#include "tokenize/utf8.h"

namespace pqvk::tokenize {
namespace {

using nlohmann::json;
using Ids = std::vector<int32_t>;

// ---- helpers -------------------------------------------------------------------------------------

std::string data_path(const std::string& name) {
#ifdef PQVK_TEST_DATA
  return std::string(PQVK_TEST_DATA) + "/" + name;
#else
  return (std::filesystem::path(__FILE__).parent_path() / "data" / name).string();
#endif
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/pqvk-tokenize-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Runs f and expects a TokenizerError whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  pqvk::test::expect_error_of<TokenizerError>(f, parts);
}

// A .pqm holding a tiny model (all tensors f16) and the given tokenizer.
void write_pqm(const std::string& path, const model::TokenizerInfo& info,
               const std::vector<std::pair<std::string, std::vector<uint8_t>>>& blobs, const std::vector<float>& scores,
               int64_t vocab_size, int64_t bos, std::vector<int64_t> eos) {
  model::ModelConfig c;
  c.architecture = "llama";
  c.dim = 2;
  c.hidden_dim = 2;
  c.n_layers = 1;
  c.n_heads = 1;
  c.n_kv_heads = 1;
  c.head_dim = 2;
  c.vocab_size = vocab_size;
  c.max_seq_len = 16;
  c.tie_word_embeddings = true;
  c.bos_id = bos;
  c.eos_ids = std::move(eos);
  model::PqmWriter w(path);
  for (const model::TensorSpec& t : model::model_tensors(c)) {
    size_t n = 1;
    for (uint64_t d : t.shape) n *= d;
    const std::vector<float> v(n, 0.25f);
    w.add_f16(t.name, t.shape, v);
  }
  for (const auto& [name, bytes] : blobs) w.add_blob(name, bytes);
  if (!scores.empty()) w.add_f32("tokenizer.scores", {scores.size()}, scores);
  w.finish(c, info);
}

std::vector<uint8_t> string_list(const std::vector<std::string>& v) { return model::encode_string_list(v); }

// Text every tokenizer must give back exactly: accents, Greek, CJK, Hangul, emoji (with
// modifiers, flags, ZWJ sequences), combining marks with no precomposed form (unchanged by NFC),
// newlines, tabs, CR, leading / trailing / repeated spaces, digits, contractions.
const std::vector<std::string> kRoundTrip = {
    "Hello world",
    "  leading and trailing spaces  ",
    "accents: café, naïve, Ελληνικά, Ünïcödé",
    "CJK: 日本語のテキスト 中文 한국어",
    "emoji: 😀👍🏽 🇫🇷 👩‍👩‍👧!",
    "combining: q\u0307 x\u0323\u0301 w\u0330",
    "newlines\n\nand\ttabs\r\n end\n",
    " ",
    "\n",
    "12345 + 678 = 13023",
    "it's they're WE'LL",
    "a  b   c    d",
};

// Feeds ids one at a time: every chunk is valid UTF-8; returns the concatenation.
std::string stream_all(const Tokenizer& tok, const Ids& ids, TextStream::Options o = {}) {
  TextStream s(tok, o);
  std::string out;
  for (int32_t id : ids) {
    const std::string chunk = s.push(id);
    EXPECT_TRUE(utf8_valid(chunk)) << "token " << id << " emitted invalid UTF-8";
    out += chunk;
  }
  const std::string tail = s.flush();
  EXPECT_TRUE(utf8_valid(tail));
  return out + tail;
}

void expect_round_trips(const Tokenizer& tok) {
  for (const std::string& s : kRoundTrip) {
    SCOPED_TRACE(s);
    const Ids ids = tok.encode(s, tok.adds_bos());
    EXPECT_EQ(tok.decode(ids), s);
    EXPECT_EQ(stream_all(tok, ids), s);
    EXPECT_EQ(tok.decode(tok.encode(s, false)), s);
  }
  EXPECT_TRUE(tok.encode("", false).empty());
  EXPECT_EQ(tok.decode(Ids{}), "");
}

// ---- UTF-8 ---------------------------------------------------------------------------------------

TEST(Utf8, StrictValidation) {
  EXPECT_TRUE(utf8_valid("plain ascii"));
  EXPECT_TRUE(utf8_valid("é€😀\u07FF\uFFFF\U0010FFFF"));
  EXPECT_EQ(utf8_invalid_offset("ab\xFF"), 2u);
  EXPECT_EQ(utf8_invalid_offset("\xC0\xAF"), 0u);          // overlong '/'
  EXPECT_EQ(utf8_invalid_offset("\xE0\x80\xAF"), 0u);      // overlong
  EXPECT_EQ(utf8_invalid_offset("x\xED\xA0\x80"), 1u);     // surrogate U+D800
  EXPECT_EQ(utf8_invalid_offset("\xF4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(utf8_invalid_offset("\x80"), 0u);              // lone continuation
  EXPECT_EQ(utf8_invalid_offset("ok\xE2\x82"), 2u);        // truncated
}

TEST(Utf8, IncompleteTailAndSanitize) {
  EXPECT_EQ(utf8_incomplete_tail("ab"), 0u);
  EXPECT_EQ(utf8_incomplete_tail("a\xE2"), 1u);
  EXPECT_EQ(utf8_incomplete_tail("a\xE2\x82"), 2u);
  EXPECT_EQ(utf8_incomplete_tail("a\xF0\x9F\x98"), 3u);
  EXPECT_EQ(utf8_incomplete_tail("a\xE2\x82\xAC"), 0u);  // complete '€'
  EXPECT_EQ(utf8_incomplete_tail("a\xFF"), 0u);          // never completes
  EXPECT_EQ(utf8_incomplete_tail("\xE2\x41"), 0u);
  // One U+FFFD per maximal invalid subpart.
  EXPECT_EQ(utf8_sanitize("a\xFF" "b"), "a\uFFFD" "b");
  EXPECT_EQ(utf8_sanitize("\xF0\x9F\x98" "A"), "\uFFFD" "A");
  EXPECT_EQ(utf8_sanitize("\xE2\x41"), "\uFFFD" "A");
  EXPECT_EQ(utf8_sanitize("\xC0\xAF"), "\uFFFD\uFFFD");
  EXPECT_EQ(utf8_sanitize("€"), "€");
}

// ---- GPT-2 byte map and the split regexes -------------------------------------------------------

TEST(ByteLevel, MapFollowsGpt2Definition) {
  // Printable bytes stand for themselves; the 68 others take U+0100.. in byte order:
  // 0x00..0x20 -> U+0100..U+0120, 0x7F..0xA0 -> U+0121..U+0142, 0xAD -> U+0143.
  EXPECT_EQ(byte_level_char('!'), "!");
  EXPECT_EQ(byte_level_char('~'), "~");
  EXPECT_EQ(byte_level_char(0xE9), "é");
  EXPECT_EQ(byte_level_char(0x00), "\u0100");
  EXPECT_EQ(byte_level_char(' '), "\u0120");   // 'Ġ'
  EXPECT_EQ(byte_level_char('\n'), "\u010A");  // 'Ċ'
  EXPECT_EQ(byte_level_char(0x7F), "\u0121");
  EXPECT_EQ(byte_level_char(0xA0), "\u0142");
  EXPECT_EQ(byte_level_char(0xAD), "\u0143");
  std::set<std::string> seen;
  for (int b = 0; b < 256; ++b) seen.insert(byte_level_char(static_cast<uint8_t>(b)));
  EXPECT_EQ(seen.size(), 256u);
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  EXPECT_EQ(byte_level_decode(byte_level_encode(all)), all);
  EXPECT_EQ(byte_level_encode(" hi\n"), "\u0120hi\u010A");
  EXPECT_FALSE(byte_level_decode("\u0100\u0200").has_value());  // U+0200 is not one of the 256
}

TEST(RegexSplit, Llama3Pattern) {
  // Worked out alternative by alternative: "'s" is a contraction; a space before digits stands
  // alone; digits go in threes; punctuation takes the newlines after it; of two spaces before a
  // word, the first stands alone (\s+(?!\S)) and the second joins the word.
  const std::vector<std::string> want = {"Hello", " world", ",", " it", "'s", " ", "123", "45", " ok", "!!\n\n", " ", " x"};
  EXPECT_EQ(regex_split(kLlama3SplitPattern, "Hello world, it's 12345 ok!!\n\n  x"), want);
  const std::vector<std::string> caps = {"IT", "'S", " ", "2"};
  EXPECT_EQ(regex_split(kLlama3SplitPattern, "IT'S 2"), caps);  // (?i:...)
  const std::vector<std::string> uni = {"héllo", " wörld", " 世界", "!"};
  EXPECT_EQ(regex_split(kLlama3SplitPattern, "héllo wörld 世界!"), uni);  // \p{L} is Unicode
}

TEST(RegexSplit, Qwen2PatternSplitsSingleDigits) {
  const std::vector<std::string> want = {"x", "1", "2", "3", "4", " a"};
  EXPECT_EQ(regex_split(kQwen2SplitPattern, "x1234 a"), want);
}

TEST(RegexSplit, Gpt2Pattern) {
  const std::vector<std::string> want = {"Hello", " world", " 12345", "!", "  ", " x"};
  EXPECT_EQ(regex_split(kGpt2SplitPattern, "Hello world 12345!   x"), want);
}

TEST(RegexSplit, BadPatternIsAnError) {
  expect_error([] { regex_split("(unclosed", "x"); }, {"regex", "(unclosed"});
  expect_error([] { regex_split("a", "\xFF"); }, {"not valid UTF-8"});
}

// ---- byte-level BPE on a vocabulary built here -----------------------------------------------------

// Ids 0..255: the 256 byte characters, id = byte. Then merges, each creating the next id:
//   rank 0: Ġ t -> Ġt (256)   rank 1: h e -> he (257)   rank 2: Ġt he -> Ġthe (258)
//   rank 3: l l -> ll (259)   rank 4: he ll -> hell (260)   rank 5: hell o -> hello (261)
// then tokens without merges: "Ġworld" (262), and added tokens <|im_start|> (263),
// <|im_end|> (264), <|x|> (265), <|x|>! (266), <think> (267, not special), <|begin_of_text|> (268).
struct TinyBpe {
  std::vector<std::string> vocab;
  std::vector<std::string> merges;
  std::vector<model::AddedToken> added;
  TinyBpe() {
    for (int b = 0; b < 256; ++b) vocab.push_back(byte_level_char(static_cast<uint8_t>(b)));
    const std::vector<std::pair<std::string, std::string>> m = {
        {"\u0120", "t"}, {"h", "e"}, {"\u0120t", "he"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}};
    for (const auto& [l, r] : m) {
      merges.push_back(l);
      merges.push_back(r);
      vocab.push_back(l + r);
    }
    vocab.push_back("\u0120world");
    const std::vector<std::pair<std::string, bool>> extra = {{"<|im_start|>", true}, {"<|im_end|>", true}, {"<|x|>", true},
                                                             {"<|x|>!", true},       {"<think>", false},   {"<|begin_of_text|>", true}};
    for (const auto& [text, special] : extra) {
      added.push_back({static_cast<int64_t>(vocab.size()), text, special});
      vocab.push_back(text);
    }
  }
  TokenizerSetup setup(std::optional<int32_t> bos = std::nullopt) const {
    TokenizerSetup s;
    s.where = "tiny-bpe";
    s.added_tokens = added;
    s.bos = bos;
    s.eos = Ids{264};
    return s;
  }
  static json llama3_options(bool ignore_merges = false) {
    return {{"normalizer", nullptr},
            {"pre_tokenizer",
             {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"}, {"pattern", {{"Regex", std::string(kLlama3SplitPattern)}}}, {"behavior", "Isolated"}, {"invert", false}},
                {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
            {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
            {"post_processor",
             {{"type", "TemplateProcessing"},
              {"single", {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
            {"model", {{"type", "BPE"}, {"byte_fallback", false}, {"ignore_merges", ignore_merges}, {"unk_token", nullptr}}}};
  }
  static json qwen2_options() {
    return {{"normalizer", {{"type", "NFC"}}},
            {"pre_tokenizer",
             {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"}, {"pattern", {{"Regex", std::string(kQwen2SplitPattern)}}}, {"behavior", "Isolated"}, {"invert", false}},
                {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}}},
            {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
            {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
            {"model", {{"type", "BPE"}, {"byte_fallback", false}, {"ignore_merges", false}, {"unk_token", nullptr}}}};
  }
};

Ids bytes_as_ids(std::string_view s) {  // in TinyBpe, a byte's id is the byte
  Ids out;
  for (char c : s) out.push_back(static_cast<uint8_t>(c));
  return out;
}

TEST(BpeTiny, MergesByRank) {
  const TinyBpe t;
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup());
  // Pre-tokens "hello", " the", " world" -> "hello", "Ġthe", "Ġworld".
  // "hello": h e l l o -(r1)-> he l l o -(r3)-> he ll o -(r4)-> hell o -(r5)-> hello = 261.
  // "Ġthe": Ġ t h e -(r0)-> Ġt h e -(r1)-> Ġt he -(r2)-> Ġthe = 258.
  // "Ġworld": no merge applies: its bytes.
  Ids want = {261, 258};
  for (int32_t b : bytes_as_ids(" world")) want.push_back(b);
  EXPECT_EQ(tok->encode("hello the world", false), want);
  // "hellohello" is one pre-token: two "hello" merged independently (ranks apply everywhere).
  EXPECT_EQ(tok->encode("hellohello", false), (Ids{261, 261}));
  // "hell" + "the": h e l l t h e -> he ll t he -> hell t he (Ġt needs the space).
  EXPECT_EQ(tok->encode("hellthe", false), (Ids{260, 't', 257}));
  EXPECT_EQ(tok->piece(258), "\u0120the");
  EXPECT_EQ(tok->token_bytes(258), " the");
  EXPECT_EQ(tok->token_id("\u0120the"), 258);
  EXPECT_FALSE(tok->token_id("nope").has_value());
}

TEST(BpeTiny, LowerRankWinsLeftmostOnTies) {
  // "abc" with merges (a b) and (b c): whichever has the lower rank is applied.
  std::vector<std::string> vocab;
  for (int b = 0; b < 256; ++b) vocab.push_back(byte_level_char(static_cast<uint8_t>(b)));
  vocab.push_back("ab");  // 256
  vocab.push_back("bc");  // 257
  const json o = TinyBpe::llama3_options();
  const auto ab_first = make_bpe(vocab, {"a", "b", "b", "c"}, o, {});
  const auto bc_first = make_bpe(vocab, {"b", "c", "a", "b"}, o, {});
  EXPECT_EQ(ab_first->encode("abc", false), (Ids{256, 'c'}));
  EXPECT_EQ(bc_first->encode("abc", false), (Ids{'a', 257}));
  // "bcbc" with (b c) only: both pairs have the same rank; both merge.
  EXPECT_EQ(bc_first->encode("bcbc", false), (Ids{257, 257}));
  // "bbb" with (b b): the leftmost pair first -> "bb" "b".
  std::vector<std::string> v2 = vocab;
  v2.push_back("bb");  // 258
  const auto bb = make_bpe(v2, {"b", "b"}, o, {});
  EXPECT_EQ(bb->encode("bbb", false), (Ids{258, 'b'}));
}

TEST(BpeTiny, IgnoreMerges) {
  // "Ġworld" is a token with no merge path: taken whole only with ignore_merges (Llama 3).
  const TinyBpe t;
  const auto plain = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(false), t.setup());
  const auto whole = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(true), t.setup());
  EXPECT_EQ(whole->encode(" world", false), (Ids{262}));
  EXPECT_EQ(plain->encode(" world", false), bytes_as_ids(" world"));
}

TEST(BpeTiny, AddedTokensMatchedWholeLongestFirst) {
  const TinyBpe t;
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup());
  EXPECT_EQ(tok->encode("<|im_start|>hello<|im_end|>", false), (Ids{263, 261, 264}));
  EXPECT_EQ(tok->encode("a<|x|>b", false), (Ids{'a', 265, 'b'}));
  EXPECT_EQ(tok->encode("a<|x|>!b", false), (Ids{'a', 266, 'b'}));  // the longer one
  EXPECT_EQ(tok->encode("<|x|<|x|>", false), (Ids{'<', '|', 'x', '|', 265}));
  // parse_special = false: special tokens are text (pre-tokens "<|", "im", "_start", "|>"; no
  // merge applies), non-special added tokens still match.
  EXPECT_EQ(tok->encode("<|im_start|>", false, false), bytes_as_ids("<|im_start|>"));
  EXPECT_EQ(tok->encode("<think>", false, false), (Ids{267}));
  EXPECT_TRUE(tok->is_special(263));
  EXPECT_FALSE(tok->is_special(267));
  EXPECT_FALSE(tok->is_special(261));
  EXPECT_EQ(tok->token_id("<|im_end|>"), 264);
  // Decoding: special tokens are left out unless asked for.
  const Ids ids = tok->encode("<|im_start|>hello<|im_end|>", false);
  EXPECT_EQ(tok->decode(ids), "hello");
  EXPECT_EQ(tok->decode(ids, false), "<|im_start|>hello<|im_end|>");
}

TEST(BpeTiny, BosFromPostProcessor) {
  const TinyBpe t;
  const auto llama3 = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup(268));
  EXPECT_TRUE(llama3->adds_bos());
  EXPECT_EQ(llama3->bos(), 268);
  EXPECT_EQ(llama3->encode("hello", true), (Ids{268, 261}));
  const auto qwen = make_bpe(t.vocab, t.merges, TinyBpe::qwen2_options(), t.setup(268));
  EXPECT_FALSE(qwen->adds_bos());  // Qwen2's post-processor adds nothing
  EXPECT_EQ(qwen->eos_ids(), (Ids{264}));
  EXPECT_TRUE(qwen->is_eos(264));
}

TEST(BpeTiny, Qwen2NormalizesNfcAndSplitsDigits) {
  const TinyBpe t;
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::qwen2_options(), t.setup());
  // "e" + U+0301 (combining acute) is "é" (U+00E9) after NFC: the bytes C3 A9.
  EXPECT_EQ(tok->encode("e\u0301", false), bytes_as_ids("é"));
  EXPECT_EQ(tok->encode("42", false), bytes_as_ids("42"));  // two pre-tokens; same ids
  EXPECT_EQ(tok->decode(tok->encode("cafe\u0301", false)), "café");
}

TEST(BpeTiny, RoundTripsAndStreams) {
  const TinyBpe t;
  expect_round_trips(*make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup(268)));
  expect_round_trips(*make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(true), t.setup()));
  expect_round_trips(*make_bpe(t.vocab, t.merges, TinyBpe::qwen2_options(), t.setup()));
  // GPT-2 style: ByteLevel with its own regex.
  const json gpt2 = {{"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                     {"decoder", {{"type", "ByteLevel"}}}};
  expect_round_trips(*make_bpe(t.vocab, t.merges, gpt2, t.setup()));
}

TEST(BpeTiny, DefaultPreTokenizerIsLlama3) {
  const TinyBpe t;
  const auto with = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup());
  const auto without = make_bpe(t.vocab, t.merges, json::object(), t.setup());
  for (const std::string& s : kRoundTrip) EXPECT_EQ(without->encode(s, false), with->encode(s, false)) << s;
}

// A SentencePiece-style tokenizer.json (Metaspace spaces, byte fallback), as TinyLlama's or
// Mistral's: normalizer Prepend "▁" + Replace " " -> "▁", decoder Replace / ByteFallback / Fuse / Strip.
TEST(BpeTiny, SentencePieceStyleWithByteFallback) {
  std::vector<std::string> vocab = {"<unk>", "<s>", "</s>"};
  static const char* hex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) vocab.push_back(std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">");  // 3..258
  for (const char* p : {"\u2581", "h", "i", "\u2581h", "\u2581hi"}) vocab.push_back(p);                // 259..263
  const std::vector<std::string> merges = {"\u2581", "h", "\u2581h", "i"};
  const json o = {
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\u2581"}}, {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}}},
      {"pre_tokenizer", nullptr},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model", {{"type", "BPE"}, {"byte_fallback", true}, {"unk_token", "<unk>"}}}};
  TokenizerSetup s;
  s.added_tokens = {{0, "<unk>", true}, {1, "<s>", true}, {2, "</s>", true}};
  s.bos = 1;
  s.eos = Ids{2};
  const auto tok = make_bpe(vocab, merges, o, s);
  // "hi" -> "▁hi": ▁ h i -(r0)-> ▁h i -(r1)-> ▁hi.
  EXPECT_EQ(tok->encode("hi", true), (Ids{1, 263}));
  // "hé": ▁ h é; é is not a token: its bytes C3 A9 as <0xC3> <0xA9> (3 + byte).
  EXPECT_EQ(tok->encode("hé", false), (Ids{262, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_TRUE(tok->strips_leading_space());
  EXPECT_EQ(tok->decode(Ids{1, 262, 3 + 0xC3, 3 + 0xA9}), "hé");
  expect_round_trips(*tok);
}

// ---- BPE through a .pqm ------------------------------------------------------------------------------

TEST(BpePqm, FromPqmMatchesParts) {
  const TinyBpe t;
  TempDir d;
  model::TokenizerInfo info;
  info.kind = "bpe";
  info.added_tokens = t.added;
  info.options = TinyBpe::llama3_options(true);
  const int64_t vocab = static_cast<int64_t>(t.vocab.size()) + 4;  // padding rows past the tokenizer
  write_pqm(d.file("m.pqm"), info, {{"tokenizer.vocab", string_list(t.vocab)}, {"tokenizer.merges", string_list(t.merges)}}, {},
            vocab, 268, {264});
  const model::PqmFile f = model::PqmFile::open(d.file("m.pqm"));
  const auto tok = Tokenizer::from_pqm(f);
  const auto ref = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(true), t.setup(268));
  EXPECT_EQ(tok->kind(), TokenizerKind::bpe);
  EXPECT_EQ(tok->vocab_size(), vocab);
  EXPECT_EQ(tok->bos(), 268);
  EXPECT_EQ(tok->eos_ids(), (Ids{264}));
  for (const std::string& s : kRoundTrip) EXPECT_EQ(tok->encode(s, true), ref->encode(s, true)) << s;
  // A padding row decodes to nothing and counts as special.
  EXPECT_EQ(tok->token_bytes(static_cast<int32_t>(vocab - 1)), "");
  EXPECT_TRUE(tok->is_special(static_cast<int32_t>(vocab - 1)));
  expect_round_trips(*tok);
}

// ---- SentencePiece: the real Llama 2 model ---------------------------------------------------------

class Llama2Sp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    proto_ = new std::string(read_file(data_path("llama2-tokenizer.model")));
    TokenizerSetup s;
    s.where = "llama2-tokenizer.model";
    tok_ = make_sentencepiece(*proto_, s).release();
    lib_ = new sentencepiece::SentencePieceProcessor();
    ASSERT_TRUE(lib_->LoadFromSerializedProto(*proto_).ok());
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete lib_;
    delete proto_;
  }
  static int32_t id(const std::string& piece) {
    const auto i = tok_->token_id(piece);
    EXPECT_TRUE(i.has_value()) << "no piece " << piece;
    return i.value_or(-1);
  }
  static inline std::string* proto_ = nullptr;
  static inline Tokenizer* tok_ = nullptr;
  static inline sentencepiece::SentencePieceProcessor* lib_ = nullptr;
};

TEST_F(Llama2Sp, KnownPieces) {
  const Tokenizer& t = *tok_;
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_EQ(t.bos(), 1);
  EXPECT_EQ(t.eos_ids(), (Ids{2}));
  EXPECT_TRUE(t.adds_bos());
  EXPECT_TRUE(t.strips_leading_space());
  // The pieces are the model's own ("▁" marks a space; the dummy prefix puts one before the
  // first word). 15043 and 3186 are the ids the model gives "▁Hello" and "▁world".
  EXPECT_EQ(id("\u2581Hello"), 15043);
  EXPECT_EQ(id("\u2581world"), 3186);
  EXPECT_EQ(t.encode("Hello world", true), (Ids{1, 15043, 3186}));
  EXPECT_EQ(t.encode("Hello, world!", false), (Ids{15043, id(","), 3186, id("!")}));
  // Byte fallback: "\n" has no piece: <0x0A> = 3 + 0x0A; "😀" (F0 9F 98 80) after a lone "▁".
  EXPECT_EQ(id("<0x0A>"), 13);
  EXPECT_EQ(t.encode("a\nb", false), (Ids{id("\u2581a"), 13, id("b")}));
  EXPECT_EQ(t.encode("😀", false), (Ids{id("\u2581"), 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80}));
  EXPECT_EQ(t.token_bytes(13), "\n");
  EXPECT_EQ(t.token_bytes(3 + 0xF0), "\xF0");
  EXPECT_EQ(t.token_bytes(15043), " Hello");
  EXPECT_EQ(t.piece(15043), "\u2581Hello");
  // Two spaces before the word: "▁▁" then "▁hi".
  EXPECT_EQ(t.encode("  hi", false), (Ids{id("\u2581\u2581"), id("\u2581hi")}));
}

TEST_F(Llama2Sp, ControlTokensMatchedWhole) {
  const Tokenizer& t = *tok_;
  EXPECT_TRUE(t.is_special(1));
  EXPECT_TRUE(t.is_special(2));
  EXPECT_TRUE(t.is_special(0));  // <unk>
  EXPECT_FALSE(t.is_special(15043));
  EXPECT_EQ(t.token_id("<s>"), 1);
  // Each run of text after a special token gets the dummy prefix (as llama.cpp and Meta's
  // per-turn encoding do).
  EXPECT_EQ(t.encode("Hello</s><s>world", false), (Ids{15043, 2, 1, 3186}));
  // Not parsed: "<s>" is the characters "▁<", "s", ">".
  const Ids text = t.encode("<s>", false, false);
  EXPECT_EQ(text, (Ids{id("\u2581<"), id("s"), id(">")}));
  EXPECT_EQ(t.decode(text), "<s>");
  EXPECT_EQ(t.decode(Ids{1, 15043, 2}), "Hello");
  EXPECT_EQ(t.decode(Ids{1, 15043, 2}, false), "<s>Hello</s>");
}

TEST_F(Llama2Sp, AgreesWithTheLibrary) {
  for (const std::string& s : kRoundTrip) {
    SCOPED_TRACE(s);
    std::vector<int> lib_ids;
    ASSERT_TRUE(lib_->Encode(s, &lib_ids).ok());
    const Ids ids = tok_->encode(s, false);
    EXPECT_EQ(ids, Ids(lib_ids.begin(), lib_ids.end()));
    EXPECT_EQ(tok_->decode(ids), lib_->DecodeIds(lib_ids));
    // Piece by piece: our byte table against the library's own decoding of each piece.
    for (int32_t i : ids) {
      if (lib_->IsByte(i)) continue;
      EXPECT_EQ(tok_->token_bytes(i), lib_->DecodeIds({lib_->PieceToId("x"), i}).substr(1)) << i;
    }
  }
}

TEST_F(Llama2Sp, RoundTripsAndStreams) { expect_round_trips(*tok_); }

TEST_F(Llama2Sp, StreamHoldsPartialCharactersAndStripsFirstSpace) {
  const Tokenizer& t = *tok_;
  TextStream s(t);
  EXPECT_EQ(s.push(1), "");             // BOS: not printed
  EXPECT_EQ(s.push(15043), "Hello");    // the dummy-prefix space after BOS is dropped
  EXPECT_EQ(s.push(3186), " world");
  EXPECT_EQ(s.push(id("\u2581")), " ");
  EXPECT_EQ(s.push(3 + 0xF0), "");      // 😀 arrives byte by byte
  EXPECT_EQ(s.push(3 + 0x9F), "");
  EXPECT_EQ(s.push(3 + 0x98), "");
  EXPECT_EQ(s.push(3 + 0x80), "😀");
  EXPECT_EQ(s.push(3 + 0xE2), "");      // an unfinished '€' ...
  EXPECT_EQ(s.flush(), "\uFFFD");       // ... is replaced at the end
  // A continuation: the first piece keeps its space.
  TextStream cont(t, {.print_special = false, .sequence_start = false});
  EXPECT_EQ(cont.push(15043), " Hello");
  // Special tokens printed on request; the space after one is dropped like after BOS.
  TextStream sp(t, {.print_special = true, .sequence_start = true});
  EXPECT_EQ(sp.push(1), "<s>");
  EXPECT_EQ(sp.push(15043), "Hello");
  EXPECT_EQ(sp.push(2), "</s>");
}

// ---- SentencePiece through a .pqm ------------------------------------------------------------------

TEST(SentencePiecePqm, FromPqm) {
  const std::string proto = read_file(data_path("llama2-tokenizer.model"));
  TempDir d;
  model::TokenizerInfo info;
  info.kind = "sentencepiece";
  // Llama 2's tokenizer_config.json added_tokens_decoder, plus a padding token past the pieces.
  info.added_tokens = {{0, "<unk>", true}, {1, "<s>", true}, {2, "</s>", true}, {32000, "<pad>", true}};
  write_pqm(d.file("m.pqm"), info, {{"tokenizer.model", std::vector<uint8_t>(proto.begin(), proto.end())}}, {}, 32001, 1, {2});
  const model::PqmFile f = model::PqmFile::open(d.file("m.pqm"));
  const auto tok = Tokenizer::from_pqm(f);
  EXPECT_EQ(tok->kind(), TokenizerKind::sentencepiece);
  EXPECT_EQ(tok->vocab_size(), 32001);
  EXPECT_EQ(tok->encode("Hello world<pad>", true), (Ids{1, 15043, 3186, 32000}));
  EXPECT_EQ(tok->token_bytes(32000), "<pad>");
  EXPECT_TRUE(tok->is_special(32000));
  expect_round_trips(*tok);
}

// ---- llama2.c: the same vocabulary in llama2.c's format ----------------------------------------------

class Llama2c : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model::SourceTokenizer src = model::load_llama2c_tokenizer(data_path("llama2-tokenizer.bin"), 32000);
    vocab_ = new std::vector<std::string>(model::decode_string_list(src.blobs.at(0).second, "llama2-tokenizer.bin"));
    scores_ = new std::vector<float>(src.scores);
    TokenizerSetup s;
    s.where = "llama2-tokenizer.bin";
    tok_ = make_llama2c(*vocab_, *scores_, s).release();
    const std::string proto = read_file(data_path("llama2-tokenizer.model"));
    sp_ = make_sentencepiece(proto, {}).release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete sp_;
    delete vocab_;
    delete scores_;
  }
  static inline std::vector<std::string>* vocab_ = nullptr;
  static inline std::vector<float>* scores_ = nullptr;
  static inline Tokenizer* tok_ = nullptr;
  static inline Tokenizer* sp_ = nullptr;
};

TEST_F(Llama2c, KnownTokens) {
  const Tokenizer& t = *tok_;
  EXPECT_EQ(t.kind(), TokenizerKind::llama2c);
  EXPECT_EQ(t.bos(), 1);
  EXPECT_EQ(t.eos_ids(), (Ids{2}));
  EXPECT_EQ(t.piece(1), "\n<s>\n");  // as llama2.c stores it
  EXPECT_EQ(t.token_bytes(1), "<s>");
  EXPECT_EQ(t.piece(15043), " Hello");
  EXPECT_EQ(t.encode("Hello world", true), (Ids{1, 15043, 3186}));
  EXPECT_EQ(t.token_id(" "), 29871);
  EXPECT_EQ(t.encode("😀", false), (Ids{29871, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80}));
  EXPECT_EQ(t.encode("<s>Hi</s>", false), (Ids{1, t.token_id(" Hi").value_or(-1), 2}));
}

TEST_F(Llama2c, AgreesWithSentencePieceOnAscii) {
  const std::vector<std::string> sentences = {
      "The quick brown fox jumps over the lazy dog.",
      "Hello, world!",
      "Once upon a time, there was a little girl named Lily. She loved to play outside.",
      "It was 3:45 pm on March 14, 2015; a pi day.",
      "  Two leading spaces and   three inside.",
      "email: someone@example.com (not a real address)",
      "def f(x):\n    return x * 2\n",
      "ALL CAPS AND lowercase Mixed TOGETHER",
      "Numbers 1234567890 and symbols #$%^&*[]{}<>|\\/~`",
      "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced no evidence.",
  };
  for (const std::string& s : sentences) EXPECT_EQ(tok_->encode(s, true), sp_->encode(s, true)) << s;
}

TEST_F(Llama2c, RoundTripsAndStreams) { expect_round_trips(*tok_); }

TEST_F(Llama2c, FromPqm) {
  TempDir d;
  model::TokenizerInfo info;
  info.kind = "llama2c";
  info.options = {{"max_token_length", 27}};
  write_pqm(d.file("m.pqm"), info, {{"tokenizer.vocab", string_list(*vocab_)}}, *scores_, 32000, 1, {2});
  const model::PqmFile f = model::PqmFile::open(d.file("m.pqm"));
  const auto tok = Tokenizer::from_pqm(f);
  EXPECT_EQ(tok->kind(), TokenizerKind::llama2c);
  for (const std::string& s : kRoundTrip) EXPECT_EQ(tok->encode(s, true), tok_->encode(s, true)) << s;
}

// Scores decide the merge order. Vocabulary: <unk>, <s>, </s>, the 256 byte tokens (3..258),
// then " " (259), "a" (260), "b" (261), "c" (262), "ab" (263), "bc" (264), " a" (265), "bb" (266).
std::unique_ptr<Tokenizer> tiny_llama2c(float ab, float bc, float space_a) {
  std::vector<std::string> vocab = {"<unk>", "\n<s>\n", "\n</s>\n"};
  static const char* hex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) vocab.push_back(std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">");
  for (const char* p : {" ", "a", "b", "c", "ab", "bc", " a", "bb"}) vocab.push_back(p);
  std::vector<float> scores(vocab.size(), 0.0f);
  scores[263] = ab;
  scores[264] = bc;
  scores[265] = space_a;
  return make_llama2c(vocab, scores, {});
}

TEST(Llama2cTiny, HighestScoreMergesFirst) {
  // " abc": symbols " ", a, b, c; candidate pairs " a", "ab", "bc".
  // ab best: " " ab c; then " ab" and "abc" are not tokens: done.
  EXPECT_EQ(tiny_llama2c(-1, -2, -3)->encode("abc", false), (Ids{259, 263, 262}));
  // bc best: " " a bc; then " a": " a" bc.
  EXPECT_EQ(tiny_llama2c(-2, -1, -3)->encode("abc", false), (Ids{265, 264}));
  // " a" best: " a" b c; then "bc" (" ab" is not a token).
  EXPECT_EQ(tiny_llama2c(-2, -3, -1)->encode("abc", false), (Ids{265, 264}));
  // Equal scores: the leftmost pair (" a") first.
  EXPECT_EQ(tiny_llama2c(-1, -1, -1)->encode("abc", false), (Ids{265, 264}));
  // " bbb": the pairs (b b) at 1 and at 2 tie: the leftmost merges, " " bb b.
  EXPECT_EQ(tiny_llama2c(-1, -1, -1)->encode("bbb", false), (Ids{259, 266, 261}));
  // "é" is not a token: its bytes.
  EXPECT_EQ(tiny_llama2c(-1, -1, -1)->encode("é", false), (Ids{259, 3 + 0xC3, 3 + 0xA9}));
}

// ---- any text -----------------------------------------------------------------------------------------

// Random strings of code points from every plane (controls and NUL included, surrogates
// excluded): each kind gives them back exactly, and streams them in valid pieces.
std::string random_text(std::mt19937& rng) {
  static const std::vector<std::pair<char32_t, char32_t>> ranges = {
      {0x00, 0x7F}, {0x80, 0x2FF}, {0x300, 0x36F}, {0x2000, 0x206F}, {0x4E00, 0x9FFF}, {0xE000, 0xF8FF}, {0x1F300, 0x1FAFF}, {0x10000, 0x10FFFF}};
  std::string s;
  const int n = static_cast<int>(rng() % 16);
  for (int i = 0; i < n; ++i) {
    const auto [a, b] = ranges[rng() % ranges.size()];
    const char32_t c = a + static_cast<char32_t>(rng() % (b - a + 1));
    if (c < 0xD800 || c > 0xDFFF) utf8_append(s, c);
  }
  return s;
}

TEST_F(Llama2Sp, RandomTextRoundTrips) {
  std::mt19937 rng(11);
  for (int i = 0; i < 2000; ++i) {
    const std::string s = random_text(rng);
    const Ids ids = tok_->encode(s, true, false);
    ASSERT_EQ(tok_->decode(ids), s) << i;
    ASSERT_EQ(stream_all(*tok_, ids), s) << i;
  }
}

TEST_F(Llama2c, RandomTextRoundTrips) {
  std::mt19937 rng(12);
  for (int i = 0; i < 2000; ++i) {
    const std::string s = random_text(rng);
    const Ids ids = tok_->encode(s, true, false);
    ASSERT_EQ(tok_->decode(ids), s) << i;
    ASSERT_EQ(stream_all(*tok_, ids), s) << i;
  }
}

TEST(BpeTiny, RandomTextRoundTrips) {
  const TinyBpe t;
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup());
  std::mt19937 rng(13);
  for (int i = 0; i < 2000; ++i) {
    const std::string s = random_text(rng);
    const Ids ids = tok->encode(s, false, false);
    ASSERT_EQ(tok->decode(ids), s) << i;
    ASSERT_EQ(stream_all(*tok, ids), s) << i;
  }
}

// ---- streaming ---------------------------------------------------------------------------------------

TEST(TextStream, NeverEmitsInvalidUtf8) {
  // Random byte tokens (TinyBpe: id = byte) with multi-byte characters cut at random: every
  // chunk is valid, and the whole is exactly the bytes with invalid parts replaced.
  const TinyBpe t;
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup());
  std::mt19937 rng(1234);
  const std::vector<std::string> atoms = {"a", " ", "é", "€", "😀", "\xF0\x9F", "\x80", "\xFF", "\xE2\x82", "\xC3"};
  for (int round = 0; round < 200; ++round) {
    std::string bytes;
    const int n = static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) bytes += atoms[rng() % atoms.size()];
    const std::string out = stream_all(*tok, bytes_as_ids(bytes));
    EXPECT_EQ(out, utf8_sanitize(bytes));
    EXPECT_EQ(tok->decode(bytes_as_ids(bytes)), out);
  }
}

TEST(TextStream, HoldsBackSplitCharacters) {
  const TinyBpe t;
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup());
  TextStream s(*tok);
  EXPECT_EQ(s.push(0xE2), "");
  EXPECT_EQ(s.push(0x82), "");
  EXPECT_EQ(s.push(0xAC), "€");
  EXPECT_EQ(s.push(0xE2), "");
  EXPECT_EQ(s.push('A'), "\uFFFDA");  // the sequence was broken
  EXPECT_EQ(s.push(0xC3), "");
  EXPECT_EQ(s.push(264), "\uFFFD");   // a special token ends what was pending; not printed
  EXPECT_EQ(s.push(261), "hello");
  EXPECT_EQ(s.flush(), "");
  expect_error([&] { s.push(100000); }, {"tiny-bpe", "token id 100000", "out of range"});
}

// ---- bad input ---------------------------------------------------------------------------------------

TEST(TokenizerErrors, IdsOutOfRange) {
  const TinyBpe t;
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup());
  expect_error([&] { tok->token_bytes(-1); }, {"tiny-bpe", "token id -1"});
  expect_error([&] { tok->token_bytes(tok->vocab_size()); }, {"token id 269", "vocabulary of 269"});
  expect_error([&] { tok->decode(Ids{5, 99999}); }, {"token id 99999"});
  expect_error([&] { tok->is_special(1 << 30); }, {"out of range"});
}

TEST(TokenizerErrors, InvalidUtf8Input) {
  const TinyBpe t;
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup());
  expect_error([&] { tok->encode("a\xFF" "b", false); }, {"tiny-bpe", "not valid UTF-8", "0xFF", "offset 1"});
  expect_error([&] { tok->encode("\xED\xA0\x80", false); }, {"0xED", "offset 0"});
  expect_error([&] { tiny_llama2c(0, 0, 0)->encode("ok\xC3", false); }, {"not valid UTF-8", "offset 2"});
}

TEST(TokenizerErrors, BadVocabularies) {
  const TinyBpe t;
  const json o = TinyBpe::llama3_options();
  TokenizerSetup named;
  named.where = "bad.pqm";
  expect_error([&] { make_bpe({}, {}, o, named); }, {"bad.pqm", "empty vocabulary"});
  expect_error([&] { make_llama2c({}, {}, named); }, {"bad.pqm", "empty vocabulary"});
  expect_error([&] { make_sentencepiece("not a model", named); }, {"bad.pqm", "not a valid SentencePiece model"});
  expect_error([&] { make_bpe(t.vocab, {"h", "zz"}, o, named); }, {"merge 0", "'zz' is not in the vocabulary"});
  expect_error([&] { make_bpe(t.vocab, {"h"}, o, named); }, {"odd string count"});
  expect_error([&] { make_bpe(t.vocab, {"o", "h"}, o, named); }, {"merge 0 ('o' 'h')", "'oh' is not in the vocabulary"});
  json bad_re = o;
  bad_re["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(?<";
  expect_error([&] { make_bpe(t.vocab, t.merges, bad_re, named); }, {"bad.pqm: pre_tokenizer", "regex"});
  json bad_type = o;
  bad_type["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  expect_error([&] { make_bpe(t.vocab, t.merges, bad_type, named); }, {"pre-tokenizer type 'BertPreTokenizer' is not supported"});
  json bad_norm = o;
  bad_norm["normalizer"] = {{"type", "Precompiled"}};
  expect_error([&] { make_bpe(t.vocab, t.merges, bad_norm, named); }, {"normalizer type 'Precompiled'"});
  TokenizerSetup added = named;
  added.added_tokens = {{999, "<x>", true}};
  added.vocab_size = 300;
  expect_error([&] { make_bpe(t.vocab, t.merges, o, added); }, {"added token '<x>'", "999"});
  TokenizerSetup bos = named;
  bos.bos = 5000;
  expect_error([&] { make_bpe(t.vocab, t.merges, o, bos); }, {"BOS id 5000"});
  TokenizerSetup small = named;
  small.vocab_size = 10;
  expect_error([&] { make_bpe(t.vocab, t.merges, o, small); }, {"more than the model's vocab_size 10"});
  // llama2.c: scores must match and be finite.
  expect_error([&] { make_llama2c({"a", "b"}, {0.0f}, named); }, {"2 tokens but 1 scores"});
  expect_error([&] { make_llama2c({"a", "b"}, {0.0f, std::nanf("")}, named); }, {"token 1 'b'", "not finite"});
}

TEST(TokenizerErrors, CharactersTheVocabularyCannotEncode) {
  // BPE without byte fallback or unk, and a character outside the vocabulary.
  const std::vector<std::string> vocab = {"a", "b", "ab"};
  const json o = {{"pre_tokenizer", nullptr}, {"decoder", nullptr}};
  const auto tok = make_bpe(vocab, {"a", "b"}, o, {});
  EXPECT_EQ(tok->encode("abab", false), (Ids{2, 2}));
  expect_error([&] { tok->encode("abc", false); }, {"'c'", "not in the vocabulary"});
  // llama2.c without byte tokens.
  const auto l2c = make_llama2c({"<unk>", "\n<s>\n", "\n</s>\n", " ", "a"}, {0, 0, 0, 0, 0}, {});
  EXPECT_EQ(l2c->encode("a", false), (Ids{3, 4}));
  expect_error([&] { l2c->encode("z", false); }, {"'z'", "no byte token <0x7A>"});
}

TEST(TokenizerErrors, PqmWithoutTokenizer) {
  TempDir d;
  model::TokenizerInfo info;  // kind "none"
  write_pqm(d.file("none.pqm"), info, {}, {}, 16, -1, {});
  const model::PqmFile f = model::PqmFile::open(d.file("none.pqm"));
  expect_error([&] { Tokenizer::from_pqm(f); }, {"none.pqm", "no tokenizer"});
}

// ---- chat formats --------------------------------------------------------------------------------------

const std::vector<ChatMessage> kChat = {
    {"system", "You are terse."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "How are you?"}};

TEST(Chat, ChatMl) {
  EXPECT_EQ(format_chat(kChat, ChatFormat::chatml, true),
            "<|im_start|>system\nYou are terse.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n"
            "<|im_start|>user\nHow are you?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(format_chat({{"user", "x"}}, ChatFormat::chatml, false), "<|im_start|>user\nx<|im_end|>\n");
}

TEST(Chat, Llama3) {
  EXPECT_EQ(format_chat(kChat, ChatFormat::llama3, true),
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Content is trimmed, as Llama 3's template does.
  EXPECT_EQ(format_chat({{"user", "  x \n"}}, ChatFormat::llama3, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
}

TEST(Chat, Llama2) {
  EXPECT_EQ(format_chat(kChat, ChatFormat::llama2, true),
            "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! </s>"
            "<s>[INST] How are you? [/INST]");
  EXPECT_EQ(format_chat({{"user", " Hi "}}, ChatFormat::llama2, true), "<s>[INST] Hi [/INST]");
  expect_error([] { format_chat({{"user", "a"}, {"user", "b"}}, ChatFormat::llama2, true); },
               {"chat format llama2", "message 1", "'assistant' is expected"});
  expect_error([] { format_chat({{"user", "a"}, {"assistant", "b"}, {"system", "c"}}, ChatFormat::llama2, true); },
               {"message 2", "role 'system'"});
}

TEST(Chat, Plain) {
  EXPECT_EQ(format_chat(kChat, ChatFormat::plain, true),
            "System: You are terse.\nUser: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant: ");
  expect_error([] { format_chat({{"", "x"}}, ChatFormat::plain, true); }, {"empty role"});
}

TEST(Chat, Names) {
  for (ChatFormat f : {ChatFormat::plain, ChatFormat::chatml, ChatFormat::llama3, ChatFormat::llama2})
    EXPECT_EQ(parse_chat_format(chat_format_name(f)), f);
  EXPECT_FALSE(parse_chat_format("jinja").has_value());
}

TEST(Chat, ChooseFormat) {
  model::TokenizerInfo info;
  model::ModelConfig cfg;
  info.chat_template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}{% endfor %}";
  EXPECT_EQ(choose_chat_format(info, cfg), ChatFormat::chatml);
  info.chat_template = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}";
  EXPECT_EQ(choose_chat_format(info, cfg), ChatFormat::llama3);
  info.chat_template = "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}";
  EXPECT_EQ(choose_chat_format(info, cfg), ChatFormat::llama2);
  info.chat_template = "";
  info.chat_templates = {{"default", "{{ '[INST]' }}"}};
  EXPECT_EQ(choose_chat_format(info, cfg), ChatFormat::llama2);
  info.chat_templates = json::object();
  EXPECT_EQ(choose_chat_format(info, cfg), ChatFormat::plain);
  cfg.architecture = "qwen2";
  EXPECT_EQ(choose_chat_format(info, cfg), ChatFormat::chatml);  // by family
  // By vocabulary: the tiny BPE has <|im_start|> / <|im_end|> but no Llama 3 headers.
  const TinyBpe t;
  const auto bpe = make_bpe(t.vocab, t.merges, TinyBpe::llama3_options(), t.setup());
  cfg.architecture = "llama";
  EXPECT_EQ(choose_chat_format(info, cfg, bpe.get()), ChatFormat::chatml);
  // A Qwen-family model whose vocabulary lacks the ChatML tokens: plain.
  std::vector<std::string> v = {"a"};
  const auto bare = make_bpe(v, {}, json{{"pre_tokenizer", nullptr}}, {});
  cfg.architecture = "qwen3";
  EXPECT_EQ(choose_chat_format(info, cfg, bare.get()), ChatFormat::plain);
}

TEST(Chat, StopStringsAndTokens) {
  EXPECT_EQ(chat_stop_strings(ChatFormat::chatml), (std::vector<std::string>{"<|im_end|>", "<|endoftext|>"}));
  EXPECT_EQ(chat_stop_strings(ChatFormat::llama3)[0], "<|eot_id|>");
  EXPECT_EQ(chat_stop_strings(ChatFormat::llama2), (std::vector<std::string>{"</s>"}));
  EXPECT_EQ(chat_stop_strings(ChatFormat::plain), (std::vector<std::string>{"\nUser:"}));
  const TinyBpe t;
  TokenizerSetup s = t.setup();
  s.eos = Ids{268};
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::qwen2_options(), s);
  EXPECT_EQ(chat_stop_tokens(*tok, ChatFormat::chatml), (Ids{268, 264}));  // EOS, then <|im_end|>
  EXPECT_EQ(chat_stop_tokens(*tok, ChatFormat::plain), (Ids{268}));
}

TEST(Chat, EncodeMatchesSpecialTokensOnlyInMarkup) {
  const TinyBpe t;
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::qwen2_options(), t.setup());
  const Ids ids = encode_chat(*tok, {{"user", "hello<|im_end|>"}}, ChatFormat::chatml, true);
  // <|im_start|> "user" "\n" "hello" then the user's "<|im_end|>" as characters, then the markup.
  Ids want = {263};
  for (int32_t b : bytes_as_ids("user\n")) want.push_back(b);
  want.push_back(261);
  for (int32_t b : bytes_as_ids("<|im_end|>")) want.push_back(b);
  want.push_back(264);
  want.push_back('\n');
  want.push_back(263);
  for (int32_t b : bytes_as_ids("assistant\n")) want.push_back(b);
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok->decode(ids, false), format_chat({{"user", "hello<|im_end|>"}}, ChatFormat::chatml, true));
  // The tiny vocabulary has no Llama 3 headers.
  expect_error([&] { encode_chat(*tok, kChat, ChatFormat::llama3, true); }, {"needs the special token <|start_header_id|>"});
}

// ---- Jinja chat templates (the renderer itself: tests/test_jinja.cpp) -------------------------------

// A ChatML template as Qwen2 ships it.
constexpr const char* kChatMlJinja =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

TEST(ChatTemplate, JinjaTemplateRendersAsTheBuiltInFormat) {
  const ChatTemplate t = ChatTemplate::jinja(kChatMlJinja, "chatml.jinja", "", "<|im_end|>");
  EXPECT_TRUE(t.is_jinja());
  EXPECT_EQ(t.name(), "jinja");
  EXPECT_EQ(t.format(), ChatFormat::chatml);
  EXPECT_EQ(t.render(kChat, true), format_chat(kChat, ChatFormat::chatml, true));
  EXPECT_EQ(t.render(kChat, false), format_chat(kChat, ChatFormat::chatml, false));
  EXPECT_EQ(t.stop_strings(), (std::vector<std::string>{"<|im_end|>", "<|endoftext|>"}));
  const ChatTemplate b = ChatTemplate::builtin(ChatFormat::llama2);
  EXPECT_FALSE(b.is_jinja());
  EXPECT_EQ(b.name(), "llama2");
  EXPECT_EQ(b.render(kChat, true), format_chat(kChat, ChatFormat::llama2, true));
}

TEST(ChatTemplate, EncodeKeepsMessageContentOutOfSpecialTokenMatching) {
  const TinyBpe t;
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::qwen2_options(), t.setup());
  const ChatTemplate tmpl = ChatTemplate::jinja(kChatMlJinja, "chatml.jinja", "", "");
  const std::vector<ChatMessage> msgs = {{"user", "hello<|im_end|>"}};
  // The same ids as the built-in format's: the user's "<|im_end|>" stays characters.
  EXPECT_EQ(tmpl.encode(*tok, msgs, true), encode_chat(*tok, msgs, ChatFormat::chatml, true));
  const std::vector<ChatPart> parts = tmpl.parts(msgs, true);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_TRUE(parts[0].markup);
  EXPECT_EQ(parts[1].text, "hello<|im_end|>");
  EXPECT_FALSE(parts[1].markup);
  // A template that trims the content: found trimmed.
  const ChatTemplate trims = ChatTemplate::jinja(
      "{% for m in messages %}<|im_start|>{{ m.content | trim }}<|im_end|>{% endfor %}", "trim.jinja", "", "");
  const std::vector<ChatPart> tp = trims.parts({{"user", "  a<|im_end|>b \n"}}, false);
  ASSERT_EQ(tp.size(), 3u);
  EXPECT_EQ(tp[1].text, "a<|im_end|>b");
  EXPECT_FALSE(tp[1].markup);
  // A template that changes the content otherwise: the whole text is markup (HuggingFace's way).
  const ChatTemplate upper = ChatTemplate::jinja("{% for m in messages %}{{ m.content | upper }}{% endfor %}", "u.jinja", "", "");
  const std::vector<ChatPart> up = upper.parts({{"user", "abc"}}, false);
  ASSERT_EQ(up.size(), 1u);
  EXPECT_EQ(up[0].text, "ABC");
  EXPECT_TRUE(up[0].markup);
}

TEST(ChatTemplate, ForModelPrefersTheModelsTemplate) {
  const TinyBpe t;
  TokenizerSetup s = t.setup(263);
  s.eos = Ids{264};
  const auto tok = make_bpe(t.vocab, t.merges, TinyBpe::qwen2_options(), s);
  model::TokenizerInfo info;
  model::ModelConfig cfg;
  info.chat_template = "{{ bos_token }}|{% for m in messages %}{{ m.role }}:{{ m.content }}|{% endfor %}{{ eos_token }}";
  const ChatTemplate c = ChatTemplate::for_model(info, cfg, *tok);
  EXPECT_TRUE(c.is_jinja());
  EXPECT_EQ(c.render({{"user", "hi"}}, false), "<|im_start|>|user:hi|<|im_end|>");  // BOS / EOS as their text
  EXPECT_EQ(c.stop_tokens(*tok), (Ids{264}));
  info.chat_template.clear();
  EXPECT_EQ(ChatTemplate::for_model(info, cfg, *tok).name(), "chatml");  // by vocabulary
  info.chat_template = "{% if %}";
  try {
    ChatTemplate::for_model(info, cfg, *tok);
    ADD_FAILURE() << "a template that does not parse was accepted";
  } catch (const jinja::Error& e) {
    EXPECT_EQ(e.type(), "TemplateSyntaxError");
    EXPECT_NE(std::string(e.what()).find("tiny-bpe: chat template:1:"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, SystemPromptGoesIntoTheFirstUserMessageWhenTheTemplateRefusesIt) {
  const std::string gemma = read_file(data_path("chat-templates/google-gemma-2-2b-it.jinja"));
  const ChatTemplate t = ChatTemplate::jinja(gemma, "gemma.jinja", "<bos>", "<eos>");
  EXPECT_EQ(t.render({{"system", "Be brief."}, {"user", "Hi"}}, true),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(t.stop_strings(), (std::vector<std::string>{"<end_of_turn>", "<eos>"}));
  // What the template raises otherwise reaches the caller.
  try {
    t.render({{"user", "a"}, {"user", "b"}}, true);
    ADD_FAILURE() << "roles that do not alternate were accepted";
  } catch (const jinja::Error& e) {
    EXPECT_EQ(e.type(), "TemplateError");
    EXPECT_EQ(e.message(), "Conversation roles must alternate user/assistant/user/assistant/...");
  }
}

TEST(ChatTemplate, RendersWholeRequestsWithTools) {
  const ChatTemplate t = ChatTemplate::jinja(
      "{{ bos_token }}{% for tool in tools %}[{{ tool.function.name }}]{% endfor %}"
      "{% for m in messages %}<{{ m.role }}>{% if m.tool_calls %}{{ m.tool_calls[0].function | tojson }}"
      "{% else %}{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>{% endif %}",
      "tools.jinja", "<|begin_of_text|>", "<|im_end|>");
  ChatTemplateInput in = parse_conversation(jinja::json::parse(R"({
      "messages": [{"role": "user", "content": "weather?"},
                   {"role": "assistant", "tool_calls": [{"function": {"name": "w", "arguments": {"city": "Oslo"}}}]}],
      "tools": [{"type": "function", "function": {"name": "w"}}]})"), "req.json");
  in.add_generation_prompt = true;
  const std::string want = R"(<|begin_of_text|>[w]<user>weather?<assistant>{"name": "w", "arguments": {"city": "Oslo"}}<|im_start|>)";
  EXPECT_EQ(t.render(in), want);  // the template's BOS text fills the empty bos_token
  const TinyBpe tb;
  const auto tok = make_bpe(tb.vocab, tb.merges, TinyBpe::qwen2_options(), tb.setup());
  const Ids ids = t.encode(*tok, in);
  EXPECT_EQ(ids.front(), 268);  // <|begin_of_text|> as the special token
  EXPECT_EQ(ids.back(), 263);   // <|im_start|>
  EXPECT_EQ(tok->decode(ids, false), want);
  // A built-in format takes plain messages only.
  const ChatTemplate chatml = ChatTemplate::builtin(ChatFormat::chatml);
  expect_error([&] { chatml.render(in); }, {"chat format chatml", "message 1", "string role and content"});
  in.messages.erase(1);
  EXPECT_EQ(chatml.render(in), "<|im_start|>user\nweather?<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, ConversationFiles) {
  const ChatTemplateInput in = parse_conversation(
      jinja::json::parse(R"({"messages": [{"role": "user", "content": "x"}], "tools": [], "enable_thinking": false})"), "c.json");
  EXPECT_EQ(in.messages.size(), 1u);
  EXPECT_TRUE(in.tools.is_array());
  EXPECT_EQ(in.extra["enable_thinking"], false);
  const jinja::json v = chat_template_variables(in);
  EXPECT_TRUE(v.contains("bos_token") && v.contains("add_generation_prompt") && v["enable_thinking"] == false);
  EXPECT_TRUE(v["documents"].is_null());  // as HuggingFace passes it
  expect_error([] { parse_conversation(jinja::json::array(), "c.json"); }, {"c.json", "JSON object"});
  expect_error([] { parse_conversation(jinja::json::parse(R"({"messages": {}})"), "c.json"); }, {"\"messages\" must be an array"});
  expect_error([] { parse_conversation(jinja::json::parse(R"({"messages": [], "tools": 1})"), "c.json"); }, {"\"tools\""});
}

TEST_F(Llama2Sp, EncodeChatAsMetaDoes) {
  // Meta's reference encodes each turn as bos + encode("[INST] {user} [/INST]") with the dummy
  // prefix; the chat encoding must give the same ids.
  const Tokenizer& t = *tok_;
  const Ids ids = encode_chat(t, {{"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}}, ChatFormat::llama2, true);
  Ids want = t.encode("[INST] Hi [/INST] Hello! ", true, false);
  want.push_back(2);
  for (int32_t i : t.encode("[INST] Bye [/INST]", true, false)) want.push_back(i);
  EXPECT_EQ(ids, want);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 2);
  expect_error([&] { encode_chat(t, kChat, ChatFormat::chatml, true); }, {"llama2-tokenizer.model", "<|im_start|>"});
  // Plain: BOS as the tokenizer adds it.
  EXPECT_EQ(encode_chat(t, {{"user", "Hi"}}, ChatFormat::plain, true), t.encode("User: Hi\nAssistant: ", true, false));
}

}  // namespace
}  // namespace pqvk::tokenize
