"""Helpers of pq-server's tests: start a server on a free loopback port, talk to it with the
standard library (http.client / urllib), stop it.

Every server is started with --port 0 (the kernel picks a free port; pq-server prints it) on
127.0.0.1, waited for with a bounded loop, and always stopped (SIGTERM, then SIGKILL) by the
tests that start it. The paths of the binaries come from the environment, set by CTest:
PQ_SERVER, PQ_RUN, PQVK_MODEL.
"""
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time

SERVER = os.environ.get("PQ_SERVER", "pq-server")
PQ_RUN = os.environ.get("PQ_RUN", "pq-run")
MODEL = os.environ.get("PQVK_MODEL", "")


class Server:
    """A pq-server process: Server(["--parallel", "8"]) ... .stop()."""

    def __init__(self, args=(), startup_timeout=120, env=None):
        cmd = [SERVER, "-m", MODEL, "--host", "127.0.0.1", "--port", "0"] + list(args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **(env or {})))
        self.log = []
        self.port = None
        ready = threading.Event()

        def read():  # the log, and the port from the "listening on" line
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not ready.wait(startup_timeout) or self.port is None:
            self.kill()
            raise RuntimeError("pq-server did not start:\n" + "".join(self.log))
        deadline = time.time() + startup_timeout
        while time.time() < deadline:
            try:
                if request(self.port, "GET", "/health", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("pq-server never became healthy:\n" + "".join(self.log))

    def stop(self, timeout=60):
        """SIGTERM; returns the exit status (SIGKILL after `timeout` seconds: an error)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError("pq-server did not exit within %d s of SIGTERM" % timeout)
        self.reader.join(5)
        self.proc.stderr.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.reader.join(5)
        self.proc.stderr.close()

    def text_log(self):
        return "".join(self.log)


def request(port, method, path, body=None, headers=None, timeout=300):
    """One request on a fresh connection: (status, headers dict, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def post_json(port, path, body, headers=None, timeout=300):
    """POST a JSON body: (status, parsed JSON)."""
    status, _, data = request(port, "POST", path, body, headers, timeout)
    return status, json.loads(data)


def sse_events(data):
    """The `data:` payloads of a server-sent event stream, in order."""
    events = []
    for block in data.decode("utf-8").split("\n\n"):
        if block.strip():
            lines = block.split("\n")
            assert all(line.startswith("data: ") for line in lines), block
            events.append("\n".join(line[6:] for line in lines))
    return events


def pq_run_text(prompt, n, extra=()):
    """What pq-run prints after echoing the prompt, greedy: the reference of the server's text."""
    def run(count):
        r = subprocess.run([PQ_RUN, "-m", MODEL, "-p", prompt, "-n", str(count), "--temp", "0", "-q"] + list(extra),
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert r.stdout.endswith("\n"), r.stdout
        return r.stdout[:-1]
    echo = run(0)
    full = run(n)
    assert full.startswith(echo), (echo, full)
    return full[len(echo):]


def metric(port, name):
    """A value from /metrics (the first sample whose name, labels included, starts with `name`)."""
    _, _, data = request(port, "GET", "/metrics")
    for line in data.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def wait_for(predicate, timeout):
    """Polls predicate() every 0.1 s until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
