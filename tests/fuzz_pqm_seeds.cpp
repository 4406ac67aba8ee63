// Writes the seed corpus of fuzz_pqm: small valid .pqm files covering every tensor kind,
// every quantization method, tied and untied heads, and each tokenizer kind.
//   fuzz_pqm_seeds DIR
#include <cstdio>
#include <string>

#include "model/pqm.h"
#include "model_fixtures.h"

namespace {

using namespace pqvk;

// A one-layer model of `c` with every matrix stored as `kind` ("f32", "f16", or a method name).
void write_small(const std::string& path, model::ModelConfig c, const std::string& kind, const model::TokenizerInfo& tok,
                 const std::vector<std::pair<std::string, std::vector<uint8_t>>>& blobs, const std::vector<float>& scores) {
  model::PqmWriter w(path);
  uint32_t seed = 11;
  for (const model::TensorSpec& t : model::model_tensors(c)) {
    uint64_t n = 1;
    for (uint64_t d : t.shape) n *= d;
    const std::vector<float> v = test::random_weights(n, seed++, 0.5f);
    pq::Method m;
    if (!model::is_matrix(t.role) || kind == "f32") w.add_f32(t.name, t.shape, v);
    else if (kind == "f16") w.add_f16(t.name, t.shape, v);
    else if (pq::parse_method(kind, &m)) w.add_quant(t.name, pq::quantize(v.data(), t.shape[0], t.shape[1], 2 + seed % 7, 64, m));
  }
  for (const auto& [name, bytes] : blobs) w.add_blob(name, bytes);
  if (!scores.empty()) w.add_f32("tokenizer.scores", {scores.size()}, scores);
  w.finish(c, tok);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_pqm_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  try {
    model::ModelConfig c;
    c.dim = 32;
    c.hidden_dim = 40;
    c.n_layers = 1;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 16;
    c.vocab_size = 24;
    c.max_seq_len = 16;
    c.bos_id = 1;
    c.eos_ids = {2};
    c.tie_word_embeddings = true;
    model::TokenizerInfo none;
    write_small(dir + "/f32.pqm", c, "f32", none, {}, {});
    c.tie_word_embeddings = false;
    c.architecture = "qwen2";
    c.qkv_bias = true;
    write_small(dir + "/f16.pqm", c, "f16", none, {}, {});
    model::TokenizerInfo bpe;
    bpe.kind = "bpe";
    bpe.chat_template = "{{ messages }}";
    bpe.added_tokens = {{23, "<|end|>", true}};
    std::vector<std::string> vocab;
    for (int i = 0; i < 24; ++i) vocab.push_back("v" + std::to_string(i));
    const auto merges = model::encode_string_list({"v1", "v2", "v3", "v4"});
    c.architecture = "qwen3";
    c.qk_norm = true;
    write_small(dir + "/pq-bpe.pqm", c, "pq", bpe, {{"tokenizer.vocab", model::encode_string_list(vocab)}, {"tokenizer.merges", merges}}, {});
    model::TokenizerInfo sp;
    sp.kind = "sentencepiece";
    c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 8};
    write_small(dir + "/absmax-sp.pqm", c, "absmax", sp, {{"tokenizer.model", {1, 2, 3, 4, 5}}}, {});
    model::TokenizerInfo l2c;
    l2c.kind = "llama2c";
    l2c.options = {{"max_token_length", 4}};
    std::vector<float> scores(24, -1.0f);
    write_small(dir + "/lloyd-l2c.pqm", c, "lloyd", l2c, {{"tokenizer.vocab", model::encode_string_list(vocab)}}, scores);
    write_small(dir + "/rot-uniform.pqm", c, "rot-uniform", none, {}, {});
    test::write_tiny_pqm(dir + "/tiny.pqm");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_pqm_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
