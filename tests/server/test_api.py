"""pq-server's API with real clients: curl and Python's standard library, on the bundled model.

Run by CTest (server.api) with PQ_SERVER, PQ_RUN and PQVK_MODEL set. The server runs the model
where pq-run does by default (the CPU reference on lavapipe), so greedy answers are compared with
pq-run's text for the same prompt, byte for byte.
"""
import json
import subprocess
import threading
import unittest

from server_util import Server, metric, post_json, pq_run_text, request, sse_events, wait_for

PROMPT = "The history of"


def curl(port, path, body=None, extra=()):
    """curl's output (body) and the HTTP status it reports."""
    cmd = ["curl", "-sS", "-N", "--max-time", "300", "-w", "\n%{http_code}", "http://127.0.0.1:%d%s" % (port, path)]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", body if isinstance(body, str) else json.dumps(body)]
    r = subprocess.run(cmd + list(extra), capture_output=True, text=True, timeout=330)
    assert r.returncode == 0, r.stderr
    out, status = r.stdout.rsplit("\n", 1)
    return out, int(status)


class Api(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(["--parallel", "4"])
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        status = cls.server.stop()
        assert status == 0, "pq-server exited with %d:\n%s" % (status, cls.server.text_log())

    def check_error(self, status, body, want_status):
        self.assertEqual(status, want_status, body)
        err = body["error"]
        self.assertIsInstance(err["message"], str)
        self.assertTrue(err["message"])
        self.assertIsInstance(err["type"], str)
        self.assertIn("code", err)
        self.assertIn("param", err)

    def test_health_models_metrics(self):
        status, _, data = request(self.port, "GET", "/health")
        self.assertEqual(status, 200)
        h = json.loads(data)
        self.assertEqual(h["status"], "ok")
        self.assertEqual(h["slots_idle"] + h["slots_processing"], 4)
        out, status = curl(self.port, "/v1/models")
        self.assertEqual(status, 200)
        models = json.loads(out)
        self.assertEqual(models["object"], "list")
        self.assertEqual(models["data"][0]["id"], "pqvk-brown-10m-q5")
        self.assertEqual(models["data"][0]["object"], "model")
        post_json(self.port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3, "temperature": 0})
        # Counted once the answer has been sent (cpp-httplib's logger): a moment after the client has it.
        completions = 'pqvk_requests_total{endpoint="/v1/completions",status="200"}'
        self.assertTrue(wait_for(lambda: completions in request(self.port, "GET", "/metrics")[2].decode(), 10))
        status, headers, data = request(self.port, "GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain"))
        text = data.decode()
        for name in ["pqvk_requests_total", "pqvk_prompt_tokens_total", "pqvk_generated_tokens_total",
                     "pqvk_tokens_per_second", "pqvk_queue_depth", "pqvk_slots_busy", "pqvk_slots_total"]:
            self.assertIn("# TYPE " + name + " ", text)
        self.assertIn(completions, text)
        self.assertGreaterEqual(metric(self.port, "pqvk_generated_tokens_total"), 3)
        self.assertEqual(metric(self.port, "pqvk_slots_total"), 4)

    def test_completion_equals_pq_run(self):
        want = pq_run_text(PROMPT, 12)
        status, r = post_json(self.port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["object"], "text_completion")
        self.assertTrue(r["id"].startswith("cmpl-"))
        self.assertEqual(r["choices"][0]["text"], want)
        self.assertEqual(r["choices"][0]["finish_reason"], "length")
        _, tok = post_json(self.port, "/tokenize", {"content": PROMPT, "add_special": True})
        self.assertEqual(r["usage"], {"prompt_tokens": len(tok["tokens"]), "completion_tokens": 12,
                                      "total_tokens": len(tok["tokens"]) + 12})
        # The same prompt as token ids (and as a list of one prompt).
        for prompt in (tok["tokens"], [tok["tokens"]], [PROMPT]):
            status, r2 = post_json(self.port, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0})
            self.assertEqual(status, 200, r2)
            self.assertEqual(r2["choices"][0]["text"], want)

    def test_streaming_with_curl(self):
        want = pq_run_text(PROMPT, 10)
        out, status = curl(self.port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "stream": True,
                                                          "stream_options": {"include_usage": True}})
        self.assertEqual(status, 200)
        events = sse_events(out.encode())
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertEqual("".join(c["choices"][0]["text"] for c in chunks if c["choices"]), want)
        finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        self.assertEqual(len(finals), 1)
        self.assertEqual(finals[0]["choices"][0]["finish_reason"], "length")
        self.assertEqual(chunks[-1]["choices"], [])  # the usage chunk, last
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 10)
        self.assertEqual(len({c["id"] for c in chunks}), 1)

    def test_chat_equals_pq_run_chat(self):
        want = pq_run_text("Tell me about the city.", 10, ["--chat", "--system", "Be brief."])
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the city."}]
        status, r = post_json(self.port, "/v1/chat/completions", {"messages": messages, "max_tokens": 10, "temperature": 0})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["object"], "chat.completion")
        self.assertEqual(r["choices"][0]["message"], {"role": "assistant", "content": want})
        self.assertEqual(r["usage"]["prompt_tokens"], 27)  # as pq-run --chat reports (tests in CMakeLists.txt)
        # Content as text parts, streamed.
        messages[1]["content"] = [{"type": "text", "text": "Tell me about "}, {"type": "text", "text": "the city."}]
        status, headers, data = request(self.port, "POST", "/v1/chat/completions",
                                        {"messages": messages, "max_tokens": 10, "temperature": 0, "stream": True})
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/event-stream"))
        events = sse_events(data)
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertEqual(chunks[0]["object"], "chat.completion.chunk")
        self.assertEqual(chunks[0]["choices"][0]["delta"]["role"], "assistant")
        self.assertEqual("".join(c["choices"][0]["delta"].get("content", "") for c in chunks), want)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertEqual(chunks[-1]["choices"][0]["delta"], {})

    def test_stop_strings_and_lengths(self):
        full = post_json(self.port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "temperature": 0})[1]
        text = full["choices"][0]["text"]
        word = text.split()[4]
        cut = text[:text.index(word)]
        for stop in (word, [word, "zzzz"]):
            status, r = post_json(self.port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "temperature": 0, "stop": stop})
            self.assertEqual(status, 200, r)
            self.assertEqual(r["choices"][0]["text"], cut)
            self.assertEqual(r["choices"][0]["finish_reason"], "stop")
        r = post_json(self.port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1, "temperature": 0})[1]
        self.assertEqual(r["usage"]["completion_tokens"], 1)
        self.assertEqual(r["choices"][0]["finish_reason"], "length")
        # Without max_tokens: until the context (512) is full or the model stops.
        r = post_json(self.port, "/v1/completions", {"prompt": [1] * 505, "temperature": 0})[1]
        self.assertLessEqual(r["usage"]["completion_tokens"], 8)
        if r["choices"][0]["finish_reason"] == "length":
            self.assertEqual(r["usage"]["completion_tokens"], 8)

    def test_sampling_fields(self):
        base = {"prompt": PROMPT, "max_tokens": 12}
        a = post_json(self.port, "/v1/completions", dict(base, temperature=1.0, seed=7))[1]["choices"][0]["text"]
        b = post_json(self.port, "/v1/completions", dict(base, temperature=1.0, seed=7))[1]["choices"][0]["text"]
        self.assertEqual(a, b)  # the same seed, the same text
        texts = {post_json(self.port, "/v1/completions", dict(base, temperature=1.5, top_k=0, top_p=1, min_p=0, seed=s))[1]
                 ["choices"][0]["text"] for s in range(6)}
        self.assertGreater(len(texts), 1)  # seeds matter
        greedy = post_json(self.port, "/v1/completions", dict(base, temperature=0))[1]["choices"][0]["text"]
        top1 = post_json(self.port, "/v1/completions", dict(base, temperature=1.0, top_k=1, seed=3))[1]["choices"][0]["text"]
        self.assertEqual(top1, greedy)
        # The greedy text repeats itself ("the world"); a frequency penalty changes that.
        pen = post_json(self.port, "/v1/completions", dict(base, temperature=0, frequency_penalty=2.0))[1]["choices"][0]["text"]
        self.assertNotEqual(pen, greedy)
        pres = post_json(self.port, "/v1/completions", dict(base, temperature=0, presence_penalty=2.0))[1]["choices"][0]["text"]
        self.assertNotEqual(pres, greedy)

    def test_tokenize_detokenize(self):
        status, t = post_json(self.port, "/tokenize", {"content": "Hello world"})
        self.assertEqual(status, 200)
        self.assertTrue(all(isinstance(i, int) for i in t["tokens"]))
        status, d = post_json(self.port, "/detokenize", {"tokens": t["tokens"]})
        self.assertEqual(status, 200)
        self.assertEqual(d["content"].strip(), "Hello world")
        _, p = post_json(self.port, "/tokenize", {"content": "Hello world", "with_pieces": True})
        self.assertEqual([x["id"] for x in p["tokens"]], t["tokens"])
        self.assertEqual("".join(x["piece"] for x in p["tokens"]).strip(), "Hello world")
        self.check_error(*post_json(self.port, "/detokenize", {"tokens": [1, 99999]}), 400)
        self.check_error(*post_json(self.port, "/tokenize", {"content": 5}), 400)

    def test_errors(self):
        cases = [
            ("/v1/completions", "{", 400),
            ("/v1/completions", "[1, 2]", 400),
            ("/v1/completions", {}, 400),                                         # missing prompt
            ("/v1/completions", {"prompt": PROMPT, "max_tokens": "5"}, 400),      # wrong type
            ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0}, 400),        # out of range
            ("/v1/completions", {"prompt": PROMPT, "temperature": 3}, 400),
            ("/v1/completions", {"prompt": PROMPT, "temperature": "hot"}, 400),
            ("/v1/completions", {"prompt": PROMPT, "n": 2}, 400),
            ("/v1/completions", {"prompt": PROMPT, "stop": 5}, 400),
            ("/v1/completions", {"prompt": PROMPT, "seed": 1.5}, 400),
            ("/v1/completions", {"prompt": PROMPT, "stream": "yes"}, 400),
            ("/v1/completions", {"prompt": [1, -3]}, 400),
            ("/v1/completions", {"prompt": ""}, 400),
            ("/v1/chat/completions", {"messages": "hi"}, 400),
            ("/v1/chat/completions", {"messages": []}, 400),
            ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, 400),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
        ]
        for path, body, want in cases:
            out, status = curl(self.port, path, body)
            self.check_error(status, json.loads(out), want)
        # A prompt longer than the context.
        status, r = post_json(self.port, "/v1/completions", {"prompt": [1] * 600})
        self.check_error(status, r, 400)
        self.assertEqual(r["error"]["code"], "context_length_exceeded")
        # Unknown endpoints and methods.
        for method, path in (("GET", "/v1/nothing"), ("GET", "/v1/completions"), ("POST", "/health")):
            status, _, data = request(self.port, method, path, "{}" if method == "POST" else None)
            self.check_error(status, json.loads(data), 404)
        self.assertEqual(request(self.port, "GET", "/health")[0], 200)


