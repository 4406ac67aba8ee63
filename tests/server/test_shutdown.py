"""SIGTERM: pq-server stops accepting connections, lets what runs finish (streamed and not), and
exits with status 0; with a short --shutdown-grace, what still runs is cancelled (a 503, or an
error event and [DONE] in a stream) and the exit status is still 0.
"""
import http.client
import json
import signal
import threading
import time
import unittest

from server_util import Server, request, sse_events

LONG = {"prompt": "The history of", "max_tokens": 300, "temperature": 0, "ignore_eos": True}


def start_requests(port, bodies):
    """Sends each body on its own connection; returns (threads, results, events set at the first byte)."""
    results, started = {}, []

    def run(i, body):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if body.get("stream"):
            first = r.readline()
            started[i].set()
            results[i] = (r.status, first + r.read())
        else:
            started[i].set()
            results[i] = (r.status, r.read())
        conn.close()

    threads = []
    for i, b in enumerate(bodies):
        started.append(threading.Event())
        threads.append(threading.Thread(target=run, args=(i, b)))
        threads[-1].start()
    return threads, results, started


class Shutdown(unittest.TestCase):
    def test_sigterm_finishes_what_runs(self):
        server = Server(["--parallel", "2", "--queue", "4"])
        threads, results, started = start_requests(server.port, [dict(LONG, stream=True), dict(LONG, stream=True), LONG])
        self.assertTrue(started[0].wait(120) and started[1].wait(120))  # both streams generating; the third queued
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with self.assertRaises(OSError):  # no new connections
            request(server.port, "GET", "/health", timeout=5)
        for t in threads:
            t.join(600)
        self.assertEqual(server.proc.wait(600), 0, server.text_log())
        server.kill()
        for i in (0, 1):
            status, data = results[i]
            self.assertEqual(status, 200)
            events = sse_events(data)
            self.assertEqual(events[-1], "[DONE]")
            self.assertEqual(json.loads(events[-2])["choices"][0]["finish_reason"], "length")
        status, data = results[2]
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(data)["usage"]["completion_tokens"], 300)
        self.assertIn("finishing what runs", server.text_log())

    def test_grace_period_cancels(self):
        server = Server(["--parallel", "2", "--shutdown-grace", "0.2"])
        long = dict(LONG, max_tokens=100000, prompt=[1])  # until the context is full: longer than the grace period
        threads, results, started = start_requests(server.port, [dict(long, stream=True), long])
        self.assertTrue(started[0].wait(120))
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(600)
        self.assertEqual(server.proc.wait(600), 0, server.text_log())
        server.kill()
        cancelled = 0
        status, data = results[0]
        events = sse_events(data)
        self.assertEqual(events[-1], "[DONE]")
        if "error" in json.loads(events[-2]):  # cancelled (not finished within the grace period)
            self.assertIn("shutting down", json.loads(events[-2])["error"]["message"])
            cancelled += 1
        status, data = results[1]
        self.assertIn(status, (200, 503), data)
        if status == 503:
            self.assertEqual(json.loads(data)["error"]["type"], "server_error")
            cancelled += 1
        self.assertGreaterEqual(cancelled, 1)  # 2 x 511 tokens take far longer than 0.2 s
        self.assertIn("cancelling what still runs", server.text_log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
