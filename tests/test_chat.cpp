// pq-chat's chat engine (apps/chat/chat_engine.h) on the bundled model, its command language,
// and the Vulkan layer's presentation option (ContextOptions::presentation, Context::native,
// Context::with_queue) that the window uses. GPU tests run with the validation layer on
// (tests/vk_test_env.cpp fails a test that made it speak).
#include <gtest/gtest.h>

#include <atomic>
#include <sstream>
#include <string>
#include <vector>

#include "chat/chat_engine.h"
#include "vk/context.h"
#include "vk_test_env.h"

using namespace pqvk;
using chat::ChatEngine;
using chat::Command;
using chat::StopReason;

namespace {

const char* kModel = PQVK_DEFAULT_MODEL;

chat::Settings greedy(int max_tokens) {
  chat::Settings s;
  s.sampler.temperature = 0;
  s.max_tokens = max_tokens;
  return s;
}

// ---- StopFilter ---------------------------------------------------------------------------------

TEST(ChatStopFilter, HoldsBackWhatMayStartAStopString) {
  chat::StopFilter f({"\nUser:"});
  bool stopped = false;
  EXPECT_EQ(f.push("Hello", &stopped), "Hello");
  EXPECT_EQ(f.push(" there\nUs", &stopped), " there");  // "\nUs" may be the stop string
  EXPECT_FALSE(stopped);
  EXPECT_EQ(f.push("ual", &stopped), "\nUsual");        // it was not
  EXPECT_EQ(f.push("\n", &stopped), "");
  EXPECT_EQ(f.flush(), "\n");
  EXPECT_FALSE(stopped);
}

TEST(ChatStopFilter, CutsAtTheEarliestStopString) {
  chat::StopFilter f({"<|im_end|>", "\nUser:"});
  bool stopped = false;
  EXPECT_EQ(f.push("a\nUser: b<|im_end|>", &stopped), "a");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(f.flush(), "");
  chat::StopFilter g({"END"});
  stopped = false;
  EXPECT_EQ(g.push("xE", &stopped), "x");
  EXPECT_EQ(g.push("N", &stopped), "");
  EXPECT_EQ(g.push("D and more", &stopped), "");
  EXPECT_TRUE(stopped);
}

TEST(ChatStopFilter, NoStopStrings) {
  chat::StopFilter f({""});
  bool stopped = false;
  EXPECT_EQ(f.push("abc", &stopped), "abc");
  EXPECT_FALSE(stopped);
}

// ---- commands -------------------------------------------------------------------------------------

TEST(ChatCommands, Parse) {
  EXPECT_EQ(chat::parse_command("hello").kind, Command::message);
  EXPECT_EQ(chat::parse_command("hello").text, "hello");
  EXPECT_EQ(chat::parse_command("/reset").kind, Command::reset);
  EXPECT_EQ(chat::parse_command("/new").kind, Command::reset);
  EXPECT_EQ(chat::parse_command("/quit").kind, Command::quit);
  EXPECT_EQ(chat::parse_command("/exit").kind, Command::quit);
  EXPECT_EQ(chat::parse_command("/regen").kind, Command::regenerate);
  Command s = chat::parse_command("/system  Be brief. ");
  EXPECT_EQ(s.kind, Command::system);
  EXPECT_EQ(s.text, "Be brief.");
  EXPECT_EQ(chat::parse_command("/system").text, "");
  Command l = chat::parse_command("/load /tmp/m.pqm");
  EXPECT_EQ(l.kind, Command::load);
  EXPECT_EQ(l.text, "/tmp/m.pqm");
  Command u = chat::parse_command("/frobnicate now");
  EXPECT_EQ(u.kind, Command::unknown);
  EXPECT_EQ(u.text, "/frobnicate");
  Command slash = chat::parse_command("//etc/passwd is a file");
  EXPECT_EQ(slash.kind, Command::message);
  EXPECT_EQ(slash.text, "/etc/passwd is a file");
}

TEST(ChatCommands, ReadJoinsContinuedLinesAndSkipsBlankOnes) {
  std::istringstream in("first\n\n   \nsecond \\\nline\\\nthird\r\n/quit\nlast without newline");
  std::vector<Command> got;
  while (auto c = chat::read_command(in)) got.push_back(*c);
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].text, "first");
  EXPECT_EQ(got[1].text, "second \nline\nthird");
  EXPECT_EQ(got[2].kind, Command::quit);
  EXPECT_EQ(got[3].text, "last without newline");
}