class ApiKey(unittest.TestCase):
    def test_key_required(self):
        server = Server(["--api-key", "sekret", "--parallel", "1"])
        try:
            body = {"prompt": PROMPT, "max_tokens": 2, "temperature": 0}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
                status, r = post_json(server.port, "/v1/completions", body, headers)
                self.assertEqual(status, 401, r)
                self.assertEqual(r["error"]["code"], "invalid_api_key")
            status, r = post_json(server.port, "/v1/completions", body, {"Authorization": "Bearer sekret"})
            self.assertEqual(status, 200, r)
            self.assertEqual(request(server.port, "GET", "/v1/models")[0], 401)
            self.assertEqual(request(server.port, "GET", "/health")[0], 200)  # for load balancers
            out, status = curl(server.port, "/v1/models", extra=["-H", "Authorization: Bearer sekret"])
            self.assertEqual(status, 200)
        finally:
            self.assertEqual(server.stop(), 0)


class QueueFull(unittest.TestCase):
    def test_503_with_retry_after(self):
        # One slot, no queue: while a long generation runs, another request is refused at once.
        server = Server(["--parallel", "1", "--queue", "0"])
        try:
            first = {}
            started = threading.Event()

            def long_request():
                import http.client
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
                conn.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "temperature": 0, "stream": True,
                                                                    "ignore_eos": True}),
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                first["status"] = r.status
                r.readline()  # the first event: generation runs
                started.set()
                first["rest"] = r.read()
                conn.close()

            t = threading.Thread(target=long_request)
            t.start()
            self.assertTrue(started.wait(120))
            status, headers, data = request(server.port, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})
            self.assertEqual(status, 503, data)
            self.assertEqual(headers.get("retry-after"), "1")
            self.assertEqual(json.loads(data)["error"]["type"], "server_error")
            t.join(300)
            self.assertEqual(first["status"], 200)
            self.assertTrue(first["rest"].endswith(b"data: [DONE]\n\n"))
            self.assertGreaterEqual(metric(server.port, 'pqvk_requests_total{endpoint="/v1/completions",status="503"}'), 1)
        finally:
            self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
