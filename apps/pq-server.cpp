// pq-server: an OpenAI-compatible HTTP server with continuous batching (docs/serving.md).
//
//   pq-server -m MODEL.pqm [--host 127.0.0.1] [--port 8080] [--parallel N] [--ctx-size C] [--api-key KEY]
//
// Endpoints: POST /v1/chat/completions, POST /v1/completions (server-sent events with "stream"),
// GET /v1/models, GET /health, GET /metrics (Prometheus text), POST /tokenize, POST /detokenize.
// HTTP: cpp-httplib (Debian's libcpp-httplib-dev), one thread per connection from a pool sized
// for the slots and the queue. Requests become Jobs of the Scheduler (server/scheduler.h), which
// runs them on the engine (server/engine.h) in up to --parallel slots; a full queue is a 503 with
// Retry-After. SIGTERM (or SIGINT): the listening socket closes, what is queued and running
// finishes (cancelled after --shutdown-grace seconds), then the process exits with status 0.
// A burst of connections (64 clients at once in tests/server/test_load.py) overflows
// cpp-httplib's default listen backlog of 5, and Linux then answers some of them with a reset
// (SYN cookies: "Connection reset by peer" on the client). 511 is nginx's default.
#define CPPHTTPLIB_LISTEN_BACKLOG 511
#include <httplib.h>
#include <signal.h>
#include <sys/socket.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "device_choice.h"
#include "model/pqm.h"
#include "server/client_socket.h"
#include "server/engine.h"
#include "server/openai_api.h"
#include "server/scheduler.h"
#include "tokenize/chat.h"
#include "tokenize/tokenizer.h"
#include "vk/context.h"
#include "kv_type_option.h"

#ifndef PQVK_DEFAULT_MODEL
#define PQVK_DEFAULT_MODEL ""
#endif

namespace {

using namespace pqvk::server;
using Clock = std::chrono::steady_clock;

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// cpp-httplib's server with a way to close only the listening socket: accept() then fails, the
// accept loop ends and listen() returns once every connection's handler has finished (streams
// included: they stop early only when svr_sock_ is set to INVALID_SOCKET, which stop() does).
class HttpServer : public httplib::Server {
 public:
  void close_listener() { ::shutdown(svr_sock_, SHUT_RDWR); }
};

// HTTP requests answered, by endpoint and status (the /metrics counters).
class RequestCounts {
 public:
  void add(const std::string& path, int status) {
    static const char* known[] = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics",
                                  "/tokenize", "/detokenize"};
    std::string ep = "other";
    for (const char* k : known)
      if (path == k) ep = k;
    std::lock_guard lock(mu_);
    ++counts_[{ep, status}];
  }
  std::map<std::pair<std::string, int>, uint64_t> snapshot() const {
    std::lock_guard lock(mu_);
    return counts_;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> counts_;
};

struct ServerState {
  ApiModel api;
  Scheduler* scheduler = nullptr;
  std::string api_key;
  RequestCounts counts;
  std::atomic<bool> stopping{false};
};

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dump(j), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status(), e.body());
  if (e.status() == 503) res.set_header("Retry-After", "1");
}