TEST(ChatCommands, MissingScriptIsAnError) {
  EXPECT_THROW(chat::read_script("/nonexistent/script.txt"), std::runtime_error);
}

// ---- the engine on the bundled model --------------------------------------------------------------

TEST(ChatEngine, LoadErrorsNameTheFileAndKeepTheLoadedModel) {
  ChatEngine e(test::context());
  try {
    e.load("/nonexistent/model.pqm");
    FAIL() << "loading a missing file succeeded";
  } catch (const std::exception& ex) {
    EXPECT_NE(std::string(ex.what()).find("/nonexistent/model.pqm"), std::string::npos) << ex.what();
  }
  EXPECT_FALSE(e.loaded());
  EXPECT_THROW(e.send("hi", greedy(2)), std::runtime_error);  // no model: an error, not a crash
  e.load(kModel);
  ASSERT_TRUE(e.loaded());
  EXPECT_THROW(e.load(PQVK_SOURCE_DIR "/CMakeLists.txt"), std::exception);
  EXPECT_TRUE(e.loaded());  // a bad file leaves the model as it was
  EXPECT_EQ(e.model().name, "pqvk-brown-10m-q5.pqm");
}

TEST(ChatEngine, BundledModelUsesThePlainFormat) {
  ChatEngine e(test::context());
  e.load(kModel);
  EXPECT_EQ(e.model().format, "plain");
  EXPECT_EQ(e.model().context_size, 512);
  e.set_system("Be brief.");
  EXPECT_EQ(e.format_prompt("Hi"), "System: Be brief.\nUser: Hi\nAssistant: ");
  e.set_system("");
  EXPECT_EQ(e.format_prompt("Hi"), "User: Hi\nAssistant: ");
  EXPECT_THROW(e.set_format(tokenize::ChatFormat::chatml), std::exception);  // no <|im_start|> in its vocabulary
}

TEST(ChatEngine, ConversationReusesTheCache) {
  ChatEngine e(test::context());
  e.load(kModel);
  e.set_system("You are a helpful assistant.");
  std::string streamed;
  int progress_calls = 0;
  chat::Callbacks cb;
  cb.on_text = [&](const std::string& t) { streamed += t; };
  cb.on_progress = [&](const chat::Progress&) { ++progress_calls; };
  chat::Reply r1 = e.send("Tell me about the city.", greedy(8), cb);
  EXPECT_EQ(streamed, r1.text);
  EXPECT_EQ(r1.reused_tokens, 0);
  EXPECT_EQ(r1.stop, StopReason::max_tokens);
  EXPECT_EQ(r1.tokens.size(), 8u);
  EXPECT_EQ(progress_calls, 7);  // one per decode step after the prefill's token
  EXPECT_EQ(r1.prompt, "System: You are a helpful assistant.\nUser: Tell me about the city.\nAssistant: ");
  EXPECT_EQ(e.context_used(), r1.prompt_tokens + 7);

  chat::Reply r2 = e.send("And then?", greedy(6));
  EXPECT_GE(r2.reused_tokens, r1.prompt_tokens);  // at least the first prompt was not run again
  EXPECT_LT(r2.reused_tokens, r2.prompt_tokens);
  EXPECT_NE(r2.prompt.find("User: And then?\nAssistant: "), std::string::npos);
  ASSERT_EQ(e.turns().size(), 2u);
  EXPECT_EQ(e.turns()[0].assistant, r1.text);
  EXPECT_EQ(e.turns()[1].user, "And then?");

  // The same conversation prefilled from scratch chooses the same tokens.
  ChatEngine f(test::context());
  f.load(kModel);
  f.set_system("You are a helpful assistant.");
  f.set_kv_reuse(false);
  chat::Reply s1 = f.send("Tell me about the city.", greedy(8));
  chat::Reply s2 = f.send("And then?", greedy(6));
  EXPECT_EQ(s1.tokens, r1.tokens);
  EXPECT_EQ(s2.reused_tokens, 0);
  EXPECT_EQ(s2.prompt, r2.prompt);
  EXPECT_EQ(s2.tokens, r2.tokens);

  e.reset();
  EXPECT_TRUE(e.turns().empty());
  chat::Reply r3 = e.send("Tell me about the city.", greedy(8));
  EXPECT_EQ(r3.tokens, r1.tokens);  // a new chat starts over (its prompt is still cached)
  EXPECT_EQ(r3.reused_tokens, r3.prompt_tokens - 1);
}

