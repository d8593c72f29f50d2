"""A WorkOS-compatible audit-log server on 127.0.0.1, with fault injection.

Real sockets, real HTTP/1.1 (keep-alive, Content-Length bodies), one asyncio
loop in a background thread. It answers ``POST /events`` and
``POST /audit_logs/events`` like WorkOS: ``201 {"success": true}``; ``401``
for a wrong key; ``422`` with a message and ``errors`` for a malformed event.
It dedupes by ``Idempotency-Key`` (a repeat gets the first answer and counts
as a duplicate), so tests can count unique accepted events.

Like WorkOS it can limit the request rate: ``rate_limit`` requests per
sliding one-second window (WorkOS documents 6,000 per 60 s per IP, i.e. 100/s);
a request over it gets ``429`` with ``Retry-After`` (whole seconds until the
window has room). ``latency`` delays every answer, 429s included, like a
distant server.

Faults on demand: :meth:`WorkOSServer.script` queues outcomes for the next
requests (a status, ``Fault.reset()``, ``Fault.hang()``, ``Fault.slow(s)``,
``Fault.rate_limited(retry_after)``); ``fault_rate`` fails that share of
requests at random (mixed 5xx, 429, connection resets); ``hang_all`` never
answers; ``reject_actions`` maps an action to a non-retryable error.

Audit-log exports as WorkOS has them: ``POST /audit_logs/exports`` creates
one (``pending``), ``GET /audit_logs/exports/{id}`` reads it; it turns
``ready`` after ``export_polls_pending`` reads (``export_outcome`` may make it
``"error"``), with a presigned-style URL on a **second port**, the download
host, which serves the CSV (``export_csv``, else the organization's accepted
events) to a request carrying the right signature and records every request
it gets in ``downloads`` (headers included). ``download_script`` queues
statuses for the download host.

In a test::

    with WorkOSServer() as server:
        server.script(503, 503)              # two failures, then 201
        ...
        assert server.accepted_count == 1

As a separate process (benchmarks, CLI tests)::

    python tests/workos_server.py --port 0 [--fault-rate 0.3] [--api-key sk_test]

prints ``PORT <n>`` on its first line and serves until stdin closes or
SIGTERM. ``GET /_stats`` answers ``{"requests", "accepted", "duplicates",
"rate_limited", "seconds"}`` (``seconds``: ``[second, requests, 429s]`` per
second since the first request); ``POST /_control`` with ``{"fault_rate",
"hang_all", "latency", "rate_limit"}`` changes them; ``POST /_reset``
forgets what was recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import io
import json
import math
import os
import random
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fault", "Recorded", "WorkOSServer"]

_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_LEGACY_REQUIRED = ("group", "action", "action_type", "actor_name", "actor_id", "target_name",
                  "target_id", "occurred_at", "metadata")


@dataclass(frozen=True)
class Fault:
    """One scripted outcome for a request."""

    kind: str  # "status", "reset", "hang", "slow"
    status: int = 0
    retry_after: str | None = None
    delay: float = 0.0
    message: str = ""

    @classmethod
    def status_code(cls, status: int, message: str = "") -> Fault:
        return cls("status", status=status, message=message)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "0") -> Fault:
        return cls("status", status=429, retry_after=retry_after)

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection abruptly without answering."""
        return cls("reset")

    @classmethod
    def hang(cls) -> Fault:
        """Never answer this request (the client times out)."""
        return cls("hang")

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """Answer normally after ``delay`` seconds."""
        return cls("slow", delay=delay)


