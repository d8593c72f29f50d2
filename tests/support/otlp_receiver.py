"""An OTLP/HTTP log receiver on 127.0.0.1: what a collector's ``otlp`` receiver does for logs.

``POST /v1/logs`` with a protobuf ``ExportLogsServiceRequest`` (gzip or
deflate allowed), decoded with ``opentelemetry-proto``; answers ``200`` with
an ``ExportLogsServiceResponse``. Records are counted by their
``audit.idempotency_key`` attribute: a repeat counts as a duplicate.

:meth:`OTLPReceiver.down` stops listening (clients get "connection refused"),
closing open keep-alive connections; :meth:`OTLPReceiver.up` listens again on
the same port. :meth:`OTLPReceiver.fail_next` answers the next requests with
a status instead.

    with OTLPReceiver() as receiver:
        exporter = OTLPLogExporter(endpoint=receiver.endpoint)
        ...
        receiver.wait_for(100)

As a separate process (benchmarks)::

    python tests/support/otlp_receiver.py

prints ``PORT <n>`` and serves until stdin closes; ``GET /_stats`` answers
``{"received", "duplicates", "requests", "without_key"}`` and ``POST /_reset``
forgets them.
"""

from __future__ import annotations

import collections
import gzip
import json
import socket
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

__all__ = ["OTLPReceiver", "Received", "value_of"]

_OK = ExportLogsServiceResponse().SerializeToString()
KEY_ATTRIBUTE = "audit.idempotency_key"


def value_of(value: AnyValue) -> Any:
    """The Python value of an OTLP ``AnyValue``."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in value.kvlist_value.values}
    return None if kind is None else getattr(value, kind)


class Received:
    """One record as received: body, attributes, resource and scope."""

    def __init__(self, record: LogRecord, resource: dict[str, Any], scope: str) -> None:
        self.body = value_of(record.body)
        self.attributes = {kv.key: value_of(kv.value) for kv in record.attributes}
        self.time_unix_nano = record.time_unix_nano
        self.severity_text = record.severity_text
        self.severity_number = record.severity_number
        self.trace_id = record.trace_id.hex()
        self.span_id = record.span_id.hex()
        self.resource = resource
        self.scope = scope


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.receiver._opened(self.connection)

    def finish(self) -> None:
        self.server.receiver._closed(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        receiver = self.server.receiver
        if self.path.startswith("/_"):
            self._reply(200, json.dumps(receiver._control(self.path)).encode(),
                        "application/json")
            return
        status = receiver._handle(self.path, self.headers, body)
        self._reply(status, _OK if status == 200 else b"", "application/x-protobuf")

    def _reply(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OTLPReceiver


class OTLPReceiver:
    """A loopback OTLP/HTTP logs receiver; see the module docstring.

    ``record=False`` keeps only the keys (for large bursts).
    """

    def __init__(self, *, record: bool = True) -> None:
        self.record = record
        self.keys: set[str] = set()
        self.records: list[Received] = []
        self.duplicates = 0
        self.requests = 0
        self.without_key = 0
        self.headers: list[dict[str, str]] = []
        self._script: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/logs"

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self) -> OTLPReceiver:
        """Listen (again, on the same port once it had one)."""
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="otlp-receiver",
                                        daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening and drop every open connection."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join(10)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server = None

    def __enter__(self) -> OTLPReceiver:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    # -- behaviour -----------------------------------------------------------------------------
    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, in order."""
        with self._lock:
            self._script.extend(statuses)

    def _control(self, path: str) -> dict[str, int]:
        with self._lock:
            if path == "/_reset":
                self.keys.clear()
                self.records.clear()
                self.headers.clear()
                self.duplicates = self.requests = self.without_key = 0
            return {"received": len(self.keys), "duplicates": self.duplicates,
                    "requests": self.requests, "without_key": self.without_key}

    def _handle(self, path: str, headers: Any, body: bytes) -> int:
        with self._lock:
            self.requests += 1
            self.headers.append({k.lower(): v for k, v in headers.items()})
            if self._script:
                return self._script.popleft()
        if path != "/v1/logs":
            return 404
        encoding = headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = ExportLogsServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:
            return 400
        received: list[tuple[str | None, Received | None]] = []
        for resource_logs in request.resource_logs:
            resource = ({kv.key: value_of(kv.value) for kv in resource_logs.resource.attributes}
                        if self.record else {})
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    key = None
                    for kv in record.attributes:
                        if kv.key == KEY_ATTRIBUTE:
                            key = kv.value.string_value
                    received.append((key, Received(record, resource, scope_logs.scope.name)
                                     if self.record else None))
        with self._changed:
            for key, item in received:
                if key is None:
                    self.without_key += 1
                elif key in self.keys:
                    self.duplicates += 1
                    continue
                else:
                    self.keys.add(key)
                if item is not None:
                    self.records.append(item)
            self._changed.notify_all()
        return 200

    # -- observations --------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Distinct records received."""
        return len(self.keys)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Block until ``count`` distinct records arrived."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.keys) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.keys)} records received, expected {count}")
                self._changed.wait(left)


def main() -> int:
    receiver = OTLPReceiver(record=False).up()
    print(f"PORT {receiver.port}", flush=True)
    sys.stdin.read()  # until the parent closes the pipe
    receiver.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
