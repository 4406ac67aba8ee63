// pq-quantize and pq-info run as subprocesses: good inputs succeed, bad ones exit with status
// 1 and an error naming the file / tensor / option, and nothing ever dies of a signal. pq-info
// --chat-template / --messages: the rendered prompt byte for byte, and clean errors for broken
// templates and conversations (tests/chat_template_check.py compares renderings with jinja2).
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "model/pqm.h"
#include "model/safetensors.h"
#include "model_fixtures.h"

namespace pqvk::test {
namespace {

const std::string kQuantize = PQVK_QUANTIZE_BIN;
const std::string kInfo = PQVK_INFO_BIN;
const std::string kStories = std::string(PQVK_TEST_DATA) + "/stories260K.bin";

std::string q(const std::string& s) { return "'" + s + "'"; }

// Expects a clean failure: exit status 1 (no signal, no abort) and every part in the output.
void expect_failure(const std::string& cmd, const std::vector<std::string>& parts) {
  const CommandResult r = run_command(cmd);
  EXPECT_EQ(r.signal, 0) << cmd << "\n" << r.output;
  EXPECT_EQ(r.exit_code, 1) << cmd << "\n" << r.output;
  for (const std::string& p : parts) EXPECT_NE(r.output.find(p), std::string::npos) << "'" << p << "' not in:\n" << r.output;
}

TEST(Cli, QuantizeStoriesThenInfo) {
  TempDir d;
  const std::string out = d.file("s.pqm");
  const CommandResult r = run_command(kQuantize + " " + q(kStories) + " " + q(out) + " --bits 4 --block-size 64 --threads 2 --dequant-out " +
                                      q(d.file("deq.safetensors")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("layers.4.mlp.down"), std::string::npos) << r.output;  // the summary table
  EXPECT_NE(r.output.find("SQNR dB"), std::string::npos);
  EXPECT_NE(r.output.find("47 tensors, 260032 parameters"), std::string::npos) << r.output;
  const CommandResult info = run_command(kInfo + " " + q(out));
  ASSERT_EQ(info.exit_code, 0) << info.output;
  for (const char* s : {"llama: dim 64, hidden 172, 5 layers, 8 heads (4 kv, head_dim 8), vocab 512, context 512",
                        "checksums verified", "layers.0.attn.q", "pq q4 B64 rot", "tied embeddings yes"})
    EXPECT_NE(info.output.find(s), std::string::npos) << s << " not in:\n" << info.output;
  const CommandResult js = run_command(kInfo + " --json " + q(out));
  ASSERT_EQ(js.exit_code, 0) << js.output;
  EXPECT_EQ(json::parse(js.output)["model"]["dim"], 64);
  const model::SafetensorsFile st(d.file("deq.safetensors"));
  EXPECT_EQ(st.tensor("model.layers.0.self_attn.q_proj.weight").shape, (std::vector<uint64_t>{64, 64}));
}

TEST(Cli, QuantizeRejectsBadOptionsAndInputs) {
  TempDir d;
  const std::string out = q(d.file("o.pqm"));
  const std::string in = q(kStories);
  expect_failure(kQuantize + " " + in + " " + out + " --bits 9", {"--bits: must be 2..8"});
  expect_failure(kQuantize + " " + in + " " + out + " --recipe q9", {"--recipe: unknown recipe 'q9'"});
  expect_failure(kQuantize + " " + in + " " + out + " --method nf4", {"--method: unknown method 'nf4'"});
  expect_failure(kQuantize + " " + in + " " + out + " --block-size 100", {"--block-size: must be 64, 128 or 256"});
  expect_failure(kQuantize + " " + q(d.file("missing.bin")) + " " + out, {"missing.bin", "no such file"});
  expect_failure(kQuantize + " " + in + " " + out + " --tokenizer " + q(std::string(PQVK_TEST_DATA) + "/llama2-tokenizer.model"),
                 {"llama2-tokenizer.model", "32000 pieces"});
  const std::vector<uint8_t> full = read_bytes(kStories);
  write_bytes(d.file("cut.bin"), std::vector<uint8_t>(full.begin(), full.begin() + 500000));
  expect_failure(kQuantize + " " + q(d.file("cut.bin")) + " " + out, {"cut.bin", "truncated"});
  write_text(d.file("config.json"), "{\"architectures\": [\"LlamaForCausalLM\"]}");
  expect_failure(kQuantize + " " + q(d.path()) + " " + out, {"config.json", "missing key 'hidden_size'"});
  EXPECT_FALSE(std::filesystem::exists(d.file("o.pqm")));  // failed runs leave no output behind
  const CommandResult usage = run_command(kQuantize + " " + in);  // OUTPUT missing: CLI11's own error
  EXPECT_EQ(usage.signal, 0);
  EXPECT_NE(usage.exit_code, 0);
  EXPECT_LT(usage.exit_code, 128);
}

TEST(Cli, InfoRejectsBadFiles) {
  TempDir d;
  const std::string good = d.file("good.pqm");
  write_tiny_pqm(good);
  const std::vector<uint8_t> bytes = read_bytes(good);
  ASSERT_EQ(run_command(kInfo + " " + q(good)).exit_code, 0);
  for (size_t cut : {size_t{0}, size_t{10}, size_t{64}, bytes.size() / 2, bytes.size() - 1}) {
    write_bytes(d.file("cut.pqm"), std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(cut)));
    expect_failure(kInfo + " " + q(d.file("cut.pqm")), {"pq-info: error: " + d.file("cut.pqm")});
  }
  std::vector<uint8_t> b = bytes;
  b[0] = 'G';
  write_bytes(d.file("magic.pqm"), b);
  expect_failure(kInfo + " " + q(d.file("magic.pqm")), {"magic.pqm", "bad magic"});
  const model::PqmFile f = model::PqmFile::open(good);
  const model::TensorInfo& t = f.tensor("layers.0.mlp.up");
  b = bytes;
  b[t.offset + 3] ^= 0x40;
  write_bytes(d.file("crc.pqm"), b);
  expect_failure(kInfo + " " + q(d.file("crc.pqm")), {"crc.pqm: tensor 'layers.0.mlp.up': checksum mismatch"});
  EXPECT_EQ(run_command(kInfo + " --no-verify " + q(d.file("crc.pqm"))).exit_code, 0);
  expect_failure(kInfo + " " + q(d.file("absent.pqm")), {"absent.pqm", "cannot open"});
}

TEST(Cli, InfoRendersChatTemplates) {
  TempDir d;
  const std::string conv = d.file("c.json"), tmpl = d.file("t.jinja");
  write_text(conv, R"({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": " Hi "}],
                       "tools": [{"name": "f"}], "flag": true})");
  write_text(tmpl, "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}\n{% endfor %}"
                   "{% if add_generation_prompt %}<assistant>{% endif %}{{ tools[0].name }}{{ flag }}{{ eos_token }}\n");
  const std::string base = kInfo + " --chat-template " + q(tmpl) + " --messages " + q(conv);
  CommandResult r = run_command(base + " --add-generation-prompt --bos '<s>' --eos '</s>' 2>/dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "<s><system>S\n<user>Hi\n<assistant>fTrue</s>");  // the last newline: the one jinja2 drops
  r = run_command(base + " 2>/dev/null");
  EXPECT_EQ(r.output, "<system>S\n<user>Hi\nfTrue");
  // Broken templates and conversations: exit status 1 and where the problem is.
  write_text(d.file("syntax.jinja"), "ok\n{% for m in messages %}{{ m.content }\n");
  expect_failure(kInfo + " --chat-template " + q(d.file("syntax.jinja")) + " --messages " + q(conv),
                 {"syntax.jinja:2:37: TemplateSyntaxError: unexpected '}'"});
  write_text(d.file("raise.jinja"), "{{ raise_exception('only user messages, please') }}");
  expect_failure(kInfo + " --chat-template " + q(d.file("raise.jinja")) + " --messages " + q(conv),
                 {"raise.jinja:1:4: TemplateError: only user messages, please"});
  write_text(d.file("undefined.jinja"), "{{ messages[5].content }}");
  expect_failure(kInfo + " --chat-template " + q(d.file("undefined.jinja")) + " --messages " + q(conv),
                 {"UndefinedError: list object has no element 5"});
  expect_failure(kInfo + " --chat-template " + q(d.file("absent.jinja")) + " --messages " + q(conv), {"absent.jinja", "cannot open"});
  write_text(d.file("bad.json"), "{\"messages\": [");
  expect_failure(kInfo + " --chat-template " + q(tmpl) + " --messages " + q(d.file("bad.json")), {"bad.json", "not valid JSON"});
  write_text(d.file("shape.json"), R"({"messages": "hello"})");
  expect_failure(kInfo + " --chat-template " + q(tmpl) + " --messages " + q(d.file("shape.json")),
                 {"shape.json", "\"messages\" must be an array"});
  expect_failure(kInfo + " --messages " + q(conv), {"--messages needs --chat-template"});
  // A model's own template.
  write_tiny_pqm(d.file("tiny.pqm"));
  r = run_command(kInfo + " " + q(d.file("tiny.pqm")) + " --messages " + q(conv) + " 2>/dev/null");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.output.rfind("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n", 0), 0u) << r.output;
  const CommandResult usage = run_command(kInfo + " --chat-template " + q(tmpl));  // --messages missing: CLI11's error
  EXPECT_EQ(usage.signal, 0);
  EXPECT_NE(usage.exit_code, 0);
  EXPECT_LT(usage.exit_code, 128);
}

}  // namespace
}  // namespace pqvk::test
