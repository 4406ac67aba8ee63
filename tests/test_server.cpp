// pq-server's pieces without HTTP: the scheduler's continuous batching on the CPU engine and on a
// failing engine, the request parser, and the client-socket lookup (apps/server/).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "llm/cpu_model.h"
#include "model/pqm.h"
#include "server/client_socket.h"
#include "server/engine.h"
#include "server/openai_api.h"
#include "server/scheduler.h"
#include "tokenize/chat.h"

#ifndef PQVK_DEFAULT_MODEL
#error "PQVK_DEFAULT_MODEL must name the bundled model"
#endif

namespace pqvk::server {
namespace {

using namespace std::chrono_literals;

struct Bundled {
  model::PqmFile file = model::PqmFile::open(PQVK_DEFAULT_MODEL);
  std::unique_ptr<tokenize::Tokenizer> tok = tokenize::Tokenizer::from_pqm(file);
};
Bundled& bundled() {
  static Bundled b;
  return b;
}

GenParams greedy(int max_tokens) {
  GenParams p;
  p.sampler.temperature = 0;
  p.max_tokens = max_tokens;
  return p;
}

// Waits for a job's end; returns its text and final update.
std::pair<std::string, Job::Update> finish(Job& job) {
  std::string text;
  Job::Update u;
  for (int i = 0; i < 6000 && !u.done; ++i) {
    job.wait(100ms, u);
    text += u.text;
  }
  EXPECT_TRUE(u.done);
  return {text, u};
}

// What the CPU reference generates greedily for a prompt, as text (TextStream after the prompt).
std::string reference(const std::vector<int32_t>& prompt, int n) {
  const Bundled& b = bundled();
  llm::CpuModel m(b.file);
  tokenize::TextStream s(*b.tok);
  for (int32_t id : prompt) s.push(id);
  auto l = m.prefill(prompt, 0);
  std::string out;
  for (int i = 0; i < n; ++i) {
    const auto next = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    if (b.tok->is_eos(next)) break;
    out += s.push(next);
    if (i + 1 < n) l = m.forward(next, static_cast<int32_t>(prompt.size()) + i);
  }
  return out + s.flush();
}

TEST(Scheduler, MoreJobsThanSlotsAllEqualTheReference) {
  Bundled& b = bundled();
  EngineOptions eo;
  eo.slots = 3;
  eo.step_tokens = 8;  // prompts prefill in chunks
  auto engine = make_cpu_engine(b.file, eo);
  Scheduler s(*engine, *b.tok, SchedulerOptions{16});
  const std::vector<std::string> prompts = {"The history of", "In the morning the city council met to", "Music is",
                                            "He said that the report shows"};
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 10; ++i) {
    jobs.push_back(std::make_shared<Job>(b.tok->encode(prompts[i % prompts.size()], true), greedy(5 + i % 3)));
    ASSERT_EQ(s.submit(jobs.back()), Scheduler::Submit::accepted);
  }
  for (int i = 0; i < 10; ++i) {
    auto [text, u] = finish(*jobs[i]);
    EXPECT_EQ(text, reference(jobs[i]->prompt(), 5 + i % 3)) << i;
    EXPECT_EQ(u.finish_reason, "length");
    EXPECT_EQ(u.completion_tokens, 5 + i % 3);
  }
  const Metrics m = s.metrics();
  EXPECT_EQ(m.jobs_finished, 10u);
  EXPECT_EQ(m.slots_busy, 0u);
  EXPECT_GT(m.decode_rows, m.decode_steps);  // several sequences per decode step
  EXPECT_TRUE(s.idle());
}

TEST(Scheduler, QueueLimitCancelStopStringsAndContext) {
  Bundled& b = bundled();
  EngineOptions eo;
  eo.slots = 1;
  eo.context = 12;
  auto engine = make_cpu_engine(b.file, eo);
  Scheduler s(*engine, *b.tok, SchedulerOptions{1});
  const auto prompt = b.tok->encode("The history of", true);  // 4 tokens
  // The context (12): at most 12 - 4 + 1 = 9 tokens, then "length".
  GenParams ig = greedy(100);
  ig.ignore_eos = true;
  auto whole = std::make_shared<Job>(prompt, ig);
  ASSERT_EQ(s.submit(whole), Scheduler::Submit::accepted);
  auto [text, u] = finish(*whole);
  EXPECT_EQ(u.completion_tokens, 9);
  EXPECT_EQ(u.finish_reason, "length");
  // A stop string in that text: cut before it, "stop".
  GenParams st = ig;
  st.stop = {" world"};
  auto stopped = std::make_shared<Job>(prompt, st);
  ASSERT_EQ(s.submit(stopped), Scheduler::Submit::accepted);
  auto [cut, u2] = finish(*stopped);
  ASSERT_NE(text.find(" world"), std::string::npos) << text;
  EXPECT_EQ(cut, text.substr(0, text.find(" world")));
  EXPECT_EQ(u2.finish_reason, "stop");
  // One slot and a queue of one: a third job is refused; a cancelled queued job never runs.
  auto running = std::make_shared<Job>(prompt, ig), queued = std::make_shared<Job>(prompt, ig),
       refused = std::make_shared<Job>(prompt, ig);
  queued->cancel();
  ASSERT_EQ(s.submit(running), Scheduler::Submit::accepted);
  ASSERT_EQ(s.submit(queued), Scheduler::Submit::accepted);
  EXPECT_EQ(s.submit(refused), Scheduler::Submit::queue_full);
  running->cancel();
  EXPECT_EQ(finish(*running).second.finish_reason, "cancelled");
  auto [qtext, qu] = finish(*queued);
  EXPECT_EQ(qu.finish_reason, "cancelled");
  EXPECT_EQ(qu.completion_tokens, 0);
  for (int i = 0; i < 100 && !s.idle(); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(s.idle());
  s.drain();
  EXPECT_EQ(s.submit(refused), Scheduler::Submit::stopping);
}

// An engine whose steps fail: the jobs end with "error", the slots are freed.
class FailingEngine final : public Engine {
 public:
  std::string device() const override { return "failing"; }
  int32_t context() const override { return 64; }
  uint32_t slots() const override { return 2; }
  uint32_t step_tokens() const override { return 16; }
  void step(std::span<const llm::BatchToken>, llm::BatchKind, llm::BatchResult&) override {
    throw std::runtime_error("device lost (test)");
  }
};

TEST(Scheduler, FailedStepsEndTheirJobs) {
  FailingEngine engine;
  Scheduler s(engine, *bundled().tok);
  auto a = std::make_shared<Job>(std::vector<int32_t>{1, 2, 3}, greedy(4)), c = std::make_shared<Job>(std::vector<int32_t>{1}, greedy(4));
  ASSERT_EQ(s.submit(a), Scheduler::Submit::accepted);
  ASSERT_EQ(s.submit(c), Scheduler::Submit::accepted);
  for (auto* j : {a.get(), c.get()}) {
    auto [text, u] = finish(*j);
    EXPECT_EQ(u.finish_reason, "error");
    EXPECT_NE(u.error.find("device lost"), std::string::npos);
  }
  for (int i = 0; i < 100 && !s.idle(); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(s.metrics().jobs_failed, 2u);
  EXPECT_EQ(s.metrics().slots_busy, 0u);
}

TEST(OpenAiApi, ParsesAndRefuses) {
  Bundled& b = bundled();
  const auto chat = tokenize::ChatTemplate::for_model(b.file.tokenizer(), b.file.config(), *b.tok);
  ApiModel m{"m", b.tok.get(), &chat, 64, static_cast<int32_t>(b.file.config().vocab_size), max_token_bytes(*b.tok)};
  ASSERT_GT(m.max_token_bytes, 1u);
  Generation g = parse_completion_request(parse_body(R"({"prompt": "The history of", "max_tokens": 7, "temperature": 0,
      "top_k": 3, "seed": -5, "stop": ["a", "b"], "presence_penalty": 1.5, "stream": true, "stream_options": {"include_usage": true}})"), m);
  EXPECT_EQ(g.prompt, b.tok->encode("The history of", true));
  EXPECT_EQ(g.params.max_tokens, 7);
  EXPECT_EQ(g.params.sampler.temperature, 0.0f);
  EXPECT_EQ(g.params.sampler.top_k, 3);
  EXPECT_EQ(g.params.sampler.seed, static_cast<uint64_t>(int64_t{-5}));
  EXPECT_EQ(g.params.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(g.params.sampler.presence_penalty, 1.5f);
  EXPECT_TRUE(g.stream && g.include_usage && !g.chat);
  // Defaults: the context's room, pq-run's sampling settings.
  g = parse_completion_request(parse_body(R"({"prompt": [1, 2, 3]})"), m);
  EXPECT_EQ(g.params.max_tokens, 64 - 3 + 1);
  EXPECT_EQ(g.params.sampler.top_p, llm::SamplerConfig{}.top_p);
  g = parse_chat_request(parse_body(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
      "max_completion_tokens": 3})"), m);
  EXPECT_TRUE(g.chat);
  EXPECT_EQ(g.prompt, chat.encode(*b.tok, {{"user", "Hi"}}, true));
  EXPECT_EQ(g.params.max_tokens, 3);
  auto refused = [&](const char* body, bool chat_request, const std::string& what) {
    try {
      const json j = parse_body(body);
      if (chat_request) parse_chat_request(j, m);
      else parse_completion_request(j, m);
      ADD_FAILURE() << "accepted: " << body;
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), 400) << body;
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      EXPECT_EQ(e.body()["error"]["type"], "invalid_request_error");
    }
  };
  refused(R"({"prompt": "x", "max_tokens": 0})", false, "max_tokens");
  refused(R"({"prompt": "x", "max_tokens": 18446744073709551615})", false, "max_tokens");
  refused(R"({"prompt": "x", "top_p": 0})", false, "top_p");
  refused(R"({"prompt": "x", "logprobs": 2})", false, "logprobs");
  refused(R"({"prompt": "x", "echo": true})", false, "echo");
  refused(R"({"prompt": [1, 4096]})", false, "token ids");
  refused(R"({"prompt": ["a", "b"]})", false, "one prompt");
  refused(R"({"prompt": [)" "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,"
          "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}", false, "context");
  refused(R"({"messages": [{"role": "user"}], "tools": 5})", true, "tools");
  refused(R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})", true, "response_format");
  refused("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
          false, "nested");
  refused("{\"prompt\": \"\xff\"}", false, "not valid JSON");
  // Longer than the context whatever its tokens: refused before encoding.
  const std::string long_text(64 * m.max_token_bytes + 1, 'a');
  refused(("{\"prompt\": \"" + long_text + "\"}").c_str(), false, "context");
  refused(("{\"messages\": [{\"role\": \"user\", \"content\": \"" + long_text + "\"}]}").c_str(), true, "context");
  refused(("{\"prompt\": \"x\", \"stop\": \"" + std::string(257, 's') + "\"}").c_str(), false, "256 bytes");
}

TEST(ClientSocket, FindsTheConnectionAndSeesItClose) {
  const int lst = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(lst, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(lst, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(lst, 4), 0);
  socklen_t len = sizeof addr;
  getsockname(lst, reinterpret_cast<sockaddr*>(&addr), &len);
  const int client = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const int server = accept(lst, nullptr, nullptr);
  ASSERT_GE(server, 0);
  sockaddr_in peer{};
  len = sizeof peer;
  getpeername(server, reinterpret_cast<sockaddr*>(&peer), &len);
  const int found = find_client_socket("127.0.0.1", ntohs(addr.sin_port), "127.0.0.1", ntohs(peer.sin_port));
  EXPECT_EQ(found, server);
  EXPECT_EQ(find_client_socket("127.0.0.1", ntohs(addr.sin_port), "127.0.0.1", 1), -1);
  EXPECT_FALSE(peer_closed(server));
  close(client);
  for (int i = 0; i < 100 && !peer_closed(server); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(peer_closed(server));
  EXPECT_FALSE(peer_closed(-1));
  close(server);
  close(lst);
}

}  // namespace
}  // namespace pqvk::server
