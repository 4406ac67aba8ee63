"""A load test of pq-server: 64 concurrent requests with --parallel 8, every one answered and
complete, every greedy answer equal to pq-run's for the same prompt (8 prompts, 8 requests each,
half of them streamed, a quarter as chat). Batching is checked in /metrics: decode steps ran
several sequences at once. The server runs where pq-run does by default (on lavapipe: the CPU
reference; server.gpu-batching runs the GPU path on lavapipe).
"""
import http.client
import json
import threading
import unittest

from server_util import Server, metric, pq_run_text, sse_events, wait_for

PROMPTS = ["The history of", "In the morning", "The city council", "Music is", "He said that",
           "The report shows", "Science and", "When the war"]
MAX_TOKENS = 8


def run_request(port, i, results):
    prompt = PROMPTS[i % len(PROMPTS)]
    stream = i % 2 == 1
    chat = i % 4 == 2
    if chat:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]}
    else:
        path, body = "/v1/completions", {"prompt": prompt}
    body.update({"max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        if r.status != 200:
            results[i] = ("status", r.status, data)
            return
        if stream:
            events = sse_events(data)
            assert events[-1] == "[DONE]", events[-3:]
            chunks = [json.loads(e) for e in events[:-1]]
            key = "delta" if chat else "text"
            text = "".join((c["choices"][0][key].get("content", "") if chat else c["choices"][0]["text"]) for c in chunks)
            finish = chunks[-1]["choices"][0]["finish_reason"]
        else:
            j = json.loads(data)
            text = j["choices"][0]["message"]["content"] if chat else j["choices"][0]["text"]
            finish = j["choices"][0]["finish_reason"]
            assert j["usage"]["completion_tokens"] <= MAX_TOKENS
        results[i] = ("ok", prompt, chat, text, finish)
    except Exception as e:  # recorded, reported by the test
        results[i] = ("exception", repr(e))


class Load(unittest.TestCase):
    def test_64_concurrent_with_8_slots(self):
        expected = {}
        for p in PROMPTS:
            expected[(p, False)] = pq_run_text(p, MAX_TOKENS)
            expected[(p, True)] = pq_run_text(p, MAX_TOKENS, ["--chat"])
        server = Server(["--parallel", "8", "--queue", "64"])
        try:
            results = [None] * 64
            threads = [threading.Thread(target=run_request, args=(server.port, i, results)) for i in range(64)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(900)
            for i, r in enumerate(results):
                self.assertIsNotNone(r, "request %d never finished" % i)
                self.assertEqual(r[0], "ok", "request %d: %r" % (i, r))
                _, prompt, chat, text, finish = r
                self.assertIn(finish, ("stop", "length"))
                self.assertEqual(text, expected[(prompt, chat)], "request %d (%r, chat=%s)" % (i, prompt, chat))
            decode_steps = metric(server.port, 'pqvk_steps_total{kind="decode"}')
            rows = metric(server.port, "pqvk_decode_rows_total")
            print("decode steps %d, mean batch %.2f" % (decode_steps, rows / decode_steps))
            self.assertGreater(rows / decode_steps, 2.0)  # continuous batching: several sequences per step
            # An answer is counted once it has been sent (cpp-httplib's logger): the last ones a moment later.
            answered = lambda: (metric(server.port, 'pqvk_requests_total{endpoint="/v1/completions",status="200"}') +
                                metric(server.port, 'pqvk_requests_total{endpoint="/v1/chat/completions",status="200"}'))
            self.assertTrue(wait_for(lambda: answered() == 64, 10), answered())
            self.assertEqual(metric(server.port, "pqvk_slots_busy"), 0)
            self.assertEqual(metric(server.port, "pqvk_queue_depth"), 0)
        finally:
            self.assertEqual(server.stop(), 0, server.text_log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