TEST(ChatEngine, CpuReferenceRepliesAsTheGpu) {
  ChatEngine gpu(test::context());
  ChatEngine cpu(nullptr, 2);  // no Vulkan context: the CPU reference
  for (ChatEngine* e : {&gpu, &cpu}) {
    e->load(kModel);
    e->set_system("You are a helpful assistant.");
  }
  EXPECT_EQ(cpu.model().device, "CPU reference");
  EXPECT_EQ(cpu.model().device_bytes, 0u);
  EXPECT_EQ(cpu.model().context_size, 512);
  EXPECT_EQ(gpu.model().device, test::context().info().name);
  // Greedy decoding is identical on both (tests/test_decoder.cpp); so are the replies, and the
  // second turn reuses the CPU reference's cache as it does the GPU's.
  const chat::Reply g1 = gpu.send("Tell me about the city.", greedy(8));
  const chat::Reply c1 = cpu.send("Tell me about the city.", greedy(8));
  EXPECT_EQ(c1.tokens, g1.tokens);
  EXPECT_EQ(c1.text, g1.text);
  const chat::Reply g2 = gpu.send("And then?", greedy(6));
  const chat::Reply c2 = cpu.send("And then?", greedy(6));
  EXPECT_EQ(c2.tokens, g2.tokens);
  EXPECT_EQ(c2.reused_tokens, g2.reused_tokens);
  EXPECT_GT(c2.reused_tokens, 0);
}

TEST(ChatEngine, DropsTheOldestTurnsKeepingTheSystemPrompt) {
  ChatEngine e(test::context());
  e.load(kModel, 72);
  ASSERT_EQ(e.model().context_size, 72);
  e.set_system("You are a helpful assistant.");
  const chat::Settings s = greedy(8);
  int dropped = 0;
  for (int i = 0; i < 4; ++i) {
    chat::Reply r = e.send("Tell me more about the history of the old city, please.", s);
    EXPECT_LE(r.prompt_tokens + 8, 72) << "turn " << i;
    EXPECT_EQ(r.prompt.rfind("System: You are a helpful assistant.\nUser: ", 0), 0u) << r.prompt;
    EXPECT_GE(r.dropped_turns, dropped);  // turns once dropped stay dropped
    dropped = r.dropped_turns;
    EXPECT_EQ(static_cast<size_t>(dropped), e.first_in_context());
  }
  EXPECT_GT(dropped, 0);
  EXPECT_EQ(e.turns().size(), 4u);  // the conversation keeps them; the prompt does not
}

TEST(ChatEngine, MessageThatCannotFitIsAnError) {
  ChatEngine e(test::context());
  e.load(kModel, 32);
  e.set_system("You are a helpful assistant.");
  std::string longer;
  for (int i = 0; i < 40; ++i) longer += "word ";
  try {
    e.send(longer, greedy(4));
    FAIL() << "a message longer than the context was accepted";
  } catch (const std::runtime_error& ex) {
    EXPECT_NE(std::string(ex.what()).find("does not fit the context"), std::string::npos) << ex.what();
  }
  EXPECT_TRUE(e.turns().empty());
  EXPECT_NO_THROW(e.send("Hi.", greedy(4)));  // the engine still works
}

TEST(ChatEngine, StopsAtTheEndOfTheContext) {
  ChatEngine e(test::context());
  e.load(kModel, 40);
  e.set_system("");
  chat::Settings s = greedy(1000);  // greedy on the GPU (forward_argmax): no repetition penalty by default
  ASSERT_EQ(s.sampler.repeat_penalty, 1.0f);
  chat::Reply r = e.send("Tell me about the city.", s);
  EXPECT_EQ(r.stop, StopReason::context_full);
  EXPECT_EQ(r.prompt_tokens + static_cast<int32_t>(r.tokens.size()), 41);  // the last one is never run
  EXPECT_EQ(e.context_used(), 40);
}

