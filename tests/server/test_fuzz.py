"""Fuzz-style test of pq-server's request bodies: truncated bodies, every field with values of the
wrong types, huge and tiny numbers, deep nesting, invalid UTF-8, raw bytes, oversized bodies,
through every POST endpoint. Every one must be answered with a 4xx in OpenAI's error shape (never
a 5xx, a crash or a hang), and the server must stay healthy and keep generating.
Deterministic: the random mutations are seeded.
"""
import http.client
import json
import random
import unittest

from server_util import Server, post_json, request

ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"]
VALID = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2, "temperature": 0.5,
                             "top_p": 0.9, "top_k": 5, "min_p": 0.1, "seed": 3, "stop": ["x"], "stream": False,
                             "presence_penalty": 0.5, "frequency_penalty": 0.5, "n": 1,
                             "stream_options": {"include_usage": True}},
    "/v1/completions": {"prompt": "Hello", "max_tokens": 2, "temperature": 0.5, "top_p": 0.9, "top_k": 5, "min_p": 0.1,
                        "seed": 3, "stop": "x", "stream": False, "presence_penalty": 0.5, "frequency_penalty": 0.5},
    "/tokenize": {"content": "Hello", "add_special": True, "with_pieces": False},
    "/detokenize": {"tokens": [1, 2, 3]},
}
# Values of the wrong type (or out of range) for each field; null is "absent" to OpenAI, so never used.
WRONG = {
    "messages": ["hi", 5, {}, [], [5], [{"role": 5, "content": "x"}], [{"content": "x"}],
                 [{"role": "user", "content": 5}], [{"role": "user", "content": [{"type": "image_url"}]}],
                 [{"role": "user", "content": [{"type": "text", "text": 5}]}], [{"role": "user", "content": [5]}]],
    "prompt": [5, {}, [], "", [-1], [1.5], [[1], [2]], ["a", "b"], [True], [10 ** 30]],
    "max_tokens": ["5", 0, -1, 1.5, True, [], {}, 10 ** 30, 2 ** 63, -(2 ** 63) - 1, 1e300],
    "temperature": ["0", -0.1, 2.5, True, [], {}, 1e308, -1e308],
    "top_p": ["1", 0, -0.5, 1.5, False, []],
    "top_k": ["5", -1, 1.5, True, 10 ** 20],
    "min_p": ["0", -0.1, 1.1, True],
    "seed": ["3", 1.5, True, [], 10 ** 20, -(10 ** 20)],
    "stop": [5, True, {}, [5], [None], ["x"] * 40],
    "stream": ["yes", 1, [], {}],
    "presence_penalty": ["0", 3, -3, True],
    "frequency_penalty": ["0", 2.5, -2.5, []],
    "n": [2, 0, "1", 1.5, True],
    "stream_options": ["x", 5, [], {"include_usage": "yes"}],
    "content": [5, True, [], {}],
    "add_special": ["true", 1, []],
    "with_pieces": ["no", 0],
    "tokens": ["1", 5, {}, [-1], [1.5], ["a"], [10 ** 12], [True], [[1]]],
}


def raw_post(port, path, data, content_type="application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body=data, headers={"Content-Type": content_type})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def bodies(rng):
    """(endpoint, bytes) pairs that are all invalid requests."""
    out = []
    for ep in ENDPOINTS:
        valid = json.dumps(VALID[ep]).encode()
        # Truncated at every position (a proper prefix is never valid JSON).
        for n in range(0, len(valid)):
            out.append((ep, valid[:n]))
        # Each field with each wrong value.
        for field in VALID[ep]:
            for v in WRONG.get(field, []):
                b = dict(VALID[ep])
                b[field] = v
                out.append((ep, json.dumps(b).encode()))
        # Required fields missing.
        for field in {"/v1/chat/completions": ["messages"], "/v1/completions": ["prompt"], "/tokenize": ["content"],
                      "/detokenize": ["tokens"]}[ep]:
            b = dict(VALID[ep])
            del b[field]
            out.append((ep, json.dumps(b).encode()))
        # Not an object, numbers beyond double and int64, deep nesting, invalid UTF-8, junk.
        for junk in [b"", b"null", b"[]", b"5", b'"x"', b"true", b"{}", b"{\"a\":1e400}", b"{\"prompt\": 1e99999}",
                     b"{\"max_tokens\": 99999999999999999999999999999999}", b"[" * 100000, b"{\"a\":" * 50000,
                     b"[" * 65 + b"]" * 65, b"{\"prompt\": \"\xff\xfe\"}", b"{\"content\": \"\xc3\x28\"}",
                     b"{\"prompt\": \"\xed\xa0\x80\"}", b"{\"prompt\": \"\xf0\x28\x8c\x28\"}",
                     b"{\"prompt\": \"\\ud800\"}", b"\x00\x01\x02", b"\xef\xbb\xbf{}", b"{\"prompt\":\"a\"}}",
                     b"{'prompt': 'single quotes'}", b"{\"prompt\": NaN}", b"{\"prompt\": Infinity}"]:
            out.append((ep, junk))
        # Random byte flips of the valid body (kept only where the result is not valid JSON or not an object
        # with the right fields: the server decides, the test only requires a 4xx... so only unparsable ones).
        for _ in range(150):
            b = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            try:
                json.loads(bytes(b).decode("utf-8"))
                continue  # still valid JSON: may be a valid request
            except (ValueError, UnicodeDecodeError):
                out.append((ep, bytes(b)))
    return out


class Fuzz(unittest.TestCase):
    def test_malformed_bodies_are_4xx_and_the_server_stays_healthy(self):
        server = Server(["--parallel", "2"])
        try:
            rng = random.Random(20261201)
            cases = bodies(rng)
            self.assertGreater(len(cases), 1200)
            for ep, data in cases:
                status, resp = raw_post(server.port, ep, data)
                self.assertTrue(400 <= status < 500, "%s %r -> %d %r" % (ep, data[:200], status, resp[:300]))
                err = json.loads(resp)["error"]
                self.assertIsInstance(err["message"], str)
                self.assertIsInstance(err["type"], str)
            # A prompt far longer than the context (refused before it is encoded), a huge id array.
            for ep, body in (("/v1/completions", {"prompt": "word " * 200000}),
                             ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 200000}]}),
                             ("/v1/completions", {"prompt": list(range(100)) * 2000})):
                status, resp = raw_post(server.port, ep, json.dumps(body).encode())
                self.assertEqual(status, 400, resp[:300])
                self.assertEqual(json.loads(resp)["error"]["code"], "context_length_exceeded")
            # Too large a body: 413.
            status, resp = raw_post(server.port, "/v1/completions", b"{\"prompt\": \"" + b"a" * (17 << 20) + b"\"}")
            self.assertEqual(status, 413)
            self.assertIn("error", json.loads(resp))
            # Still healthy, still generating.
            self.assertEqual(request(server.port, "GET", "/health")[0], 200)
            status, r = post_json(server.port, "/v1/completions", {"prompt": "The history of", "max_tokens": 3, "temperature": 0})
            self.assertEqual(status, 200, r)
            self.assertEqual(r["usage"]["completion_tokens"], 3)
            print("%d malformed bodies, all 4xx" % len(cases))
        finally:
            self.assertEqual(server.stop(), 0, server.text_log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