// The client's socket, for noticing that it went away.
int client_fd(const httplib::Request& req) {
  return find_client_socket(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
}

// The shared state of one streamed response (the provider runs after the handler returned).
struct StreamState {
  std::shared_ptr<Job> job;
  Generation gen;
  std::string id;
  int64_t created = 0;
  int fd = -1;
  bool first = true, finished = false;
};

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

void handle_generation(ServerState& st, const httplib::Request& req, httplib::Response& res, bool chat) {
  const json body = parse_body(req.body);
  Generation gen = chat ? parse_chat_request(body, st.api) : parse_completion_request(body, st.api);
  auto job = std::make_shared<Job>(gen.prompt, gen.params);
  switch (st.scheduler->submit(job)) {
    case Scheduler::Submit::accepted: break;
    case Scheduler::Submit::queue_full:
      throw ApiError(503, "the server is busy: every slot is in use and the queue is full; retry later", "server_error",
                     {}, "overloaded");
    case Scheduler::Submit::stopping:
      throw ApiError(503, "the server is shutting down", "server_error", {}, "shutting_down");
  }
  const std::string id = new_response_id(chat);
  const int64_t created = unix_time();
  const int fd = client_fd(req);

  if (!gen.stream) {
    std::string text;
    Job::Update u;
    for (;;) {
      job->wait(std::chrono::milliseconds(100), u);
      text += u.text;
      if (u.done) break;
      if (peer_closed(fd)) {  // nobody to answer: free the slot
        job->cancel();
        res.status = 499;  // never sent; counted in /metrics as the client's disconnection
        return;
      }
    }
    if (u.finish_reason == "cancelled") throw ApiError(503, "the request was cancelled: the server is shutting down", "server_error");
    if (u.finish_reason == "error") throw ApiError(500, "generation failed: " + u.error, "server_error");
    send_json(res, 200, completion_response(gen, st.api, id, created, text, u.finish_reason, u.completion_tokens));
    return;
  }

  auto ss = std::make_shared<StreamState>();
  ss->job = job;
  ss->gen = std::move(gen);
  ss->id = id;
  ss->created = created;
  ss->fd = fd;
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [ss, &st](size_t, httplib::DataSink& sink) {
        if (ss->finished) return false;
        Job::Update u;
        const bool news = ss->job->wait(std::chrono::milliseconds(100), u);
        if (!news) {
          if (peer_closed(ss->fd)) {
            ss->job->cancel();
            return false;
          }
          return true;
        }
        std::string out;
        if (ss->first || !u.text.empty()) {
          out += sse(stream_chunk(ss->gen, st.api, ss->id, ss->created, u.text, ss->first, ""));
          ss->first = false;
        }
        if (u.done) {
          if (u.finish_reason == "cancelled" || u.finish_reason == "error") {
            const std::string msg = u.finish_reason == "error" ? "generation failed: " + u.error
                                                                : "the request was cancelled: the server is shutting down";
            out += sse(error_body(msg, "server_error"));
          } else {
            out += sse(stream_chunk(ss->gen, st.api, ss->id, ss->created, std::nullopt, false, u.finish_reason));
            if (ss->gen.include_usage) out += sse(usage_chunk(ss->gen, st.api, ss->id, ss->created, u.completion_tokens));
          }
          out += "data: [DONE]\n\n";
        }
        if (!sink.write(out.data(), out.size())) {
          ss->job->cancel();
          return false;
        }
        if (u.done) {
          ss->finished = true;
          sink.done();
        }
        return true;
      },
      [ss](bool) { ss->job->cancel(); });  // a no-op once it finished; else the client is gone
}