TEST(ChatEngine, RegenerateAdvancesTheSeed) {
  ChatEngine e(test::context());
  e.load(kModel);
  chat::Settings s;
  s.sampler.temperature = 1.0f;
  s.sampler.seed = 42;
  s.max_tokens = 6;
  EXPECT_THROW(e.regenerate(s), std::runtime_error);  // nothing to regenerate yet
  chat::Reply a = e.send("Tell me about the city.", s);
  chat::Reply b = e.regenerate(s);
  chat::Reply c = e.regenerate(s);
  EXPECT_EQ(a.seed, 42u);
  EXPECT_EQ(b.seed, 43u);
  EXPECT_EQ(c.seed, 44u);
  EXPECT_EQ(b.prompt, a.prompt);
  ASSERT_EQ(e.turns().size(), 1u);
  EXPECT_EQ(e.turns()[0].assistant, c.text);
  EXPECT_FALSE(a.tokens == b.tokens && b.tokens == c.tokens) << "three seeds, three identical samples";

  // The same seed reproduces a reply, in a fresh engine too.
  ChatEngine f(test::context());
  f.load(kModel);
  f.set_kv_reuse(false);
  s.sampler.seed = 43;
  EXPECT_EQ(f.send("Tell me about the city.", s).tokens, b.tokens);
}

TEST(ChatEngine, CancelKeepsWhatWasGenerated) {
  ChatEngine e(test::context());
  e.load(kModel);
  std::atomic<bool> cancel{false};
  int tokens_seen = 0;
  chat::Callbacks cb;
  cb.on_progress = [&](const chat::Progress& p) {
    tokens_seen = p.generated;
    if (p.generated == 3) cancel = true;
  };
  chat::Reply r = e.send("Tell me about the city.", greedy(50), cb, &cancel);
  EXPECT_EQ(r.stop, StopReason::cancelled);
  EXPECT_EQ(r.tokens.size(), 3u);
  EXPECT_EQ(tokens_seen, 3);
  ASSERT_EQ(e.turns().size(), 1u);
  EXPECT_EQ(e.turns()[0].assistant, r.text);
}

TEST(ChatEngine, InvalidSettingsAreErrors) {
  ChatEngine e(test::context());
  e.load(kModel);
  chat::Settings s = greedy(0);
  EXPECT_THROW(e.send("hi", s), std::invalid_argument);
  s = greedy(4);
  s.sampler.top_p = 0;
  EXPECT_THROW(e.send("hi", s), std::invalid_argument);
  EXPECT_TRUE(e.turns().empty());
}

// ---- the Vulkan layer's presentation option (no window needed) ------------------------------------

TEST(ChatContext, PresentationWithoutAPresentableQueueIsAClearError) {
  vk::ContextOptions o;
  o.validation = true;
  o.pipeline_cache = "off";
  o.presentation.emplace();
  o.presentation->can_present = [](uint64_t, uint64_t, uint32_t) { return false; };
  try {
    vk::Context ctx(o);
    FAIL() << "a context that cannot present was created";
  } catch (const vk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("can draw to this window"), std::string::npos) << e.what();
  }
  o.presentation->can_present = [](uint64_t, uint64_t, uint32_t) { return true; };
  o.presentation->instance_extensions = {"VK_KHR_no_such_extension"};
  try {
    vk::Context ctx(o);
    FAIL() << "an unknown instance extension was accepted";
  } catch (const vk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("VK_KHR_no_such_extension"), std::string::npos) << e.what();
  }
}

TEST(ChatContext, PresentationContextComputesAndSharesItsQueueLock) {
  vk::ContextOptions o;
  o.validation = true;
  o.pipeline_cache = "off";
  std::vector<uint32_t> asked;
  o.presentation.emplace();
  o.presentation->can_present = [&](uint64_t instance, uint64_t physical, uint32_t family) {
    EXPECT_NE(instance, 0u);
    EXPECT_NE(physical, 0u);
    asked.push_back(family);
    return true;
  };
  vk::Context ctx(o);
  EXPECT_TRUE(ctx.presentation_enabled());
  EXPECT_FALSE(asked.empty());
  const vk::Context::Native n = ctx.native();
  EXPECT_NE(n.instance, 0u);
  EXPECT_NE(n.physical_device, 0u);
  EXPECT_NE(n.device, 0u);
  EXPECT_NE(n.queue, 0u);
  bool ran = false;
  ctx.with_queue([&] { ran = true; });
  EXPECT_TRUE(ran);
  // The model's path still works on this context.
  std::vector<float> v = {1, 2, 3, 4};
  vk::Buffer b = ctx.upload_new(v, "test");
  EXPECT_EQ(ctx.download_all<float>(b), v);
  EXPECT_EQ(ctx.validation_messages(), 0u);
  // A compute-only context is unchanged.
  EXPECT_FALSE(test::context().presentation_enabled());
}

}  // namespace
