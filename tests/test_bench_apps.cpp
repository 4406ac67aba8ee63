// vk-bench (whole models) and pq-perplexity as subprocesses on the bundled model, on whatever
// device the tests use (lavapipe in CI), with the validation layer on: their JSON parses and
// holds what it should, GPU and CPU perplexities agree, quantization costs quality in the right
// order, and bad arguments and texts give exit status 1 with a message naming the file / option.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>

#include "model_fixtures.h"

#ifndef PQVK_VKBENCH_BIN
#error "PQVK_VKBENCH_BIN, PQVK_PERPLEXITY_BIN, PQVK_QUANTIZE_BIN, PQVK_DEFAULT_MODEL, PQVK_SOURCE_DIR must be defined"
#endif

namespace pqvk::test {
namespace {

const std::string kBench = PQVK_VKBENCH_BIN;
const std::string kPpl = PQVK_PERPLEXITY_BIN;
const std::string kQuantize = PQVK_QUANTIZE_BIN;
const std::string kModel = PQVK_DEFAULT_MODEL;  // the bundled model at q5
const std::string kBrown = std::string(PQVK_SOURCE_DIR) + "/models/pqvk-brown-10m";
const std::string kText = std::string(PQVK_TEST_DATA) + "/brown-valid-excerpt.txt";

std::string q(const std::string& s) { return "'" + s + "'"; }

json read_json(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  return json::parse(f);  // throws (fails the test) when it does not parse
}

void expect_failure(const std::string& cmd, const std::vector<std::string>& parts) {
  const CommandResult r = run_command(cmd);
  EXPECT_EQ(r.signal, 0) << cmd << "\n" << r.output;
  EXPECT_EQ(r.exit_code, 1) << cmd << "\n" << r.output;
  for (const std::string& p : parts) EXPECT_NE(r.output.find(p), std::string::npos) << "'" << p << "' not in:\n" << r.output;
}

// Runs a command that must succeed; returns its output.
std::string ok(const std::string& cmd) {
  const CommandResult r = run_command(cmd);
  EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
  return r.output;
}

const json* find_kernel(const json& breakdown, const std::string& name) {
  for (const json& k : breakdown["kernels"])
    if (k["kernel"] == name) return &k;
  return nullptr;
}

TEST(VkBench, BundledModelJsonCsvAndBreakdown) {
  TempDir d;
  const std::string out = ok(kBench + " -m " + q(kModel) + " -p 16 -n 4 -r 2 --warmup-ms 0 --copy-mib 8 --profile-reps 1" +
                             " --json " + q(d.file("b.json")) + " --csv " + q(d.file("b.csv")));
  EXPECT_NE(out.find("| pqvk-brown-10m-q5.pqm | q5 |"), std::string::npos) << out;  // the markdown table
  const json j = read_json(d.file("b.json"));
  EXPECT_GT(j["copy_bandwidth_gbs"].get<double>(), 0.0);
  ASSERT_EQ(j["models"].size(), 1u);
  const json& m = j["models"][0];
  EXPECT_EQ(m["format"], "q5");
  EXPECT_EQ(m["params"], 11015040);  // models/pqvk-brown-10m/README.md
  EXPECT_GT(m["device_bytes"].get<uint64_t>(), m["weight_bytes"].get<uint64_t>());
  ASSERT_EQ(m["tests"].size(), 2u);
  EXPECT_EQ(m["tests"][0]["test"], "pp16");
  EXPECT_EQ(m["tests"][1]["test"], "tg4");
  for (const json& t : m["tests"]) {
    EXPECT_EQ(t["tps"].size(), 2u);
    EXPECT_GT(t["tps_mean"].get<double>(), 0.0);
  }
  // Roofline: the tied embedding is read once, as the LM head; KV of 2.5 positions on average.
  const json& r = m["roofline"];
  EXPECT_EQ(r["kv_bytes_per_token"], 6 * 2 * 128 * 2 * 5 / 2);  // layers * (k, v) * kv_dim * fp16 * 2.5
  EXPECT_LT(r["weight_bytes_per_token"].get<uint64_t>(), m["weight_bytes"].get<uint64_t>() + 1);
  EXPECT_GT(r["weight_bytes_per_token"].get<uint64_t>(), m["weight_bytes"].get<uint64_t>() * 9 / 10);
  EXPECT_NEAR(r["pct_of_ideal"].get<double>(), 100.0 * r["tps"].get<double>() / r["ideal_tps"].get<double>(), 1e-6);
  // Breakdown of a decode step: every layer's kernels, once per layer.
  const json& bd = m["breakdown_decode"];
  EXPECT_EQ(bd["tokens"], 1);
  double sum = 0;
  for (const json& k : bd["kernels"]) sum += k["us"].get<double>();
  EXPECT_GT(sum, 0.0);
  // q|k|v and gate|up joined into one matrix each; attention split over the context, merged in
  // the output projection's preparation (no direct attention: W_o's input blocks of 128 span
  // two KV heads' query heads, three of 64 each); the o, gate|up and down GEMVs prepare the next one's
  // input (GemvOp::Fold): 6 dispatches a layer, 5 more per token (embedding, the first layer's
  // RMSNorm, LM head, two-pass argmax).
  for (const char* k : {"gemv attn.qkv", "gemv attn.o (+next input)", "gemv mlp.gate_up (swiglu) (+next input)",
                        "gemv mlp.down (+next input)", "attention (rope, kv store, split context)", "attention merge+fwht"}) {
    const json* e = find_kernel(bd, k);
    ASSERT_NE(e, nullptr) << k;
    EXPECT_EQ((*e)["calls"], 6) << k;
  }
  EXPECT_EQ(find_kernel(bd, "swiglu+fwht"), nullptr);
  ASSERT_NE(find_kernel(bd, "rmsnorm+fwht"), nullptr);
  EXPECT_EQ((*find_kernel(bd, "rmsnorm+fwht"))["calls"], 1);
  ASSERT_NE(find_kernel(bd, "gemv lm_head"), nullptr);
  EXPECT_EQ(bd["dispatches"], 6 * 6 + 5);
  EXPECT_EQ(bd["barriers"], 6 * 6 + 5);
  EXPECT_EQ((*find_kernel(bd, "argmax"))["calls"], 1);
  EXPECT_EQ(m["breakdown_prefill"]["tokens"], 16);
  ASSERT_NE(find_kernel(m["breakdown_prefill"], "gemm mlp.down"), nullptr);
  // CSV: a header and one line per test.
  std::ifstream csv(d.file("b.csv"));
  std::string line;
  int lines = 0;
  while (std::getline(csv, line)) ++lines;
  EXPECT_EQ(lines, 3);
}

// Continuous batching (-np, llama.cpp's batched-bench): N sequences decoding together, their
// aggregate tokens/s next to the single-sequence tg, and a breakdown of one batched step.
TEST(VkBench, BatchedDecodeAggregate) {
  TempDir d;
  const std::string out = ok(kBench + " -m " + q(kModel) + " -p 0 -n 3 -np 1,3 -r 1 --warmup-ms 0 --copy-mib 8 --profile-reps 1" +
                             " --json " + q(d.file("b.json")));
  EXPECT_NE(out.find("Continuous batching"), std::string::npos) << out;
  EXPECT_NE(out.find("| tg3 x3 | 3 |"), std::string::npos) << out;
  const json j = read_json(d.file("b.json"));
  const json& m = j["models"][0];
  ASSERT_EQ(m["tests"].size(), 3u);
  EXPECT_EQ(m["tests"][0]["test"], "tg3");
  EXPECT_EQ(m["tests"][0]["n_parallel"], 0);
  EXPECT_EQ(m["tests"][1]["test"], "tg3 x1");
  EXPECT_EQ(m["tests"][2]["test"], "tg3 x3");
  EXPECT_EQ(m["tests"][2]["n_parallel"], 3);
  EXPECT_GT(m["tests"][2]["tps_mean"].get<double>(), 0.0);
  const json& bd = m["breakdown_batched_decode"];
  EXPECT_EQ(bd["tokens"], 3);
  ASSERT_NE(find_kernel(bd, "batched gemv mlp.down"), nullptr) << bd.dump();
  EXPECT_EQ((*find_kernel(bd, "attention"))["calls"], 6);
  EXPECT_EQ((*find_kernel(bd, "batched gemv lm_head"))["calls"], 1);
  const CommandResult bad = run_command(kBench + " -m " + q(kModel) + " -p 0 -n 2 -np 0");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("-np"), std::string::npos) << bad.output;
}

TEST(VkBench, SyntheticFormatsInOneRun) {
  TempDir d;
  ok(kBench + " --synthetic tiny --bits 3 --recipe mixed --fp16 -p 8 -n 2 -r 1 --warmup-ms 0 --copy-mib 8 --no-breakdown" +
     " -o json --json " + q(d.file("s.json")));
  const json j = read_json(d.file("s.json"));
  ASSERT_EQ(j["models"].size(), 3u);
  EXPECT_EQ(j["models"][0]["format"], "q3");
  EXPECT_EQ(j["models"][1]["format"], "mixed");
  EXPECT_EQ(j["models"][2]["format"], "f16");
  const auto bytes = [&](int i) { return j["models"][i]["weight_bytes"].get<uint64_t>(); };
  EXPECT_LT(bytes(0), bytes(1));
  EXPECT_LT(bytes(1), bytes(2));
  EXPECT_FALSE(j["models"][0].contains("breakdown_decode"));
}

// The decode breakdown of a shape with the direct attention (GpuOptions::decode_direct_max: the
// synthetic tiny shape, two query heads of 64 per KV head, blocks of 128): at the profiled
// position (2) one split written straight into W_o's input, 5 dispatches a layer; with
// PQVK_DECODE_DIRECT_MAX=0 the split context and the merge, 6.
TEST(VkBench, DecodeBreakdownWithDirectAttention) {
  TempDir d;
  const std::string args = " --synthetic tiny --bits 4 -p 8 -n 4 -r 1 --warmup-ms 0 --copy-mib 8 --profile-reps 1 -o json --json ";
  ok(kBench + args + q(d.file("direct.json")));
  ok("PQVK_DECODE_DIRECT_MAX=0 " + kBench + args + q(d.file("split.json")));
  const json direct = read_json(d.file("direct.json"))["models"][0]["breakdown_decode"];
  const json split = read_json(d.file("split.json"))["models"][0]["breakdown_decode"];
  const json* a = find_kernel(direct, "attention (rope, kv store, one split, +fwht)");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ((*a)["calls"], 2);
  EXPECT_EQ(find_kernel(direct, "attention merge+fwht"), nullptr);
  EXPECT_EQ(find_kernel(direct, "attention (rope, kv store, split context)"), nullptr);
  EXPECT_EQ(direct["dispatches"], 2 * 5 + 5);
  ASSERT_NE(find_kernel(split, "attention merge+fwht"), nullptr);
  EXPECT_EQ((*find_kernel(split, "attention merge+fwht"))["calls"], 2);
  EXPECT_EQ(split["dispatches"], 2 * 6 + 5);
}

TEST(VkBench, ListDevices) {
  const std::string out = ok(kBench + " --list-devices");
  EXPECT_NE(out.find("| 0 |"), std::string::npos) << out;
}

TEST(VkBench, BadArgumentsAreClearErrors) {
  expect_failure(kBench + " --synthetic llama9-70b", {"--synthetic", "unknown shape 'llama9-70b'"});
  expect_failure(kBench + " -m " + q(kModel) + " -o xml", {"-o/--output", "xml"});
  expect_failure(kBench, {"nothing to run"});
  expect_failure(kBench + " -m /nonexistent/model.pqm", {"/nonexistent/model.pqm"});
  expect_failure(kBench + " -m " + q(kModel) + " --bits 4", {"--bits"});
  expect_failure(kBench + " --synthetic tiny --recipe q9", {"--recipe", "q9"});
  expect_failure(kBench + " -m " + q(kModel) + " -p 500 -n 100 --warmup-ms 0", {"exceed the model's context of 512"});
  // Checked before the depth's prefill (a llama3-8b one would take minutes): a depth filling the
  // whole context leaves no room for the generation after it.
  expect_failure(kBench + " --synthetic tiny -d 2048 -p 0 -n 32 --warmup-ms 0", {"synthetic tiny", "2080", "exceed the model's context of 2048"});
  expect_failure(kBench + " -m " + q(std::string(PQVK_SOURCE_DIR) + "/CMakeLists.txt"), {"CMakeLists.txt"});
}

double ppl_of(const std::string& json_path) { return read_json(json_path)["ppl"].get<double>(); }

TEST(PqPerplexity, GpuEqualsCpuOnTheBundledModel) {
  TempDir d;
  const std::string args = " -m " + q(kModel) + " -f " + q(kText) + " --ctx 64 --chunks 2 -q --json ";
  ok(kPpl + args + q(d.file("gpu.json")) + " --device 0");  // Vulkan, also where the only device is lavapipe
  ok(kPpl + args + q(d.file("cpu.json")) + " --cpu --threads 2");
  const json g = read_json(d.file("gpu.json")), c = read_json(d.file("cpu.json"));
  EXPECT_NE(g["device"], "CPU reference");
  EXPECT_EQ(g["tokens_scored"], 62);  // 2 chunks of 64: positions 32..62 predict 33..63
  EXPECT_EQ(c["tokens_scored"], 62);
  EXPECT_EQ(c["device"], "CPU reference");
  EXPECT_LT(std::abs(g["ppl"].get<double>() / c["ppl"].get<double>() - 1.0), 1e-3)
      << g["ppl"] << " vs " << c["ppl"];
  EXPECT_GT(g["ppl"].get<double>(), 1.0);
}

TEST(PqPerplexity, QuantizationCostsQualityAndFp16AgainstItselfIsZero) {
  TempDir d;
  for (const auto& [name, opts] : std::vector<std::pair<std::string, std::string>>{{"f16", "--method fp16"}, {"q3", "--bits 3"}})
    ok(kQuantize + " " + q(kBrown) + " " + q(d.file(name + ".pqm")) + " " + opts + " --threads 2 --quiet");
  // llama.cpp's protocol with chunks of 128 over the whole excerpt (12 chunks), on the CPU
  // reference (fast). The margin of fp16 over q3 is small on this model (1.1% here, 0.6% on the
  // whole of brown-valid.txt: bench/RESULTS.md); the KL divergences are the sharper check.
  const std::string common = " -f " + q(kText) + " --ctx 128 --cpu --threads 2 -q";
  const std::string base = d.file("f16.logp");
  ok(kPpl + " -m " + q(d.file("f16.pqm")) + common + " --save-logits " + q(base) + " --json " + q(d.file("f16.json")));
  ok(kPpl + " -m " + q(d.file("f16.pqm")) + common + " --kl-divergence " + q(base) + " --json " + q(d.file("self.json")));
  ok(kPpl + " -m " + q(d.file("q3.pqm")) + common + " --kl-divergence " + q(base) + " --json " + q(d.file("q3.json")));
  ok(kPpl + " -m " + q(kModel) + common + " --kl-divergence " + q(base) + " --json " + q(d.file("q5.json")));
  const json self = read_json(d.file("self.json")), q3 = read_json(d.file("q3.json")), q5 = read_json(d.file("q5.json"));
  EXPECT_EQ(self["kld"]["kld_mean"].get<double>(), 0.0);
  EXPECT_EQ(self["kld"]["same_top1"].get<double>(), 1.0);
  EXPECT_EQ(self["kld"]["delta_p_mean"].get<double>(), 0.0);
  EXPECT_EQ(self["ppl"], read_json(d.file("f16.json"))["ppl"]);
  EXPECT_NEAR(self["kld"]["base_ppl"].get<double>(), self["ppl"].get<double>(), 1e-9 * self["ppl"].get<double>());
  EXPECT_EQ(q3["tokens_scored"], 12 * 63);
  EXPECT_LT(ppl_of(d.file("f16.json")), q3["ppl"].get<double>());
  EXPECT_GT(q3["kld"]["kld_mean"].get<double>(), q5["kld"]["kld_mean"].get<double>());
  EXPECT_GT(q5["kld"]["kld_mean"].get<double>(), 0.0);
  EXPECT_LT(q3["kld"]["same_top1"].get<double>(), 1.0);
}

// The PolarQuant KV cache (--kv-type pq8 / pq4) against the fp16 one on the bundled model (CPU
// reference): a small, nonzero KL divergence at 8 bits, a larger one at 4; the JSON says which
// cache ran; the GPU's pq4 cache scores as the CPU's.
TEST(PqPerplexity, PolarQuantKvCacheAgainstFp16) {
  TempDir d;
  const std::string common = " -m " + q(kModel) + " -f " + q(kText) + " --ctx 128 --chunks 4 --cpu --threads 2 -q";
  const std::string base = d.file("f16.logp");
  ok(kPpl + common + " --save-logits " + q(base) + " --json " + q(d.file("f16.json")));
  ok(kPpl + common + " --kv-type pq8 --kl-divergence " + q(base) + " --json " + q(d.file("pq8.json")));
  ok(kPpl + common + " --kv-type pq4 --kl-divergence " + q(base) + " --json " + q(d.file("pq4.json")));
  const json f16 = read_json(d.file("f16.json")), pq8 = read_json(d.file("pq8.json")), pq4 = read_json(d.file("pq4.json"));
  EXPECT_EQ(f16["kv_type"], "f16");
  EXPECT_EQ(pq8["kv_type"], "pq8");
  EXPECT_GT(pq8["kld"]["kld_mean"].get<double>(), 0.0);
  EXPECT_GT(pq4["kld"]["kld_mean"].get<double>(), 2 * pq8["kld"]["kld_mean"].get<double>());
  EXPECT_LT(std::abs(pq8["ppl"].get<double>() / f16["ppl"].get<double>() - 1.0), 0.02);
  // The same cache on the GPU (lavapipe in CI) scores as the CPU reference does.
  ok(kPpl + " -m " + q(kModel) + " -f " + q(kText) + " --ctx 128 --chunks 4 --device 0 -q --kv-type pq4 --json " +
     q(d.file("gpu-pq4.json")));
  const json gpu4 = read_json(d.file("gpu-pq4.json"));
  EXPECT_EQ(gpu4["kv_type"], "pq4");
  EXPECT_LT(std::abs(gpu4["ppl"].get<double>() / pq4["ppl"].get<double>() - 1.0), 2e-3) << gpu4["ppl"] << " " << pq4["ppl"];
  const CommandResult bad = run_command(kPpl + common + " --kv-type q4");  // CLI11's own error
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--kv-type"), std::string::npos) << bad.output;
}

TEST(PqPerplexity, StrideWindowsScoreEachTokenOnce) {
  TempDir d;
  ok(kPpl + " -m " + q(kModel) + " -f " + q(kText) + " --ctx 64 --stride 32 --chunks 5 --cpu --threads 2 -q --json " +
     q(d.file("s.json")));
  // The first window scores positions 1..63, each later one the 32 new tokens at its end.
  EXPECT_EQ(read_json(d.file("s.json"))["tokens_scored"], 63 + 4 * 32);
}

TEST(PqPerplexity, BadArgumentsAndTextsAreClearErrors) {
  TempDir d;
  write_text(d.file("empty.txt"), "");
  write_text(d.file("short.txt"), "Too short to score.\n");
  write_text(d.file("junk.logp"), "not logits at all, but long enough to hold a header of forty bytes");
  const std::string m = " -m " + q(kModel);
  expect_failure(kPpl + m + " -f " + q(d.file("empty.txt")), {"empty.txt", "empty"});
  expect_failure(kPpl + m + " -f " + q(d.file("short.txt")), {"short.txt", "fewer than the 512", "--ctx"});
  expect_failure(kPpl + m + " -f " + q(d.file("missing.txt")), {"missing.txt", "cannot open"});
  expect_failure(kPpl + m + " -f " + q(kText) + " --ctx 64 --stride 100", {"--stride 100", "--ctx 64"});
  expect_failure(kPpl + m + " -f " + q(kText) + " --ctx 1024", {"--ctx 1024", "context of 512"});
  expect_failure(kPpl + " -m /nonexistent/m.pqm -f " + q(kText), {"/nonexistent/m.pqm"});
  expect_failure(kPpl + m + " -f " + q(kText) + " --ctx 64 --chunks 1 --cpu --kl-divergence " + q(d.file("junk.logp")),
                 {"junk.logp", "not a pq-perplexity --save-logits file"});
  expect_failure(kPpl + m + " -f " + q(kText) + " --ctx 64 --chunks 1 --cpu --kl-divergence " + q(d.file("none.logp")),
                 {"none.logp"});
  expect_failure(kPpl + m + " -f " + q(kText) + " --ctx 64 --chunks 1 --cpu --save-logits /nonexistent/dir/x.logp",
                 {"/nonexistent/dir/x.logp", "cannot write"});
  // A saved run of another protocol.
  ok(kPpl + m + " -f " + q(kText) + " --ctx 64 --chunks 1 --cpu -q --save-logits " + q(d.file("a.logp")));
  expect_failure(kPpl + m + " -f " + q(kText) + " --ctx 32 --chunks 1 --cpu -q --kl-divergence " + q(d.file("a.logp")),
                 {"a.logp", "saved with --ctx 64"});
  const CommandResult usage = run_command(kPpl + m);  // -f missing: CLI11's own error
  EXPECT_EQ(usage.signal, 0);
  EXPECT_NE(usage.exit_code, 0);
  EXPECT_LT(usage.exit_code, 128);
}

}  // namespace
}  // namespace pqvk::test
