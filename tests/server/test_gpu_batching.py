"""pq-server on the GPU path (--device 0: Vulkan even on lavapipe), where continuous batching
runs the batched kernels (GpuModel::step):
  - a greedy request's answer is the same alone and among 7 others (greedy and sampled, started
    together, of other lengths): what runs beside a request never changes its output;
  - a client that disconnects, streamed or not, frees its slot at once (long before its
    generation would have ended) and the next request runs.
"""
import http.client
import json
import socket
import threading
import unittest

from server_util import Server, metric, post_json, request, wait_for

PROMPT = "The history of"
OTHERS = ["In the morning", "The city council", "Music is", "He said that", "The report shows", "Science and",
          "When the war"]


class GpuBatching(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(["--device", "0", "--parallel", "8", "--ctx-size", "256"])
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        status = cls.server.stop()
        assert status == 0, "pq-server exited with %d:\n%s" % (status, cls.server.text_log())

    def complete(self, body):
        status, r = post_json(self.port, "/v1/completions", body)
        self.assertEqual(status, 200, r)
        return r["choices"][0]["text"]

    def test_a_same_answer_alone_and_among_seven(self):
        body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0}
        alone = self.complete(body)
        self.assertTrue(alone.strip())
        results = {}

        def run(key, b):
            results[key] = self.complete(b)

        threads = [threading.Thread(target=run, args=("under test", body))]
        for i, p in enumerate(OTHERS):  # greedy and sampled neighbours, longer and shorter
            b = {"prompt": p, "max_tokens": 6 + 2 * i, "temperature": 0 if i % 2 else 0.9, "seed": i}
            threads.append(threading.Thread(target=run, args=(p, b)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(900)
        self.assertEqual(len(results), 8)
        self.assertEqual(results["under test"], alone)
        self.assertGreater(metric(self.port, "pqvk_decode_rows_total"), metric(self.port, 'pqvk_steps_total{kind="decode"}'))
        self.assertNotIn("on CPU reference", self.server.text_log())  # the Vulkan engine ran

    def test_b_disconnect_frees_the_slot(self):
        for stream in (True, False):
            cancelled = metric(self.port, 'pqvk_generations_total{result="cancelled"}')
            generated = metric(self.port, "pqvk_generated_tokens_total")
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=300)
            body = json.dumps({"prompt": PROMPT, "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": stream})
            sock.sendall(("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          "Content-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
            if stream:
                got = b""
                while got.count(b"data: ") < 2:  # two events: generation runs
                    chunk = sock.recv(4096)
                    self.assertTrue(chunk)
                    got += chunk
            else:
                self.assertTrue(wait_for(lambda: metric(self.port, "pqvk_generated_tokens_total") >= generated + 2, 120))
            self.assertEqual(metric(self.port, "pqvk_slots_busy"), 1)
            sock.close()
            # Freed within a few steps: far less than the 200 tokens it asked for.
            self.assertTrue(wait_for(lambda: metric(self.port, "pqvk_slots_busy") == 0, 30), "stream=%s" % stream)
            self.assertEqual(metric(self.port, 'pqvk_generations_total{result="cancelled"}'), cancelled + 1)
            self.assertLess(metric(self.port, "pqvk_generated_tokens_total") - generated, 60)
        self.assertEqual(request(self.port, "GET", "/health")[0], 200)
        self.assertTrue(self.complete({"prompt": PROMPT, "max_tokens": 2, "temperature": 0}))


if __name__ == "__main__":
    unittest.main(verbosity=2)
