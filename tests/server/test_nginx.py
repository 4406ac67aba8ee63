"""Serving beyond one server with existing tools (docs/serving.md): two pq-server instances behind
nginx (least_conn, passive health checks, retries on the other instance) on loopback. 32
non-streamed requests are sent through nginx; one instance is killed (SIGKILL) while they run;
every request must still complete, with pq-run's greedy answer.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from server_util import Server, pq_run_text, request

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = ["The history of", "In the morning", "The city council", "Music is"]
MAX_TOKENS = 24


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self, upstream_ports):
        self.dir = tempfile.mkdtemp(prefix="pqvk-nginx-")
        os.chmod(self.dir, 0o755)
        for _ in range(5):  # the port is free when picked; retry if another process takes it first
            self.port = free_port()
            with open(os.path.join(HERE, "nginx.conf.in")) as f:
                conf = f.read()
            conf = (conf.replace("@DIR@", self.dir).replace("@PORT@", str(self.port))
                    .replace("@PORT_A@", str(upstream_ports[0])).replace("@PORT_B@", str(upstream_ports[1]))
                    .replace("@USER@", "user root;" if os.geteuid() == 0 else ""))
            path = os.path.join(self.dir, "nginx.conf")
            with open(path, "w") as f:
                f.write(conf)
            self.proc = subprocess.Popen(["nginx", "-c", path, "-p", self.dir, "-e", os.path.join(self.dir, "error.log")],
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            deadline = time.time() + 20
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError("nginx did not start: " + self.error_log())

    def log(self, name):
        try:
            with open(os.path.join(self.dir, name)) as f:
                return f.read()
        except OSError:
            return ""

    def error_log(self):
        return self.log("error.log")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Balancing(unittest.TestCase):
    def test_killed_instance_is_retried_on_the_other(self):
        if shutil.which("nginx") is None:
            self.fail("nginx is not installed (tools/setup-debian.sh installs nginx-light)")
        expected = {p: pq_run_text(p, MAX_TOKENS) for p in PROMPTS}
        a = Server(["--parallel", "4"])
        b = Server(["--parallel", "4"])
        nginx = None
        try:
            nginx = Nginx([a.port, b.port])
            self.assertEqual(request(nginx.port, "GET", "/health")[0], 200)
            results = [None] * 32
            done = threading.Semaphore(0)

            def run(i):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=600)
                    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": MAX_TOKENS, "temperature": 0}
                    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    results[i] = (r.status, r.read())
                    conn.close()
                except Exception as e:  # reported below
                    results[i] = ("exception", repr(e))
                done.release()

            threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
            for t in threads:
                t.start()
            for _ in range(4):  # a few answers first: both instances are busy by then
                self.assertTrue(done.acquire(timeout=600))
            a.proc.send_signal(signal.SIGKILL)  # midway: its requests in flight fail, nginx retries them on b
            for t in threads:
                t.join(600)
            a.kill()
            for i, r in enumerate(results):
                self.assertIsNotNone(r, "request %d" % i)
                self.assertEqual(r[0], 200, "request %d: %r\n%s" % (i, r, nginx.error_log()))
                j = json.loads(r[1])
                self.assertEqual(j["choices"][0]["text"], expected[PROMPTS[i % len(PROMPTS)]], "request %d" % i)
                self.assertIn(j["choices"][0]["finish_reason"], ("length", "stop"))
                self.assertEqual(j["usage"]["total_tokens"], j["usage"]["prompt_tokens"] + j["usage"]["completion_tokens"])
            # nginx's access log: the instances each request went to ("A, B": tried on A, then B).
            nginx.stop()  # flushes the log
            a_addr, b_addr = "127.0.0.1:%d" % a.port, "127.0.0.1:%d" % b.port
            lines = [l.split(" ", 2) for l in nginx.log("access.log").splitlines() if l.startswith("/v1/completions ")]
            self.assertEqual(len(lines), 32)
            ups = [l[2] for l in lines]
            self.assertTrue(all(l[1] == "200" for l in lines))
            self.assertTrue(any(u == b_addr for u in ups), ups)                  # b served its own share
            retried = [u for u in ups if u.startswith(a_addr + ", ") and u.endswith(b_addr)]
            self.assertGreater(len(retried), 0, ups)                             # and took over a's requests in flight
            self.assertTrue(all(u in (a_addr, b_addr) or u in retried for u in ups), ups)
            print("served by a: %d, by b: %d, retried on b after a died: %d" %
                  (ups.count(a_addr), ups.count(b_addr), len(retried)))
            nginx = Nginx([b.port, b.port])
            # Still served after the kill: by b alone.
            self.assertEqual(request(nginx.port, "POST", "/v1/completions",
                                     {"prompt": "The history of", "max_tokens": 2, "temperature": 0})[0], 200)
        finally:
            if nginx:
                nginx.cleanup()
            a.kill()
            self.assertEqual(b.stop(), 0, b.text_log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
