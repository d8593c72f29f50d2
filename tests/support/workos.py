"""The fake WorkOS server as a process, the test API key and a fast retry policy."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from audit_instrument.delivery import RetryPolicy

SERVER_SCRIPT = Path(__file__).with_name("workos_server.py")
API_KEY = "sk_test"
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, deadline=30.0)



class ServerProcess:
    """``tests/workos_server.py`` run as its own process (another core, another GIL)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "--port", "0", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"test server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        with urllib.request.urlopen(self.url + path, data=data, timeout=10) as answer:
            return json.loads(answer.read())

    def stats(self) -> dict[str, int]:
        return dict(self._call("/_stats"))

    def control(self, **settings: Any) -> None:
        self._call("/_control", settings)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
