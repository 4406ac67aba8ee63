"""pq-server with the official OpenAI client library for Node.js (tests/server/node/).

Run by CTest (server.openai-node) after the fixture server.npm-ci installed the pinned "openai"
package from the npm registry into OPENAI_NODE_DIR (package.json + package-lock.json, npm ci).
The expected texts are pq-run's greedy output for the same prompts.
"""
import json
import os
import subprocess
import unittest

from server_util import Server, pq_run_text

NODE_DIR = os.environ["OPENAI_NODE_DIR"]


class OpenAINode(unittest.TestCase):
    def test_official_client(self):
        server = Server(["--parallel", "2", "--api-key", "node-test-key"])
        try:
            want = {
                "port": server.port, "key": "node-test-key", "model": "pqvk-brown-10m-q5", "max_tokens": 10,
                "prompt": "The history of", "completion": pq_run_text("The history of", 10),
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the city."}],
                "chat": pq_run_text("Tell me about the city.", 10, ["--chat", "--system", "Be brief."]),
            }
            r = subprocess.run(["node", os.path.join(NODE_DIR, "openai_client.mjs"), json.dumps(want)],
                               capture_output=True, text=True, timeout=600, cwd=NODE_DIR)
            print(r.stdout)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("all ok", r.stdout)
        finally:
            self.assertEqual(server.stop(), 0, server.text_log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