@dataclass
class Recorded:
    """A request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


class _Protocol(asyncio.Protocol):
    def __init__(self, server: WorkOSServer, *, download: bool = False) -> None:
        self.server = server
        self.download = download  # the download host's side
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            method, path, _ = head[0].split(" ", 2)
            if self.download:
                self.server._serve_download(self, Recorded(method, path, headers, body))
            else:
                self.server._handle(self, Recorded(method, path, headers, body))

    def respond(self, status: int, payload: object, extra: dict[str, str] | None = None,
                close: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        body = json.dumps(payload).encode()
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
                 "Content-Type: application/json", f"Content-Length: {len(body)}"]
        for name, value in (extra or {}).items():
            lines.append(f"{name}: {value}")
        if close:
            lines.append("Connection: close")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        if close:
            self.transport.close()

    def respond_bytes(self, status: int, body: bytes, content_type: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
        self.transport.write(head.encode() + body)

    def reset(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class WorkOSServer:
    """A loopback WorkOS stand-in; see the module docstring."""

    def __init__(self, *, api_key: str = "sk_test", port: int = 0, fault_rate: float = 0.0,
                 seed: int | None = None, record: bool = True, latency: float = 0.0,
                 rate_limit: float | None = None) -> None:
        self.api_key = api_key
        self.latency = latency  # seconds added before every answer, like a distant server
        self.rate_limit = rate_limit  # requests per sliding one-second window
        self.rate_limited = 0
        self._admitted: collections.deque[float] = collections.deque()  # inside the window
        self._first: float | None = None
        self._seconds: dict[int, list[int]] = {}  # second -> [requests, 429s]
        self.requested_port = port
        self.fault_rate = fault_rate
        self.hang_all = False
        self.record = record
        self.reject_actions: dict[str, tuple[int, str]] = {}
        self.requests: list[Recorded] = []
        self.accepted: dict[str, Any] = {}
        self.request_count = 0
        self.duplicates = 0
        self._connections = 0
        self._script: collections.deque[Fault] = collections.deque()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._hung: list[_Protocol] = []
        self.port = 0
        # audit-log exports
        self.exports: dict[str, dict[str, Any]] = {}
        self.export_polls_pending = 1  # reads of an export answered "pending" before "ready"
        self.export_outcome = "ready"  # or "error"
        self.export_csv: bytes | None = None  # served instead of the accepted events
        self.downloads: list[Recorded] = []  # every request the download host got
        self.download_script: collections.deque[int] = collections.deque()
        self._download_server: asyncio.base_events.Server | None = None
        self.download_port = 0

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WorkOSServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(loop.create_server(
                    lambda: _Protocol(self), "127.0.0.1", self.requested_port, backlog=1024))
                self.port = self._server.sockets[0].getsockname()[1]
                self._download_server = loop.run_until_complete(loop.create_server(
                    lambda: _Protocol(self, download=True), "127.0.0.1", 0))
                self.download_port = self._download_server.sockets[0].getsockname()[1]
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._server.close()
                loop.run_until_complete(self._server.wait_closed())
                if self._download_server is not None:
                    self._download_server.close()
                loop.close()

        self._thread = threading.Thread(target=run, name="workos-test-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def close_all() -> None:
            for proto in self._hung:
                proto.reset()
            if self._download_server is not None:
                self._download_server.close()
                with contextlib.suppress(AttributeError):
                    self._download_server.close_clients()  # type: ignore[attr-defined]
            if self._server is not None:
                self._server.close()
                # close keep-alive connections too, or wait_closed() would wait on them
                with contextlib.suppress(AttributeError):
                    self._server.close_clients()  # type: ignore[attr-defined]
            loop.stop()

        loop.call_soon_threadsafe(close_all)
        thread.join(10)
        self._loop = None

    def __enter__(self) -> WorkOSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------------------
    def script(self, *outcomes: int | Fault) -> None:
        """Answer the next requests with these outcomes (ints are statuses), in order."""
        with self._lock:
            for outcome in outcomes:
                self._script.append(
                    Fault.status_code(outcome) if isinstance(outcome, int) else outcome)

    def reset(self) -> None:
        """Forget recorded requests and accepted events."""
        with self._lock:
            self.requests.clear()
            self.accepted.clear()
            self.request_count = 0
            self.duplicates = 0
            self.rate_limited = 0
            self._admitted.clear()
            self._first = None
            self._seconds.clear()

    # -- observations ------------------------------------------------------------------------
    @property
    def accepted_count(self) -> int:
        return len(self.accepted)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        """Block until at least ``count`` requests arrived."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.request_count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.request_count} requests, expected {count}")
                self._changed.wait(left)

    def wait_for_accepted(self, count: int, timeout: float = 10.0) -> None:
        """Block until at least ``count`` unique events were accepted."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.accepted) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.accepted)} accepted, expected {count}")
                self._changed.wait(left)

    def requests_for(self, key: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.idempotency_key == key]

    # -- the WorkOS behaviour ----------------------------------------------------------------
    def _choose_fault(self) -> Fault | None:
        if self._script:
            return self._script.popleft()
        if self.hang_all:
            return Fault.hang()
        if self.fault_rate and self._random.random() < self.fault_rate:
            pick = self._random.random()
            if pick < 0.4:
                return Fault.status_code(self._random.choice((500, 502, 503, 504)))
            if pick < 0.7:
                return Fault.rate_limited("0")
            return Fault.reset()
        return None

    def _over_limit(self, now: float) -> float | None:
        """With the lock held: seconds until the window has room, or ``None`` to admit."""
        if not self.rate_limit:
            return None
        window = self._admitted
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.rate_limit:
            return window[0] + 1.0 - now
        window.append(now)
        return None

    def _handle(self, proto: _Protocol, request: Recorded) -> None:
        if request.path.startswith("/_"):
            self._control(proto, request)
            return
        now = time.monotonic()
        with self._changed:
            self.request_count += 1
            if self.record:
                self.requests.append(request)
            fault = self._choose_fault()
            wait = self._over_limit(now) if fault is None else None
            if self._first is None:
                self._first = now
            tally = self._seconds.setdefault(int(now - self._first), [0, 0])
            tally[0] += 1
            if wait is not None:
                self.rate_limited += 1
                tally[1] += 1
                fault = Fault.rate_limited(str(max(1, math.ceil(wait))))
            self._changed.notify_all()
        if fault is not None:
            if fault.kind == "reset":
                proto.reset()
                return
            if fault.kind == "hang":
                self._hung.append(proto)
                return
            if fault.kind == "status":
                extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                payload = {"message": fault.message or _REASONS.get(fault.status, "error"),
                           "code": "injected_fault"}
                self._later(self.latency if wait is not None else 0.0,
                            proto.respond, fault.status, payload, extra)
                return
            if fault.kind == "slow":
                self._later(fault.delay, self._answer, proto, request)
                return
        self._later(self.latency, self._answer, proto, request)

    def _later(self, delay: float, answer: Any, *args: Any) -> None:
        if delay and self._loop is not None:
            self._loop.call_later(delay, answer, *args)
        else:
            answer(*args)

    def _answer(self, proto: _Protocol, request: Recorded) -> None:
        if request.path.startswith("/audit_logs/exports"):
            self._export_api(proto, request)
            return
        if request.method != "POST" or request.path not in ("/events", "/audit_logs/events"):
            proto.respond(404, {"message": f"Not found: {request.method} {request.path}"})
            return
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            proto.respond(401, {"message": "Unauthorized", "code": "unauthorized"})
            return
        try:
            body = json.loads(request.body)
        except ValueError:
            proto.respond(400, {"message": "Invalid JSON body"})
            return
        problem = _problem(request.path, body)
        if problem is None:
            action = body.get("action") or body.get("event", {}).get("action")
            rejected = self.reject_actions.get(action)
            if rejected is not None:
                status, message = rejected
                proto.respond(status, {"message": message, "code": "invalid_audit_log",
                                       "errors": [{"code": "rejected", "message": message}]})
                return
        if problem is not None:
            proto.respond(422, {"message": "Audit Log could not be processed due to missing or "
                                           "incorrect data.", "code": "invalid_audit_log",
                                "errors": [{"code": "invalid", "message": problem}]})
            return
        key = request.idempotency_key or f"anonymous-{self.request_count}"
        with self._changed:
            if key in self.accepted:
                self.duplicates += 1
            else:
                self.accepted[key] = body if self.record else True
            self._changed.notify_all()
        proto.respond(201, {"success": True})

    # -- audit-log exports --------------------------------------------------------------------
    def _export_api(self, proto: _Protocol, request: Recorded) -> None:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            proto.respond(401, {"message": "Unauthorized", "code": "unauthorized"})
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        if request.method == "POST" and request.path == "/audit_logs/exports":
            try:
                body = json.loads(request.body)
            except ValueError:
                proto.respond(400, {"message": "Invalid JSON body"})
                return
            missing = [k for k in ("organization_id", "range_start", "range_end")
                       if not isinstance(body, dict) or not body.get(k)]
            if missing:
                proto.respond(422, {"message": "Validation failed", "code": "invalid_request",
                                    "errors": [{"code": "missing", "field": k,
                                                "message": f"{k} is required"}
                                               for k in missing]})
                return
            with self._lock:
                export_id = f"audit_log_export_{len(self.exports) + 1:04d}"
                self.exports[export_id] = {"request": body, "reads": 0, "created_at": now,
                                           "signature": os.urandom(8).hex()}
            proto.respond(201, self._export_json(export_id, "pending", now))
            return
        export_id = request.path.removeprefix("/audit_logs/exports/")
        with self._lock:
            export = self.exports.get(export_id) if request.method == "GET" else None
            if export is not None:
                export["reads"] += 1
                ready = export["reads"] > self.export_polls_pending
        if export is None:
            proto.respond(404, {"message": f"Not found: {request.method} {request.path}",
                                "code": "entity_not_found"})
            return
        state = self.export_outcome if ready else "pending"
        proto.respond(200, self._export_json(export_id, state, export["created_at"], now))

    def _export_json(self, export_id: str, state: str, created: str,
                     updated: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"object": "audit_log_export", "id": export_id, "state": state,
                               "created_at": created, "updated_at": updated or created}
        if state == "ready":
            signature = self.exports[export_id]["signature"]
            out["url"] = (f"http://127.0.0.1:{self.download_port}/exports/{export_id}.csv"
                          f"?X-Amz-Expires=600&X-Amz-Signature={signature}")
        return out

    def export_rows(self, export_id: str) -> bytes:
        """The CSV the download host serves for ``export_id``."""
        if self.export_csv is not None:
            return self.export_csv
        organization = self.exports[export_id]["request"]["organization_id"]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["occurred_at", "action", "actor_id", "actor_name", "targets"])
        with self._lock:
            bodies = [b for b in self.accepted.values() if isinstance(b, dict)]
        for body in bodies:
            event = body.get("event", body)
            if body.get("organization_id", body.get("group")) != organization:
                continue
            actor = event.get("actor", {"id": event.get("actor_id"),
                                        "name": event.get("actor_name")})
            targets = event.get("targets") or [{"id": event.get("target_id")}]
            writer.writerow([event.get("occurred_at"), event.get("action"), actor.get("id"),
                             actor.get("name"), " ".join(str(t.get("id")) for t in targets)])
        return out.getvalue().encode()

    def _serve_download(self, proto: _Protocol, request: Recorded) -> None:
        with self._lock:
            self.downloads.append(request)
            scripted = self.download_script.popleft() if self.download_script else None
        if scripted is not None:
            proto.respond_bytes(scripted, b"<Error>scripted</Error>", "application/xml")
            return
        path, _, query = request.path.partition("?")
        export_id = path.removeprefix("/exports/").removesuffix(".csv")
        export = self.exports.get(export_id)
        if request.method != "GET" or export is None or \
                f"X-Amz-Signature={export['signature']}" not in query.split("&"):
            proto.respond_bytes(403, b"<Error>SignatureDoesNotMatch</Error>", "application/xml")
            return
        proto.respond_bytes(200, self.export_rows(export_id), "text/csv")

    def _control(self, proto: _Protocol, request: Recorded) -> None:
        if request.path == "/_stats":
            with self._lock:
                stats = {"requests": self.request_count, "accepted": len(self.accepted),
                         "duplicates": self.duplicates, "connections": self._connections,
                         "rate_limited": self.rate_limited,
                         "seconds": [[second, *tally]
                                     for second, tally in sorted(self._seconds.items())]}
            proto.respond(200, stats)
        elif request.path == "/_control":
            settings = json.loads(request.body or b"{}")
            with self._lock:
                self.latency = float(settings.get("latency", self.latency))
                self.fault_rate = float(settings.get("fault_rate", self.fault_rate))
                self.hang_all = bool(settings.get("hang_all", self.hang_all))
                if "rate_limit" in settings:
                    limit = settings["rate_limit"]
                    self.rate_limit = None if limit is None else float(limit)
            proto.respond(200, {"ok": True})
        elif request.path == "/_reset":
            self.reset()
            proto.respond(200, {"ok": True})
        else:
            proto.respond(404, {"message": "unknown control path"})


def _problem(path: str, body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if path == "/events":
        missing = [k for k in _LEGACY_REQUIRED if k not in body]
        return f"missing {missing}" if missing else None
    event = body.get("event")
    if "organization_id" not in body or not isinstance(event, dict):
        return "organization_id and event are required"
    required = ("action", "occurred_at", "actor", "targets", "context")
    missing = [k for k in required if k not in event]
    return f"event is missing {missing}" if missing else None


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[WorkOSServer]:
    """``with running(fault_rate=0.3) as server:`` — start and always stop."""
    server = WorkOSServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="sk_test")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds to wait before each answer (a distant server)")
    parser.add_argument("--rate-limit", type=float, default=None,
                        help="requests per sliding one-second window; more get 429")
    parser.add_argument("--record", action="store_true",
                        help="keep every request body (memory grows with traffic)")
    args = parser.parse_args(argv)
    server = WorkOSServer(api_key=args.api_key, port=args.port, fault_rate=args.fault_rate,
                          seed=args.seed, record=args.record, latency=args.latency,
                          rate_limit=args.rate_limit).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin() -> None:
        with contextlib.suppress(Exception):
            sys.stdin.read()
        stop.set()

    if stat.S_ISFIFO(os.fstat(0).st_mode):  # a parent holding a pipe: stop when it closes
        threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"PORT {server.port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