std::string metrics_text(ServerState& st) {
  const Metrics m = st.scheduler->metrics();
  std::string o;
  auto metric = [&](const char* name, const char* type, const char* help, const std::string& lines) {
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + lines;
  };
  auto line = [](const std::string& name, double v) {
    char b[64];
    std::snprintf(b, sizeof b, " %.10g\n", v);
    return name + b;
  };
  std::string req;
  for (const auto& [k, n] : st.counts.snapshot())
    req += line("pqvk_requests_total{endpoint=\"" + k.first + "\",status=\"" + std::to_string(k.second) + "\"}", double(n));
  metric("pqvk_requests_total", "counter", "HTTP requests answered, by endpoint and status (499: the client went away).", req);
  metric("pqvk_generations_total", "counter", "Generation requests that left their slot, by result.",
         line("pqvk_generations_total{result=\"finished\"}", double(m.jobs_finished)) +
             line("pqvk_generations_total{result=\"cancelled\"}", double(m.jobs_cancelled)) +
             line("pqvk_generations_total{result=\"failed\"}", double(m.jobs_failed)));
  metric("pqvk_prompt_tokens_total", "counter", "Prompt tokens prefilled.", line("pqvk_prompt_tokens_total", double(m.prompt_tokens)));
  metric("pqvk_generated_tokens_total", "counter", "Tokens generated.", line("pqvk_generated_tokens_total", double(m.generated_tokens)));
  metric("pqvk_tokens_per_second", "gauge", "Tokens generated per second over the last 10 seconds.",
         line("pqvk_tokens_per_second", m.tokens_per_second));
  metric("pqvk_queue_depth", "gauge", "Requests waiting for a slot.", line("pqvk_queue_depth", double(m.queue_depth)));
  metric("pqvk_slots_busy", "gauge", "Slots running a request.", line("pqvk_slots_busy", double(m.slots_busy)));
  metric("pqvk_slots_total", "gauge", "Slots (--parallel).", line("pqvk_slots_total", double(m.slots_total)));
  metric("pqvk_steps_total", "counter", "Engine steps, by kind.",
         line("pqvk_steps_total{kind=\"prefill\"}", double(m.prefill_steps)) +
             line("pqvk_steps_total{kind=\"decode\"}", double(m.decode_steps)));
  metric("pqvk_decode_rows_total", "counter", "Sequences summed over decode steps (divided by the decode steps: the mean batch).",
         line("pqvk_decode_rows_total", double(m.decode_rows)));
  metric("pqvk_step_seconds_total", "counter", "Seconds spent in engine steps.", line("pqvk_step_seconds_total", m.step_seconds));
  return o;
}

// Runs a handler, answering every error in OpenAI's shape.
template <class F>
httplib::Server::Handler guarded(F f) {
  return [f](const httplib::Request& req, httplib::Response& res) {
    try {
      f(req, res);
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_json(res, 500, error_body(std::string("internal error: ") + e.what(), "server_error"));
    }
  };
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pq-server: an OpenAI-compatible HTTP server for PolarQuant models, with continuous batching"};
  std::string model_path, host = "127.0.0.1", api_key, device, alias;
  int port = 8080, ctx_size = 0, threads = 0;
  uint32_t parallel = 4, batch = 256;
  size_t queue = 64;
  double grace = 30.0;
  bool cpu = false;
  app.add_option("-m,--model", model_path, "The .pqm model (default: $PQVK_MODEL, else the bundled model)");
  app.add_option("--host", host, "Address to listen on (default 127.0.0.1: this machine only)");
  app.add_option("--port", port, "Port (default 8080; 0: any free port, printed on stderr)")->check(CLI::Range(0, 65535));
  app.add_option("--parallel", parallel, "Slots: requests generating at once (default 4)")->check(CLI::Range(1, 256));
  app.add_option("-c,--ctx-size", ctx_size, "Context per slot (default: the model's, at most 4096)")->check(CLI::Range(1, 1 << 24));
  std::string kv_type = "f16";
  pqvk::apps::add_kv_type_option(app, kv_type);
  app.add_option("--api-key", api_key, "Require 'Authorization: Bearer KEY' (all endpoints but /health)");
  app.add_option("--queue", queue, "Requests that may wait for a slot (default 64; beyond: 503)")->check(CLI::Range(0, 1 << 16));
  app.add_option("-b,--batch", batch, "Prompt tokens per prefill step (default 256)")->check(CLI::Range(1, 8192));
  app.add_option("--alias", alias, "The model's name in the API (default: the file name without .pqm)");
  app.add_option("-d,--device", device,
                 "Vulkan device index or name substring (default: $PQVK_DEVICE, else the best GPU; where the only device "
                 "is a CPU implementation such as lavapipe, the CPU reference runs unless this is given)");
  app.add_flag("--cpu", cpu, "Run the CPU reference instead of the GPU");
  app.add_option("-t,--threads", threads, "CPU threads with the CPU reference (default: all)");
  app.add_option("--shutdown-grace", grace, "On SIGTERM, seconds to let running requests finish before cancelling them (default 30)")
      ->check(CLI::Range(0.0, 86400.0));
  CLI11_PARSE(app, argc, argv);

  // SIGTERM / SIGINT are taken by a thread of their own (sigwait): blocked before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error return, not a signal

  try {
    if (model_path.empty()) {
      const char* env = std::getenv("PQVK_MODEL");
      model_path = env && *env ? env : PQVK_DEFAULT_MODEL;
    }
    if (model_path.empty()) throw std::runtime_error("no model: pass -m MODEL.pqm");
    const auto file = pqvk::model::PqmFile::open(model_path);
    if (file.tokenizer().kind == "none")
      throw std::runtime_error(model_path + ": the model has no text tokenizer; pq-server needs one");
    const auto tok = pqvk::tokenize::Tokenizer::from_pqm(file);
    const auto chat = pqvk::tokenize::ChatTemplate::for_model(file.tokenizer(), file.config(), *tok);

    EngineOptions eo;
    eo.slots = parallel;
    eo.context = ctx_size;
    eo.step_tokens = batch;
    eo.threads = threads;
    eo.kv_bits = pqvk::apps::kv_bits(kv_type);
    std::unique_ptr<pqvk::vk::Context> vkctx;
    std::unique_ptr<Engine> engine;
    if (pqvk::apps::use_cpu(cpu, device, "pq-server")) {
      engine = make_cpu_engine(file, eo);
    } else {
      pqvk::vk::ContextOptions vo;
      vo.device = device;
      vkctx = std::make_unique<pqvk::vk::Context>(vo);
      engine = make_gpu_engine(*vkctx, file, eo);
    }
    Scheduler scheduler(*engine, *tok, SchedulerOptions{queue});

    ServerState st;
    st.api.id = alias.empty() ? std::filesystem::path(model_path).stem().string() : alias;
    st.api.tok = tok.get();
    st.api.chat = &chat;
    st.api.context = engine->context();
    st.api.vocab = static_cast<int32_t>(file.config().vocab_size);
    st.api.max_token_bytes = max_token_bytes(*tok);
    st.scheduler = &scheduler;
    st.api_key = api_key;

    HttpServer svr;
    const size_t pool = parallel + queue + 16;  // every waiting request holds a connection thread
    svr.new_task_queue = [pool] { return new httplib::ThreadPool(pool); };
    svr.set_payload_max_length(16u << 20);
    // cpp-httplib waits this long for a connection's first request too, not only between requests
    // on a kept-alive one: under load (64 clients on 2 busy cores in CI) a client can send its
    // request more than 2 s after connecting, and a closed socket with the request unread resets.
    svr.set_keep_alive_timeout(10);
    svr.set_read_timeout(30);
    svr.set_write_timeout(30);

    svr.set_pre_routing_handler([&st](const httplib::Request& req, httplib::Response& res) {
      if (st.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
      const std::string want = "Bearer " + st.api_key, got = req.get_header_value("Authorization");
      unsigned diff = want.size() != got.size();  // compared in constant time for equal lengths
      for (size_t i = 0; i < std::min(want.size(), got.size()); ++i) diff |= unsigned(want[i] ^ got[i]);
      if (diff == 0) return httplib::Server::HandlerResponse::Unhandled;
      send_json(res, 401, error_body(got.empty() ? "missing API key: send 'Authorization: Bearer KEY'" : "invalid API key",
                                     "invalid_request_error", {}, "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    });
    svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;  // a handler's own error
      if (res.status == 404) {
        send_json(res, 404, error_body("unknown endpoint: " + req.method + " " + req.path, "invalid_request_error", {}, "not_found"));
      } else if (res.status == 413) {
        send_json(res, 413, error_body("the body is too large (at most 16 MiB)", "invalid_request_error"));
      } else {
        send_json(res, res.status, error_body("HTTP " + std::to_string(res.status), "invalid_request_error"));
      }
    });
    svr.set_logger([&st](const httplib::Request& req, const httplib::Response& res) { st.counts.add(req.path, res.status); });

    svr.Get("/health", guarded([&st](const httplib::Request&, httplib::Response& res) {
      const Metrics m = st.scheduler->metrics();
      if (st.stopping) {
        send_json(res, 503, error_body("the server is shutting down", "server_error", {}, "shutting_down"));
        res.set_header("Retry-After", "1");
        return;
      }
      send_json(res, 200, {{"status", "ok"}, {"slots_idle", m.slots_total - m.slots_busy}, {"slots_processing", m.slots_busy},
                           {"queue_depth", m.queue_depth}});
    }));
    svr.Get("/v1/models", guarded([&st, &file, &engine](const httplib::Request&, httplib::Response& res) {
      const auto& c = file.config();
      send_json(res, 200,
                {{"object", "list"},
                 {"data", json::array({{{"id", st.api.id},
                                        {"object", "model"},
                                        {"created", unix_time()},
                                        {"owned_by", "pqvk"},
                                        {"meta",
                                         {{"architecture", c.architecture},
                                          {"vocab_size", c.vocab_size},
                                          {"context_per_slot", engine->context()},
                                          {"slots", engine->slots()},
                                          {"device", engine->device()}}}}})}});
    }));
    svr.Get("/metrics", guarded([&st](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(st), "text/plain; version=0.0.4");
    }));
    svr.Post("/v1/chat/completions", guarded([&st](const httplib::Request& req, httplib::Response& res) {
      handle_generation(st, req, res, true);
    }));
    svr.Post("/v1/completions", guarded([&st](const httplib::Request& req, httplib::Response& res) {
      handle_generation(st, req, res, false);
    }));
    svr.Post("/tokenize", guarded([&st](const httplib::Request& req, httplib::Response& res) {
      send_json(res, 200, tokenize_response(parse_body(req.body), st.api));
    }));
    svr.Post("/detokenize", guarded([&st](const httplib::Request& req, httplib::Response& res) {
      send_json(res, 200, detokenize_response(parse_body(req.body), st.api));
    }));

    int bound = port;
    if (port == 0) bound = svr.bind_to_any_port(host);
    else if (!svr.bind_to_port(host, port)) bound = -1;
    if (bound <= 0) throw std::runtime_error("cannot listen on " + host + ":" + std::to_string(port));
    std::fprintf(stderr, "pq-server: %s on %s, %u slots of %d tokens, listening on http://%s:%d\n", st.api.id.c_str(),
                 engine->device().c_str(), engine->slots(), engine->context(), host.c_str(), bound);
    std::fflush(stderr);

    // The signal thread: the first SIGTERM / SIGINT closes the listener and drains; after the
    // grace period, or at a second signal, what still runs is cancelled.
    std::atomic<bool> listening_done{false};
    std::thread signal_thread([&] {
      int sig = 0;
      sigwait(&signals, &sig);
      if (listening_done) return;
      std::fprintf(stderr, "pq-server: signal %d: no new connections; finishing what runs\n", sig);
      st.stopping = true;
      scheduler.drain();
      svr.close_listener();
      const auto deadline = Clock::now() + std::chrono::duration<double>(grace);
      while (!scheduler.idle() && Clock::now() < deadline && !listening_done)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (!scheduler.idle()) {
        std::fprintf(stderr, "pq-server: cancelling what still runs\n");
        scheduler.cancel_all();
      }
    });
    svr.listen_after_bind();  // returns when the listener is closed and every handler has finished
    listening_done = true;
    pthread_kill(signal_thread.native_handle(), SIGTERM);  // wakes it if no signal came
    signal_thread.join();
    std::fprintf(stderr, "pq-server: stopped\n");
    if (vkctx && vkctx->validation_messages()) {
      std::fprintf(stderr, "pq-server: %u Vulkan validation messages\n", vkctx->validation_messages());
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pq-server: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
